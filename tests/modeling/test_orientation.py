"""Canonical orientation (``--orientation canonical``): turned and mirrored inputs reach the
backbone as the same pixels, in Keras, in the ONNX export, and with the real Lite0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skin_mlops import export_format
from skin_mlops.core.errors import ConfigError
from skin_mlops.modeling import onnx_backbone
from skin_mlops.modeling.export import (
    compose_model,
    heads_model,
    load_keras_model,
    onnx_logits,
    onnx_session,
    write_export,
)
from skin_mlops.modeling.features import FeatureSpace, dihedral
from skin_mlops.modeling.options import TrainingOptions, backbone_build_options
from skin_mlops.modeling.orientation import (
    DIHEDRAL_TRANSFORMS,
    canonical_orientation_layer,
    check_orientation,
    transform_table,
)
from skin_mlops.preprocessing import PREPROCESSING_ID


def _photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Textured images with a light gradient from a random side (pixel values 0-255)."""
    rng = np.random.default_rng(seed)
    out = rng.normal(120, 30, (n, size, size, 3))
    ramp = np.linspace(-40, 40, size)
    for i in range(n):
        out[i] += dihedral(np.broadcast_to(ramp[None, :, None], (size, size, 3)), i % 8)
    return np.clip(out, 0, 255).round().astype(np.float32)


def _orbit(x: np.ndarray) -> list[np.ndarray]:
    return [np.stack([dihedral(image, k) for image in x]) for k in range(DIHEDRAL_TRANSFORMS)]


def _canonical(x: np.ndarray) -> np.ndarray:
    layer = canonical_orientation_layer()()
    return np.asarray(layer(x))


def _centroid_angle(image: np.ndarray) -> float:
    size = image.shape[0]
    luminance = image.mean(axis=-1)
    rows, cols = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2
    x = float((luminance * (cols - centre)).sum())
    y = float((luminance * (centre - rows)).sum())
    return float(np.degrees(np.arctan2(y, x)))


@pytest.mark.parametrize("size", [7, 32])
def test_the_index_table_is_the_dihedral_transform(size: int) -> None:
    x = np.random.default_rng(1).uniform(0, 255, (size, size, 3))
    table = transform_table(size)
    for k in range(DIHEDRAL_TRANSFORMS):
        np.testing.assert_array_equal(
            x.reshape(-1, 3)[table[k]].reshape(size, size, 3), dihedral(x, k)
        )


@pytest.mark.parametrize("size", [31, 32])
def test_every_transform_of_an_image_gives_the_same_pixels(size: int) -> None:
    x = _photos(6, size)
    orbit = _orbit(x)
    canonical = [_canonical(member) for member in orbit]
    for k, out in enumerate(canonical[1:], 1):
        np.testing.assert_array_equal(out, canonical[0], err_msg=f"transform {k}")
    # the output is one of the 8 transforms of the input (a permutation, not a blend) ...
    for image, out in zip(x, canonical[0], strict=True):
        assert any(np.array_equal(out, dihedral(image, k)) for k in range(8))
        # ... the one that puts the luminance centroid between 0 and 45 degrees
        assert 0.0 <= _centroid_angle(out) <= 45.0


def test_each_image_is_turned_on_its_own_in_a_batch() -> None:
    x = _photos(5, 24, seed=3)
    together = _canonical(x)
    for i in range(len(x)):
        np.testing.assert_array_equal(_canonical(x[i : i + 1])[0], together[i])


def test_a_flat_image_is_left_as_it_is() -> None:
    flat = np.full((2, 16, 16, 3), 90.0, dtype=np.float32)
    np.testing.assert_array_equal(_canonical(flat), flat)


