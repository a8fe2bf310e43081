"""The out-of-distribution guard: is this photo like the ones the model was trained on?

A classifier gives every input one of its labels, a photo of a page of text included. The
guard measures how far a photo's pooled backbone features lie from the training photos'
and flags the ones that are further than almost every real photo of the training set.

**Score** (Lee et al., 2018, "A simple unified framework for detecting out-of-distribution
samples"): the Mahalanobis distance from the features ``x`` to the nearest class mean,
under one covariance shared by the classes,

    d(x) = min_k sqrt((x - mu_k)^T S^-1 (x - mu_k))

with ``S`` the Ledoit-Wolf shrunk covariance of the training features around their class
means (1,664 dimensions from a few thousand views: the plain estimate is singular).
``S^-1 = W W^T`` (``W`` from the Cholesky factor) is folded into a projection, so the
score is one matrix product and a difference: ``z = x W``, ``d = min_k ||z - mu_k W||``.
``benchmarks/ood_guard.py`` compares it with the distance to the k-th nearest training
photo on the same photos.

**Threshold**: chosen on held-out folds of the training photos. The guard is fitted on
four fifths of them (all their cached views) and scores the held-out fifth's centre view,
for each of 5 stratified folds; the threshold is the ``pass_rate`` (95 %) quantile of
those held-out scores, so about 95 % of new real photos pass. The guard that ships is then
fitted on every training photo.

**Where it runs**: inside the exported graph (:class:`MahalanobisScore`, a second output
``ood_score`` next to ``logits``, from the first view's pooled features), so ONNX Runtime
computes it with the model; the threshold and the held-out figures travel in
``signature.json`` (:class:`skin_mlops.export_format.OodSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from skin_mlops.core.errors import DataError

if TYPE_CHECKING:
    import keras

METHOD = "mahalanobis-tied"
OUTPUT_NAME = "ood_score"
DEFAULT_PASS_RATE = 0.95
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class MahalanobisFit:
    """``W`` (``S^-1 = W W^T``) and the class means projected by it (``mu_k W``)."""

    projection: np.ndarray  # float32[D, D]
    centres: np.ndarray  # float32[K, D]

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``float32[N]``: the distance of each row of ``features`` to the nearest class."""
        z = np.asarray(features, np.float32) @ self.projection
        # differences, not ||z||^2 - 2 z.c + ||c||^2: no cancellation in float32
        squared = np.sum((z[:, None, :] - self.centres[None, :, :]) ** 2, axis=-1)
        return np.sqrt(squared.min(axis=1)).astype(np.float32)


@dataclass(frozen=True)
class OodGuard:
    """A fitted guard and how it was chosen.

    Attributes:
        fit (MahalanobisFit): the score, fitted on every training photo.
        threshold (float): scores above it are out of distribution.
        pass_rate (float): the target share of in-distribution photos that pass.
        heldout_pass_rate (float): the share of held-out training photos under the
            threshold (the target, up to the quantile's granularity).
        heldout_photos (int): how many held-out photos the threshold came from.
        folds (int): folds used to choose the threshold.
    """

    fit: MahalanobisFit
    threshold: float
    pass_rate: float
    heldout_pass_rate: float
    heldout_photos: int
    folds: int

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Scores of ``float32[N, D]`` features (as the exported graph computes them)."""
        return self.fit.scores(features)

    def in_distribution(self, features: np.ndarray) -> np.ndarray:
        """``bool[N]``: the score is at most the threshold."""
        return self.scores(features) <= self.threshold


def _ledoit_wolf(sample: np.ndarray, beta_sum: float, n: int) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf from the sample covariance ``S = X^T X / n`` and ``sum_i ||x_i||^4``."""
    d = sample.shape[0]
    mu = float(np.trace(sample)) / d
    delta_sum = float(np.sum(sample**2))  # = sum((X.T @ X)**2) / N**2
    beta = (beta_sum / n - delta_sum) / (d * n)
    delta = (delta_sum - 2.0 * mu * float(np.trace(sample)) + d * mu**2) / d
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    covariance = (1.0 - shrinkage) * sample
    covariance.flat[:: d + 1] += shrinkage * mu
    return covariance, shrinkage


