"""Export the trained classifier: one Keras graph, its ONNX twin, metadata, publish, upload.

The exported model is backbone + head in ONE graph: ``image`` float32[N, S, S, 3] (RGB,
[0, 255], from ``skin_mlops.preprocessing``) -> ``logits`` float32[N, K] and, with the
out-of-distribution guard (:mod:`skin_mlops.modeling.ood`), ``ood_score`` float32[N]. The
steps:

1. :func:`compose_model` - the inference graph from the backbone and the trained head,
   optionally averaging the logits of the input's dihedral transforms (in-graph TTA), with
   the guard's distance computed from the same pooled features;
2. :func:`write_export` - ``model/model.keras``, ``model/model.onnx`` (``tf2onnx``; the
   backbone's conversion is cached and only the head is converted per run), a
   parity check (ONNX Runtime vs Keras on real inputs: calibrated probabilities within
   ``1e-4``, identical top-1) and ``export_format.write_metadata``; a failed check raises
   :class:`ExportError` and nothing is published;
3. :func:`publish_export` - the atomic symlink swap of ``runs/skin5-current``
   (:func:`skin_mlops.export_format.publish`);
4. :func:`upload_export` - the folder to ``<models bucket>/skin/models/<run_id>/``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skin_mlops import export_format
from skin_mlops.core.errors import DataError
from skin_mlops.export_format import softmax

if TYPE_CHECKING:
    import keras
    import onnxruntime as ort

    from skin_mlops.modeling.ood import OodGuard
    from skin_mlops.storage import ObjectStore

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OOD_OUTPUT_NAME = "ood_score"
ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4
OOD_PARITY_RTOL = 1e-3
# Images per Keras call of a whole model, run as one tf.function graph. Eagerly, TensorFlow
# keeps every activation of a call alive: Lite0 at 288 px over 16 images peaked 2.6 GB
# above the model, over 2 images 0.34 GB; as a graph over 4 images 0.11 GB (measured; the
# ONNX/Keras parity checks are where training reached 5.9 GB). ONNX Runtime's arena keeps
# its largest batch too (~450 MiB at 16 photos), so its parity batches are as small.
KERAS_EAGER_BATCH = 4
MODELS_PREFIX = "skin/models"


class ExportError(DataError):
    """The exported model is unusable (conversion failed, or ONNX disagrees with Keras)."""


def _tta_layers() -> tuple[type, type]:
    """The two Keras layers of in-graph dihedral test-time averaging (registered once)."""
    global _TTA_LAYERS
    if _TTA_LAYERS is not None:
        return _TTA_LAYERS
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="skin_mlops")
    class DihedralViews(keras.layers.Layer):
        """``[N,S,S,C]`` -> ``[T*N,S,S,C]``: the first ``T`` dihedral transforms, view-major.

        Transform ``k``: ``k % 4`` counter-clockwise quarter turns, then a left-right flip
        when ``k >= 4`` (the same as :func:`skin_mlops.modeling.features.dihedral`).
        """

        def __init__(self, views: int = 8, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.views = views

        def call(self, x):  # noqa: ANN001, ANN201 - Keras tensors
            out = []
            for k in range(self.views):
                y = x
                for _ in range(k % 4):  # rot90 counter-clockwise = transpose, flip rows
                    y = ops.flip(ops.transpose(y, (0, 2, 1, 3)), axis=1)
                if k >= 4:
                    y = ops.flip(y, axis=2)
                out.append(y)
            return ops.concatenate(out, axis=0)

        def compute_output_shape(self, shape):  # noqa: ANN001, ANN201
            return (None, *shape[1:])

        def get_config(self) -> dict:
            return {**super().get_config(), "views": self.views}

    @keras.saving.register_keras_serializable(package="skin_mlops")
    class ViewMean(keras.layers.Layer):
        """``[T*N, K]`` (view-major) -> ``[N, K]``: the mean over the ``T`` views."""

        def __init__(self, views: int = 8, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.views = views

        def call(self, x):  # noqa: ANN001, ANN201
            return ops.mean(ops.reshape(x, (self.views, -1, x.shape[-1])), axis=0)

        def compute_output_shape(self, shape):  # noqa: ANN001, ANN201
            return (None, shape[-1])

        def get_config(self) -> dict:
            return {**super().get_config(), "views": self.views}

    _TTA_LAYERS = (DihedralViews, ViewMean)
    return _TTA_LAYERS


_TTA_LAYERS: tuple[type, type] | None = None


def apply_heads(features: object, head: keras.Model | Sequence[keras.Model]) -> object:
    """Apply a head's layers (or several heads', averaged) to a features tensor."""
    import keras

    member_logits = []
    for member in [head] if isinstance(head, keras.Model) else list(head):
        x = features
        for layer in member.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            x = layer(x)
        member_logits.append(x)
    if len(member_logits) == 1:
        return member_logits[0]
    return keras.layers.Average(name="head_mean")(member_logits)


def compose_model(
    backbone_model: keras.Model,
    head: keras.Model | Sequence[keras.Model],
    image_size: int,
    *,
    tta_views: int = 1,
    guard: OodGuard | None = None,
) -> keras.Model:
    """``image`` -> backbone -> the head's layers -> ``logits``, as one functional model.

    Several heads (an ensemble) have their logits averaged. With ``tta_views`` > 1 the
    graph averages the logits of the first ``tta_views``
    dihedral transforms of the input (test-time augmentation inside the model, so ONNX
    and every server get it for free). The head's layers are reused (same weights); the
    graph's last layer is named ``logits`` (so the Keras and ONNX output are ``logits``).
    With ``guard`` the model has a second output ``ood_score``: the guard's distance of
    the input's pooled features (the untransformed view's, under TTA).
    """
    import keras

    if not 1 <= tta_views <= 8:
        raise ExportError(f"tta_views must be between 1 and 8 (got {tta_views})")
    image = keras.Input((image_size, image_size, 3), name=INPUT_NAME, dtype="float32")
    x = image
    if tta_views > 1:
        dihedral_views, _ = _tta_layers()
        x = dihedral_views(tta_views, name="tta_dihedral_views")(x)
    features = backbone_model(x)
    x = apply_heads(features, head)
    if tta_views > 1:
        _, view_mean = _tta_layers()
        x = view_mean(tta_views, name=OUTPUT_NAME)(x)
    else:
        x = keras.layers.Identity(name=OUTPUT_NAME)(x)
    if guard is None:
        return keras.Model(image, x, name="skin_classifier")
    from skin_mlops.modeling import ood

    score = ood.score_layer(guard)(ood.first_view(features, tta_views))
    return keras.Model(image, [x, score], name="skin_classifier")


def load_keras_model(path: Path, *, logits_only: bool = False) -> keras.Model:
    """Load an exported ``model.keras`` (its custom layers registered first: in-graph TTA,
    the out-of-distribution guard, the canonical orientation). ``logits_only``: a model of
    the first output alone, for tools that expect one output (MLflow's Keras flavour, a
    plain ``predict``)."""
    import keras

    from skin_mlops.modeling import ood
    from skin_mlops.modeling.orientation import canonical_orientation_layer

    _tta_layers()
    ood._layers()
    canonical_orientation_layer()
    model = keras.saving.load_model(path, compile=False)
    if logits_only and len(model.outputs) > 1:
        return keras.Model(model.inputs, model.outputs[0], name="skin_classifier_logits")
    return model


_INFERENCE_GRAPHS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def inference_graph(model: keras.Model) -> Any:
    """The model's inference-mode ``tf.function``, traced once for any batch size and
    kept for the model's lifetime (a new ``tf.function`` per call retraced each time, and
    TensorFlow warned about it)."""
    import tensorflow as tf

    graph = _INFERENCE_GRAPHS.get(model)
    if graph is None:
        spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)
        held = weakref.ref(model)  # the cache must not keep the model alive

        def call(x: Any) -> Any:
            live = held()
            assert live is not None  # the graph lives in the cache only while the model does
            return live(x, training=False)

        graph = tf.function(call, input_signature=[spec])
        _INFERENCE_GRAPHS[model] = graph
    return graph


def keras_outputs(
    model: keras.Model, images: np.ndarray, batch_size: int = KERAS_EAGER_BATCH
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(logits, ood_score or None)`` of a Keras model, inference mode, in batches, as one
    ``tf.function`` graph (small batches by default: see :data:`KERAS_EAGER_BATCH`)."""
    import tensorflow as tf

    graph = inference_graph(model)
    logits, scores = [], []
    for i in range(0, len(images), batch_size):
        out = graph(tf.constant(images[i : i + batch_size]))
        if isinstance(out, list | tuple):
            logits.append(np.asarray(out[0]))
            scores.append(np.asarray(out[1]))
        else:
            logits.append(np.asarray(out))
    if not logits:
        width = int(model.outputs[0].shape[-1])
        return np.zeros((0, width), np.float32), None
    return np.concatenate(logits), (np.concatenate(scores) if scores else None)