def test_real_lite0_features_become_invariant(tmp_path: Path) -> None:
    """The real backbone with ``orientation="canonical"``: the same features for every
    transform (the plain one differs, so the check can fail)."""
    from skin_mlops.modeling.backbones import build_backbone

    x = _photos(3, 64, seed=5)
    canonical = build_backbone(
        image_size=64, pooling="multi", orientation="canonical", weights_cache_dir=tmp_path
    )
    plain = build_backbone(image_size=64, pooling="multi", weights_cache_dir=tmp_path)
    assert canonical.model.layers[1].name == "canonical_orientation"
    assert canonical.feature_dim == plain.feature_dim
    reference = [np.asarray(b.model(x, training=False)) for b in (canonical, plain)]
    plain_gap = 0.0
    for member in _orbit(x)[1:]:
        np.testing.assert_allclose(
            np.asarray(canonical.model(member, training=False)), reference[0], atol=1e-6
        )
        plain_gap = max(
            plain_gap, float(np.abs(plain.model(member, training=False) - reference[1]).max())
        )
    assert plain_gap > 1e-2
    # the same ImageNet weights: on an input already canonical, the two agree
    upright = _canonical(x)
    np.testing.assert_allclose(
        np.asarray(canonical.model(upright, training=False)),
        np.asarray(plain.model(upright, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_the_onnx_export_is_invariant_and_equals_keras(tmp_path: Path, backbone_factory) -> None:
    """Backbone (with the layer) converted to ONNX, head converted, merged, reloaded."""
    import keras

    backbone = backbone_factory(canonical=True)
    keras.utils.set_random_seed(3)
    features = keras.Input((backbone.feature_dim,))
    head = keras.Model(features, keras.layers.Dense(3, name="class_logits")(features))
    model = compose_model(backbone.model, head, 32)
    backbone_onnx = onnx_backbone.ensure_backbone_onnx(
        backbone, FeatureSpace.of(backbone, "orientation=canonical").key, tmp_path
    )
    assert backbone_onnx is not None  # converted, not the Keras fallback
    signature = export_format.ModelSignature(
        model_version="v1",
        run_id="run1",
        backbone=backbone.name,
        image_size=32,
        preprocessing_id=PREPROCESSING_ID,
        labels=["a", "b", "c"],
        temperature=1.0,
        input=export_format.TensorSpec(name="image", shape=[None, 32, 32, 3]),
        output=export_format.TensorSpec(name="logits", shape=[None, 3]),
    )
    x = _photos(4, 32, seed=9)
    result = write_export(
        model,
        signature,
        tmp_path / "export",
        x,
        backbone_onnx=backbone_onnx,
        heads=heads_model(head, backbone.feature_dim),
    )
    assert result.parity.ok
    session = onnx_session(tmp_path / "export" / export_format.ONNX_MODEL_FILE)
    logits = [onnx_logits(session, member) for member in _orbit(x)]
    for k, out in enumerate(logits[1:], 1):
        np.testing.assert_allclose(out, logits[0], atol=1e-5, err_msg=f"transform {k}")
    reloaded = load_keras_model(tmp_path / "export" / export_format.KERAS_MODEL_FILE)
    assert reloaded.get_layer("tiny_backbone").get_layer("canonical_orientation") is not None


def test_the_option_is_named_once_and_checked() -> None:
    assert backbone_build_options("multi") == (("pooling", "multi"),)  # keys unchanged
    options = TrainingOptions(backbone_options=backbone_build_options("multi", "canonical"))
    assert options.orientation == "canonical"
    assert options.backbone_options_key == "pooling=multi,orientation=canonical"
    logged = {k: str(v) for k, v in options.params().items()}  # MLflow keeps strings
    assert TrainingOptions.from_params(logged).orientation == "canonical"
    assert TrainingOptions().orientation == "none"
    with pytest.raises(ConfigError, match="unknown orientation 'upright'"):
        check_orientation("upright")
    with pytest.raises(ConfigError, match="tta-views"):
        TrainingOptions(backbone_options=backbone_build_options("multi", "canonical"), tta_views=8)
