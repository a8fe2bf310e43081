"""The out-of-distribution guard: its score, its threshold, and the score inside the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skin_mlops import export_format
from skin_mlops.core.errors import DataError
from skin_mlops.modeling import ood
from skin_mlops.modeling.export import (
    OOD_OUTPUT_NAME,
    compose_model,
    heads_model,
    keras_outputs,
    onnx_outputs,
    onnx_session,
    write_export,
)
from skin_mlops.preprocessing import PREPROCESSING_ID

DIM = 12
CLASSES = 3


def _clusters(n_per_class: int, views: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes with one shared, correlated covariance: ``[N, V, D]``."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(0, 1, (DIM, DIM))  # fixed correlation
    means = np.random.default_rng(7).normal(0, 4, (CLASSES, DIM))
    labels = np.repeat(np.arange(CLASSES), n_per_class)
    noise = rng.normal(0, 1, (len(labels), views, DIM)) @ mix
    return (means[labels][:, None, :] + noise).astype(np.float32), labels


def test_the_score_is_the_mahalanobis_distance_to_the_nearest_class() -> None:
    from sklearn.covariance import LedoitWolf

    features, labels = _clusters(200)
    flat = features[:, 0].astype(np.float64)
    fit = ood.fit_mahalanobis(features, labels, CLASSES)

    means = np.stack([flat[labels == k].mean(0) for k in range(CLASSES)])
    precision = np.linalg.inv(
        LedoitWolf(assume_centered=True).fit(flat - means[labels]).covariance_
    )
    probe = _clusters(5, seed=3)[0][:, 0].astype(np.float64)
    expected = np.sqrt(
        np.min([np.einsum("nd,de,ne->n", probe - m, precision, probe - m) for m in means], axis=0)
    )
    np.testing.assert_allclose(fit.scores(probe), expected, rtol=1e-4)


def test_the_chunked_fit_on_some_rows_equals_the_fit_on_their_copy(monkeypatch) -> None:
    """The guard streams float64 chunks over the rows it fits (no copy per fold)."""
    rng = np.random.default_rng(4)
    features = rng.normal(0, 1, (60, 3, 8)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 60)
    rows = np.sort(rng.choice(60, 41, replace=False))
    whole = ood.fit_mahalanobis(features[rows], labels[rows], CLASSES)
    monkeypatch.setattr(ood, "CHUNK_SAMPLES", 7)  # 2 photos of 3 views per chunk
    chunked = ood.fit_mahalanobis(features, labels, CLASSES, rows=rows)
    np.testing.assert_allclose(chunked.projection, whole.projection, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.centres, whole.centres, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [40, 500])  # fewer samples than dimensions, and more
def test_the_ledoit_wolf_covariance_is_scikit_learns(n: int) -> None:
    from sklearn.covariance import LedoitWolf

    x = np.random.default_rng(n).normal(0, 1, (n, 30)) @ np.random.default_rng(1).normal(
        0, 1, (30, 30)
    )
    reference = LedoitWolf(assume_centered=True).fit(x)

    covariance, shrinkage = ood.ledoit_wolf_covariance(x)

    assert shrinkage == pytest.approx(reference.shrinkage_, rel=1e-9)
    np.testing.assert_allclose(covariance, reference.covariance_, rtol=1e-9, atol=1e-12)


def test_the_threshold_passes_the_target_share_of_new_in_distribution_photos() -> None:
    features, labels = _clusters(300, views=3)
    guard = ood.fit_guard(features, labels, CLASSES, pass_rate=0.95, seed=1)

    assert guard.folds == 5 and guard.heldout_photos == 900
    assert guard.heldout_pass_rate == pytest.approx(0.95, abs=0.005)
    fresh, _ = _clusters(1000, seed=11)  # new photos of the same distribution
    assert np.mean(guard.in_distribution(fresh[:, 0])) == pytest.approx(0.95, abs=0.03)


def test_a_guard_fitted_with_int8_noise_keeps_its_verdicts_when_that_noise_is_added() -> None:
    """``train --int8``: the residuals' second moment joins the covariance, so adding such
    residuals to a photo's features changes fewer verdicts (and no noise changes nothing)."""
    features, labels = _clusters(300, views=2)
    rng = np.random.default_rng(3)
    # int8-like errors: large along a few directions the classes barely vary in
    directions = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0][:, :3]
    residuals = (rng.normal(0, 2.0, (200, 3)) @ directions.T).astype(np.float32)
    fresh, _ = _clusters(600, seed=12)
    noisy = fresh[:, 0] + residuals[rng.integers(0, len(residuals), len(fresh))]

    def verdicts_kept(guard: ood.OodGuard) -> float:
        return float(np.mean(guard.in_distribution(fresh[:, 0]) == guard.in_distribution(noisy)))

    plain = ood.fit_guard(features, labels, CLASSES, seed=1)
    aware = ood.fit_guard(features, labels, CLASSES, seed=1, noise=residuals)
    silent = ood.fit_guard(features, labels, CLASSES, seed=1, noise=np.zeros((5, DIM)))

    assert verdicts_kept(aware) > verdicts_kept(plain) + 0.05
    assert aware.heldout_pass_rate == pytest.approx(0.95, abs=0.01)  # still chosen on folds
    np.testing.assert_allclose(silent.fit.projection, plain.fit.projection, rtol=1e-6)
    assert silent.threshold == pytest.approx(plain.threshold, rel=1e-6)


