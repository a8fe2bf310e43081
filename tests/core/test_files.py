"""The atomic-write helper: content written, nothing left behind, the old file kept on failure."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from skin_mlops.core import files
from skin_mlops.core.files import atomic_path, atomic_write_bytes, atomic_write_text


def leftovers(folder: Path) -> list[str]:
    """Everything in ``folder`` that looks like one of the helper's temporary files."""
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def disk_full(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_bytes_are_written_and_no_temporary_file_remains(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")  # replaces an existing file
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_text_is_written_encoded(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    atomic_write_text(target, '{"name": "é"}')
    assert target.read_bytes() == '{"name": "é"}'.encode()
    assert leftovers(tmp_path) == []


def test_atomic_path_hands_the_writer_a_hidden_sibling_with_the_suffix(tmp_path: Path) -> None:
    target = tmp_path / "model.weights.h5"
    with atomic_path(target, suffix=".weights.h5") as temp:
        assert temp.parent == tmp_path
        assert temp.name.startswith(".model.weights.h5.") and temp.name.endswith(".weights.h5")
        assert not temp.exists() and not target.exists()
        temp.write_bytes(b"weights")
    assert target.read_bytes() == b"weights"
    assert leftovers(tmp_path) == []


def test_a_writer_failing_midway_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="converter crashed"), atomic_path(target) as temp:
        temp.write_bytes(b"half writ")
        raise RuntimeError("converter crashed")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_full_disk_during_the_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write itself fails (ENOSPC from fsync, where a full disk often shows first)."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_failed_rename_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    monkeypatch.setattr(files.os, "replace", disk_full)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new", fsync=False)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_fsync_flushes_the_file_and_its_folder_and_can_be_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    atomic_write_bytes(tmp_path / "a", b"x")
    assert len(synced) == 2  # the file, then the folder holding the new name
    synced.clear()
    atomic_write_bytes(tmp_path / "b", b"x", fsync=False)
    assert synced == []


def test_a_writer_that_never_creates_the_file_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(FileNotFoundError), atomic_path(target, fsync=False):
        pass
    assert not target.exists()


# --- the image cache of training -------------------------------------------------------------


def test_image_fetcher_leaves_no_temporary_file_when_its_cache_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from skin_mlops.metadata import LesionRecord
    from skin_mlops.modeling.data import ImageFetcher
    from skin_mlops.storage import LocalObjectStore

    data = b"\xff\xd8 not really a jpeg \xff\xd9"
    sha = hashlib.sha256(data).hexdigest()
    store = LocalObjectStore(tmp_path / "objects")
    (tmp_path / "objects" / "skin-processed").mkdir(parents=True)
    store.put_bytes("skin-processed", "skin/train/acne/a.jpg", data)
    record = LesionRecord(
        sha256=sha,
        dataset="ds",
        split="train",
        label="acne",
        source_path=str(tmp_path / "gone.jpg"),  # not on disk: the store is read
        object_key="skin/train/acne/a.jpg",
        size_bytes=len(data),
        width=1,
        height=1,
        format="JPEG",
        ingested_at="2024-01-01T00:00:00Z",
    )
    fetch = ImageFetcher(store, "skin-processed", tmp_path / "cache")
    cache_folder = fetch.cache_path(sha).parent

    monkeypatch.setattr(os, "replace", disk_full)  # the cache write fails at the last step
    with pytest.raises(OSError, match="No space left"):
        fetch(record)
    assert cache_folder.is_dir() and list(cache_folder.iterdir()) == []

    monkeypatch.undo()
    assert fetch(record) == data  # the next call caches it for good
    assert [p.name for p in cache_folder.iterdir()] == [sha]
    assert fetch.downloaded == 1