def keras_logits(
    model: keras.Model, images: np.ndarray, batch_size: int = KERAS_EAGER_BATCH
) -> np.ndarray:
    """Logits of a Keras model, inference mode, in batches (its first output)."""
    return keras_outputs(model, images, batch_size)[0]


def onnx_session(path: Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_outputs(
    session: ort.InferenceSession, images: np.ndarray, batch_size: int = KERAS_EAGER_BATCH
) -> dict[str, np.ndarray]:
    """Every output of an ONNX Runtime session whose one input takes ``images``, by name
    (small batches by default: see :data:`KERAS_EAGER_BATCH`)."""
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i in range(0, len(images), batch_size):
        for name, value in zip(
            names, session.run(names, {input_name: images[i : i + batch_size]}), strict=True
        ):
            chunks[name].append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in chunks.items()}


def onnx_logits(
    session: ort.InferenceSession, images: np.ndarray, batch_size: int = KERAS_EAGER_BATCH
) -> np.ndarray:
    """Logits of an ONNX Runtime session (its ``logits`` output, else its first one)."""
    outputs = onnx_outputs(session, images, batch_size)
    return outputs.get(OUTPUT_NAME, next(iter(outputs.values())))


def convert_to_onnx(model: keras.Model, path: Path, image_size: int) -> Path:
    """Convert with ``tf2onnx.convert.from_keras`` (opset 17, dynamic batch)."""
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME),)
    try:
        tf2onnx.convert.from_keras(
            model, input_signature=spec, opset=ONNX_OPSET, output_path=str(path)
        )
    except Exception as exc:  # noqa: BLE001 - converter failures become one line
        raise ExportError(f"ONNX conversion failed: {type(exc).__name__}: {exc}") from None
    return path


