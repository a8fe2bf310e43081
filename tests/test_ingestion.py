"""Ingestion: generated images in a temp ``data/raw``, the local store, and S3 over moto."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

import skin_mlops.ingestion.resolve as resolve_module
from ingest_fixtures import RawDataset, free_port, image_bytes, write_dataset_config, write_image
from skin_mlops.core.config import load_settings
from skin_mlops.core.errors import ConfigError, DataError, StorageError
from skin_mlops.ingestion.keys import object_key_for
from skin_mlops.ingestion.lock import metadata_lock
from skin_mlops.ingestion.report import IngestionSummary, print_summary
from skin_mlops.ingestion.run import run_ingestion
from skin_mlops.ingestion.verify import check_structure
from skin_mlops.metadata import LesionRecord, read_lesions
from skin_mlops.preprocessing import CorruptImageError
from skin_mlops.storage import LocalObjectStore, S3ObjectStore
from utils.tools import missing_tool

ALL_STATUSES = ("present", "missing", "conflict")
KEY_RE = re.compile(r"^skin/(train|val)/[a-z_]+/[A-Za-z0-9._-]+-[0-9a-f]{16}\.(jpg|png)$")


def ingest(
    ds: RawDataset, splits: tuple[str, ...] = ("train", "val"), **kwargs
) -> IngestionSummary:
    return run_ingestion(ds.config_path, list(splits), settings=ds.settings, **kwargs)


def rows(ds: RawDataset, statuses: tuple[str, ...] = ALL_STATUSES) -> list[LesionRecord]:
    return read_lesions(ds.db_path, dataset=ds.dataset, statuses=statuses)  # type: ignore[arg-type]


def store_keys(ds: RawDataset) -> set[str]:
    bucket_dir = ds.objects / ds.bucket
    if not bucket_dir.exists():
        return set()
    return {p.relative_to(bucket_dir).as_posix() for p in bucket_dir.rglob("*") if p.is_file()}


def populate(ds: RawDataset, per_label: int = 2) -> None:
    """``per_label`` distinct images in each train label folder, one in each val folder."""
    seed = 0
    for label in ds.labels:
        for i in range(per_label):
            ds.add("train", label, f"img_{i}.jpg", seed=seed)
            seed += 1
        ds.add("val", label, "v.jpg", seed=1000 + seed)
        seed += 1


def assert_store_matches_db(ds: RawDataset) -> None:
    """Every row has its object with the right bytes; every object has a row."""
    records = rows(ds)
    keys = store_keys(ds)
    assert {r.object_key for r in records} == keys
    for record in records:
        data = (ds.objects / ds.bucket / record.object_key).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.sha256
        assert len(data) == record.size_bytes


# --- the basic contract -------------------------------------------------------------------


def test_first_run_stores_every_image_and_a_rerun_uploads_nothing(raw_dataset: RawDataset) -> None:
    populate(raw_dataset)
    first = ingest(raw_dataset)
    assert (first.totals().new, first.uploaded, first.failed) == (9, 9, False)
    assert first.label_counts("train", "acne").new == 2
    records = rows(raw_dataset)
    assert len(records) == 9 and all(r.status == "present" for r in records)
    assert all(KEY_RE.match(r.object_key) for r in records)
    assert {(r.width, r.height, r.format) for r in records} == {(64, 48, "JPEG")}
    for record in records:
        source = Path(record.source_path).read_bytes()
        assert hashlib.sha256(source).hexdigest() == record.sha256
        assert record.object_key.startswith(f"skin/{record.split}/{record.label}/")
    assert_store_matches_db(raw_dataset)
    json.dumps(first.to_dict())  # serialisable for the Airflow DAG

    object_times = {p: p.stat().st_mtime_ns for p in (raw_dataset.objects).rglob("*.jpg")}
    second = ingest(raw_dataset)
    assert (second.totals().new, second.totals().unchanged, second.uploaded) == (0, 9, 0)
    assert {p: p.stat().st_mtime_ns for p in raw_dataset.objects.rglob("*.jpg")} == object_times
    assert rows(raw_dataset) == records


def test_a_rerun_does_not_read_unchanged_files(
    raw_dataset: RawDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(raw_dataset)
    ingest(raw_dataset)
    reads: list[str] = []
    real_check = resolve_module.check_file

    def counting_check(path: str, *args: object):
        reads.append(path)
        return real_check(path, *args)

    monkeypatch.setattr(resolve_module, "check_file", counting_check)
    assert ingest(raw_dataset).totals().unchanged == 9
    assert reads == []
    touched = raw_dataset.raw / "train" / "acne" / "img_0.jpg"
    os.utime(touched, ns=(1_000_000_000, 1_000_000_000))  # same bytes, new mtime
    summary = ingest(raw_dataset)
    assert reads == ["data/raw/train/acne/img_0.jpg"]  # config paths are relative to the cwd
    assert (summary.totals().unchanged, summary.uploaded) == (9, 0)


def test_files_are_recognised_by_content_not_by_name(raw_dataset: RawDataset) -> None:
    acne = raw_dataset.raw / "train" / "acne"
    (acne / "notes.jpg").write_text("this is not an image")
    (acne / "photo.txt").write_bytes(image_bytes(seed=1))
    (acne / "scan.jpg").write_bytes(image_bytes(seed=2, fmt="PNG"))
    (acne / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    summary = ingest(raw_dataset)
    counts = summary.label_counts("train", "acne")
    assert (counts.new, counts.not_an_image, counts.corrupt) == (2, 2, 0)
    by_source = {Path(r.source_path).name: r for r in rows(raw_dataset)}
    assert set(by_source) == {"photo.txt", "scan.jpg"}
    assert by_source["photo.txt"].object_key.endswith(".jpg")
    assert by_source["scan.jpg"].object_key.endswith(".png")
    assert by_source["scan.jpg"].format == "PNG"
    assert not summary.failed


@pytest.mark.parametrize("verify", ["decode", "structure"])
def test_corrupt_and_truncated_images_are_reported_and_not_ingested(
    raw_dataset: RawDataset, verify: str
) -> None:
    lichen = raw_dataset.raw / "train" / "lichen_planus"
    jpeg = image_bytes(seed=3, size=(128, 96))
    png = image_bytes(seed=4, size=(128, 96), fmt="PNG")
    (lichen / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (lichen / "half.png").write_bytes(png[: len(png) // 2])
    (lichen / "header_only.jpg").write_bytes(jpeg[:400])
    (lichen / "empty.jpg").write_bytes(b"")
    raw_dataset.add("train", "lichen_planus", "good.jpg", seed=5)
    raw_dataset.add("train", "lichen_planus", "good.png", seed=6, fmt="PNG")
    summary = ingest(raw_dataset, verify=verify)
    counts = summary.label_counts("train", "lichen_planus")
    assert (counts.new, counts.corrupt) == (2, 4)
    assert summary.failed
    reported = {Path(p.path).name for p in summary.problems if p.kind == "corrupt"}
    assert reported == {"half.jpg", "half.png", "header_only.jpg", "empty.jpg"}
    assert sorted(Path(r.source_path).name for r in rows(raw_dataset)) == ["good.jpg", "good.png"]
    assert_store_matches_db(raw_dataset)
    # still reported on the next run (the data is still broken), without re-reading it
    assert ingest(raw_dataset).label_counts("train", "lichen_planus").corrupt == 4


def test_images_over_the_pixel_limit_are_rejected_before_decoding(raw_dataset: RawDataset) -> None:
    raw_dataset.add("train", "acne", "big.jpg", seed=6)  # 64x48 = 3072 pixels
    settings = raw_dataset.settings.model_copy(update={"max_image_pixels": 3000})
    summary = run_ingestion(raw_dataset.config_path, ["train"], settings=settings)
    assert summary.label_counts("train", "acne").corrupt == 1
    assert "over the limit" in summary.problems[0].message
    assert rows(raw_dataset) == []


def test_structure_check_catches_damage_and_truncation() -> None:
    jpeg, png = image_bytes(seed=30, size=(96, 64)), image_bytes(seed=31, fmt="PNG")
    check_structure(jpeg, "JPEG")
    check_structure(jpeg + b"\x00" * 16, "JPEG")  # padding after the end marker is fine
    check_structure(png, "PNG")
    for cut in (len(jpeg) - 2, len(jpeg) // 2, 300):
        with pytest.raises(CorruptImageError, match="truncated JPEG"):
            check_structure(jpeg[:cut], "JPEG")
    damaged = bytearray(png)
    damaged[len(png) // 2] ^= 0xFF
    with pytest.raises(CorruptImageError, match="CRC mismatch"):
        check_structure(bytes(damaged), "PNG")
    with pytest.raises(CorruptImageError, match="truncated PNG"):
        check_structure(png[:-12], "PNG")


def test_duplicates_under_one_label_are_one_row(raw_dataset: RawDataset) -> None:
    first = raw_dataset.add("train", "acne", "a.jpg", seed=7)
    shutil.copy(first, raw_dataset.raw / "train" / "acne" / "b.jpg")
    shutil.copy(first, raw_dataset.raw / "train" / "acne" / "c.jpg")
    summary = ingest(raw_dataset)
    counts = summary.label_counts("train", "acne")
    assert (counts.new, counts.duplicates) == (1, 2)
    assert len(rows(raw_dataset)) == 1 and len(store_keys(raw_dataset)) == 1
    assert Path(rows(raw_dataset)[0].source_path).name == "a.jpg"  # first in path order
    assert not summary.failed


def test_label_conflicts_are_reported_and_kept_out_of_training(raw_dataset: RawDataset) -> None:
    image = raw_dataset.add("train", "acne", "x.jpg", seed=8)
    copy = raw_dataset.raw / "train" / "lichen_planus" / "x_again.jpg"
    shutil.copy(image, copy)
    raw_dataset.add("train", "acne", "fine.jpg", seed=9)
    summary = ingest(raw_dataset)
    assert summary.failed
    assert len(summary.conflicts) == 1
    places = {(p.split, p.label) for p in summary.conflicts[0].places}
    assert places == {("train", "acne"), ("train", "lichen_planus")}
    assert summary.label_counts("train", "acne").conflicts == 1
    statuses = {
        (r.label, r.status) for r in rows(raw_dataset) if r.sha256 == summary.conflicts[0].sha256
    }
    assert statuses == {("acne", "conflict"), ("lichen_planus", "conflict")}
    usable = read_lesions(raw_dataset.db_path)  # what training reads: present rows only
    assert [Path(r.source_path).name for r in usable] == ["fine.jpg"]
    assert_store_matches_db(raw_dataset)

    copy.unlink()  # someone resolves the conflict
    resolved = ingest(raw_dataset)
    assert not resolved.failed and resolved.conflicts == []
    statuses = {
        (r.label, r.status) for r in rows(raw_dataset) if r.sha256 == summary.conflicts[0].sha256
    }
    assert statuses == {("acne", "present"), ("lichen_planus", "missing")}


def test_train_val_leakage_is_a_listed_warning(raw_dataset: RawDataset) -> None:
    image = raw_dataset.add("train", "acne", "leak.jpg", seed=10)
    shutil.copy(image, raw_dataset.raw / "val" / "acne" / "leak_copy.jpg")
    summary = ingest(raw_dataset)
    assert not summary.failed
    assert len(summary.leakage) == 1 and summary.conflicts == []
    assert {p.split for p in summary.leakage[0].places} == {"train", "val"}
    assert summary.label_counts("val", "acne").leakage == 1
    assert len(read_lesions(raw_dataset.db_path)) == 2  # one row per split


def test_leakage_is_found_against_a_split_not_scanned_this_time(raw_dataset: RawDataset) -> None:
    image = raw_dataset.add("val", "acne", "v.jpg", seed=11)
    ingest(raw_dataset, splits=("val",))
    shutil.copy(image, raw_dataset.raw / "train" / "acne" / "t.jpg")
    summary = ingest(raw_dataset, splits=("train",))
    assert len(summary.leakage) == 1
    assert summary.label_counts("train", "acne").leakage == 1


# --- incremental behaviour ------------------------------------------------------------------


def test_new_and_changed_files_are_picked_up(raw_dataset: RawDataset) -> None:
    populate(raw_dataset)
    ingest(raw_dataset)
    old = {r.source_path: r for r in rows(raw_dataset)}
    raw_dataset.add("train", "acne", "new_one.jpg", seed=500)
    changed = raw_dataset.add("train", "acne", "img_0.jpg", seed=501)  # new content, same name
    summary = ingest(raw_dataset)
    assert (summary.label_counts("train", "acne").new, summary.uploaded) == (2, 2)
    assert summary.label_counts("train", "acne").missing == 1  # the old bytes of img_0.jpg
    records = rows(raw_dataset)
    assert len(records) == 11
    old_version = next(
        r
        for r in records
        if r.sha256 == old[changed.relative_to(raw_dataset.root).as_posix()].sha256
    )
    assert old_version.status == "missing"
    assert old_version.object_key in store_keys(raw_dataset)  # kept in the store
    assert_store_matches_db(raw_dataset)


def test_vanished_files_are_marked_missing_and_their_objects_kept(raw_dataset: RawDataset) -> None:
    populate(raw_dataset)
    ingest(raw_dataset)
    gone = raw_dataset.raw / "val" / "acne" / "v.jpg"
    saved = gone.read_bytes()
    gone.unlink()
    summary = ingest(raw_dataset)
    assert summary.label_counts("val", "acne").missing == 1
    assert summary.rows_missing_total == 1 and not summary.failed
    missing = [r for r in rows(raw_dataset) if r.status == "missing"]
    assert [Path(r.source_path).name for r in missing] == ["v.jpg"]
    assert missing[0].object_key in store_keys(raw_dataset)
    assert len(read_lesions(raw_dataset.db_path)) == 8
    # reported once, not at every run
    assert ingest(raw_dataset).label_counts("val", "acne").missing == 0

    gone.write_bytes(saved)  # it comes back
    back = ingest(raw_dataset)
    assert (back.uploaded, back.label_counts("val", "acne").unchanged) == (0, 1)
    assert all(r.status == "present" for r in rows(raw_dataset))


def test_a_renamed_file_keeps_its_row_and_object(raw_dataset: RawDataset) -> None:
    original = raw_dataset.add("train", "acne", "before.jpg", seed=12)
    ingest(raw_dataset)
    renamed = original.with_name("after.jpg")
    original.rename(renamed)
    summary = ingest(raw_dataset)
    assert (summary.uploaded, summary.totals().unchanged, summary.totals().missing) == (0, 1, 0)
    assert Path(rows(raw_dataset)[0].source_path).name == "after.jpg"


def test_a_row_follows_its_bytes_when_its_file_is_rewritten(raw_dataset: RawDataset) -> None:
    first = raw_dataset.add("train", "acne", "a.jpg", seed=20)
    shutil.copy(first, raw_dataset.raw / "train" / "acne" / "b.jpg")  # a duplicate
    ingest(raw_dataset)
    [row] = rows(raw_dataset)
    assert Path(row.source_path).name == "a.jpg"
    raw_dataset.add("train", "acne", "a.jpg", seed=21)  # a.jpg now holds other bytes
    summary = ingest(raw_dataset)
    assert (summary.totals().new, summary.totals().unchanged, summary.totals().missing) == (1, 1, 0)
    old = next(r for r in rows(raw_dataset) if r.sha256 == row.sha256)
    assert (Path(old.source_path).name, old.status) == ("b.jpg", "present")


def test_dry_run_never_touches_the_store(raw_dataset: RawDataset) -> None:
    populate(raw_dataset)
    closed = load_settings(
        storage_backend="s3",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        s3_access_key_id="u",
        s3_secret_access_key="p",
        s3_max_attempts=1,
    )
    summary = run_ingestion(
        raw_dataset.config_path, ["train", "val"], dry_run=True, settings=closed
    )  # any store call would fail: nothing listens
    assert (summary.dry_run, summary.totals().new, summary.uploaded) == (True, 9, 0)
    assert rows(raw_dataset) == []  # no row without an object
    local = run_ingestion(
        raw_dataset.config_path, ["train"], dry_run=True, settings=raw_dataset.settings
    )
    assert local.totals().new == 6
    assert not raw_dataset.objects.exists()
    with sqlite3.connect(raw_dataset.db_path) as conn:  # the scan cache was refreshed
        assert conn.execute("SELECT COUNT(*) FROM source_files").fetchone()[0] == 9
    real = ingest(raw_dataset)
    assert real.uploaded == 9
    assert_store_matches_db(raw_dataset)


def test_dry_run_marks_vanished_files(raw_dataset: RawDataset) -> None:
    populate(raw_dataset)
    ingest(raw_dataset)
    (raw_dataset.raw / "train" / "acne" / "img_1.jpg").unlink()
    before = store_keys(raw_dataset)
    summary = ingest(raw_dataset, dry_run=True)
    assert summary.totals().missing == 1
    assert store_keys(raw_dataset) == before


# --- file system edge cases ------------------------------------------------------------------


def test_symlinks_leaving_the_data_root_are_not_followed(
    raw_dataset: RawDataset, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside")
    secret = write_image(outside / "secret.jpg", seed=13)
    write_image(outside / "folder" / "also_secret.jpg", seed=14)
    acne = raw_dataset.raw / "train" / "acne"
    (acne / "escape.jpg").symlink_to(secret)
    (acne / "escape_dir").symlink_to(outside / "folder", target_is_directory=True)
    label_dir = raw_dataset.raw / "val" / "atopic_dermatitis"
    label_dir.rmdir()
    label_dir.symlink_to(outside / "folder", target_is_directory=True)
    inside = raw_dataset.add("val", "acne", "real.jpg", seed=15)
    (acne / "inside_link.jpg").symlink_to(os.path.relpath(inside, acne))
    summary = ingest(raw_dataset)
    escaped = {Path(p.path).name for p in summary.problems if p.kind == "symlink_outside_root"}
    assert escaped == {"escape.jpg", "escape_dir", "atopic_dermatitis"}
    sources = sorted(Path(r.source_path).name for r in rows(raw_dataset))
    assert sources == ["inside_link.jpg", "real.jpg"]  # a link inside the root is followed
    assert all(
        hashlib.sha256(secret.read_bytes()).hexdigest() != r.sha256 for r in rows(raw_dataset)
    )


def test_unknown_label_folders_are_reported(raw_dataset: RawDataset) -> None:
    raw_dataset.add("train", "melanoma", "m.jpg", seed=16)
    shutil.rmtree(raw_dataset.raw / "val" / "lichen_planus")
    summary = ingest(raw_dataset)
    assert summary.unknown_label_folders["train"] == ["melanoma"]
    assert summary.missing_label_folders["val"] == ["lichen_planus"]
    assert rows(raw_dataset) == []


def test_a_missing_split_folder_is_an_error_not_mass_deletion(raw_dataset: RawDataset) -> None:
    populate(raw_dataset)
    ingest(raw_dataset)
    shutil.rmtree(raw_dataset.raw / "val")
    with pytest.raises(DataError, match="val.*does not exist"):
        ingest(raw_dataset)
    assert all(r.status == "present" for r in rows(raw_dataset))


def test_unknown_split_is_a_config_error(raw_dataset: RawDataset) -> None:
    with pytest.raises(ConfigError, match="'test' is not in the dataset config"):
        ingest(raw_dataset, splits=("train", "test"))


def test_names_are_collision_safe(raw_dataset: RawDataset) -> None:
    raw_dataset.add("train", "acne", "same name.jpg", seed=17)
    write_image(raw_dataset.raw / "train" / "acne" / "sub" / "same name.jpg", seed=18)
    ingest(raw_dataset)
    keys = sorted(r.object_key for r in rows(raw_dataset))
    assert len(set(keys)) == 2 and all(KEY_RE.match(k) for k in keys)
    assert all("/same_name-" in k for k in keys)
    key = object_key_for("skin", "train", "acne", "../../evil name?.JPG", "ab" * 32, "JPEG")
    assert key == "skin/train/acne/evil_name-abababababababab.jpg"


# --- the store and the DB always agree ----------------------------------------------------------


def test_crash_leftovers_are_adopted_or_deleted(raw_dataset: RawDataset) -> None:
    populate(raw_dataset)
    ingest(raw_dataset)
    store = LocalObjectStore(raw_dataset.objects)
    bucket = raw_dataset.bucket
    row = rows(raw_dataset)[0]
    # 1. an extra copy of an ingested image under another name: a duplicate object
    duplicate_key = f"skin/{row.split}/{row.label}/other-{row.sha256[:16]}.jpg"
    store.put_bytes(bucket, duplicate_key, store.get_bytes(bucket, row.object_key))
    # 2. an object uploaded just before a crash whose file is gone now: adopted as missing
    lost = image_bytes(seed=999)
    lost_sha = hashlib.sha256(lost).hexdigest()
    adopted_key = f"skin/train/acne/gone-{lost_sha[:16]}.jpg"
    store.put_bytes(bucket, adopted_key, lost)
    # 3. an object of a present row deleted behind our back: uploaded again
    store.delete(bucket, row.object_key)
    # 4. something we did not write: left alone, reported
    store.put_bytes(bucket, "skin/train/acne/README.txt", b"hello")

    summary = ingest(raw_dataset)
    assert (summary.orphans_deleted, summary.orphans_adopted, summary.uploaded) == (1, 1, 1)
    assert not store.exists(bucket, duplicate_key)
    adopted = next(r for r in rows(raw_dataset) if r.object_key == adopted_key)
    assert (adopted.status, adopted.sha256, adopted.source_path) == ("missing", lost_sha, "")
    assert store.exists(bucket, row.object_key)
    assert [p.kind for p in summary.problems] == ["foreign_object"]
    store.delete(bucket, "skin/train/acne/README.txt")
    assert_store_matches_db(raw_dataset)


def test_a_row_whose_object_and_file_are_both_gone_is_removed(raw_dataset: RawDataset) -> None:
    populate(raw_dataset)
    ingest(raw_dataset)
    row = next(r for r in rows(raw_dataset) if r.split == "val")
    Path(row.source_path).unlink()
    LocalObjectStore(raw_dataset.objects).delete(raw_dataset.bucket, row.object_key)
    summary = ingest(raw_dataset)
    assert [p.kind for p in summary.problems] == ["object_lost"]
    assert row.object_key not in {r.object_key for r in rows(raw_dataset)}
    assert_store_matches_db(raw_dataset)


def test_a_second_concurrent_ingestion_is_refused(raw_dataset: RawDataset) -> None:
    populate(raw_dataset, per_label=1)
    lock_path = raw_dataset.db_path.with_name(raw_dataset.db_path.name + ".lock")
    lock_path.parent.mkdir(parents=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DataError, match=r"another ingestion \(or a training\) is using"):
            ingest(raw_dataset)
    assert ingest(raw_dataset).uploaded == 6


def test_ingestion_cannot_start_while_a_training_reads_the_db(raw_dataset: RawDataset) -> None:
    """Training holds the DB's lock shared; ingestion needs it alone (and is retried later)."""
    populate(raw_dataset, per_label=1)
    with metadata_lock(raw_dataset.db_path, shared=True):
        with metadata_lock(raw_dataset.db_path, shared=True):  # two trainings may read at once
            with pytest.raises(DataError, match="is using"):
                ingest(raw_dataset)
    assert ingest(raw_dataset).uploaded == 6


