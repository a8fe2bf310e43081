"""The metadata DB: schema, WAL mode, one row per image per split/label, read helpers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from skin_mlops.core.errors import DataError
from skin_mlops.metadata import (
    SCHEMA_VERSION,
    LesionRecord,
    MetadataDB,
    SourceFileRecord,
    count_lesions,
    read_lesions,
    schema_version,
    utc_now,
)


def _record(sha: str, split: str = "train", label: str = "acne", **changes: object) -> LesionRecord:
    values = dict(
        sha256=sha,
        dataset="ds",
        split=split,
        label=label,
        source_path=f"data/raw/{split}/{label}/{sha}.jpg",
        object_key=f"skin/{split}/{label}/{sha}.jpg",
        size_bytes=10,
        width=4,
        height=3,
        format="JPEG",
        ingested_at=utc_now(),
        status="present",
    )
    values.update(changes)
    return LesionRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    with MetadataDB(tmp_path / "meta" / "m.db") as opened:
        yield opened


def test_schema_has_the_required_columns_and_wal(db: MetadataDB) -> None:
    columns = {row[1] for row in db.conn.execute("PRAGMA table_info(lesions_data)")}
    assert {
        "sha256",
        "dataset",
        "split",
        "label",
        "source_path",
        "object_key",
        "size_bytes",
        "width",
        "height",
        "format",
        "ingested_at",
        "status",
    } <= columns
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_one_row_per_image_per_split_and_label(db: MetadataDB) -> None:
    with db.transaction():
        db.upsert_lesion(_record("a" * 64))
        db.upsert_lesion(_record("a" * 64, source_path="elsewhere.jpg"))  # same identity
        db.upsert_lesion(_record("a" * 64, label="lichen_planus"))
        db.upsert_lesion(_record("a" * 64, split="val"))
    rows = db.lesions("ds")
    assert len(rows) == 3
    assert rows[("train", "acne", "a" * 64)].source_path == "elsewhere.jpg"


def test_object_keys_are_unique(db: MetadataDB) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        with db.transaction():
            db.upsert_lesion(_record("a" * 64, object_key="same"))
            db.upsert_lesion(_record("b" * 64, object_key="same"))
    assert db.lesions("ds") == {}  # the transaction was rolled back as a whole


def test_status_is_constrained(db: MetadataDB) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        with db.transaction():
            db.upsert_lesion(_record("a" * 64, status="deleted"))


def test_read_lesions_filters_and_orders(db: MetadataDB) -> None:
    with db.transaction():
        db.upsert_lesion(_record("b" * 64))
        db.upsert_lesion(_record("a" * 64))
        db.upsert_lesion(_record("c" * 64, split="val"))
        db.upsert_lesion(_record("d" * 64, status="missing"))
        db.upsert_lesion(_record("e" * 64, label="lichen_planus", status="conflict"))
        db.upsert_lesion(_record("f" * 64, dataset="other"))
    path = db.path
    assert [r.sha256[0] for r in read_lesions(path, dataset="ds")] == ["a", "b", "c"]
    assert [r.sha256[0] for r in read_lesions(path, dataset="ds", splits=["val"])] == ["c"]
    assert [r.sha256[0] for r in read_lesions(path, splits=["train"])] == ["a", "b", "f"]
    every = read_lesions(path, dataset="ds", statuses=("present", "missing", "conflict"))
    assert len(every) == 5
    assert read_lesions(path, splits=[]) == []
    assert count_lesions(path, "ds") == {("train", "acne"): 2, ("val", "acne"): 1}
    record = read_lesions(path, dataset="ds", splits=["val"])[0]
    assert record.object_key == "skin/val/acne/" + "c" * 64 + ".jpg" and record.width == 4


def test_set_lesion_state_and_delete(db: MetadataDB) -> None:
    with db.transaction():
        db.upsert_lesion(_record("a" * 64))
        db.set_lesion_state("ds", "train", "acne", "a" * 64, status="missing")
    assert db.lesions("ds")[("train", "acne", "a" * 64)].status == "missing"
    with db.transaction():
        db.set_lesion_state("ds", "train", "acne", "a" * 64, status="present", source_path="n.jpg")
    row = db.lesions("ds")[("train", "acne", "a" * 64)]
    assert (row.status, row.source_path) == ("present", "n.jpg")
    with db.transaction():
        db.delete_lesion_by_key(row.object_key)
    assert db.all_object_keys() == set()


def test_source_file_cache_round_trip(db: MetadataDB) -> None:
    record = SourceFileRecord(
        "data/raw/train/acne/x.jpg",
        "ds",
        "train",
        "acne",
        10,
        1,
        2,
        3,
        "a" * 64,
        "image",
        4,
        3,
        "JPEG",
        None,
    )
    with db.transaction():
        db.upsert_source_files([record])
    cached = db.source_files("ds", ["train"])["data/raw/train/acne/x.jpg"]
    assert cached == record
    assert cached.same_stat(10, 1, 2, 3) and not cached.same_stat(10, 1, 2, 4)
    assert db.source_files("ds", ["val"]) == {}
    with db.transaction():
        db.delete_source_files([record.path])
    assert db.source_files("ds", ["train"]) == {}


def test_reading_a_missing_db_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run `skin-mlops ingest` first"):
        read_lesions(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()  # reading never creates the DB


def test_reading_a_non_db_file_is_one_clear_line(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_text("not sqlite at all, " * 100)
    with pytest.raises(DataError, match="cannot read metadata DB"):
        read_lesions(bogus)


# --- schema version ------------------------------------------------------------------------------


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def test_the_writer_stamps_the_schema_version(db: MetadataDB) -> None:
    assert schema_version(db.conn) == SCHEMA_VERSION
    assert _user_version(db.path) == SCHEMA_VERSION


@pytest.fixture
def newer_db(tmp_path: Path) -> Path:
    """A real DB file as a future skin-mlops would leave it: our tables, a higher version."""
    path = tmp_path / "newer.db"
    with MetadataDB(path) as opened:
        with opened.transaction():
            opened.upsert_lesion(_record("a" * 64))
        opened.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    return path


@pytest.mark.parametrize("open_it", [MetadataDB, read_lesions], ids=["writer", "reader"])
def test_a_db_from_a_newer_version_is_refused_in_one_line(newer_db: Path, open_it) -> None:
    with pytest.raises(DataError) as caught:
        open_it(newer_db)
    message = str(caught.value)
    assert "\n" not in message
    assert str(newer_db) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"version {SCHEMA_VERSION} this skin-mlops knows" in message
    assert _user_version(newer_db) == SCHEMA_VERSION + 1  # nothing rewritten


def test_a_db_from_before_versioning_is_read_and_stamped_by_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with MetadataDB(path) as opened:
        with opened.transaction():
            opened.upsert_lesion(_record("b" * 64))
        opened.conn.execute("PRAGMA user_version=0")  # as written before the version existed
    assert [r.sha256 for r in read_lesions(path)] == ["b" * 64]  # readers accept it as it is
    assert _user_version(path) == 0
    with MetadataDB(path) as opened:
        assert set(opened.lesions("ds")) == {("train", "acne", "b" * 64)}
    assert _user_version(path) == SCHEMA_VERSION