def test_features_unlike_every_class_are_flagged() -> None:
    features, labels = _clusters(200)
    guard = ood.fit_guard(features, labels, CLASSES)
    rng = np.random.default_rng(5)
    strangers = np.concatenate(
        [
            np.zeros((10, DIM)),  # a flat, featureless input
            rng.normal(0, 30, (10, DIM)),  # far off in every direction
            features[:10, 0] + 25.0,  # a real photo's features, shifted
        ]
    ).astype(np.float32)

    assert not guard.in_distribution(strangers).any()


def test_a_class_with_one_photo_cannot_hold_any_out() -> None:
    features, labels = _clusters(10)
    keep = np.concatenate([np.flatnonzero(labels != 2), np.flatnonzero(labels == 2)[:1]])
    with pytest.raises(DataError, match="at least 2 training photos of every class"):
        ood.fit_guard(features[keep], labels[keep], CLASSES)
    with pytest.raises(DataError, match="none of \\[2\\]"):
        ood.fit_mahalanobis(features[labels != 2], labels[labels != 2], CLASSES)


def _guard_for(backbone, seed: int = 0) -> ood.OodGuard:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (60, 32, 32, 3)).astype(np.float32)
    features = np.asarray(backbone.model(images, training=False))[:, None, :]
    return ood.fit_guard(features, np.arange(60) % CLASSES, CLASSES, seed=seed)


def _head(feature_dim: int):
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input((feature_dim,))
    return keras.Model(features, keras.layers.Dense(CLASSES, name="class_logits")(features))


def _signature(guard: ood.OodGuard) -> export_format.ModelSignature:
    return export_format.ModelSignature(
        model_version="v-ood",
        backbone="tiny_test",
        image_size=32,
        preprocessing_id=PREPROCESSING_ID,
        labels=["a", "b", "c"],
        input=export_format.TensorSpec(name="image", shape=[None, 32, 32, 3]),
        output=export_format.TensorSpec(name="logits", shape=[None, CLASSES]),
        ood=export_format.OodSpec(
            output=export_format.TensorSpec(name=OOD_OUTPUT_NAME, shape=[None]),
            threshold=guard.threshold,
            pass_rate=guard.pass_rate,
            heldout_pass_rate=guard.heldout_pass_rate,
            heldout_photos=guard.heldout_photos,
        ),
    )


@pytest.mark.parametrize("tta_views", [1, 4])
def test_the_graph_scores_the_untransformed_photo_like_numpy(
    tiny_backbone, tmp_path: Path, tta_views: int
) -> None:
    guard = _guard_for(tiny_backbone)
    model = compose_model(
        tiny_backbone.model, _head(tiny_backbone.feature_dim), 32, tta_views=tta_views, guard=guard
    )
    images = np.random.default_rng(3).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    expected = guard.scores(np.asarray(tiny_backbone.model(images, training=False)))

    logits, scores = keras_outputs(model, images)
    assert logits.shape == (6, CLASSES)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)

    staging = export_format.new_version_dir(tmp_path / "runs" / "skin5-current", "v-ood")
    result = write_export(model, _signature(guard), staging, images)
    assert result.parity.ok and result.parity.max_rel_ood_diff is not None
    session = onnx_session(staging / export_format.ONNX_MODEL_FILE)
    assert [o.name for o in session.get_outputs()] == ["logits", OOD_OUTPUT_NAME]
    np.testing.assert_allclose(onnx_outputs(session, images)[OOD_OUTPUT_NAME], expected, rtol=1e-3)
    written = export_format.read_signature(staging)
    assert written.ood is not None and written.ood.threshold == pytest.approx(guard.threshold)


def test_the_head_only_onnx_path_carries_the_score_too(tiny_backbone, tmp_path: Path) -> None:
    """Training converts only the head and merges it with the cached backbone ONNX."""
    from skin_mlops.modeling.export import convert_to_onnx

    guard = _guard_for(tiny_backbone, seed=1)
    head = _head(tiny_backbone.feature_dim)
    backbone_onnx = convert_to_onnx(tiny_backbone.model, tmp_path / "backbone.onnx", 32)
    model = compose_model(tiny_backbone.model, head, 32, guard=guard)
    images = np.random.default_rng(4).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)

    staging = export_format.new_version_dir(tmp_path / "runs" / "skin5-current", "v-ood")
    result = write_export(
        model,
        _signature(guard),
        staging,
        images,
        backbone_onnx=backbone_onnx,
        heads=heads_model(head, tiny_backbone.feature_dim, guard),
    )

    assert result.parity.ok, result.parity
    outputs = onnx_outputs(onnx_session(staging / export_format.ONNX_MODEL_FILE), images)
    assert list(outputs) == ["logits", OOD_OUTPUT_NAME]
    np.testing.assert_allclose(
        outputs[OOD_OUTPUT_NAME],
        guard.scores(np.asarray(tiny_backbone.model(images, training=False))),
        rtol=1e-3,
    )


def test_a_graph_without_the_score_its_signature_promises_is_not_exported(
    tiny_backbone, tmp_path: Path
) -> None:
    from skin_mlops.modeling.export import ExportError

    guard = _guard_for(tiny_backbone)
    model = compose_model(tiny_backbone.model, _head(tiny_backbone.feature_dim), 32)  # no guard
    images = np.random.default_rng(3).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    staging = export_format.new_version_dir(tmp_path / "runs" / "skin5-current", "v-ood")

    with pytest.raises(ExportError, match="outputs are \\['logits'\\], expected"):
        write_export(model, _signature(guard), staging, images)
