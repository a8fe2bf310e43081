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
    from skin_mlops.modeling.stages import FrozenFeatures


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

    ``bottom`` (frozen) maps images to one flat vector per image: the activation map at
    ``cut``, followed by any pooled side taps that reach the output around the cut (the
    ``multi`` pooling's averages of stages 4 and 5); its outputs are cached like features.
    ``top`` maps that vector (shape ``map_shape``) to the pooled features and holds every
    layer that fine-tuning unfreezes (its layers are the backbone's own objects, so
    training ``top`` trains the exported model).
    """

    bottom: Backbone
    top: keras.Model
    cut: str
    map_shape: tuple[int, ...]
    #: the pooled side taps' layer names and sizes, in the cached vector's order
    taps: tuple[tuple[str, int], ...] = ()

    @property
    def cache_key(self) -> str:
        """What the cached vectors are, for the feature cache's key: the cut and the taps'
        sizes (not their names: Keras numbers unnamed layers per process)."""
        return self.cut + "".join(f"+tap{size}" for _, size in self.taps)

    @property
    def description(self) -> str:
        """The cut and its taps by name (the ``fine_tune_cut`` param)."""
        return "+".join([self.cut, *(name for name, _ in self.taps)])


def _producers(layer: Any) -> list[Any]:
    """The layers whose outputs feed ``layer`` (its first call in the graph)."""
    node = layer._inbound_nodes[0]  # noqa: SLF001 - Keras keeps a layer's graph edges here
    return [tensor._keras_history[0] for tensor in node.input_tensors]  # noqa: SLF001


def _frontier(model: keras.Model, cut: Any) -> tuple[set[str], list[Any]]:
    """The layers downstream of ``cut`` and, in graph order, every layer outside them
    whose output they consume (``cut`` first): the inputs a top sub-model needs."""
    import keras

    consumers: dict[str, list[Any]] = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            for producer in _producers(layer):
                consumers.setdefault(producer.name, []).append(layer)
    downstream: set[str] = set()
    stack = [cut]
    while stack:
        for consumer in consumers.get(stack.pop().name, []):
            if consumer.name not in downstream:
                downstream.add(consumer.name)
                stack.append(consumer)
    inputs = [cut]
    for layer in model.layers:
        if layer.name in downstream:
            inputs += [p for p in _producers(layer) if p.name not in downstream and p not in inputs]
    return downstream, inputs


def split_backbone(backbone: Backbone, fine_tune_layers: int) -> BackboneSplit:
    """Cut ``backbone`` just below its top ``fine_tune_layers`` weight-carrying layers.

    The cut is the last layer before them whose output, together with pooled side taps
    only (rank-2 vectors from below the cut, e.g. the ``multi`` pooling's stage 4/5
    averages), determines every unfrozen layer and the output: a block boundary. So with
    ``multi`` pooling, ``--fine-tune-layers 8`` on Lite0 caches block 6d's 9x9x192 map and
    the two stage averages, not the 18x18 map below stage 5.

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
    unfrozen = {layer.name for layer in weighted[-fine_tune_layers:]}
    first = model.layers.index(weighted[-fine_tune_layers])
    for candidate in reversed(model.layers[:first]):
        if isinstance(candidate, keras.layers.InputLayer):
            break
        downstream, inputs = _frontier(model, candidate)
        if not unfrozen <= downstream or any(
            len(tap.output.shape) != 2 or tap.name in unfrozen for tap in inputs[1:]
        ):
            continue  # a skip connection crosses the cut, or an unfrozen layer is below it
        shapes = [tuple(int(d) for d in layer.output.shape[1:]) for layer in inputs]
        sizes = [int(np.prod(shape)) for shape in shapes]
        flat = [keras.layers.Flatten()(layer.output) for layer in inputs]
        bottom_output = keras.layers.Concatenate()(flat) if len(flat) > 1 else flat[0]
        bottom_model = keras.Model(model.input, bottom_output, name=f"{model.name}_bottom")
        inner = keras.Model([layer.output for layer in inputs], model.output)
        vector = keras.Input((sum(sizes),), name="activation_map")
        offsets = np.cumsum([0, *sizes])
        parts = [
            keras.layers.Reshape(shape)(vector[:, int(start) : int(stop)])
            if len(shape) > 1
            else vector[:, int(start) : int(stop)]
            for shape, start, stop in zip(shapes, offsets[:-1], offsets[1:], strict=True)
        ]
        top = keras.Model(vector, inner(parts), name=f"{model.name}_top")
        bottom = BackboneType(
            name=backbone.name,
            model=bottom_model,
            weights_sha256=backbone.weights_sha256,
            image_size=backbone.image_size,
            feature_dim=sum(sizes),
        )
        taps = tuple((layer.name, size) for layer, size in zip(inputs[1:], sizes[1:], strict=True))
        return BackboneSplit(bottom, top, candidate.name, (sum(sizes),), taps)
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


def fine_tune_fold(
    split: BackboneSplit,
    pretrained_top: list[np.ndarray] | None,
    backbone: Backbone,
    heads: list[keras.Model],
    features: FrozenFeatures,
    fit_rows: np.ndarray,
    held_rows: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    options: TrainingOptions,
    progress: Progress,
) -> np.ndarray:
    """Fine-tune the backbone's top (reset to its ImageNet weights) and ``heads`` on the
    fold's cached maps; return the held-out photos' pooled features ``[N, V, D]`` through
    the fine-tuned top (every evaluation view), for the same scoring as the frozen recipe."""
    if pretrained_top is not None:
        split.top.set_weights(pretrained_top)
    evaluation_maps = features.evaluation_table.features
    fine_tune_on_maps(
        split,
        backbone.model,
        heads,
        features.train_table.features[fit_rows],
        y[fit_rows],
        evaluation_maps[held_rows, 0],
        y[held_rows],
        num_classes,
        options,
        progress,
    )
    return pool_maps(split.top, evaluation_maps[held_rows], split.map_shape)
