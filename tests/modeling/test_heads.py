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