def ledoit_wolf_covariance(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """``(covariance, shrinkage)`` of ``centred`` samples ``[N, D]``: Ledoit-Wolf, exactly
    as ``sklearn.covariance.LedoitWolf(assume_centered=True)`` computes it.

    scikit-learn sums the entries of ``(X**2).T @ (X**2)`` block by block for the
    shrinkage: that is ``sum_i ||x_i||^4``, an O(N D) sum, and the other term is
    ``||S||_F^2`` of the sample covariance ``S`` already computed. Same numbers (a test
    holds them to scikit-learn's), one D x D product instead of two: 3.7 s -> 0.6 s at
    8,244 x 1,664 here.
    """
    n = centred.shape[0]
    squared_norms = np.einsum("ij,ij->i", centred, centred)
    return _ledoit_wolf(centred.T @ centred / n, float(np.sum(squared_norms**2)), n)


CHUNK_SAMPLES = 4096  # feature vectors (photos x views) in float64 at a time: ~54 MB at 1664


def _chunks(rows: np.ndarray, views: int) -> list[np.ndarray]:
    step = max(1, CHUNK_SAMPLES // views)
    return [rows[i : i + step] for i in range(0, len(rows), step)]


def fit_mahalanobis(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    rows: np.ndarray | None = None,
    noise: np.ndarray | None = None,
) -> MahalanobisFit:
    """Class means and the shared (Ledoit-Wolf shrunk) covariance of ``features``.

    ``noise`` ``[R, D]`` (int8 feature residuals, ``train --int8``): their second moment is
    added to the covariance, the covariance of ``features + noise`` when the noise is
    independent of them, so that the distance moves little when the int8 backbone's
    errors are added to a photo's features.

    The projection is ``W = L^-T`` for the Cholesky factor ``S = L L^T`` (so ``W W^T =
    S^-1``): a triangular solve, not an eigendecomposition. The sums are accumulated in
    float64 over chunks of :data:`CHUNK_SAMPLES` feature vectors, so memory does not grow with the
    photo count beyond the features themselves (no float64 or per-fold copy of them).

    Args:
        features (np.ndarray): ``[N, D]`` or ``[N, V, D]`` (every view of a photo counts,
            with the photo's label).
        labels (np.ndarray): ``int[N]`` class index per photo.
        num_classes (int): ``K``; every class needs at least one photo.
        rows (np.ndarray | None): the photos to fit on (default: all).
    """
    from scipy.linalg import cholesky, solve_triangular

    labels = np.asarray(labels)
    if features.ndim not in (2, 3) or len(features) != len(labels):
        raise DataError(f"features of shape {features.shape} do not match {len(labels)} labels")
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
    views, dim = (features.shape[1] if features.ndim == 3 else 1), features.shape[-1]

    def block(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(features[chunk], np.float64).reshape(-1, dim)
        return x, np.repeat(labels[chunk], views)

    sums, counts = np.zeros((num_classes, dim)), np.zeros(num_classes)
    for chunk in _chunks(rows, views):
        x, y = block(chunk)
        np.add.at(sums, y, x)
        counts += np.bincount(y, minlength=num_classes)
    missing = [k for k in range(num_classes) if counts[k] == 0]
    if missing:
        raise DataError(f"the OOD guard needs photos of every class (none of {missing})")
    means = sums / counts[:, None]
    scatter, beta_sum = np.zeros((dim, dim)), 0.0
    for chunk in _chunks(rows, views):
        x, y = block(chunk)
        x -= means[y]
        scatter += x.T @ x
        beta_sum += float(np.sum(np.einsum("ij,ij->i", x, x) ** 2))
    n = int(counts.sum())
    covariance, _ = _ledoit_wolf(scatter / n, beta_sum, n)
    if noise is not None:
        residuals = np.asarray(noise, np.float64).reshape(-1, dim)
        covariance += residuals.T @ residuals / len(residuals)
    # a floor under the diagonal keeps a degenerate (e.g. constant) feature invertible
    covariance.flat[:: covariance.shape[0] + 1] += max(np.trace(covariance), 1e-12) * 1e-9
    lower = cholesky(covariance, lower=True)
    projection = solve_triangular(lower, np.eye(len(lower)), lower=True).T  # W W^T = S^-1
    return MahalanobisFit(
        projection=projection.astype(np.float32), centres=(means @ projection).astype(np.float32)
    )


def fit_guard(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    pass_rate: float = DEFAULT_PASS_RATE,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    noise: np.ndarray | None = None,
) -> OodGuard:
    """Fit the guard on the training photos and choose its threshold on held-out folds.

    ``noise``: int8 feature residuals, for a guard whose verdicts the int8 model keeps
    (:func:`fit_mahalanobis`); the threshold is chosen with the same covariance.

    Args:
        features (np.ndarray): ``float32[N, V, D]`` pooled features of ``V`` views per
            photo; view 0 is the centre view (what serving sees).
        labels (np.ndarray): ``int[N]``.
        num_classes (int): ``K``.
        pass_rate (float): the share of held-out photos under the threshold.
        folds (int): stratified folds (fewer when a class has fewer photos; at least 2).
        seed (int): fold shuffling.

    Raises:
        DataError: too few photos per class to hold any out.
    """
    from sklearn.model_selection import StratifiedKFold

    if features.ndim != 3:
        raise DataError(f"expected features [N, V, D], got shape {features.shape}")
    if not 0.5 <= pass_rate < 1:
        raise DataError(f"the OOD pass rate must be in [0.5, 1) (got {pass_rate})")
    smallest = int(np.bincount(labels, minlength=num_classes).min())
    n_folds = min(folds, smallest)
    if n_folds < 2:
        raise DataError(
            "the OOD guard needs at least 2 training photos of every class to hold some out"
        )
    heldout = np.empty(len(labels), np.float32)
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(np.zeros(len(labels)), labels):
        fold_fit = fit_mahalanobis(features, labels, num_classes, rows=fit_rows, noise=noise)
        heldout[held_rows] = fold_fit.scores(features[held_rows, 0])
    threshold = float(np.quantile(heldout, pass_rate))
    return OodGuard(
        fit=fit_mahalanobis(features, labels, num_classes, noise=noise),
        threshold=threshold,
        pass_rate=pass_rate,
        heldout_pass_rate=float(np.mean(heldout <= threshold)),
        heldout_photos=len(heldout),
        folds=n_folds,
    )


# --- the guard inside the exported Keras graph ----------------------------------------------


def _layers() -> tuple[type, type]:
    """The Keras layers of the in-graph guard (registered once, on first use)."""
    global _LAYERS
    if _LAYERS is not None:
        return _LAYERS
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="skin_mlops")
    class MahalanobisScore(keras.layers.Layer):
        """``float32[N, D]`` features -> ``float32[N]`` distance to the nearest class."""

        def __init__(self, feature_dim: int, num_classes: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.feature_dim = feature_dim
            self.num_classes = num_classes
            self.projection = self.add_weight(
                name="projection", shape=(feature_dim, feature_dim), trainable=False
            )
            self.centres = self.add_weight(
                name="centres", shape=(num_classes, feature_dim), trainable=False
            )

        def call(self, x):  # noqa: ANN001, ANN201 - Keras tensors
            z = ops.matmul(x, self.projection)
            difference = ops.expand_dims(z, 1) - ops.expand_dims(self.centres, 0)  # [N, K, D]
            return ops.sqrt(ops.min(ops.sum(difference * difference, axis=-1), axis=1))

        def compute_output_shape(self, shape):  # noqa: ANN001, ANN201
            return (shape[0],)

        def get_config(self) -> dict:
            return {
                **super().get_config(),
                "feature_dim": self.feature_dim,
                "num_classes": self.num_classes,
            }

    @keras.saving.register_keras_serializable(package="skin_mlops")
    class FirstView(keras.layers.Layer):
        """``[T*N, D]`` (view-major, as the in-graph TTA stacks them) -> ``[N, D]``."""

        def __init__(self, views: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.views = views

        def call(self, x):  # noqa: ANN001, ANN201
            return ops.reshape(x, (self.views, -1, x.shape[-1]))[0]

        def compute_output_shape(self, shape):  # noqa: ANN001, ANN201
            return (None, shape[-1])

        def get_config(self) -> dict:
            return {**super().get_config(), "views": self.views}

    _LAYERS = (MahalanobisScore, FirstView)
    return _LAYERS


_LAYERS: tuple[type, type] | None = None


def score_layer(guard: OodGuard) -> keras.layers.Layer:
    """A :class:`MahalanobisScore` layer named ``ood_score`` holding ``guard``'s weights."""
    mahalanobis, _ = _layers()
    dim = guard.fit.projection.shape[0]
    layer = mahalanobis(dim, guard.fit.centres.shape[0], name=OUTPUT_NAME)
    layer.build((None, dim))
    layer.set_weights([guard.fit.projection, guard.fit.centres])
    return layer


def first_view(features: object, views: int) -> object:
    """The first view's rows of in-graph TTA features (``features`` itself when 1 view)."""
    if views == 1:
        return features
    _, first = _layers()
    return first(views, name="ood_first_view")(features)