def heads_model(
    head: keras.Model | Sequence[keras.Model],
    feature_dim: int,
    guard: OodGuard | None = None,
) -> keras.Model:
    """``features`` float32[N, D] -> ``logits`` (and ``ood_score`` with ``guard``): the
    head(s) alone (ensemble averaged)."""
    import keras

    features = keras.Input((feature_dim,), name="features", dtype="float32")
    logits = apply_heads(features, head)
    if guard is None:
        return keras.Model(features, logits, name="skin_heads")
    from skin_mlops.modeling import ood

    return keras.Model(features, [logits, ood.score_layer(guard)(features)], name="skin_heads")


def compose_onnx(backbone_onnx: Path, heads: keras.Model, path: Path) -> Path:
    """``model.onnx`` = the cached backbone ONNX followed by the converted head(s).

    Only the small head is converted (``tf2onnx``); ``onnx.compose.merge_models`` wires
    the backbone's output into it. The result has the same input (``image``) and output
    (``logits``) as a whole-model conversion and is held to the same parity check.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx
    from onnx import compose

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = int(heads.inputs[0].shape[-1])
    spec = (tf.TensorSpec((None, width), tf.float32, name="features"),)
    try:
        head_proto, _ = tf2onnx.convert.from_keras(heads, input_signature=spec, opset=ONNX_OPSET)
        backbone_proto = onnx.load(str(backbone_onnx))
        head_proto = compose.add_prefix(head_proto, "head/")
        merged = compose.merge_models(
            backbone_proto,
            head_proto,
            io_map=[(backbone_proto.graph.output[0].name, head_proto.graph.input[0].name)],
        )
        # the head's outputs in order: logits, then the guard's score when it has one
        wanted = [OUTPUT_NAME, OOD_OUTPUT_NAME][: len(merged.graph.output)]
        for output, name in zip(list(merged.graph.output), wanted, strict=True):
            if output.name == name:
                continue
            renamed = onnx.ValueInfoProto()
            renamed.CopyFrom(output)
            renamed.name = name
            merged.graph.node.append(
                onnx.helper.make_node("Identity", [output.name], [name], name=name)
            )
            merged.graph.output.remove(output)
            merged.graph.output.append(renamed)
        onnx.checker.check_model(merged)
        onnx.save(merged, str(path))
    except Exception as exc:  # noqa: BLE001 - converter/merge failures become one line
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from None
    return path


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime vs Keras on the same inputs."""

    n_inputs: int
    max_abs_logit_diff: float
    max_abs_prob_diff: float
    top1_identical: bool
    tolerance: float
    max_rel_ood_diff: float | None = None

    @property
    def ok(self) -> bool:
        """Calibrated probabilities within tolerance, the same top-1 everywhere, and the
        guard's scores (when there is one) within :data:`OOD_PARITY_RTOL`."""
        ood_ok = self.max_rel_ood_diff is None or self.max_rel_ood_diff <= OOD_PARITY_RTOL
        return self.top1_identical and self.max_abs_prob_diff <= self.tolerance and ood_ok


