"""The frozen-feature cache: backbone outputs computed once per image and view.

A frozen backbone maps the same pixels to the same features forever, so training the
head never needs the images again once their features are stored. A feature vector is
keyed by

* the **feature space** (:class:`FeatureSpace`): backbone name + build options, the
  SHA-256 of its weights, the feature width, the preprocessing id and the image size;
* the **image** SHA-256 (content address, from the metadata DB);
* the **view**: ``"center"`` is exactly what serving feeds the model
  (``skin_mlops.preprocessing.preprocess_bytes``); ``"aug<version>.<k>"`` (k >= 1) is a
  deterministic augmentation of the same photo (random-resized crop, flips, quarter
  turns, mild brightness/contrast), seeded by the image hash and ``k`` so a view never
  changes between runs and can be cached like the centre view; ``"dih.<k>"`` (k = 1..7)
  is the k-th dihedral transform of the centre view (for test-time averaging).

Vectors live in one SQLite file (``<feature_cache_dir>/features.sqlite3``): atomic
writes, safe for concurrent readers, one row per (space, image, view). A second run on
unchanged data finds every row and extracts nothing.

Only :mod:`skin_mlops.preprocessing` decodes and resizes images here; the augmentations
operate on its upright RGB image and end with its resize/centre-crop.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageEnhance

from skin_mlops import preprocessing
from skin_mlops.core.errors import DataError

if TYPE_CHECKING:
    from rich.progress import Progress

    from skin_mlops.modeling.backbones import Backbone

AUGMENTATION_VERSION = 1
CENTER_VIEW = "center"
DIHEDRAL_PREFIX = "dih"
FEATURE_DB_NAME = "features.sqlite3"
MIN_CROP_AREA = 0.45  # random-resized-crop keeps 45-100 % of the photo's area


# --- keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpace:
    """Everything besides the image and the view that determines a feature vector."""

    backbone: str
    backbone_options: str
    weights_sha256: str
    feature_dim: int
    preprocessing_id: str
    image_size: int

    @property
    def key(self) -> str:
        """One string naming the space (the ``space`` column of the cache)."""
        options = f"[{self.backbone_options}]" if self.backbone_options else ""
        return (
            f"{self.backbone}{options}|w={self.weights_sha256[:16]}|d={self.feature_dim}"
            f"|{self.preprocessing_id}|s={self.image_size}"
        )

    @classmethod
    def of(cls, backbone: Backbone, backbone_options: str = "") -> FeatureSpace:
        """The space of a built backbone with today's preprocessing."""
        return cls(
            backbone=backbone.name,
            backbone_options=backbone_options,
            weights_sha256=backbone.weights_sha256,
            feature_dim=backbone.feature_dim,
            preprocessing_id=preprocessing.PREPROCESSING_ID,
            image_size=backbone.image_size,
        )


def view_ids(views: int) -> list[str]:
    """The ids of ``views`` views: the centre view, then augmentations 1..views-1."""
    if views < 1:
        raise DataError(f"views must be at least 1 (got {views})")
    return [CENTER_VIEW] + [f"aug{AUGMENTATION_VERSION}.{k}" for k in range(1, views)]


DIHEDRAL_VIEWS = 8


