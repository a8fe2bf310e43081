"""The data stage of training: the ingested rows, leakage left out of val, photo bytes.

* :func:`load_records` - ``lesions_data`` rows (status ``present``) of ``train`` and
  ``val``, checked against the dataset config;
* :func:`split_leaked_val` / :func:`split_near_duplicate_val` - val photos that are
  training photos (the same bytes; the same picture re-saved, by perceptual hash);
* :class:`ImageFetcher` - a photo's bytes from its file, the local cache or the object
  store, always checked against the recorded SHA-256;
* :func:`dataset_fingerprint` - identity of the rows a run trained on.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from skin_mlops.core.errors import ConfigError, DataError
from skin_mlops.core.files import atomic_write_bytes
from skin_mlops.dataset_config import DatasetConfig

if TYPE_CHECKING:
    from skin_mlops.core.config import Settings
    from skin_mlops.metadata import LesionRecord
    from skin_mlops.modeling.features import ImageRef
    from skin_mlops.storage import ObjectStore

TRAIN_SPLIT = "train"
VAL_SPLIT = "val"


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def dataset_fingerprint(records: Sequence[LesionRecord]) -> str:
    """SHA-256 of the sorted image hashes (with split and label: a relabel changes it)."""
    lines = sorted(f"{r.sha256} {r.split} {r.label}" for r in records)
    return sha256_bytes("\n".join(lines).encode())


def load_records(config: DatasetConfig) -> dict[str, list[LesionRecord]]:
    """The usable rows of ``lesions_data`` by split, checked against the config.

    Raises:
        DataError: no DB / no rows (run ingestion first), a label not in the config, an
            empty split or a label without training images.
    """
    from skin_mlops.metadata import read_lesions

    for split in (TRAIN_SPLIT, VAL_SPLIT):
        if split not in config.splits:
            raise ConfigError(
                f"dataset config {config.source or ''} has no {split!r} split "
                f"(training needs {TRAIN_SPLIT!r} and {VAL_SPLIT!r})"
            )
    records = read_lesions(
        config.metadata_db, dataset=config.dataset, splits=[TRAIN_SPLIT, VAL_SPLIT]
    )
    if not records:
        raise DataError(
            f"no images of dataset {config.dataset!r} in the metadata DB "
            f"{config.metadata_db}: run `skin-mlops ingest` first"
        )
    unknown = sorted({r.label for r in records} - set(config.labels))
    if unknown:
        raise DataError(
            f"label(s) {', '.join(unknown)} in the metadata DB are not in the dataset config "
            f"labels ({', '.join(config.labels)}); add them to the config or re-ingest"
        )
    by_split = {
        split: [r for r in records if r.split == split] for split in (TRAIN_SPLIT, VAL_SPLIT)
    }
    for split, rows in by_split.items():
        if not rows:
            raise DataError(
                f"no {split!r} images in the metadata DB: run `skin-mlops ingest` "
                f"with --splits {TRAIN_SPLIT} {VAL_SPLIT}"
            )
    missing = [
        label for label in config.labels if not any(r.label == label for r in by_split[TRAIN_SPLIT])
    ]
    if missing:
        raise DataError(f"label(s) {', '.join(missing)} have no training images")
    return by_split


def split_leaked_val(
    train_records: Sequence[LesionRecord], val_records: Sequence[LesionRecord]
) -> tuple[list[LesionRecord], list[LesionRecord]]:
    """``(clean, leaked)`` val rows: leaked ones have the bytes (SHA-256) of a training photo.

    The same definition as ingestion's "leakage" (same bytes in two splits; the same
    bytes under two labels are conflicts, which never reach training).
    """
    train_hashes = {r.sha256 for r in train_records}
    clean = [r for r in val_records if r.sha256 not in train_hashes]
    leaked = [r for r in val_records if r.sha256 in train_hashes]
    return clean, leaked


def split_near_duplicate_val(
    train_records: Sequence[LesionRecord],
    val_records: Sequence[LesionRecord],
    load: Callable[[LesionRecord], bytes],
    cache_dir: Path,
    max_distance: int | None = None,
) -> tuple[list[LesionRecord], list[LesionRecord]]:
    """``(clean, near)`` val rows: near ones are perceptual duplicates of a training photo
    (the same picture with other bytes: re-encoded, resized, turned or mirrored).

    pHashes (:mod:`skin_mlops.modeling.near_duplicates`, within
    ``DEFAULT_MAX_DISTANCE`` bits in any orientation) are cached by SHA-256 in
    ``cache_dir/phash.sqlite``, so a rerun decodes nothing.
    """
    from skin_mlops.modeling import near_duplicates

    if not val_records or not train_records:
        return list(val_records), []
    cache = near_duplicates.PhashCache(cache_dir)

    def hashes(rows: Sequence[LesionRecord]) -> np.ndarray:
        return cache.hashes([(r.sha256, functools.partial(load, r)) for r in rows])

    near = near_duplicates.near_duplicates_of(
        hashes(val_records),
        hashes(train_records),
        near_duplicates.DEFAULT_MAX_DISTANCE if max_distance is None else max_distance,
    )
    return (
        [r for r, hit in zip(val_records, near, strict=True) if not hit],
        [r for r, hit in zip(val_records, near, strict=True) if hit],
    )


class ImageFetcher:
    """Bytes of an ingested image: local file, else local cache, else the object store.

    Every byte string is checked against the row's SHA-256; downloads are cached under
    ``cache_dir/<sha[:2]>/<sha>`` (written atomically).
    """

    def __init__(self, store: ObjectStore, bucket: str, cache_dir: Path) -> None:
        self.store = store
        self.bucket = bucket
        self.cache_dir = Path(cache_dir)
        self.downloaded = 0

    def cache_path(self, sha256: str) -> Path:
        """Where a downloaded image is kept."""
        return self.cache_dir / sha256[:2] / sha256

    def __call__(self, record: LesionRecord) -> bytes:
        """The verified bytes of ``record``.

        Raises:
            StorageError: the object store failed. DataError: the object's bytes do not
                match the recorded SHA-256.
        """
        return self.fetch(record.sha256, record.object_key, record.source_path)

    def fetch(self, sha256: str, object_key: str, source_path: str | None = None) -> bytes:
        """The verified bytes of the image ``sha256`` stored at ``object_key``."""
        for path in (
            Path(source_path) if source_path else None,
            self.cache_path(sha256),
        ):
            if path is not None and path.is_file():
                data = path.read_bytes()
                if sha256_bytes(data) == sha256:
                    return data
        data = self.store.get_bytes(self.bucket, object_key)
        if sha256_bytes(data) != sha256:
            raise DataError(
                f"object {self.bucket}/{object_key} does not match its SHA-256 in the "
                "metadata DB (re-run `skin-mlops ingest`)"
            )
        target = self.cache_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        # No fsync: an entry lost to a power cut fails its SHA-256 check and is fetched again.
        atomic_write_bytes(target, data, fsync=False)
        self.downloaded += 1
        return data


def image_refs(rows: Sequence[LesionRecord], fetch: ImageFetcher) -> list[ImageRef]:
    """:class:`~skin_mlops.modeling.features.ImageRef` of ``rows`` (bytes via ``fetch``)."""
    from skin_mlops.modeling.features import ImageRef

    return [
        ImageRef(r.sha256, functools.partial(fetch, r), r.source_path or r.object_key) for r in rows
    ]


def label_indices(rows: Sequence[LesionRecord], label_index: Mapping[str, int]) -> np.ndarray:
    """``int64[N]`` class index of ``rows``."""
    return np.array([label_index[r.label] for r in rows], dtype=np.int64)


@dataclass
class TrainingData:
    """The rows one run trains and evaluates on, and where their bytes come from.

    Attributes:
        train_records / val_records: the rows used (val without leaked photos unless
            ``keep_leaked_val``).
        val_found: every val row in the metadata DB.
        leaked_val: val rows with the bytes of a training photo.
        near_val: val rows that are the picture of a training photo with other bytes.
        fetch (ImageFetcher): verified bytes of a row.
        label_index: label -> class index (the config's order).
        keep_leaked_val: whether the leaked rows were kept.
    """

    train_records: list[LesionRecord]
    val_records: list[LesionRecord]
    val_found: list[LesionRecord]
    leaked_val: list[LesionRecord]
    near_val: list[LesionRecord]
    fetch: ImageFetcher
    label_index: Mapping[str, int]
    keep_leaked_val: bool = False

    def refs(self, rows: Sequence[LesionRecord]) -> list[ImageRef]:
        """:func:`image_refs` of ``rows`` with this run's fetcher."""
        return image_refs(rows, self.fetch)

    def labels_of(self, rows: Sequence[LesionRecord]) -> np.ndarray:
        """:func:`label_indices` of ``rows``."""
        return label_indices(rows, self.label_index)

    def report_leakage(self, console: Console) -> None:
        """One yellow line per kind of val photo that is also a training photo."""
        for count, what in (
            (len(self.leaked_val), "have the bytes of a training photo (leakage)"),
            (
                len(self.near_val),
                "are near-duplicates of a training photo (the same picture re-saved)",
            ),
        ):
            if count:
                console.print(
                    f"{count} val photo(s) {what}: "
                    + (
                        "kept in val (--keep-leaked-val)"
                        if self.keep_leaked_val
                        else "left out of val (--keep-leaked-val keeps them)"
                    ),
                    style="yellow",
                    highlight=False,
                )


def prepare_training_data(
    records: Mapping[str, list[LesionRecord]],
    config: DatasetConfig,
    store: ObjectStore,
    settings: Settings,
    *,
    keep_leaked_val: bool = False,
) -> TrainingData:
    """The data stage: leakage (same bytes) and near-duplicates of training photos left
    out of val unless ``keep_leaked_val``; a fetcher for the bytes.

    Raises:
        DataError: nothing would be left in val.
    """
    train_records, val_found = list(records[TRAIN_SPLIT]), list(records[VAL_SPLIT])
    fetch = ImageFetcher(store, config.storage.bucket, settings.dataset_cache_dir)
    clean_val, leaked_val = split_leaked_val(train_records, val_found)
    clean_val, near_val = split_near_duplicate_val(
        train_records, clean_val, fetch, settings.feature_cache_dir
    )
    val_records = val_found if keep_leaked_val else clean_val
    if not val_records:
        raise DataError(
            f"all {len(val_found)} val photos are also training photos (the same bytes or "
            "the same picture: leakage); add distinct val photos, or train with "
            "--keep-leaked-val"
        )
    return TrainingData(
        train_records,
        val_records,
        val_found,
        leaked_val,
        near_val,
        fetch,
        config.label_to_index,
        keep_leaked_val,
    )
