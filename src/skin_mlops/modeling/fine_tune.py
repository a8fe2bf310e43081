"""Optional fine-tuning of the backbone's top on cached activation maps.

The backbone is cut below its top ``fine_tune_layers`` weight-carrying layers
(:func:`split_backbone`); the frozen bottom's activation maps are cached like features,
and :func:`fine_tune_on_maps` trains the top (BatchNorm kept frozen) with the heads at a
lower learning rate, so an epoch only runs the top on 2 cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.progress import (
    Progress,
)

from skin_mlops.core.errors import ConfigError
from skin_mlops.modeling.heads import (
    class_weights,
    compile_model,
    epoch_callback,
    history_of,
    total_steps,
)

if TYPE_CHECKING:
    import keras

    from skin_mlops.modeling.backbones import Backbone
    from skin_mlops.modeling.options import TrainingOptions


def render_images(
    refs: Sequence[Any], views: Sequence[str], size: int, progress: Progress, description: str
) -> np.ndarray:
    """uint8 pixel arrays ``[N * len(views), S, S, 3]`` (image-major) of cached views."""
    from skin_mlops.modeling.features import render_views

    out = np.empty((len(refs) * len(views), size, size, 3), dtype=np.uint8)
    task = progress.add_task(description, total=len(refs))
    for i, ref in enumerate(refs):
        for j, array in enumerate(render_views(ref.load(), ref.sha256, views, size)):
            out[i * len(views) + j] = array.astype(np.uint8)
        progress.advance(task)
    return out


@dataclass(frozen=True)
class BackboneSplit:
    """A backbone cut in two at a block boundary, for cached fine-tuning.

    ``bottom`` (frozen) maps images to the activation map at ``cut``; its outputs are
    cached like features. ``top`` maps that activation to the pooled features and holds
    every layer that fine-tuning unfreezes (its layers are the backbone's own objects, so
    training ``top`` trains the exported model).
    """

    bottom: Backbone
    top: keras.Model
    cut: str
    map_shape: tuple[int, ...]


def split_backbone(backbone: Backbone, fine_tune_layers: int) -> BackboneSplit:
    """Cut ``backbone`` just below its top ``fine_tune_layers`` weight-carrying layers.

    The cut is the last layer before them whose output alone determines the rest of the
    graph (a block boundary); found by trying to build the top sub-model from it.

    Raises:
        ConfigError: ``fine_tune_layers`` exceeds the backbone, or no cut exists.
    """
    import keras

    from skin_mlops.modeling.backbones import Backbone as BackboneType

    model = backbone.model
    weighted = [layer for layer in model.layers if layer.weights]
    if not 1 <= fine_tune_layers <= len(weighted):
        raise ConfigError(
            f"--fine-tune-layers must be between 1 and {len(weighted)} for {backbone.name} "
            f"(got {fine_tune_layers})"
        )
    first = model.layers.index(weighted[-fine_tune_layers])
    for candidate in reversed(model.layers[:first]):
        if isinstance(candidate, keras.layers.InputLayer):
            break
        try:
            top = keras.Model(candidate.output, model.output, name=f"{model.name}_top")
        except Exception:  # noqa: BLE001 - not a separating cut (a skip connection crosses)
            continue
        map_shape = tuple(int(d) for d in candidate.output.shape[1:])
        bottom_model = keras.Model(model.input, candidate.output, name=f"{model.name}_bottom")
        bottom = BackboneType(
            name=backbone.name,
            model=bottom_model,
            weights_sha256=backbone.weights_sha256,
            image_size=backbone.image_size,
            feature_dim=int(np.prod(map_shape)),
        )
        return BackboneSplit(bottom, top, candidate.name, map_shape)
    raise ConfigError(f"no block boundary below the top {fine_tune_layers} layers to cut at")


def pool_maps(top: keras.Model, maps: np.ndarray, map_shape: tuple[int, ...]) -> np.ndarray:
    """Pooled features ``[N, V, D]`` of cached activation maps ``[N, V, prod(map)]``."""
    n, views, _ = maps.shape
    flat = maps.reshape(n * views, *map_shape)
    out = [np.asarray(top(flat[i : i + 256], training=False)) for i in range(0, len(flat), 256)]
    return np.concatenate(out).reshape(n, views, -1)


def fine_tune_on_maps(
    split: BackboneSplit,
    backbone_model: keras.Model,
    heads: Sequence[keras.Model],
    train_maps: np.ndarray,
    train_labels: np.ndarray,
    val_maps: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    options: TrainingOptions,
    progress: Progress,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train the unfrozen top of the backbone and the heads on cached activation maps.

    Same maths as fine-tuning through the images (the frozen bottom's output is what is
    cached), without recomputing the bottom every epoch. BatchNorm stays frozen.

    Returns:
        The fine-tuning model (activation map -> logits) and its per-epoch history.
    """
    import keras
    import tensorflow as tf

    from skin_mlops.modeling.backbones import unfreeze_top_layers
    from skin_mlops.modeling.export import apply_heads

    unfrozen = unfreeze_top_layers(backbone_model, options.fine_tune_layers)
    if unfrozen == 0:
        raise ConfigError(f"--fine-tune-layers {options.fine_tune_layers} unfreezes nothing")
    maps = keras.Input(split.map_shape, name="activation_map")
    model = keras.Model(maps, apply_heads(split.top(maps), heads), name="fine_tune")
    n, views, _ = train_maps.shape
    compile_model(
        model,
        options.fine_tune_learning_rate,
        options,
        total_steps(n * views, options.batch_size, options.fine_tune_epochs),
        steps_per_execution=4,
    )
    one_hot = np.eye(num_classes, dtype=np.float32)
    train = (
        tf.data.Dataset.from_tensor_slices(
            (
                train_maps.reshape(n * views, *split.map_shape),
                one_hot[np.repeat(train_labels, views)],
            )
        )
        .shuffle(n * views, seed=options.seed, reshuffle_each_iteration=True)
        .batch(options.batch_size)
        .prefetch(2)
    )
    val = tf.data.Dataset.from_tensor_slices(
        (val_maps.reshape(len(val_maps), *split.map_shape), one_hot[val_labels])
    ).batch(256)
    task = progress.add_task("fine-tune epochs", total=options.fine_tune_epochs)
    fit = model.fit(
        train,
        validation_data=val,
        epochs=options.fine_tune_epochs,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        class_weight=class_weights(np.repeat(train_labels, views), num_classes),
        callbacks=[epoch_callback(progress, task, "fine-tune", prefix="finetune_epoch_")],
        verbose=0,
    )
    backbone_model.trainable = False
    return model, {f"finetune_{k}": v for k, v in history_of(fit.history).items()}


# --- the stage ------------------------------------------------------------------------------