def compare_logits(
    reference: np.ndarray,
    candidate: np.ndarray,
    temperature: float,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """Compare two logit arrays (as logits and as calibrated probabilities)."""
    return ParityReport(
        n_inputs=len(reference),
        max_abs_logit_diff=float(np.max(np.abs(reference - candidate), initial=0.0)),
        max_abs_prob_diff=float(
            np.max(
                np.abs(softmax(reference, temperature) - softmax(candidate, temperature)),
                initial=0.0,
            )
        ),
        top1_identical=bool(np.array_equal(reference.argmax(1), candidate.argmax(1))),
        tolerance=tolerance,
    )


@dataclass(frozen=True)
class ExportResult:
    """A written (not yet published) export folder."""

    folder: Path
    signature: export_format.ModelSignature
    parity: ParityReport


def write_export(
    model: keras.Model,
    signature: export_format.ModelSignature,
    folder: Path,
    parity_images: np.ndarray,
    *,
    tolerance: float = PARITY_TOLERANCE,
    reference_logits: np.ndarray | None = None,
    reference_ood: np.ndarray | None = None,
    backbone_onnx: Path | None = None,
    heads: keras.Model | None = None,
) -> ExportResult:
    """Write ``model.keras``, ``model.onnx`` and the metadata into ``folder``, checked.

    The ONNX model is run with ONNX Runtime on ``parity_images`` and compared with Keras
    (``reference_logits`` / ``reference_ood``: the Keras model's outputs on them, when the
    caller has them); the signature's input/output names are taken from the ONNX graph.
    A signature with ``ood`` needs the graph's ``ood_score`` output, held to the same
    check (relative difference within :data:`OOD_PARITY_RTOL`). With ``backbone_onnx``
    (the cached backbone, :mod:`skin_mlops.modeling.onnx_backbone`) and ``heads``
    (:func:`heads_model`), only the head is converted (:func:`compose_onnx`); otherwise
    the whole model is (:func:`convert_to_onnx`).

    Raises:
        ExportError: conversion failed or the parity check did not pass.
    """
    (folder / export_format.KERAS_MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
    model.save(folder / export_format.KERAS_MODEL_FILE)
    onnx_file = folder / export_format.ONNX_MODEL_FILE
    if backbone_onnx is not None and heads is not None:
        onnx_path = compose_onnx(backbone_onnx, heads, onnx_file)
    else:
        onnx_path = convert_to_onnx(model, onnx_file, signature.image_size)
    session = onnx_session(onnx_path)
    if reference_logits is None or (signature.ood is not None and reference_ood is None):
        reference_logits, reference_ood = keras_outputs(model, parity_images)
    outputs = onnx_outputs(session, parity_images)
    onnx_out_names = [o.name for o in session.get_outputs()]
    expected = [OUTPUT_NAME] + ([signature.ood.output.name] if signature.ood else [])
    if onnx_out_names != expected:
        raise ExportError(
            f"the ONNX model's outputs are {onnx_out_names}, expected {expected}; not published"
        )
    max_rel_ood = None
    if signature.ood is not None and reference_ood is not None:
        candidate = outputs[signature.ood.output.name]
        max_rel_ood = float(
            np.max(np.abs(candidate - reference_ood) / np.maximum(np.abs(reference_ood), 1e-6))
        )
    parity = compare_logits(
        reference_logits, outputs[OUTPUT_NAME], signature.temperature, tolerance
    )
    parity = ParityReport(**{**parity.__dict__, "max_rel_ood_diff": max_rel_ood})
    if not parity.ok:
        ood_note = f", ood_score rel. diff {max_rel_ood:.1e}" if max_rel_ood is not None else ""
        raise ExportError(
            f"ONNX model disagrees with Keras on {parity.n_inputs} images: max |dp| = "
            f"{parity.max_abs_prob_diff:.2e} (tolerance {tolerance:.0e}), top-1 identical: "
            f"{parity.top1_identical}{ood_note}; not published"
        )
    onnx_in = session.get_inputs()[0]
    signature = signature.model_copy(
        update={
            "input": export_format.TensorSpec(
                name=onnx_in.name, shape=[None, signature.image_size, signature.image_size, 3]
            ),
            "output": export_format.TensorSpec(
                name=OUTPUT_NAME, shape=[None, len(signature.labels)]
            ),
        }
    )
    export_format.write_metadata(folder, signature)
    export_format.read_signature(folder)  # what serving will do: must pass
    return ExportResult(folder, signature, parity)


def publish_export(result: ExportResult, current_link: Path) -> Path:
    """Atomically make ``current_link`` (``runs/skin5-current``) point at this export."""
    return export_format.publish(result.folder, current_link, result.signature.model_version)


def upload_export(store: ObjectStore, bucket: str, run_id: str, folder: Path) -> str:
    """Upload the export folder to ``<bucket>/skin/models/<run_id>/``; return its URI."""
    from skin_mlops.storage import upload_directory

    prefix = f"{MODELS_PREFIX}/{run_id}"
    upload_directory(store, bucket, prefix, folder)
    return f"s3://{bucket}/{prefix}/"
