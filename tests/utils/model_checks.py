"""Helpers of the model suite (``tests/model``): the served model, val photos, orientations.

* :func:`load_served_model` - the model of ``--model-source`` loaded exactly as the API
  loads it (:func:`skin_mlops.api.model_runtime.make_source` + ``load_model``: signature
  checked, warmed up), for an export folder or ``models:/<name>@<alias>``;
* :func:`read_val_set` - ``<root>/<label>/*`` decoded by
  :func:`skin_mlops.preprocessing.preprocess_bytes` at the model's size, with the
  model's class index of each folder, and the ONNX logits;
* :func:`with_orientation` - a copy of an upright photo stored as a camera would store it
  for EXIF orientation ``1..8`` (pixels turned/mirrored, tag set), so a decoder that
  honours the tag gets the upright photo back;
* :func:`top1_agreement` - share of rows whose argmax is unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from skin_mlops.api.model_runtime import LoadedModel, load_model, make_source
from skin_mlops.core.config import load_settings
from skin_mlops.preprocessing import preprocess_bytes

EXIF_ORIENTATION = 0x0112
BATCH = 32
# EXIF 2.3, tag 0x0112: the pixels a camera stores for an upright scene, given the tag it
# writes (the viewer undoes it). 6 = "turn 90 degrees clockwise to view", so the stored
# pixels are the scene turned 90 degrees counter-clockwise (Pillow's ROTATE_90).
STORED_FOR_ORIENTATION: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


def load_served_model(source: str) -> tuple[LoadedModel, Path]:
    """The model at ``source`` (folder or ``models:/...``), loaded as the API does, and the
    local export folder it was loaded from (a registry version is downloaded first).

    Raises:
        skin_mlops.core.errors.SkinMlopsError: no usable model there (one line).
    """
    settings = load_settings(model_source=source)
    model_source = make_source(settings)
    key = model_source.current_key()
    folder = model_source.materialize(key)
    return load_model(folder, key, settings), folder


def logits_of(model: LoadedModel, tensors: np.ndarray) -> np.ndarray:
    """The ONNX logits of ``float32[N, S, S, 3]``, in batches of :data:`BATCH`."""
    batches = [tensors[i : i + BATCH] for i in range(0, len(tensors), BATCH)]
    return np.concatenate([model.logits(np.ascontiguousarray(batch)) for batch in batches])


@dataclass(frozen=True)
class ValSet:
    """The val photos as the model sees them."""

    files: list[Path]
    labels: np.ndarray  # [N] class index in the model's label order
    tensors: np.ndarray  # [N, S, S, 3] float32 model inputs
    logits: np.ndarray  # [N, K] ONNX logits

    @property
    def top1(self) -> np.ndarray:
        """``[N]`` predicted class index."""
        return self.logits.argmax(axis=1)


def read_val_set(model: LoadedModel, root: Path) -> ValSet:
    """Every photo of ``root/<label>/`` (labels must be the model's), scored by ``model``.

    Raises:
        ValueError: no photos, or a folder that is not one of the model's labels (one line).
    """
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    unknown = [p.name for p in folders if p.name not in model.labels]
    if unknown:
        raise ValueError(f"{root}: folders {unknown} are not labels of the model {model.labels}")
    files = [
        path
        for folder in folders
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix.lower() in PHOTO_SUFFIXES
    ]
    if not files:
        raise ValueError(f"no .jpg/.jpeg/.png photos under {root}/<label>/")
    labels = np.array([model.labels.index(path.parent.name) for path in files])
    tensors = np.stack([preprocess_bytes(path.read_bytes(), model.image_size) for path in files])
    return ValSet(files, labels, tensors, logits_of(model, tensors))


def encode(img: Image.Image, fmt: str, orientation: int | None = None, **save: object) -> bytes:
    """``img`` saved as ``fmt`` (with EXIF ``orientation`` when given)."""
    buffer = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        save = {**save, "exif": exif.tobytes()}
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def with_orientation(upright: Image.Image, orientation: int, fmt: str, **save: object) -> bytes:
    """``upright`` stored as a camera would for EXIF ``orientation`` (1..8), encoded."""
    op = STORED_FOR_ORIENTATION[orientation]
    stored = upright if op is None else upright.transpose(op)
    return encode(stored, fmt, orientation, **save)


def top1_agreement(reference: np.ndarray, logits: np.ndarray) -> float:
    """Share of rows whose argmax equals ``reference`` (``[N]`` class indices)."""
    return float(np.mean(logits.argmax(axis=1) == reference))


def agreement_per_variant(
    model: LoadedModel,
    val: ValSet,
    variants: Iterable[int],
    make_inputs: Callable[[int], np.ndarray],
) -> dict[int, float]:
    """``{variant: top-1 agreement with the val photos' own top-1}`` (inputs made lazily)."""
    return {v: top1_agreement(val.top1, logits_of(model, make_inputs(v))) for v in variants}