def test_a_training_waits_for_a_running_ingestion_then_gives_up(raw_dataset: RawDataset) -> None:
    import time

    with metadata_lock(raw_dataset.db_path, shared=False):
        started = time.monotonic()
        with pytest.raises(DataError, match="an ingestion is writing"):
            with metadata_lock(raw_dataset.db_path, shared=True, wait_s=0.5):
                pass
        assert time.monotonic() - started >= 0.5
    with metadata_lock(raw_dataset.db_path, shared=True, wait_s=5):
        pass  # once the ingestion is done, the training gets the lock


def test_an_unreachable_store_fails_with_one_line(raw_dataset: RawDataset) -> None:
    populate(raw_dataset, per_label=1)
    settings = load_settings(
        storage_backend="s3",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        s3_access_key_id="u",
        s3_secret_access_key="p",
        s3_max_attempts=1,
        s3_connect_timeout_s=0.5,
    )
    with pytest.raises(StorageError, match="cannot reach S3 endpoint") as info:
        run_ingestion(raw_dataset.config_path, ["train", "val"], settings=settings)
    assert "\n" not in str(info.value)


def test_s3_backend_ingestion_round_trip(raw_dataset: RawDataset, moto_endpoint: str) -> None:
    bucket = f"skin-{uuid.uuid4().hex[:10]}"
    write_dataset_config(raw_dataset.config_path, raw_dataset.labels, bucket=bucket)
    populate(raw_dataset)
    settings = load_settings(
        storage_backend="s3",
        s3_endpoint_url=moto_endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    first = run_ingestion(raw_dataset.config_path, ["train", "val"], settings=settings)
    assert first.uploaded == 9
    store = S3ObjectStore(moto_endpoint, "testing", "testing")
    keys = set(store.list_keys(bucket, "skin/"))
    records = rows(raw_dataset)
    assert keys == {r.object_key for r in records} and len(keys) == 9
    for record in records:
        assert (
            hashlib.sha256(store.get_bytes(bucket, record.object_key)).hexdigest() == record.sha256
        )
    (raw_dataset.raw / "train" / "acne" / "img_0.jpg").unlink()
    second = run_ingestion(raw_dataset.config_path, ["train", "val"], settings=settings)
    assert (second.uploaded, second.totals().unchanged, second.totals().missing) == (0, 8, 1)
    assert set(store.list_keys(bucket, "skin/")) == keys  # the vanished file's object is kept


# --- the CLI --------------------------------------------------------------------------------------


def _cli(args: list[str]):
    from skin_mlops.cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "expected_splits"),
    [
        (["--splits", "train", "val"], {"train", "val"}),
        (["--splits", "train", "--splits", "val"], {"train", "val"}),
        (["--splits", "val"], {"val"}),
        ([], {"train", "val"}),
    ],
)
def test_cli_splits_forms(
    raw_dataset: RawDataset, args: list[str], expected_splits: set[str]
) -> None:
    populate(raw_dataset, per_label=1)
    result = _cli(["ingest", "--config", str(raw_dataset.config_path), *args])
    assert result.exit_code == 0, result.output
    assert {r.split for r in rows(raw_dataset)} == expected_splits
    assert "new" in result.output and "acne" in result.output


