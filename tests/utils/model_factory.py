"""Tiny exported models for the API tests (TensorFlow is fine here; the server never imports it).

:func:`build_tiny_model` makes a small Keras classifier that honours the platform's model
contract (``float32[N, S, S, 3]`` RGB in ``[0, 255]`` -> 5 logits) and is deliberately easy
to reason about:

* a *colour* branch (global mean of R, G, B -> fixed weights) makes the top-1 label a
  known function of the dominant colour: red -> ``red``, green -> ``green``,
  blue -> ``blue``, white -> ``white``, black -> ``black``;
* a small *spatial* branch (conv + 4x4 pooling + dense, seeded random weights) makes the
  probabilities depend on where things are, so a rotation changes them (this is what lets
  the EXIF test fail when orientation is ignored).

:func:`publish_tiny_export` converts it with ``tf2onnx.convert.from_keras`` and publishes
it with :mod:`skin_mlops.export_format` exactly like training does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skin_mlops import export_format
from skin_mlops.preprocessing import PREPROCESSING_ID

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ["red", "green", "blue", "white", "black"]
IMAGE_SIZE = 32
INPUT_NAME = "image"
TEMPERATURE = 1.5

# rows: mean R, G, B in [0, 1]; columns: the LABELS. Red -> (1,0,0) gives red=+6, others <= 0.
_COLOUR_WEIGHTS = np.array(
    [
        [6.0, -6.0, -6.0, 3.0, -4.0],
        [-6.0, 6.0, -6.0, 3.0, -4.0],
        [-6.0, -6.0, 6.0, 3.0, -4.0],
    ],
    dtype=np.float32,
)
_COLOUR_BIAS = np.array([0.0, 0.0, 0.0, -6.5, 3.0], dtype=np.float32)


@dataclass(frozen=True)
class TinyModel:
    """A built tiny model: the Keras object and its ONNX bytes + tensor names."""

    keras_model: object
    onnx_bytes: bytes
    input_name: str
    output_name: str
    seed: int

    def probabilities(self, batch: np.ndarray, temperature: float = TEMPERATURE) -> np.ndarray:
        """Calibrated probabilities computed with Keras (the reference for parity)."""
        logits = np.asarray(self.keras_model(batch, training=False), dtype=np.float64)
        scaled = logits / temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        exp = np.exp(scaled)
        return exp / exp.sum(axis=1, keepdims=True)


def build_tiny_model(seed: int = 1, image_size: int = IMAGE_SIZE, n_outputs: int = 5) -> TinyModel:
    """Build the tiny Keras model and convert it to ONNX (``tf2onnx.convert.from_keras``)."""
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    scaled = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    colour = keras.layers.GlobalAveragePooling2D()(scaled)
    colour_logits = keras.layers.Dense(n_outputs, name="colour_head")(colour)
    spatial = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(scaled)
    spatial = keras.layers.AveragePooling2D(pool_size=image_size // 8)(spatial)
    spatial = keras.layers.Flatten()(spatial)
    spatial_logits = keras.layers.Dense(n_outputs, name="spatial_head")(spatial)
    logits = keras.layers.Add(name="logits")([colour_logits, spatial_logits])
    model = keras.Model(inputs, logits)
    if n_outputs == len(LABELS):
        model.get_layer("colour_head").set_weights([_COLOUR_WEIGHTS, _COLOUR_BIAS])
    spatial_head = model.get_layer("spatial_head")
    kernel, bias = spatial_head.get_weights()
    spatial_head.set_weights([kernel * 0.5, bias * 0.0])

    spec = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    onnx.checker.check_model(proto)
    return TinyModel(
        keras_model=model,
        onnx_bytes=proto.SerializeToString(),
        input_name=proto.graph.input[0].name,
        output_name=proto.graph.output[0].name,
        seed=seed,
    )


def signature_for(
    model: TinyModel, version: str, **overrides: object
) -> export_format.ModelSignature:
    """The ``signature.json`` content for ``model`` published as ``version``."""
    fields: dict[str, object] = {
        "model_version": version,
        "run_id": f"run-{version}",
        "backbone": "tiny-test-net",
        "image_size": IMAGE_SIZE,
        "preprocessing_id": PREPROCESSING_ID,
        "labels": LABELS,
        "temperature": TEMPERATURE,
        "input": export_format.TensorSpec(
            name=model.input_name, shape=[None, IMAGE_SIZE, IMAGE_SIZE, 3]
        ),
        "output": export_format.TensorSpec(name=model.output_name, shape=[None, len(LABELS)]),
        "metrics": {
            "val_accuracy": 0.9,
            "val_macro_f1": 0.88,
            **{f"train_share_{label}": 0.2 for label in LABELS},
        },
    }
    fields.update(overrides)
    return export_format.ModelSignature.model_validate(fields)


def publish_tiny_export(
    current_link: Path,
    model: TinyModel,
    version: str,
    *,
    onnx_bytes: bytes | None = None,
    **signature_overrides: object,
) -> Path:
    """Write ``model`` as an export folder and atomically point ``current_link`` at it.

    ``onnx_bytes`` replaces the model file (e.g. garbage, to publish a broken model).
    """
    staging = export_format.new_version_dir(current_link, version)
    (staging / export_format.ONNX_MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
    (staging / export_format.ONNX_MODEL_FILE).write_bytes(
        model.onnx_bytes if onnx_bytes is None else onnx_bytes
    )
    export_format.write_metadata(staging, signature_for(model, version, **signature_overrides))
    return export_format.publish(staging, current_link, version)


@dataclass(frozen=True)
class TinyModels:
    """The session's models: two good versions and one with the wrong number of outputs."""

    v1: TinyModel
    v2: TinyModel
    three_outputs: TinyModel


