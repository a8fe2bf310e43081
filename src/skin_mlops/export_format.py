"""The exported-model folder: ``runs/skin5-current/``, written by training, read by serving.

Layout (stable; see ``docs/architecture.md``)::

    data/class_index.json      {"0": "acne", "1": "actinic_keratosis", ...}
    inference/signature.json   ModelSignature below
    model/model.keras          the Keras model (backbone + head), outputs logits
                               (and ood_score, the out-of-distribution guard's distance)
    model/model.onnx           the same graph via tf2onnx (served by ONNX Runtime)
    model/model.int8.onnx      optional: its int8 twin, present only when it passed the
                               quality gate (signature ``int8``)

``runs/skin5-current`` is a *symlink* to ``runs/skin5/<model_version>/``. A new export is
written to a fresh version folder, checked, flushed to disk, then the link is swapped with
one atomic ``os.replace``: a reader never sees a half-written model, and the folder the
link points to is never deleted (see :func:`publish`). Readers call
:func:`resolve_export_dir` once and read every file from the resolved folder.

The output contract is here too: models output logits, and :func:`softmax` turns them
into the calibrated probabilities every caller shows (the API, training, the benchmarks).

Stdlib, numpy and pydantic only: importable by the API image (no TensorFlow).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from skin_mlops.core.errors import DataError
from skin_mlops.core.files import fsync_directory, fsync_path, temporary_sibling

FORMAT_VERSION = 1
CLASS_INDEX_FILE = Path("data/class_index.json")
SIGNATURE_FILE = Path("inference/signature.json")
KERAS_MODEL_FILE = Path("model/model.keras")
ONNX_MODEL_FILE = Path("model/model.onnx")
INT8_MODEL_FILE = Path("model/model.int8.onnx")
REQUIRED_FILES = (CLASS_INDEX_FILE, SIGNATURE_FILE, ONNX_MODEL_FILE)


class TensorSpec(BaseModel):
    """Name, dtype and shape of a model input or output."""

    name: str
    dtype: str = "float32"
    shape: list[int | None]


class OodSpec(BaseModel):
    """The out-of-distribution guard inside the graph (:mod:`skin_mlops.modeling.ood`).

    ``output`` (``float32[N]``) is the Mahalanobis distance of a photo's pooled backbone
    features to the nearest class; above ``threshold`` the photo is unlike the training
    photos. ``heldout_pass_rate`` is the share of held-out training photos under it.
    """

    method: str = "mahalanobis-tied"
    output: TensorSpec
    threshold: float = Field(gt=0)
    pass_rate: float = Field(gt=0, lt=1)
    heldout_pass_rate: float = Field(ge=0, le=1)
    heldout_photos: int = Field(ge=1)


class Int8Spec(BaseModel):
    """The int8 twin of ``model/model.onnx`` (:mod:`skin_mlops.modeling.quantize`).

    ``model/model.int8.onnx`` has the same inputs and outputs; it exists only because it
    passed the quality gate, whose figures (on ``gate_photos`` held-out photos, int8 on
    ``engine`` against fp32 on ONNX Runtime) are kept here.
    """

    file: str = str(INT8_MODEL_FILE)
    method: str = "ort-minmax"
    engine: str = "onnxruntime"
    calibration_photos: int = Field(ge=1)
    float_nodes: int = Field(ge=0)
    gate_photos: int = Field(ge=1)
    fp32_macro_f1: float
    int8_macro_f1: float
    top1_agreement: float = Field(ge=0, le=1)
    guard_agreement: float | None = None
    fp32_ms_per_photo: float | None = None  # the gate's timing (batches of 32, one process)
    int8_ms_per_photo: float | None = None
    # "int8": full-range int8 weights (fastest; ONNX Runtime's uint8 x int8 kernels
    # saturate on x86 CPUs without VNNI), "int8-7bit" (reduce_range) or "uint8": exact on
    # every CPU. ``gated_on``: the int8 arithmetic of the CPU the gate ran on
    # (:func:`skin_mlops.runtimes.cpu_int8_arithmetic`; None: not recorded).
    weights: Literal["int8", "int8-7bit", "uint8"] = "int8"
    gated_on: Literal["exact", "saturating"] | None = None

    def safe_on(self, arithmetic: Literal["exact", "saturating"]) -> bool:
        """Whether a CPU with this int8 arithmetic computes what the gate measured.

        Only full-range int8 weights on a saturating CPU differ, unless the gate itself
        ran on such a CPU (then what it measured is what that CPU computes).
        """
        return self.weights != "int8" or arithmetic == "exact" or self.gated_on == "saturating"


class ModelSignature(BaseModel):
    """``inference/signature.json``: everything a server needs besides the weights.

    ``ood`` is absent in exports made before the guard existed (then no photo is flagged).
    """

    format_version: int = FORMAT_VERSION
    model_version: str
    run_id: str | None = None
    backbone: str
    backbone_weights_sha256: str | None = None
    image_size: int = Field(gt=0)
    preprocessing_id: str
    labels: list[str] = Field(min_length=2)
    temperature: float = Field(default=1.0, gt=0)
    input: TensorSpec
    output: TensorSpec
    input_color: str = "RGB"
    input_range: tuple[float, float] = (0.0, 255.0)
    output_kind: str = "logits"
    ood: OodSpec | None = None
    int8: Int8Spec | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / temperature)`` over the last axis.

    float64 whatever the input, numerically stable (the row maximum is subtracted before
    ``exp``), for one row ``[K]`` or a batch ``[N, K]``; each row sums to 1.
    """
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def class_index(labels: list[str]) -> dict[str, str]:
    """``{"0": label0, ...}``, the content of ``data/class_index.json``."""
    return {str(i): label for i, label in enumerate(labels)}


