"""Export: one graph (backbone + head), ONNX parity, metadata, atomic publish, upload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skin_mlops import export_format
from skin_mlops.modeling.export import (
    ExportError,
    compare_logits,
    compose_model,
    keras_logits,
    load_keras_model,
    onnx_logits,
    onnx_session,
    publish_export,
    upload_export,
    write_export,
)
from skin_mlops.preprocessing import PREPROCESSING_ID

LABELS = ["a", "b", "c"]


def _head(feature_dim: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    features = keras.Input((feature_dim,))
    x = keras.layers.Dropout(0.2)(features)
    return keras.Model(features, keras.layers.Dense(len(LABELS), name="class_logits")(x))


def _signature(image_size: int, version: str = "v1", backbone: str = "tiny_test"):
    return export_format.ModelSignature(
        model_version=version,
        run_id="run123",
        backbone=backbone,
        image_size=image_size,
        preprocessing_id=PREPROCESSING_ID,
        labels=LABELS,
        temperature=1.7,
        input=export_format.TensorSpec(name="image", shape=[None, image_size, image_size, 3]),
        output=export_format.TensorSpec(name="logits", shape=[None, len(LABELS)]),
        metrics={"val_macro_f1": 0.5},
    )


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_composed_model_is_backbone_then_head(tiny_backbone) -> None:
    head = _head(tiny_backbone.feature_dim)
    model = compose_model(tiny_backbone.model, head, 32)
    images = _images(4, 32)
    expected = keras_logits(head, np.asarray(tiny_backbone.model(images, training=False)))
    np.testing.assert_allclose(keras_logits(model, images), expected, rtol=1e-5, atol=1e-5)
    assert model.input.shape[1:] == (32, 32, 3)
    assert model.output.shape[-1] == len(LABELS)


def test_write_export_then_publish_and_upload(tmp_path: Path, tiny_backbone) -> None:
    from skin_mlops.storage import LocalObjectStore

    model = compose_model(tiny_backbone.model, _head(tiny_backbone.feature_dim), 32)
    current = tmp_path / "runs" / "skin5-current"
    staging = export_format.new_version_dir(current, "v1")
    result = write_export(model, _signature(32), staging, _images(5, 32))
    assert result.parity.ok and result.parity.n_inputs == 5
    assert result.parity.max_abs_prob_diff <= 1e-4

    final = publish_export(result, current)
    assert current.is_symlink() and current.resolve() == final.resolve()
    signature = export_format.read_signature(export_format.resolve_export_dir(current))
    assert signature.input.name == "image" and signature.output.name == "logits"
    assert signature.temperature == pytest.approx(1.7)
    for relative in (export_format.KERAS_MODEL_FILE, export_format.ONNX_MODEL_FILE):
        assert (final / relative).is_file()

    # ONNX Runtime on other generated images agrees with the reloaded Keras file

    images = _images(7, 32, seed=9)
    reloaded = load_keras_model(final / export_format.KERAS_MODEL_FILE)
    parity = compare_logits(
        keras_logits(reloaded, images),
        onnx_logits(onnx_session(final / export_format.ONNX_MODEL_FILE), images),
        temperature=1.7,
    )
    assert parity.ok, parity

    store = LocalObjectStore(tmp_path / "objects")
    uri = upload_export(store, "models-registry", "run123", final)
    assert uri == "s3://models-registry/skin/models/run123/"
    assert sorted(store.list_keys("models-registry", "skin/models/run123/")) == sorted(
        f"skin/models/run123/{p}"
        for p in (
            export_format.CLASS_INDEX_FILE,
            export_format.SIGNATURE_FILE,
            export_format.KERAS_MODEL_FILE,
            export_format.ONNX_MODEL_FILE,
        )
    )


def test_parity_report_catches_disagreement() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    assert compare_logits(logits, logits + 1e-7, 1.0).ok
    shifted = logits.copy()
    shifted[1, 2] += 0.6  # top-1 flips in row 1
    report = compare_logits(logits, shifted, 1.0)
    assert not report.ok and not report.top1_identical
    small = compare_logits(logits, logits + np.array([[0, 0, 0.01], [0, 0, 0]]), 1.0)
    assert small.top1_identical and not small.ok  # 0.01 in a logit is > 1e-4 in probability


def test_failed_parity_raises_and_publishes_nothing(tmp_path: Path, tiny_backbone) -> None:
    model = compose_model(tiny_backbone.model, _head(tiny_backbone.feature_dim), 32)
    current = tmp_path / "runs" / "skin5-current"
    staging = export_format.new_version_dir(current, "v1")
    with pytest.raises(ExportError, match="disagrees with Keras"):
        write_export(model, _signature(32), staging, _images(3, 32), tolerance=-1.0)
    assert not current.exists()
    assert not (staging / export_format.SIGNATURE_FILE).exists()


def test_real_lite0_exports_with_onnx_parity(tmp_path: Path) -> None:
    """The default backbone, end to end through tf2onnx, on a few generated images."""
    from skin_mlops.modeling.backbones import build_backbone

    backbone = build_backbone(
        "efficientnet_lite0", image_size=224, weights_cache_dir=tmp_path / "weights"
    )
    assert backbone.feature_dim == 1280
    model = compose_model(backbone.model, _head(backbone.feature_dim, seed=2), 224)
    staging = export_format.new_version_dir(tmp_path / "runs" / "skin5-current", "lite0")
    result = write_export(
        model, _signature(224, backbone="efficientnet_lite0"), staging, _images(3, 224, seed=4)
    )
    assert result.parity.ok, result.parity
    assert result.parity.max_abs_logit_diff < 1e-3
    assert (staging / export_format.ONNX_MODEL_FILE).stat().st_size > 10_000_000  # weights in


def test_in_graph_dihedral_tta_is_the_mean_over_transformed_inputs(tmp_path, tiny_backbone):
    from skin_mlops.modeling.features import dihedral

    head = _head(tiny_backbone.feature_dim)
    plain = compose_model(tiny_backbone.model, head, 32)
    tta = compose_model(tiny_backbone.model, head, 32, tta_views=8)
    images = _images(3, 32, seed=5)
    expected = np.mean(
        [keras_logits(plain, np.stack([dihedral(im, k) for im in images])) for k in range(8)],
        axis=0,
    )
    np.testing.assert_allclose(keras_logits(tta, images), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(keras_logits(plain, images), expected, atol=1e-4)

    staging = export_format.new_version_dir(tmp_path / "runs" / "skin5-current", "tta")
    result = write_export(tta, _signature(32), staging, images)  # tf2onnx + ORT parity
    assert result.parity.ok and result.signature.output.name == "logits"

    reloaded = load_keras_model(staging / export_format.KERAS_MODEL_FILE)
    np.testing.assert_allclose(keras_logits(reloaded, images), expected, rtol=1e-5, atol=1e-5)


def test_head_ensemble_is_averaged_in_the_graph(tiny_backbone):
    heads = [_head(tiny_backbone.feature_dim, seed=s) for s in (0, 1)]
    for index, head in enumerate(heads):  # unique layer names, as train.build_head does
        for layer in head.layers:
            layer.name = f"{layer.name}_m{index}"
    model = compose_model(tiny_backbone.model, heads, 32)
    images = _images(4, 32, seed=3)
    features = np.asarray(tiny_backbone.model(images, training=False))
    expected = np.mean([keras_logits(h, features) for h in heads], axis=0)
    np.testing.assert_allclose(keras_logits(model, images), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(expected, keras_logits(heads[0], features), atol=1e-4)


def test_keras_outputs_trace_one_graph_per_model_for_every_batch_size() -> None:
    """Batches of any size go through one traced graph, kept while the model lives."""
    import gc
    import weakref

    import keras

    from skin_mlops.modeling import export

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    images = np.random.default_rng(0).random((37, 4, 4, 3)).astype(np.float32)
    for n in (5, 16, 37):
        logits, score = export.keras_outputs(model, images[:n], batch_size=16)
        np.testing.assert_allclose(logits, np.asarray(model(images[:n])), atol=1e-6)
        assert score is None
    assert export.inference_graph(model).experimental_get_tracing_count() == 1
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # the cache does not keep the model
