"""``export_format.publish``: the live folder is never deleted, the swap stays atomic, the
published files reach the disk (no TensorFlow: plain export folders)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from skin_mlops import export_format
from skin_mlops.preprocessing import PREPROCESSING_ID


def _stage(link: Path, version: str, onnx: bytes) -> Path:
    """A complete staging folder whose ``model.onnx`` holds ``onnx`` (not parsed here)."""
    staging = export_format.new_version_dir(link, version)
    (staging / export_format.ONNX_MODEL_FILE).parent.mkdir(parents=True)
    (staging / export_format.ONNX_MODEL_FILE).write_bytes(onnx)
    signature = export_format.ModelSignature(
        model_version=version,
        backbone="none",
        image_size=8,
        preprocessing_id=PREPROCESSING_ID,
        labels=["a", "b"],
        input=export_format.TensorSpec(name="image", shape=[None, 8, 8, 3]),
        output=export_format.TensorSpec(name="logits", shape=[None, 2]),
        created_at="2026-01-01T00:00:00+00:00",  # the same export, byte for byte
    )
    export_format.write_metadata(staging, signature)
    return staging


def test_republishing_the_live_version_never_deletes_the_folder_readers_hold(
    tmp_path: Path,
) -> None:
    link = tmp_path / "runs" / "skin5-current"
    live = export_format.publish(_stage(link, "v1", b"model A"), link, "v1")
    held = export_format.resolve_export_dir(link)  # a reader that resolved the link once
    assert held == live.resolve()
    failures: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:  # resolves and reads continuously, as the API's poller does
        while not stop.is_set():
            try:
                folder = export_format.resolve_export_dir(link)
                export_format.read_signature(folder)
                (folder / export_format.ONNX_MODEL_FILE).read_bytes()
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                failures.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(20):  # the same export again: nothing to do, the folder stays
            again = export_format.publish(_stage(link, "v1", b"model A"), link, "v1")
            assert again == live and link.resolve() == held
        changed = export_format.publish(_stage(link, "v1", b"model B"), link, "v1")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures, failures[0]
    assert changed != live and changed.name == "v1.2"  # new bytes, new folder, then the swap
    assert link.resolve() == changed.resolve()
    assert (link / export_format.ONNX_MODEL_FILE).read_bytes() == b"model B"
    assert export_format.read_signature(changed).model_version == "v1"
    assert (held / export_format.ONNX_MODEL_FILE).read_bytes() == b"model A", "held path reads"
    leftovers = [p.name for p in held.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers and not [p for p in link.parent.iterdir() if p.name.startswith(".")]


def test_a_same_named_folder_the_link_does_not_point_at_is_replaced(tmp_path: Path) -> None:
    link = tmp_path / "runs" / "skin5-current"
    export_format.publish(_stage(link, "v1", b"old"), link, "v1")
    export_format.publish(_stage(link, "v2", b"two"), link, "v2")
    final = export_format.publish(_stage(link, "v1", b"new"), link, "v1")
    assert final.name == "v1" and (link / export_format.ONNX_MODEL_FILE).read_bytes() == b"new"
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".")]


def test_publish_flushes_every_file_and_folder_before_and_after_the_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed_files: list[Path] = []
    flushed_folders: list[Path] = []
    real_file, real_folder = export_format.fsync_path, export_format.fsync_directory

    def fsync_file(path: Path) -> None:
        flushed_files.append(Path(path))
        real_file(path)

    def fsync_folder(path: Path) -> None:
        flushed_folders.append(Path(path))
        real_folder(path)

    monkeypatch.setattr(export_format, "fsync_path", fsync_file)
    monkeypatch.setattr(export_format, "fsync_directory", fsync_folder)
    link = tmp_path / "runs" / "skin5-current"
    staging = _stage(link, "v1", b"model")
    files = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    final = export_format.publish(staging, link, "v1")
    assert sorted(p.relative_to(staging) for p in flushed_files) == files
    assert {staging, staging / "model", staging / "inference", staging / "data"} <= set(
        flushed_folders
    )
    assert final.parent in flushed_folders, "the rename into runs/skin5/"
    assert flushed_folders[-1] == link.parent, "the link swap"