def write_metadata(folder: Path, signature: ModelSignature) -> None:
    """Write ``class_index.json`` and ``signature.json`` into an export folder."""
    (folder / CLASS_INDEX_FILE).parent.mkdir(parents=True, exist_ok=True)
    (folder / SIGNATURE_FILE).parent.mkdir(parents=True, exist_ok=True)
    (folder / CLASS_INDEX_FILE).write_text(
        json.dumps(class_index(signature.labels), indent=2), encoding="utf-8"
    )
    (folder / SIGNATURE_FILE).write_text(signature.model_dump_json(indent=2), encoding="utf-8")


def read_signature(folder: Path) -> ModelSignature:
    """Read and validate an export folder's metadata (signature + class index agree)."""
    missing = [str(p) for p in REQUIRED_FILES if not (folder / p).is_file()]
    if missing:
        raise DataError(f"model export {folder} is incomplete: missing {', '.join(missing)}")
    try:
        signature = ModelSignature.model_validate_json((folder / SIGNATURE_FILE).read_bytes())
        index = json.loads((folder / CLASS_INDEX_FILE).read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise DataError(f"model export {folder} has invalid metadata: {exc}") from None
    if index != class_index(signature.labels):
        raise DataError(f"model export {folder}: class_index.json disagrees with signature labels")
    return signature


def resolve_export_dir(path: Path) -> Path:
    """Resolve ``runs/skin5-current`` (a link) to the concrete version folder, once."""
    resolved = path.resolve()
    if not resolved.is_dir():
        raise DataError(f"no exported model at {path} (run `skin-mlops train` first)")
    return resolved


def new_version_dir(current_link: Path, model_version: str) -> Path:
    """A fresh, empty staging folder beside the versions: ``runs/skin5/.<version>.tmp-*``."""
    versions_root = current_link.parent / "skin5"
    versions_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{model_version}.tmp-", dir=versions_root))


def _same_files(a: Path, b: Path) -> bool:
    """Whether two folders hold the same relative files with the same bytes."""
    import filecmp

    def files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())

    names = files(a)
    return names == files(b) and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and every folder in it (deepest first) to disk."""
    folders = [folder]
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            fsync_path(path)
    for each in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_directory(each)


def _free_version_dir(versions_root: Path, model_version: str) -> Path:
    """``<version>.2``, ``<version>.3``...: the first name not taken."""
    n = 2
    while (versions_root / f"{model_version}.{n}").exists():
        n += 1
    return versions_root / f"{model_version}.{n}"


def publish(staging_dir: Path, current_link: Path, model_version: str) -> Path:
    """Validate a fully written staging folder, then atomically point ``current_link`` at it.

    Steps: check the metadata; flush every file and folder of the staging folder to disk;
    rename it to ``runs/skin5/<version>``; create a temporary symlink and ``os.replace`` it
    over ``current_link`` (atomic on POSIX); flush the folders holding the renames. A plain
    directory left at ``current_link`` by an older layout is moved aside first.

    A version folder that already exists is never deleted while the link points at it (a
    reader may hold its resolved path): the same files again are a no-op (the staging
    folder is dropped, the live folder stays); different files under the same version go
    to ``<version>.2`` (``.3``...), and the link swaps to that. A same-named folder the
    link does not point at is replaced.

    Returns:
        Path: the version folder the link now points to.
    """
    read_signature(staging_dir)
    versions_root = staging_dir.parent
    final_dir = versions_root / model_version
    live = current_link.resolve() if current_link.is_symlink() else None
    _fsync_tree(staging_dir)
    if final_dir.exists() and final_dir.resolve() == live:
        if _same_files(staging_dir, final_dir):
            shutil.rmtree(staging_dir)
            return final_dir
        final_dir = _free_version_dir(versions_root, model_version)
    elif final_dir.exists():
        aside = temporary_sibling(final_dir, ".old")
        os.replace(final_dir, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.replace(staging_dir, final_dir)
    fsync_directory(versions_root)
    current_link.parent.mkdir(parents=True, exist_ok=True)
    if current_link.exists() and not current_link.is_symlink():
        os.replace(current_link, current_link.with_name(current_link.name + ".old-dir"))
    tmp_link = temporary_sibling(current_link)
    target = os.path.relpath(final_dir, current_link.parent)
    tmp_link.symlink_to(target, target_is_directory=True)
    try:
        os.replace(tmp_link, current_link)
    except BaseException:
        tmp_link.unlink(missing_ok=True)
        raise
    fsync_directory(current_link.parent)
    return final_dir
