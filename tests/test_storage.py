"""Object store: the same behaviour from the local backend and from S3 (a real moto_server)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest_fixtures import free_port, start_moto_server, stop_process
from skin_mlops.core.config import load_settings
from skin_mlops.core.errors import ConfigError, StorageError
from skin_mlops.storage import (
    LocalObjectStore,
    ObjectNotFoundError,
    ObjectStore,
    S3ObjectStore,
    make_object_store,
    upload_directory,
)


def _unique_bucket() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each interface test runs once per backend."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    endpoint = request.getfixturevalue("moto_endpoint")
    return S3ObjectStore(endpoint, "testing", "testing", max_attempts=2, connect_timeout=2)


@pytest.fixture
def bucket(store: ObjectStore) -> str:
    name = _unique_bucket()
    store.ensure_bucket(name)
    return name


# --- the interface, on both backends -----------------------------------------------------


def test_put_get_exists_delete_round_trip(store: ObjectStore, bucket: str) -> None:
    assert not store.exists(bucket, "skin/train/acne/a.jpg")
    store.put_bytes(bucket, "skin/train/acne/a.jpg", b"first")
    assert store.exists(bucket, "skin/train/acne/a.jpg")
    assert store.get_bytes(bucket, "skin/train/acne/a.jpg") == b"first"
    store.put_bytes(bucket, "skin/train/acne/a.jpg", b"second")  # overwrite
    assert store.get_bytes(bucket, "skin/train/acne/a.jpg") == b"second"
    store.delete(bucket, "skin/train/acne/a.jpg")
    assert not store.exists(bucket, "skin/train/acne/a.jpg")
    store.delete(bucket, "skin/train/acne/a.jpg")  # deleting an absent key is fine


def test_list_keys_filters_by_prefix(store: ObjectStore, bucket: str) -> None:
    keys = [
        "skin/train/acne/1.jpg",
        "skin/train/acne/2.jpg",
        "skin/train/lp/3.jpg",
        "skin/val/acne/4.jpg",
        "skin2/train/x.jpg",
        "top.txt",
    ]
    for key in keys:
        store.put_bytes(bucket, key, key.encode())
    assert sorted(store.list_keys(bucket)) == sorted(keys)
    assert sorted(store.list_keys(bucket, "skin/train/")) == keys[:3]
    assert sorted(store.list_keys(bucket, "skin/train/ac")) == keys[:2]
    assert sorted(store.list_keys(bucket, "skin")) == keys[:5]
    assert list(store.list_keys(bucket, "nothing/here/")) == []


def test_put_file_and_download_file(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(100_000))
    store.put_file(bucket, "models/m/model.onnx", source)
    dest = tmp_path / "out" / "deep" / "model.onnx"
    store.download_file(bucket, "models/m/model.onnx", dest)
    assert dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["model.onnx"]  # no temp file left


def test_missing_object_is_object_not_found(
    store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    with pytest.raises(ObjectNotFoundError, match="object not found"):
        store.get_bytes(bucket, "no/such/key.jpg")
    with pytest.raises(ObjectNotFoundError):
        store.download_file(bucket, "no/such/key.jpg", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_missing_bucket_is_one_clear_line(store: ObjectStore) -> None:
    missing = _unique_bucket()
    for call in (
        lambda: store.get_bytes(missing, "k"),
        lambda: store.put_bytes(missing, "k", b"x"),
        lambda: list(store.list_keys(missing)),
    ):
        with pytest.raises(StorageError) as info:
            call()
        assert "does not exist" in str(info.value) and missing in str(info.value)
        assert "\n" not in str(info.value)


def test_ensure_bucket_is_idempotent(store: ObjectStore) -> None:
    name = _unique_bucket()
    store.ensure_bucket(name)
    store.put_bytes(name, "k", b"kept")
    store.ensure_bucket(name)
    assert store.get_bytes(name, "k") == b"kept"


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a\\b"])
def test_bad_keys_are_rejected(store: ObjectStore, bucket: str, key: str) -> None:
    with pytest.raises(StorageError, match="invalid object key"):
        store.put_bytes(bucket, key, b"x")


def test_bad_bucket_name_is_rejected(store: ObjectStore) -> None:
    with pytest.raises(StorageError, match="invalid bucket name"):
        store.ensure_bucket("Bad_Bucket")


def test_upload_directory_keeps_relative_paths(store: ObjectStore, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    (folder / "model").mkdir(parents=True)
    (folder / "inference").mkdir()
    (folder / "model" / "model.onnx").write_bytes(b"onnx")
    (folder / "inference" / "signature.json").write_text("{}")
    name = _unique_bucket()
    keys = upload_directory(store, name, "/skin/models/run1/", folder)
    assert keys == [
        "skin/models/run1/inference/signature.json",
        "skin/models/run1/model/model.onnx",
    ]
    assert store.get_bytes(name, "skin/models/run1/model/model.onnx") == b"onnx"
    with pytest.raises(StorageError, match="not a directory"):
        upload_directory(store, name, "x", folder / "nope")


# --- local backend specifics ----------------------------------------------------------------


def test_local_layout_is_root_bucket_key(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.ensure_bucket("skin-processed")
    store.put_bytes("skin-processed", "skin/train/acne/a.jpg", b"abc")
    assert (
        tmp_path / "skin-processed" / "skin" / "train" / "acne" / "a.jpg"
    ).read_bytes() == b"abc"
    assert list((tmp_path / ".incoming").iterdir()) == []  # the temp file was renamed away


def test_local_stale_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.ensure_bucket("bucket-a")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    incoming = tmp_path / ".incoming"
    incoming.mkdir()
    stale = incoming / f"{dead.stdout.strip()}-abc.part"
    mine = incoming / f"{os.getpid()}-def.part"
    stale.write_bytes(b"half")
    mine.write_bytes(b"in progress")
    store.ensure_bucket("bucket-a")
    assert not stale.exists()
    assert mine.exists()  # a live writer's temp file is left alone


# --- S3 backend specifics -------------------------------------------------------------------


def test_s3_unreachable_endpoint_is_one_line_and_fast() -> None:
    port = free_port()  # nothing listens there
    store = S3ObjectStore(f"http://127.0.0.1:{port}", "a", "b", max_attempts=1, connect_timeout=0.5)
    with pytest.raises(StorageError) as info:
        store.ensure_bucket("skin-processed")
    message = str(info.value)
    assert message.startswith(f"cannot reach S3 endpoint http://127.0.0.1:{port}")
    assert "\n" not in message
    with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
        store.put_bytes("skin-processed", "k", b"x")


@pytest.fixture(scope="module")
def moto_with_auth() -> Iterator[str]:
    """A moto_server that checks credentials (none are valid)."""
    process, endpoint = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield endpoint
    stop_process(process)


def test_s3_wrong_credentials_is_one_clear_line(moto_with_auth: str) -> None:
    store = S3ObjectStore(moto_with_auth, "wrong-key", "wrong-secret", max_attempts=1)
    for call in (
        lambda: store.ensure_bucket("skin-processed"),
        lambda: store.put_bytes("skin-processed", "k", b"x"),
        lambda: list(store.list_keys("skin-processed")),
    ):
        with pytest.raises(StorageError) as info:
            call()
        assert "refused the credentials" in str(info.value)
        assert "S3_ACCESS_KEY_ID" in str(info.value) and "\n" not in str(info.value)


def test_s3_retry_configuration_is_applied() -> None:
    store = S3ObjectStore(
        "http://127.0.0.1:9", "a", "b", max_attempts=7, connect_timeout=1.5, retry_mode="adaptive"
    )
    config = store._client.meta.config
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 7}
    assert config.connect_timeout == 1.5


# --- factory --------------------------------------------------------------------------------


def test_s3_backend_never_falls_back_to_the_minio_root_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the root login set: the app refuses to start and names the key it needs."""
    for key in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MINIO_ROOT_USER", "minio-root")
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "minio-root-secret")
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, storage_backend="s3", s3_endpoint_url="http://127.0.0.1:9")
    assert "S3_ACCESS_KEY_ID is required when STORAGE_BACKEND=s3" in str(info.value)
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "skin-app")
    with pytest.raises(ConfigError, match="S3_SECRET_ACCESS_KEY is required"):
        load_settings(_env_file=None, storage_backend="s3", s3_endpoint_url="http://127.0.0.1:9")


def test_make_object_store_local(tmp_path: Path) -> None:
    settings = load_settings(storage_backend="local", local_object_root=tmp_path / "o")
    store = make_object_store(settings)
    assert isinstance(store, LocalObjectStore) and store.root == tmp_path / "o"


def test_make_object_store_s3_uses_the_app_credentials(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY sign the requests; MinIO's root login is
    ignored even when it is in the environment (as on a machine that runs MinIO)."""
    monkeypatch.setenv("MINIO_ROOT_USER", "minio-root")
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "minio-root-secret")
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "skin-app")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "skin-app-secret")
    settings = load_settings(
        _env_file=None, storage_backend="s3", s3_endpoint_url=moto_endpoint, s3_max_attempts=3
    )
    store = make_object_store(settings)
    assert isinstance(store, S3ObjectStore)
    credentials = store._client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key) == ("skin-app", "skin-app-secret")
    assert store._client.meta.config.retries["total_max_attempts"] == 3
    name = _unique_bucket()
    store.ensure_bucket(name)
    store.put_bytes(name, "a/b", b"over http")
    assert store.get_bytes(name, "a/b") == b"over http"
