"""The frozen backbone on ONNX Runtime: converted once, checked, cached, and the export
built from it (backbone ONNX + converted head) equals the Keras model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skin_mlops import export_format
from skin_mlops.modeling import onnx_backbone
from skin_mlops.modeling.export import (
    compose_model,
    heads_model,
    keras_logits,
    onnx_logits,
    onnx_session,
    write_export,
)
from skin_mlops.modeling.features import (
    FeatureSpace,
    FeatureStore,
    ImageRef,
    extract_features,
)
from skin_mlops.preprocessing import PREPROCESSING_ID


def _images(n: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_conversion_is_cached_and_matches_keras(tmp_path: Path, tiny_backbone) -> None:
    key = FeatureSpace.of(tiny_backbone).key
    path = onnx_backbone.ensure_backbone_onnx(tiny_backbone, key, tmp_path)
    assert path is not None and path.is_file()
    assert path.parent == tmp_path / "onnx"
    first_mtime = path.stat().st_mtime_ns
    # a second call finds the file: no new conversion
    assert onnx_backbone.ensure_backbone_onnx(tiny_backbone, key, tmp_path) == path
    assert path.stat().st_mtime_ns == first_mtime
    assert not list(path.parent.glob(".backbone-*"))  # no temp file left behind
    # another feature space gets another file
    other = onnx_backbone.backbone_onnx_path(key + "|other", tmp_path)
    assert other != path

    images = _images(5, 32)
    features = onnx_backbone.onnx_feature_function(path)(images)
    expected = np.asarray(tiny_backbone.model(images, training=False))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_a_failed_conversion_falls_back_to_none(
    tmp_path: Path, tiny_backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tf2onnx

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(tf2onnx.convert, "from_keras", broken)
    key = FeatureSpace.of(tiny_backbone).key
    assert onnx_backbone.ensure_backbone_onnx(tiny_backbone, key, tmp_path) is None
    assert not list((tmp_path / "onnx").iterdir())  # nothing half-written is kept


def test_extraction_on_onnx_runtime_equals_keras(tmp_path: Path, tiny_backbone) -> None:
    import io

    from PIL import Image

    refs = []
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        data = buffer.getvalue()
        refs.append(ImageRef(f"{i:064x}", (lambda d=data: d), f"p{i}.png"))
    onnx_file = onnx_backbone.ensure_backbone_onnx(
        tiny_backbone, FeatureSpace.of(tiny_backbone).key, tmp_path / "weights"
    )
    assert onnx_file is not None
    on_ort = extract_features(
        tiny_backbone,
        refs,
        3,
        FeatureStore(tmp_path / "ort"),
        batch_size=4,
        compute=onnx_backbone.onnx_feature_function(onnx_file),
    )
    on_keras = extract_features(
        tiny_backbone, refs, 3, FeatureStore(tmp_path / "keras"), batch_size=4
    )
    assert on_ort.extracted == on_keras.extracted == 18
    np.testing.assert_allclose(on_ort.features, on_keras.features, rtol=1e-4, atol=1e-5)


def test_export_from_the_cached_backbone_equals_the_keras_model(
    tmp_path: Path, tiny_backbone
) -> None:
    import keras

    keras.utils.set_random_seed(3)
    features = keras.Input((tiny_backbone.feature_dim,))
    hidden = keras.layers.Dense(16, activation="relu")(features)
    head = keras.Model(features, keras.layers.Dense(3, name="class_logits")(hidden))
    model = compose_model(tiny_backbone.model, head, 32)
    backbone_onnx = onnx_backbone.ensure_backbone_onnx(
        tiny_backbone, FeatureSpace.of(tiny_backbone).key, tmp_path
    )
    signature = export_format.ModelSignature(
        model_version="v1",
        run_id="run1",
        backbone=tiny_backbone.name,
        image_size=32,
        preprocessing_id=PREPROCESSING_ID,
        labels=["a", "b", "c"],
        temperature=1.3,
        input=export_format.TensorSpec(name="image", shape=[None, 32, 32, 3]),
        output=export_format.TensorSpec(name="logits", shape=[None, 3]),
    )
    images = _images(6, 32, seed=7)
    result = write_export(
        model,
        signature,
        tmp_path / "export",
        images,
        backbone_onnx=backbone_onnx,
        heads=heads_model(head, tiny_backbone.feature_dim),
    )
    assert result.parity.ok and result.parity.max_abs_prob_diff <= 1e-4
    session = onnx_session(tmp_path / "export" / export_format.ONNX_MODEL_FILE)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert result.signature.output.name == "logits"
    # on other inputs than the parity check's, and at another batch size
    fresh = _images(3, 32, seed=11)
    np.testing.assert_allclose(
        onnx_logits(session, fresh), keras_logits(model, fresh), rtol=1e-4, atol=1e-5
    )


def test_a_damaged_cached_file_is_converted_again(tmp_path: Path, tiny_backbone) -> None:
    key = FeatureSpace.of(tiny_backbone).key
    path = onnx_backbone.ensure_backbone_onnx(tiny_backbone, key, tmp_path)
    assert path is not None
    path.write_bytes(path.read_bytes()[:100])  # truncated on disk
    again = onnx_backbone.ensure_backbone_onnx(tiny_backbone, key, tmp_path)
    assert again == path
    images = _images(2, 32)
    np.testing.assert_allclose(
        onnx_backbone.onnx_feature_function(again)(images),
        np.asarray(tiny_backbone.model(images, training=False)),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("name", "pooling"), [("efficientnet_lite0", "multi"), ("efficientnet_lite2", "avg+mid")]
)
def test_the_keras_free_feature_space_is_the_built_backbone_s(name: str, pooling: str) -> None:
    from skin_mlops.modeling.backbones import build_backbone
    from skin_mlops.modeling.lite import lite_space_without_keras

    built = build_backbone(name, image_size=64, pooling=pooling)
    assert lite_space_without_keras(name, pooling) == (built.weights_sha256, built.feature_dim)


def test_training_s_conversion_runs_in_a_child_process_once(tmp_path: Path, monkeypatch) -> None:
    """The child writes the file the in-process path then finds (no second conversion)."""
    import subprocess

    from skin_mlops.core.config import load_settings
    from skin_mlops.modeling.backbones import build_backbone
    from skin_mlops.modeling.options import TrainingOptions

    settings = load_settings(weights_cache_dir=tmp_path / "weights", _env_file=None)
    options = TrainingOptions(image_size=64)
    path = onnx_backbone.convert_in_child_process(options, settings)
    assert path is not None and path.is_file()

    def no_child(*args, **kwargs):
        raise AssertionError("a cached conversion must not start a child process")

    monkeypatch.setattr(subprocess, "run", no_child)
    assert onnx_backbone.convert_in_child_process(options, settings) == path
    backbone = build_backbone(image_size=64, pooling="multi", weights_cache_dir=tmp_path / "w")
    space = FeatureSpace.of(backbone, options.backbone_options_key).key
    mtime = path.stat().st_mtime_ns
    assert onnx_backbone.ensure_backbone_onnx(backbone, space, settings.weights_cache_dir) == path
    assert path.stat().st_mtime_ns == mtime  # found, not converted again
    # not a Lite backbone, or a fine-tuned recipe: nothing done here
    assert (
        onnx_backbone.convert_in_child_process(
            TrainingOptions(backbone="efficientnet_b0", backbone_options=(("pooling", "avg"),)),
            settings,
        )
        is None
    )


def test_finding_the_cached_file_does_not_load_tensorflow(tmp_path: Path) -> None:
    """The parent works out where the backbone's ONNX file goes and starts the converting
    child (stubbed here) without importing TensorFlow itself: that is the memory saved."""
    import subprocess
    import sys

    script = f"""
import subprocess, sys
from pathlib import Path
from skin_mlops.core.config import load_settings
from skin_mlops.modeling import onnx_backbone
from skin_mlops.modeling.options import TrainingOptions
settings = load_settings(weights_cache_dir=Path({str(tmp_path)!r}), _env_file=None)
started = []
def no_real_child(args, **kwargs):  # the child would import TensorFlow: not here
    started.append(args)
    return subprocess.CompletedProcess(args, 1)
subprocess.run = no_real_child
assert onnx_backbone.convert_in_child_process(TrainingOptions(image_size=64), settings) is None
assert len(started) == 1 and 'tensorflow' not in sys.modules, 'TensorFlow was imported'
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