def build_tiny_models() -> TinyModels:
    """The three models of the API tests (built once per session: ``tiny_models``)."""
    return TinyModels(
        v1=build_tiny_model(seed=1),
        v2=build_tiny_model(seed=2),
        three_outputs=build_tiny_model(seed=3, n_outputs=3),
    )


@dataclass(frozen=True)
class GuardedTinyModel:
    """The tiny model with the out-of-distribution guard as a second output.

    The guard (the real :class:`skin_mlops.modeling.ood.MahalanobisScore` layer) is fitted
    on the mean colour of noisy photos of the five label colours, so a photo of one of
    them passes and a mid-grey or mixed-colour one does not.
    """

    model: TinyModel
    ood_output_name: str
    threshold: float

    def signature_overrides(self) -> dict[str, object]:
        """``ood`` for :func:`publish_tiny_export`."""
        return {
            "ood": export_format.OodSpec(
                output=export_format.TensorSpec(name=self.ood_output_name, shape=[None]),
                threshold=self.threshold,
                pass_rate=0.95,
                heldout_pass_rate=0.95,
                heldout_photos=100,
            )
        }


def build_guarded_tiny_model(seed: int = 1) -> GuardedTinyModel:
    """:func:`build_tiny_model` + ``ood_score`` (guard on the mean colour), via tf2onnx."""
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    from skin_mlops.modeling import ood
    from utils.images import COLOURS

    base = build_tiny_model(seed=seed).keras_model
    rng = np.random.default_rng(seed)
    colours = np.array(list(COLOURS.values()), np.float32) / 255.0
    labels = np.repeat(np.arange(len(colours)), 20)
    features = colours[labels] + rng.normal(0, 0.06, (len(labels), 3)).astype(np.float32)
    guard = ood.fit_guard(features[:, None, :], labels, len(colours), seed=seed)

    inputs = base.input
    mean_colour = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
    model = keras.Model(inputs, [base.output, ood.score_layer(guard)(mean_colour)])
    spec = (tf.TensorSpec((None, IMAGE_SIZE, IMAGE_SIZE, 3), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    onnx.checker.check_model(proto)
    tiny = TinyModel(
        keras_model=model,
        onnx_bytes=proto.SerializeToString(),
        input_name=proto.graph.input[0].name,
        output_name=proto.graph.output[0].name,
        seed=seed,
    )
    return GuardedTinyModel(tiny, proto.graph.output[1].name, guard.threshold)
