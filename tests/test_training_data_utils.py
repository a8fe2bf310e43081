"""The SQLite and S3 utilities that training reads its data with.

``load_records`` (the ``lesions_data`` rows of an ingested dataset, checked against the
config), ``split_leaked_val`` (val photos with a training photo's bytes),
``dataset_fingerprint``, ``class_weights`` and ``ImageFetcher`` (bytes of an ingested
photo: its file, else the local cache, else the object store, always checked against the
recorded SHA-256). The object store here is a real ``moto_server`` over HTTP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from pathlib import Path

import numpy as np
import pytest

from ingest_fixtures import RawDataset, free_port, image_bytes
from skin_mlops.core.errors import DataError, StorageError
from skin_mlops.dataset_config import load_dataset_config
from skin_mlops.ingestion.run import run_ingestion
from skin_mlops.metadata import LesionRecord
from skin_mlops.modeling.data import (
    ImageFetcher,
    dataset_fingerprint,
    load_records,
    split_leaked_val,
    split_near_duplicate_val,
)
from skin_mlops.modeling.heads import class_weights
from skin_mlops.storage import S3ObjectStore


def _record(data: bytes, split: str = "train", label: str = "acne", **fields: str) -> LesionRecord:
    sha = hashlib.sha256(data).hexdigest()
    values: dict[str, object] = {
        "sha256": sha,
        "dataset": "testset",
        "split": split,
        "label": label,
        "source_path": "",
        "object_key": f"skin/{split}/{label}/{sha}.jpg",
        "size_bytes": len(data),
        "width": 64,
        "height": 48,
        "format": "JPEG",
        "ingested_at": "2026-12-02T00:00:00Z",
    }
    values.update(fields)
    return LesionRecord(**values)  # type: ignore[arg-type]


# --- SQLite: load_records ------------------------------------------------------------------


def _ingest(raw_dataset: RawDataset) -> None:
    summary = run_ingestion(
        raw_dataset.config_path, ["train", "val"], settings=raw_dataset.settings
    )
    assert not summary.failed


def test_load_records_returns_the_ingested_rows_by_split(raw_dataset: RawDataset) -> None:
    seed = 0
    for split, per_label in (("train", 3), ("val", 1)):
        for label in raw_dataset.labels:
            for i in range(per_label):
                seed += 1
                raw_dataset.add(split, label, f"{label}-{i}.jpg", seed=seed)
    _ingest(raw_dataset)

    records = load_records(load_dataset_config(raw_dataset.config_path))

    assert sorted(records) == ["train", "val"]
    assert len(records["train"]) == 3 * len(raw_dataset.labels)
    assert len(records["val"]) == len(raw_dataset.labels)
    for split, rows in records.items():
        assert {r.split for r in rows} == {split}
        assert {r.label for r in rows} == set(raw_dataset.labels)
        for row in rows:  # each row points at its photo, whose bytes have the row's hash
            assert hashlib.sha256(Path(row.source_path).read_bytes()).hexdigest() == row.sha256


def test_load_records_before_ingestion_says_run_ingest(raw_dataset: RawDataset) -> None:
    with pytest.raises(DataError, match="run `skin-mlops ingest` first"):
        load_records(load_dataset_config(raw_dataset.config_path))


def test_a_label_without_training_photos_is_refused_by_name(raw_dataset: RawDataset) -> None:
    first, *rest = raw_dataset.labels
    for seed, label in enumerate(rest, start=1):
        raw_dataset.add("train", label, "a.jpg", seed=seed)
    raw_dataset.add("val", first, "a.jpg", seed=99)
    _ingest(raw_dataset)

    with pytest.raises(DataError, match=rf"label\(s\) {first} have no training images"):
        load_records(load_dataset_config(raw_dataset.config_path))


def test_an_empty_val_split_is_refused(raw_dataset: RawDataset) -> None:
    for seed, label in enumerate(raw_dataset.labels, start=1):
        raw_dataset.add("train", label, "a.jpg", seed=seed)
    _ingest(raw_dataset)

    with pytest.raises(DataError, match="no 'val' images"):
        load_records(load_dataset_config(raw_dataset.config_path))


# --- pure helpers --------------------------------------------------------------------------


def test_split_leaked_val_separates_val_photos_with_training_bytes() -> None:
    shared, own = image_bytes(seed=1), image_bytes(seed=2)
    train = [_record(shared), _record(image_bytes(seed=3))]
    val = [_record(shared, split="val"), _record(own, split="val")]

    clean, leaked = split_leaked_val(train, val)

    assert [r.sha256 for r in leaked] == [train[0].sha256]
    assert [r.sha256 for r in clean] == [val[1].sha256]


def test_a_resaved_copy_of_a_training_photo_is_a_near_duplicate_and_cached(
    tmp_path: Path,
) -> None:
    import io

    from PIL import Image

    from utils.images import non_skin_images

    pictures = list(non_skin_images(size=(200, 150)).values())

    def jpeg(image: Image.Image, quality: int = 92) -> bytes:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return out.getvalue()

    train_bytes = [jpeg(p) for p in pictures[1:]]  # noise, text, checkerboard, gradient
    copy = pictures[2].transpose(Image.Transpose.ROTATE_90).resize((135, 180))
    other_noise = non_skin_images(size=(200, 150), seed=1)["noise"]
    val_bytes = [jpeg(copy, quality=70), jpeg(other_noise)]  # a turned copy; a new picture
    files = {}
    for data in train_bytes + val_bytes:
        files[hashlib.sha256(data).hexdigest()] = data
    train = [_record(d) for d in train_bytes]
    val = [_record(d, split="val") for d in val_bytes]
    loads: list[str] = []

    def load(row: LesionRecord) -> bytes:
        loads.append(row.sha256)
        return files[row.sha256]

    clean, near = split_near_duplicate_val(train, val, load, tmp_path / "cache")

    assert [r.sha256 for r in near] == [val[0].sha256]
    assert [r.sha256 for r in clean] == [val[1].sha256]
    assert sorted(loads) == sorted(files)
    loads.clear()  # a second call decodes nothing: the hashes are cached by SHA-256
    assert split_near_duplicate_val(train, val, load, tmp_path / "cache") == (clean, near)
    assert loads == []


def test_the_fingerprint_follows_the_data_not_the_row_order() -> None:
    rows = [_record(image_bytes(seed=s)) for s in range(4)]
    relabelled = [dataclasses.replace(rows[0], label="lichen_planus"), *rows[1:]]
    moved = [dataclasses.replace(rows[0], split="val"), *rows[1:]]

    assert dataset_fingerprint(rows) == dataset_fingerprint(list(reversed(rows)))
    assert dataset_fingerprint(relabelled) != dataset_fingerprint(rows)
    assert dataset_fingerprint(moved) != dataset_fingerprint(rows)
    assert dataset_fingerprint(rows[:3]) != dataset_fingerprint(rows)


def test_class_weights_match_scikit_learns_balanced_weights() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 50 + [1] * 10 + [2] * 5 + [3] * 35)
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels)

    weights = class_weights(labels, 4)

    assert list(weights) == [0, 1, 2, 3]
    np.testing.assert_allclose([weights[k] for k in range(4)], expected)
    # a class with no training photo gets no weight rather than a division by zero
    assert class_weights(np.array([0, 0, 1]), 3)[2] == 0.0


# --- S3: ImageFetcher against a real moto_server --------------------------------------------


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> tuple[S3ObjectStore, str]:
    store = S3ObjectStore(moto_endpoint, "testing", "testing", max_attempts=2, connect_timeout=2)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(bucket)
    return store, bucket


def test_a_photo_whose_file_is_gone_comes_from_s3_once_then_from_the_cache(
    s3_bucket: tuple[S3ObjectStore, str], tmp_path: Path
) -> None:
    store, bucket = s3_bucket
    data = image_bytes(seed=5)
    row = _record(data, source_path=str(tmp_path / "deleted.jpg"))
    store.put_bytes(bucket, row.object_key, data)
    fetch = ImageFetcher(store, bucket, tmp_path / "cache")

    assert fetch(row) == data
    assert fetch.downloaded == 1
    assert fetch.cache_path(row.sha256).read_bytes() == data

    store.delete(bucket, row.object_key)  # the cache answers now: no second download
    assert fetch(row) == data
    assert fetch.downloaded == 1


def test_the_local_file_is_used_when_it_still_has_the_recorded_bytes(
    s3_bucket: tuple[S3ObjectStore, str], tmp_path: Path
) -> None:
    store, bucket = s3_bucket
    data = image_bytes(seed=6)
    source = tmp_path / "photo.jpg"
    source.write_bytes(data)
    row = _record(data, source_path=str(source))  # never uploaded: S3 would fail

    assert ImageFetcher(store, bucket, tmp_path / "cache")(row) == data


def test_a_file_edited_since_ingestion_is_replaced_by_the_stored_copy(
    s3_bucket: tuple[S3ObjectStore, str], tmp_path: Path
) -> None:
    store, bucket = s3_bucket
    data = image_bytes(seed=7)
    source = tmp_path / "photo.jpg"
    source.write_bytes(image_bytes(seed=8))  # the file changed after ingestion
    row = _record(data, source_path=str(source))
    store.put_bytes(bucket, row.object_key, data)
    fetch = ImageFetcher(store, bucket, tmp_path / "cache")

    assert fetch(row) == data
    assert fetch.downloaded == 1


def test_a_corrupt_cache_entry_is_downloaded_again(
    s3_bucket: tuple[S3ObjectStore, str], tmp_path: Path
) -> None:
    store, bucket = s3_bucket
    data = image_bytes(seed=9)
    row = _record(data)
    store.put_bytes(bucket, row.object_key, data)
    fetch = ImageFetcher(store, bucket, tmp_path / "cache")
    cached = fetch.cache_path(row.sha256)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data[: len(data) // 2])  # a torn write

    assert fetch(row) == data
    assert cached.read_bytes() == data


def test_an_object_that_does_not_match_its_hash_is_refused_and_not_cached(
    s3_bucket: tuple[S3ObjectStore, str], tmp_path: Path
) -> None:
    store, bucket = s3_bucket
    row = _record(image_bytes(seed=10))
    store.put_bytes(bucket, row.object_key, image_bytes(seed=11))
    fetch = ImageFetcher(store, bucket, tmp_path / "cache")

    with pytest.raises(DataError, match="does not match its SHA-256.*re-run `skin-mlops ingest`"):
        fetch(row)
    assert not fetch.cache_path(row.sha256).exists()
    assert fetch.downloaded == 0


def test_a_missing_object_is_a_storage_error(
    s3_bucket: tuple[S3ObjectStore, str], tmp_path: Path
) -> None:
    store, bucket = s3_bucket
    row = _record(image_bytes(seed=12))

    with pytest.raises(StorageError):
        ImageFetcher(store, bucket, tmp_path / "cache")(row)


def test_an_unreachable_s3_is_one_line(tmp_path: Path) -> None:
    store = S3ObjectStore(
        f"http://127.0.0.1:{free_port()}", "testing", "testing", max_attempts=1, connect_timeout=1
    )
    row = _record(image_bytes(seed=13))

    with pytest.raises(StorageError) as caught:
        ImageFetcher(store, "skin-processed", tmp_path / "cache")(row)
    assert "\n" not in str(caught.value)
    assert list((tmp_path / "cache").rglob("*")) == []
