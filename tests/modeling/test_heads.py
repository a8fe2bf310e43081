"""The head's input pipeline: every view once per epoch, its own label, a seeded order."""

from __future__ import annotations

import numpy as np

from skin_mlops.modeling.heads import feature_dataset


def _epoch(dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(np.asarray(x), np.asarray(y)) for x, y in dataset], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_every_view_is_a_sample_once_per_epoch_with_its_photo_s_label() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(13, 3, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 13)
    x, y = _epoch(feature_dataset(features, labels, 3, 5, shuffle=True, seed=7))
    flat = features.reshape(-1, 4)
    order = [int(np.flatnonzero((flat == row).all(axis=1))[0]) for row in x]
    assert sorted(order) == list(range(39))  # each view exactly once
    assert order != list(range(39))  # shuffled
    np.testing.assert_array_equal(y.argmax(1), np.repeat(labels, 3)[order])


def test_the_order_is_the_seeded_shuffle_of_the_rows() -> None:
    """Shuffling indices gives the order shuffling the rows themselves gave (same runs)."""
    import tensorflow as tf

    features = np.arange(40 * 2 * 3, dtype=np.float32).reshape(40, 2, 3)
    labels = np.arange(40) % 4
    x, _ = _epoch(feature_dataset(features, labels, 4, 8, shuffle=True, seed=11))
    rows = tf.data.Dataset.from_tensor_slices(features.reshape(80, 3)).shuffle(80, seed=11)
    np.testing.assert_array_equal(x, np.stack([np.asarray(r) for r in rows]))
    again, _ = _epoch(feature_dataset(features, labels, 4, 8, shuffle=True, seed=11))
    np.testing.assert_array_equal(x, again)
    plain, _ = _epoch(feature_dataset(features, labels, 4, 8, shuffle=False, seed=11))
    np.testing.assert_array_equal(plain, features.reshape(80, 3))


def test_mixup_blends_each_row_with_a_partner_keeping_its_own_share_at_least_half() -> None:
    """Every mixed row lies on the segment between its own view and one other view of the
    batch, with the same weights on the features and the targets; own share >= 1/2."""
    features = np.eye(24, dtype=np.float32).reshape(12, 2, 24)  # each view its own basis
    labels = np.arange(12) % 3
    x, y = _epoch(feature_dataset(features, labels, 3, 8, shuffle=True, seed=5, mixup_alpha=0.4))
    assert x.shape == (24, 24)
    np.testing.assert_allclose(x.sum(1), 1.0, rtol=1e-6)  # convex weights of two views
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
    own = x.max(1)
    assert (own >= 0.5 - 1e-6).all()
    assert (own < 1 - 1e-3).mean() > 0.5  # most rows are really mixed
    for row, target in zip(x, y, strict=True):
        weights = np.flatnonzero(row > 1e-6)
        expected = np.zeros(3, np.float32)
        for view in weights:  # view v belongs to photo v // 2
            expected[labels[view // 2]] += row[view]
        np.testing.assert_allclose(target, expected, atol=1e-6)
    again, _ = _epoch(
        feature_dataset(features, labels, 3, 8, shuffle=True, seed=5, mixup_alpha=0.4)
    )
    np.testing.assert_array_equal(x, again)  # seeded


def test_no_mixup_leaves_one_hot_targets() -> None:
    features = np.random.default_rng(1).normal(size=(6, 2, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    x, y = _epoch(feature_dataset(features, labels, 3, 4, shuffle=False, seed=0))
    np.testing.assert_array_equal(x, features.reshape(12, 3))
    np.testing.assert_array_equal(y, np.eye(3, dtype=np.float32)[np.repeat(labels, 2)])