def test_cli_dry_run_flag_after_splits(raw_dataset: RawDataset) -> None:
    populate(raw_dataset, per_label=1)
    result = _cli(
        [
            "ingest",
            "--config",
            str(raw_dataset.config_path),
            "--splits",
            "train",
            "val",
            "--dry-run",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "would upload 6" in " ".join(result.output.split())
    assert rows(raw_dataset) == [] and not raw_dataset.objects.exists()


def _console_script() -> str:
    script = Path(sys.executable).with_name("skin-mlops")
    if not script.exists():
        missing_tool("skin-mlops console script not installed in this venv (uv sync)")
    return str(script)


def test_cli_exit_codes(raw_dataset: RawDataset) -> None:
    script = _console_script()
    env = {**os.environ, "LOCAL_OBJECT_ROOT": str(raw_dataset.objects)}
    populate(raw_dataset, per_label=1)
    config = str(raw_dataset.config_path)
    ok = subprocess.run(
        [script, "ingest", "--config", config, "--splits", "train", "val"],
        capture_output=True,
        text=True,
        env=env,
        cwd=raw_dataset.root,
    )
    assert ok.returncode == 0, ok.stderr
    (raw_dataset.raw / "train" / "acne" / "broken.jpg").write_bytes(image_bytes(seed=3)[:300])
    broken = subprocess.run(
        [script, "ingest", "--config", config],
        capture_output=True,
        text=True,
        env=env,
        cwd=raw_dataset.root,
    )
    assert broken.returncode == 1
    assert "broken.jpg" in broken.stdout and "corrupt" in broken.stdout
    bad = subprocess.run(
        [script, "ingest", "--config", "nope.yaml"],
        capture_output=True,
        text=True,
        env=env,
        cwd=raw_dataset.root,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: dataset config not found: nope.yaml (pass --config <yaml>)"
    ]
    assert "Traceback" not in bad.stderr


# --- crash safety (slow) ------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_then_a_clean_run_leaves_db_and_store_in_agreement(
    raw_dataset: RawDataset,
) -> None:
    """Kill ``skin-mlops ingest`` with SIGKILL 5 times at random moments, rerun cleanly:
    rows == objects == files, zero orphans, no temp files."""
    import random
    import signal
    import time

    script = _console_script()
    rng = random.Random(1234)
    n_files = 0

    def add_images(count: int) -> None:
        """New photos = new work for the next run (a finished run leaves none)."""
        nonlocal n_files
        for index in range(n_files, n_files + count):
            label = raw_dataset.labels[index % 3]
            write_image(
                raw_dataset.raw
                / ("val" if index % 5 == 0 else "train")
                / label
                / f"img_{index:04d}.jpg",
                seed=index,
                size=(320, 240),
            )
        n_files += count

    add_images(800)
    env = {**os.environ, "LOCAL_OBJECT_ROOT": str(raw_dataset.objects)}
    command = [script, "ingest", "--config", str(raw_dataset.config_path)]
    bucket_dir = raw_dataset.objects / raw_dataset.bucket

    def stored() -> int:
        return sum(1 for _ in bucket_dir.rglob("*.jpg")) if bucket_dir.exists() else 0

    # Five kills, whatever the machine's speed: a run that finishes before its kill (an
    # 800-photo ingestion takes ~1 s here) is not counted, and new photos give the next
    # run work to be interrupted in.
    killed = attempts = 0
    while killed < 5 and attempts < 20:
        if stored() >= n_files:
            add_images(200)
        process = subprocess.Popen(
            command,
            env=env,
            cwd=raw_dataset.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if attempts == 0:
            # Early: during start-up / the scan (before any upload).
            time.sleep(rng.uniform(0.02, 0.3))
        else:
            # Mid-upload: once a random number of new objects landed (at most half of
            # what is left, so every kill interrupts real work).
            target = stored() + rng.randint(1, max(1, (n_files - stored()) // 2))
            deadline = time.monotonic() + 120
            while process.poll() is None and stored() < target and time.monotonic() < deadline:
                time.sleep(0.001)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        process.wait()
        attempts += 1
    assert killed == 5, (killed, attempts, stored())  # the runs were really interrupted
    clean = subprocess.run(command, env=env, cwd=raw_dataset.root, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr

    records = rows(raw_dataset)
    assert len(records) == n_files and all(r.status == "present" for r in records)
    assert_store_matches_db(raw_dataset)  # same keys, right bytes: no orphan, no dangling row
    per_folder = {(f.parent.parent.name, f.parent.name) for f in raw_dataset.image_files()}
    for split, label in per_folder:
        on_disk = len(list((raw_dataset.raw / split / label).iterdir()))
        assert sum(1 for r in records if (r.split, r.label) == (split, label)) == on_disk
    incoming = raw_dataset.objects / ".incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == []


def test_summary_fits_80_columns_and_shows_problem_columns_only_with_problems(
    raw_dataset: RawDataset,
) -> None:
    from rich.console import Console

    populate(raw_dataset)
    console = Console(record=True, width=80, color_system=None)
    print_summary(ingest(raw_dataset), console)
    clean = console.export_text()
    assert max(len(line) for line in clean.splitlines()) <= 80, clean
    assert "corrupt" not in clean.split("none found:")[0]  # no column for it...
    assert "none found: not image, corrupt, dupes, conflicts, leakage" in clean  # ...a line

    (raw_dataset.raw / "train" / "acne" / "cut.jpg").write_bytes(image_bytes(seed=9)[:300])
    console = Console(record=True, width=80, color_system=None)
    print_summary(ingest(raw_dataset), console)
    broken = console.export_text()
    header = next(line for line in broken.splitlines() if "unchanged" in line)
    assert "corrupt" in header and "dupes" not in header
    assert "none found: not image, dupes, conflicts, leakage" in broken