def dihedral_view_ids() -> list[str]:
    """The centre view and its 7 other dihedral transforms (``dih.1`` ... ``dih.7``)."""
    return [CENTER_VIEW] + [f"{DIHEDRAL_PREFIX}.{k}" for k in range(1, DIHEDRAL_VIEWS)]


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform ``k`` (0..7) of an HWC array: ``k % 4`` quarter turns
    (counter-clockwise), then a left-right flip when ``k >= 4``.

    The exported model's test-time averaging (``export.DihedralViews``) applies exactly
    these transforms inside the graph.
    """
    out = np.rot90(array, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def compose_dihedral(first: int, then: int) -> int:
    """``m`` with ``dihedral(dihedral(x, first), then) == dihedral(x, m)`` (the group's
    product: the view ``then`` of a photo already turned by ``first``)."""
    probe = np.arange(9, dtype=np.int64).reshape(3, 3, 1)  # no symmetry of its own
    target = dihedral(dihedral(probe, first), then)
    return next(m for m in range(DIHEDRAL_VIEWS) if np.array_equal(dihedral(probe, m), target))


# --- rendering views --------------------------------------------------------------------


def _view_rng(sha256: str, view: str) -> np.random.Generator:
    index = int(view.rsplit(".", 1)[1])
    return np.random.default_rng([int(sha256[:15], 16), AUGMENTATION_VERSION, index])


def augment(image: Image.Image, sha256: str, view: str) -> Image.Image:
    """The deterministic augmentation ``view`` of an upright RGB photo (not yet resized).

    Random-resized crop (area 45-100 %, aspect 3/4-4/3), horizontal flip, a quarter turn
    (lesions have no canonical orientation), brightness and contrast within +-12 %.
    """
    rng = _view_rng(sha256, view)
    width, height = image.size
    area = width * height * rng.uniform(MIN_CROP_AREA, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = int(round(min(width, np.sqrt(area * aspect))))
    crop_h = int(round(min(height, np.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    out = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    turns = int(rng.integers(0, 4))
    if turns:
        out = out.transpose(
            (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[
                turns - 1
            ]
        )
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.88, 1.12)))
    return ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.88, 1.12)))


def render_views(data: bytes, sha256: str, views: Sequence[str], size: int) -> list[np.ndarray]:
    """Model inputs ``float32[size, size, 3]`` of the requested views of one photo.

    The centre view is ``preprocessing.preprocess_bytes(data, size)`` exactly; ``dih.k``
    views are its dihedral transforms; augmented views decode at a higher DCT scale so a
    crop is not upsampled from a draft.

    Raises:
        preprocessing.ImageError: the bytes are not a decodable image.
    """
    out: list[np.ndarray] = []
    full: Image.Image | None = None
    center: np.ndarray | None = None
    for view in views:
        if view == CENTER_VIEW or view.startswith(f"{DIHEDRAL_PREFIX}."):
            if center is None:
                center = preprocessing.preprocess_bytes(data, size)
            k = 0 if view == CENTER_VIEW else int(view.split(".", 1)[1])
            out.append(center if k == 0 else dihedral(center, k))
            continue
        if full is None:
            min_side = int(np.ceil(size / np.sqrt(MIN_CROP_AREA)))
            full = preprocessing.load_rgb(data, min_side=min_side)
        out.append(preprocessing.to_model_input(augment(full, sha256, view), size))
    return out


# --- the store --------------------------------------------------------------------------


class FeatureStore:
    """SQLite-backed ``(space, image sha256, view) -> float32 vector`` store."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / FEATURE_DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS features (space TEXT NOT NULL, sha256 TEXT NOT NULL,"
                " view TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,"
                " created_at TEXT NOT NULL, PRIMARY KEY (space, sha256, view))"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30.0)

    def load(self, space: FeatureSpace) -> dict[tuple[str, str], np.ndarray]:
        """All vectors of one space, as ``{(sha256, view): vector}``."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT sha256, view, dim, vector FROM features WHERE space = ?", (space.key,)
            ).fetchall()
        return {
            (sha, view): np.frombuffer(blob, dtype=np.float32, count=dim)
            for sha, view, dim, blob in rows
        }

    def fill(
        self, space: FeatureSpace, shas: Sequence[str], views: Sequence[str], out: np.ndarray
    ) -> np.ndarray:
        """Copy the cached vectors of ``shas`` x ``views`` into ``out`` ``[N, V, D]``.

        Rows are streamed from SQLite one at a time and only the wanted ones are copied, so
        memory holds ``out`` and nothing of the rest of the cache (other photos, other
        views, other data sets). A vector of another width counts as missing.

        Returns:
            np.ndarray: ``bool[N, V]``, True where ``out`` was filled.
        """
        rows_of: dict[str, list[int]] = {}
        for i, sha in enumerate(shas):
            rows_of.setdefault(sha, []).append(i)
        column = {view: j for j, view in enumerate(views)}
        found = np.zeros(out.shape[:2], bool)
        with closing(self._connect()) as db:
            cursor = db.execute(
                "SELECT sha256, view, dim, vector FROM features WHERE space = ?", (space.key,)
            )
            for sha, view, dim, blob in cursor:
                rows, j = rows_of.get(sha), column.get(view)
                if rows is None or j is None or dim != out.shape[2]:
                    continue
                vector = np.frombuffer(blob, dtype=np.float32, count=dim)
                for i in rows:
                    out[i, j] = vector
                    found[i, j] = True
        return found

    def put(self, space: FeatureSpace, rows: Sequence[tuple[str, str, np.ndarray]]) -> None:
        """Insert or replace ``(sha256, view, vector)`` rows in one transaction."""
        now = datetime.now(UTC).isoformat()
        with closing(self._connect()) as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        space.key,
                        sha,
                        view,
                        int(vec.size),
                        np.ascontiguousarray(vec, dtype=np.float32).tobytes(),
                        now,
                    )
                    for sha, view, vec in rows
                ],
            )

    def count(self, space: FeatureSpace | None = None) -> int:
        """Number of stored vectors (in one space, or in all)."""
        with closing(self._connect()) as db:
            if space is None:
                return int(db.execute("SELECT COUNT(*) FROM features").fetchone()[0])
            return int(
                db.execute(
                    "SELECT COUNT(*) FROM features WHERE space = ?", (space.key,)
                ).fetchone()[0]
            )


# --- extraction -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """An image to featurise: its content hash and how to get its bytes (only if needed)."""

    sha256: str
    load: Callable[[], bytes]
    name: str = ""


@dataclass(frozen=True)
class FeatureTable:
    """Features of a list of images: ``features[i, v]`` is image ``i``, view ``v``."""

    features: np.ndarray  # float32 [N, V, D]
    views: list[str]
    extracted: int  # vectors computed by this call
    reused: int  # vectors read from the cache


def make_feature_function(
    backbone: Backbone, batch_size: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled ``float32[B, S, S, 3] -> float32[B, D]`` of the frozen backbone.

    Batches are padded to ``batch_size`` so the graph is traced once. No XLA: on CPU,
    XLA's depthwise convolutions made Lite0 ~12x slower here (3.5 vs 42 images/s).
    """
    import tensorflow as tf

    model = backbone.model
    compiled = tf.function(
        lambda x: model(x, training=False), jit_compile=False, reduce_retracing=True
    )

    def features(batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < batch_size:
            pad = np.zeros((batch_size - n, *batch.shape[1:]), dtype=np.float32)
            batch = np.concatenate([batch, pad])
        return np.asarray(compiled(tf.constant(batch, dtype=tf.float32)))[:n]

    return features


# Images per backbone call while extracting. Lite0 at 288 px on ONNX Runtime, 2 cores:
# batch 32 peaks ~900 MiB above the session at 9.5 ms/image, batch 8 ~220 MiB at 8.0 ms
# (measured here; the cores are compute-bound, so a bigger batch buys nothing).
EXTRACT_BATCH = 8


def _render_job(ref: ImageRef, views: Sequence[str], size: int) -> list[np.ndarray]:
    try:
        return render_views(ref.load(), ref.sha256, views, size)
    except preprocessing.ImageError as exc:
        raise DataError(f"cannot decode image {ref.name or ref.sha256[:12]}: {exc}") from None


def _rendered(
    jobs: Sequence[tuple[ImageRef, list[str]]], size: int, workers: int
) -> Iterator[tuple[ImageRef, list[str], list[np.ndarray]]]:
    """Render jobs on a thread pool, in order, with a bounded number in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="render") as pool:
        pending: deque[tuple[ImageRef, list[str], Future[list[np.ndarray]]]] = deque()
        queue = iter(jobs)
        for ref, views in queue:
            pending.append((ref, views, pool.submit(_render_job, ref, views, size)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            ref, views, future = pending.popleft()
            yield ref, views, future.result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt[0], nxt[1], pool.submit(_render_job, nxt[0], nxt[1], size)))


def extract_features(
    backbone: Backbone,
    images: Sequence[ImageRef],
    views: int | Sequence[str],
    store: FeatureStore,
    *,
    backbone_options: str = "",
    batch_size: int = EXTRACT_BATCH,
    workers: int = 2,
    progress: Progress | None = None,
    description: str = "extracting features",
    compute: Callable[[np.ndarray], np.ndarray] | None = None,
) -> FeatureTable:
    """Features of ``images`` x ``views``; computes and stores only the missing ones.

    Args:
        backbone (Backbone): the frozen backbone (its image size is the render size).
        images (Sequence[ImageRef]): the photos, in the order of the returned rows.
        views (int | Sequence[str]): number of views per photo (1 = centre view only;
            ``n`` = centre + ``n - 1`` augmentations), or explicit view ids.
        store (FeatureStore): the cache.
        backbone_options (str): build options that change features (part of the key).
        batch_size (int): images per backbone call.
        workers (int): decoding threads.
        progress (Progress | None): a rich progress to add a task to.
        compute (Callable | None): ``float32[B, S, S, 3] -> float32[B, D]`` computing the
            backbone (e.g. its ONNX Runtime twin from
            :mod:`skin_mlops.modeling.onnx_backbone`); default: the Keras model.

    Returns:
        FeatureTable: ``float32[N, views, D]`` and how many vectors were computed / reused.
    """
    space = FeatureSpace.of(backbone, backbone_options)
    wanted = view_ids(views) if isinstance(views, int) else list(views)
    # one array of the result, filled from the cache and then by the backbone: memory
    # holds it once, however large the cache (or the data set) is
    features = np.zeros((len(images), len(wanted), backbone.feature_dim), np.float32)
    found = store.fill(space, [ref.sha256 for ref in images], wanted, features)
    rows_of: dict[str, list[int]] = {}
    for i, ref in enumerate(images):
        rows_of.setdefault(ref.sha256, []).append(i)
    column = {view: j for j, view in enumerate(wanted)}
    jobs, queued = [], set()
    for i, ref in enumerate(images):
        missing = [v for j, v in enumerate(wanted) if not found[i, j]]
        if missing and ref.sha256 not in queued:  # a photo listed twice is computed once
            queued.add(ref.sha256)
            jobs.append((ref, missing))
    total_missing = sum(len(missing) for _, missing in jobs)
    task = (
        progress.add_task(description, total=total_missing or 1, completed=0)
        if progress is not None
        else None
    )
    if total_missing:
        compute = compute or make_feature_function(backbone, batch_size)
        batch: list[np.ndarray] = []
        keys: list[tuple[str, str]] = []

        def flush() -> None:
            vectors = compute(np.stack(batch)).reshape(len(batch), -1)  # maps are flattened
            rows = [(sha, view, vec) for (sha, view), vec in zip(keys, vectors, strict=True)]
            store.put(space, rows)
            for sha, view, vec in rows:
                features[rows_of[sha], column[view]] = vec
            if progress is not None and task is not None:
                progress.advance(task, len(rows))
            batch.clear()
            keys.clear()

        for ref, missing, arrays in _rendered(jobs, backbone.image_size, workers):
            for view, array in zip(missing, arrays, strict=True):
                batch.append(array)
                keys.append((ref.sha256, view))
            if len(batch) >= batch_size:
                while len(batch) > batch_size:  # keep batches exactly batch_size
                    extra_arrays, extra_keys = batch[batch_size:], keys[batch_size:]
                    del batch[batch_size:], keys[batch_size:]
                    flush()
                    batch.extend(extra_arrays)
                    keys.extend(extra_keys)
                if len(batch) == batch_size:
                    flush()
        if batch:
            flush()
    elif progress is not None and task is not None:
        progress.update(task, completed=1, description=f"{description} (all cached)")
    return FeatureTable(
        features=features,
        views=wanted,
        extracted=total_missing,
        reused=len(images) * len(wanted) - total_missing,
    )
