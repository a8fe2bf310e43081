"""The frozen backbone as an ONNX model: faster feature extraction, faster export.

The backbone never changes for a given feature space (name, options, weights, image size),
so it is converted to ONNX **once** (:func:`skin_mlops.modeling.export.convert_to_onnx`,
``tf2onnx``) and cached under
``<weights_cache_dir>/onnx/``, keyed by the feature space and the converter's version.
Two things use the cached file:

* **feature extraction** runs it on ONNX Runtime instead of TensorFlow: measured here on
  Lite0 at 288 px with pooling ``multi``, batch 32, 2 cores: 8.8 ms per image vs
  18.7 ms in a compiled ``tf.function``; the vectors agree with Keras to ~1e-5
  (float32 round-off), which is why the cache key does not name the engine;
* **export** (:func:`skin_mlops.modeling.export.write_export`) appends the converted head
  to it (``onnx.compose``) instead of converting backbone + head again.

A conversion is accepted only if ONNX Runtime reproduces the Keras backbone on seeded
random inputs (max |difference| <= ``1e-4 * max|feature| + 1e-5``); otherwise, or when
the converter fails, the caller gets ``None`` and falls back to Keras - slower, never
wrong. Files are written to a temporary name and renamed, so a reader never sees half
a model; a cached file ONNX Runtime cannot load (damaged on disk) is converted again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from skin_mlops.core.files import atomic_path
from skin_mlops.modeling.export import ExportError, convert_to_onnx, onnx_session

if TYPE_CHECKING:
    from skin_mlops.core.config import Settings
    from skin_mlops.modeling.backbones import Backbone
    from skin_mlops.modeling.options import TrainingOptions

log = logging.getLogger(__name__)

CHECK_IMAGES = 2
RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_TOLERANCE = 1e-5


def converter_version() -> str:
    """tf2onnx and onnx versions (a different converter may write a different graph).

    Read from the installed distributions' metadata: importing ``tf2onnx`` imports
    TensorFlow, which :func:`convert_in_child_process` must not do in the parent.
    """
    from importlib.metadata import version

    return f"tf2onnx-{version('tf2onnx')}+onnx-{version('onnx')}"


def backbone_onnx_path(space_key: str, cache_dir: Path) -> Path:
    """Where the ONNX file of a feature space lives (``<cache_dir>/onnx/<digest>.onnx``)."""
    digest = hashlib.sha256(f"{space_key}|{converter_version()}".encode()).hexdigest()[:24]
    return Path(cache_dir) / "onnx" / f"backbone-{digest}.onnx"


def _max_gap(backbone: Backbone, path: Path) -> tuple[float, float]:
    """(max |ONNX - Keras|, the allowed bound) on seeded random images."""
    rng = np.random.default_rng(20261127)
    size = backbone.image_size
    images = rng.uniform(0, 255, (CHECK_IMAGES, size, size, 3)).astype(np.float32)
    reference = np.asarray(backbone.model(images, training=False), dtype=np.float32)
    candidate = onnx_feature_function(path)(images)
    bound = RELATIVE_TOLERANCE * float(np.max(np.abs(reference))) + ABSOLUTE_TOLERANCE
    if candidate.shape != reference.shape:
        return float("inf"), bound
    return float(np.max(np.abs(candidate - reference))), bound


def ensure_backbone_onnx(backbone: Backbone, space_key: str, cache_dir: Path) -> Path | None:
    """The cached ONNX file of ``backbone`` (converted and checked on first use).

    Args:
        backbone (Backbone): the built Keras backbone.
        space_key (str): :attr:`skin_mlops.modeling.features.FeatureSpace.key` of the
            backbone with its options (names the cache entry).
        cache_dir (Path): ``settings.weights_cache_dir``.

    Returns:
        Path | None: the ONNX file, or ``None`` when it cannot be converted faithfully
        (the reason is logged; callers fall back to the Keras backbone).
    """
    path = backbone_onnx_path(space_key, cache_dir)
    if path.is_file():
        try:
            onnx_session(path)
            return path
        except Exception as exc:  # noqa: BLE001 - ORT has its own error types for bad files
            log.warning("cached backbone ONNX %s is unreadable (%s): converting again", path, exc)
            path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Published only once it agrees with Keras; a failed check removes the temporary file.
        with atomic_path(path, suffix=".onnx") as tmp:
            convert_to_onnx(backbone.model, tmp, backbone.image_size)
            gap, bound = _max_gap(backbone, tmp)
            if gap > bound:
                raise ExportError(
                    f"its ONNX conversion disagrees with Keras (max |diff| {gap:.2e} > {bound:.2e})"
                )
    except ExportError as exc:
        log.warning("backbone %s: %s; extracting features with Keras", backbone.name, exc)
        return None
    return path


def convert_in_child_process(options: TrainingOptions, settings: Settings) -> Path | None:
    """Convert the recipe's backbone to its cached ONNX file in a separate process.

    ``tf2onnx`` holds about 1 GB while it converts, and a process keeps its high-water
    mark: converted inside training, that gigabyte is added to everything training holds
    afterwards. Called before training imports TensorFlow, a child process builds the
    backbone, converts it and checks it against Keras (:func:`ensure_backbone_onnx`), then
    exits and returns its memory; training finds the file in the cache.

    Only for the EfficientNet-Lite backbones (their feature space is known without Keras,
    :func:`~skin_mlops.modeling.lite.lite_space_without_keras`) and only when the
    file is missing; otherwise, or if the child fails, nothing happens here and
    :func:`ensure_backbone_onnx` converts in the process as before.

    Returns:
        Path | None: the cached file when it exists now, else None.
    """
    import json
    import subprocess
    import sys

    from skin_mlops import preprocessing
    from skin_mlops.modeling.features import FeatureSpace
    from skin_mlops.modeling.lite import LITE_VARIANTS, lite_space_without_keras

    pooling = dict(options.backbone_options).get("pooling", "avg")
    if options.backbone not in LITE_VARIANTS or options.fine_tune_layers:
        return None
    weights_sha, feature_dim = lite_space_without_keras(options.backbone, pooling)
    space = FeatureSpace(
        options.backbone,
        options.backbone_options_key,
        weights_sha,
        feature_dim,
        preprocessing.PREPROCESSING_ID,
        options.image_size,
    )
    path = backbone_onnx_path(space.key, settings.weights_cache_dir)
    if path.is_file():
        return path
    request = {
        "backbone": options.backbone,
        "image_size": options.image_size,
        "pooling": pooling,
        "orientation": options.orientation,
        "weights_cache_dir": str(settings.weights_cache_dir),
        "backbone_options": options.backbone_options_key,
        "space_key": space.key,
    }
    done = subprocess.run(
        [sys.executable, "-m", __name__, json.dumps(request)], check=False, timeout=1800
    )
    if done.returncode != 0 or not path.is_file():
        log.warning("backbone ONNX conversion in a child process failed: converting in-process")
        return None
    return path


def _child_main(request: dict[str, object]) -> int:
    from skin_mlops.modeling.backbones import build_backbone
    from skin_mlops.modeling.features import FeatureSpace

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    backbone = build_backbone(  # a Lite backbone (the only ones converted here)
        str(request["backbone"]),
        image_size=int(str(request["image_size"])),
        weights_cache_dir=Path(str(request["weights_cache_dir"])),
        pooling=str(request["pooling"]),
        orientation=str(request.get("orientation", "none")),
    )
    key = FeatureSpace.of(backbone, str(request["backbone_options"])).key
    if key != request["space_key"]:  # the parent's Keras-free key is out of date
        log.error("feature space %s is not the parent's %s", key, request["space_key"])
        return 3
    path = ensure_backbone_onnx(backbone, key, Path(str(request["weights_cache_dir"])))
    return 0 if path is not None else 2


def onnx_feature_function(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """``float32[B, S, S, 3] -> float32[B, D]`` on ONNX Runtime (any batch size)."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name

    def features(batch: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(batch, dtype=np.float32)
        return session.run(None, {name: pixels})[0]

    return features


if __name__ == "__main__":
    import json
    import sys

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sys.exit(_child_main(json.loads(sys.argv[1])))
