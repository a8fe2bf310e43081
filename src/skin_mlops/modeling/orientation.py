"""Canonical orientation: a model whose prediction cannot change when a photo is turned.

A skin photo has no "up": the same lesion photographed turned by a quarter or mirrored is
the same lesion. Training on dihedral views teaches a head *approximate* invariance (on
dermnet5 a turned or mirrored val photo kept its top-1 on only 88-95 % of photos), and
test-time averaging over the 8 transforms makes it exact at 8x the backbone's cost.

``--orientation canonical`` makes it exact at almost no cost instead: the first layer of
the backbone turns every input into one canonical member of its orbit under the 8
dihedral transforms (``k % 4`` counter-clockwise quarter turns, then a left-right flip
when ``k >= 4``; :func:`skin_mlops.modeling.features.dihedral`). The orbit member chosen
is the one whose luminance centroid (the brightness-weighted mean position, relative to
the centre) points closest to a fixed direction 22.5 degrees below the +x axis, i.e. the
transform that puts the light into one fixed octant. All 8 transforms of a photo have the
same orbit, and the same candidate tensors give the same scores, so the layer's output is
bit-identical for every one of them (no floating-point tolerance): turned inputs reach
the backbone as the same pixels. Exact ties (a photo whose centroid lies on a mirror line
or at the centre, e.g. a flat colour) can only pick between candidates that score the
same; a photo symmetric under the transform maps to itself anyway.

It lives inside the backbone's graph (training features, the exported Keras and ONNX
model alike), so training and serving cannot disagree on it, and the API and
``skin-mlops predict`` need nothing new. Cost at 288 px: 8 candidate tensors and one
reduction each, well under a millisecond (measured in the note of the change).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from skin_mlops.core.errors import ConfigError

Orientation = Literal["none", "canonical"]
ORIENTATIONS: tuple[str, ...] = ("none", "canonical")
DIHEDRAL_TRANSFORMS = 8
# the fixed direction the luminance centroid is turned towards: inside the fundamental
# domain (0 to 45 degrees) of the dihedral group, so exactly one orbit member is closest
_ANGLE = np.deg2rad(22.5)

_LAYER: type | None = None


def check_orientation(value: str) -> Orientation:
    """``value`` when it names an orientation mode, else one ConfigError line."""
    if value not in ORIENTATIONS:
        choices = ", ".join(ORIENTATIONS)
        raise ConfigError(f"unknown orientation {value!r} (choose one of {choices})")
    return value  # type: ignore[return-value]  # checked against ORIENTATIONS above


def transform_table(size: int) -> np.ndarray:
    """``int32[8, S*S]``: row ``k`` lists, for each output pixel of dihedral transform
    ``k`` (:func:`skin_mlops.modeling.features.dihedral`), the flat index of its source
    pixel, so ``x.reshape(S*S, C)[table[k]]`` is transform ``k`` of ``x``."""
    index = np.arange(size * size, dtype=np.int32).reshape(size, size)
    rows = []
    for k in range(DIHEDRAL_TRANSFORMS):
        turned = np.rot90(index, k % 4, axes=(0, 1))
        rows.append((turned[:, ::-1] if k >= 4 else turned).ravel())
    return np.stack(rows).astype(np.int32)


def score_matrices(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(coords float32[S*S, 2], mix float32[2, 8])``: ``luminance_flat @ coords`` is the
    luminance centroid's (x, y) (x right, y up, relative to the centre), and ``@ mix``
    gives, for each transform ``k``, that centroid after transform ``k`` projected on the
    fixed direction: the score whose best ``k`` is the canonical orientation."""
    centre = (size - 1) / 2.0
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    coords = np.stack([(cols - centre) / size, (centre - rows) / size], axis=-1).reshape(-1, 2)
    direction = coords @ np.array([np.cos(_ANGLE), np.sin(_ANGLE)])
    table = transform_table(size)
    mix = np.empty((2, DIHEDRAL_TRANSFORMS))
    for k in range(DIHEDRAL_TRANSFORMS):
        # score_k = sum_p L[table_k[p]] * direction[p] = sum_q L[q] * direction[inv_k[q]];
        # direction[inv_k] is a signed permutation of the two coordinates: solve for it
        inverse = np.argsort(table[k])
        mix[:, k] = np.linalg.lstsq(coords, direction[inverse], rcond=None)[0]
    return coords.astype(np.float32), np.round(mix, 6).astype(np.float32)


def canonical_orientation_layer() -> type:
    """The Keras layer class (built on first use, so this module imports no Keras)."""
    global _LAYER
    if _LAYER is not None:
        return _LAYER
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="skin_mlops")
    class CanonicalOrientation(keras.layers.Layer):
        """``[N,S,S,C]`` -> ``[N,S,S,C]``: each image turned to its canonical orientation.

        Three small steps (about 0.3 ms per 288 px image on ONNX Runtime): the luminance
        centroid (one matrix product), its 8 transformed projections (a 2x8 product), and
        one gather of the pixels through the chosen transform's index table.
        """

        def build(self, input_shape: Any) -> None:
            size = int(input_shape[1])
            if int(input_shape[2]) != size:
                raise ValueError(f"canonical orientation needs square inputs (got {input_shape})")
            coords, mix = score_matrices(size)
            self.size = size
            self.coords = ops.convert_to_tensor(coords)
            self.mix = ops.convert_to_tensor(mix)
            self.table = ops.convert_to_tensor(transform_table(size))

        def call(self, x):  # noqa: ANN001, ANN201 - Keras tensors
            pixels = self.size * self.size
            channels = int(x.shape[-1])
            n = ops.shape(x)[0]
            luminance = ops.reshape(ops.mean(x, axis=-1), (-1, pixels))
            scores = ops.matmul(ops.matmul(luminance, self.coords), self.mix)  # [N, 8]
            # index of the first best score (not ops.argmax: Keras' TF argmax bitcasts
            # floats, which has no ONNX op)
            best = ops.cast(ops.equal(scores, ops.max(scores, axis=1, keepdims=True)), "int32")
            first = best * ops.cast(ops.equal(ops.cumsum(best, axis=1), 1), "int32")
            choice = ops.sum(first * ops.arange(DIHEDRAL_TRANSFORMS, dtype="int32"), axis=1)
            offsets = ops.arange(n, dtype="int32") * pixels
            source = ops.take(self.table, choice, axis=0) + offsets[:, None]  # [N, S*S]
            flat = ops.reshape(x, (-1, channels))
            picked = ops.take(flat, ops.reshape(source, (-1,)), axis=0)
            return ops.reshape(picked, (-1, self.size, self.size, channels))

        def compute_output_shape(self, shape):  # noqa: ANN001, ANN201
            return shape

    _LAYER = CanonicalOrientation
    return _LAYER
