"""Object storage: one small interface, two backends that use the same keys.

* :class:`LocalObjectStore` keeps ``<root>/<bucket>/<key>`` on disk (the embedded default,
  ``data/objects``). Every write goes to a temporary file under ``<root>/.incoming/`` and is
  moved into place with :func:`os.replace`, so a reader (or a process killed with SIGKILL
  mid-write) never leaves a half-written object under a real key.
* :class:`S3ObjectStore` talks to any S3 endpoint (MinIO in Docker) through boto3, with
  botocore's retry configuration (exponential backoff on throttling, 5xx and connection
  errors). Every botocore failure becomes one :class:`~skin_mlops.core.errors.StorageError`
  line: unreachable endpoint, refused credentials, missing bucket, missing object.

:func:`make_object_store` picks the backend from :class:`~skin_mlops.core.config.Settings`
(``STORAGE_BACKEND``); :func:`upload_directory` copies a local folder under a key prefix.
boto3 is imported only when an S3 store is built, so the CLI starts fast.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from skin_mlops.core.errors import StorageError
from skin_mlops.core.files import atomic_path

if TYPE_CHECKING:
    from skin_mlops.core.config import Settings

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_INCOMING_DIR = ".incoming"


class ObjectNotFoundError(StorageError):
    """The bucket exists but holds no object under the key."""


@runtime_checkable
class ObjectStore(Protocol):
    """What every backend offers. Keys are ``/``-separated, relative, without ``..``."""

    def put_file(self, bucket: str, key: str, path: Path) -> None:
        """Store the content of the local file ``path`` under ``bucket/key`` (atomically)."""

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        """Store ``data`` under ``bucket/key`` (atomically: readers see old or new, whole)."""

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The content of ``bucket/key``; :class:`ObjectNotFoundError` when absent."""

    def download_file(self, bucket: str, key: str, dest: Path) -> None:
        """Write ``bucket/key`` to ``dest`` (parents created, written atomically)."""

    def exists(self, bucket: str, key: str) -> bool:
        """Whether ``bucket/key`` exists."""

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Every key in ``bucket`` that starts with ``prefix`` (no order promised)."""

    def delete(self, bucket: str, key: str) -> None:
        """Remove ``bucket/key``; deleting an absent key is not an error."""

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist yet."""


def validate_bucket(bucket: str) -> str:
    """Check an S3-style bucket name (3-63 chars of ``a-z 0-9 . -``); return it unchanged."""
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(
            f"invalid bucket name {bucket!r} (3-63 characters: lower-case letters, digits, . and -)"
        )
    return bucket


def validate_key(key: str) -> str:
    """Check an object key: relative, ``/``-separated, no empty, ``.`` or ``..`` parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"invalid object key {key!r} (empty, '.' or '..' path part)")
    return key


# --------------------------------------------------------------------------------------
# Local folder backend
# --------------------------------------------------------------------------------------


class LocalObjectStore:
    """Objects as files under ``<root>/<bucket>/<key>``; every write is atomic.

    Args:
        root: the folder holding one sub-folder per bucket (created when needed).
        fsync: also ``fsync`` each object before it is renamed into place. Off by default:
            ``os.replace`` already survives a killed process; ``fsync`` only adds safety
            against power loss, at a large cost per small file.
    """

    def __init__(self, root: Path | str, *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._incoming_ready = False

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------
    def _bucket_dir(self, bucket: str) -> Path:
        return self.root / validate_bucket(bucket)

    def _existing_bucket_dir(self, bucket: str) -> Path:
        bucket_dir = self._bucket_dir(bucket)
        if not bucket_dir.is_dir():
            raise StorageError(
                f"bucket {bucket!r} does not exist in the local store {self.root} "
                "(it is created by the first ingestion)"
            )
        return bucket_dir

    def object_path(self, bucket: str, key: str) -> Path:
        """Where ``bucket/key`` lives on disk."""
        return self._bucket_dir(bucket).joinpath(*validate_key(key).split("/"))

    def _temp_path(self) -> Path:
        """A fresh temporary file name under ``<root>/.incoming`` (named after our pid)."""
        incoming = self.root / _INCOMING_DIR
        if not self._incoming_ready:
            incoming.mkdir(parents=True, exist_ok=True)
            self._incoming_ready = True
        return incoming / f"{os.getpid()}-{uuid.uuid4().hex}.part"

    def _publish(self, temp: Path, bucket: str, key: str) -> None:
        """Move a fully written temporary file into place under ``bucket/key``."""
        dest = self.object_path(bucket, key)
        try:
            os.replace(temp, dest)
        except FileNotFoundError:  # first object of its folder (or no such bucket)
            self._existing_bucket_dir(bucket)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, dest)

    # -- interface ---------------------------------------------------------------------
    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        """Write ``data`` to a temporary file, then rename it to ``bucket/key``."""
        temp = self._temp_path()
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            self._publish(temp, bucket, key)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageError(
                    f"cannot write {bucket}/{key} under {self.root}: {exc}"
                ) from None
            raise

    def put_file(self, bucket: str, key: str, path: Path) -> None:
        """Copy ``path`` to a temporary file, then rename it to ``bucket/key``."""
        temp = self._temp_path()
        try:
            shutil.copyfile(path, temp)
            if self.fsync:
                with open(temp, "rb+") as handle:
                    os.fsync(handle.fileno())
            self._publish(temp, bucket, key)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot store {path} as {bucket}/{key}: {exc}") from None
            raise

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """Read ``bucket/key``."""
        path = self.object_path(bucket, key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self._existing_bucket_dir(bucket)
            raise ObjectNotFoundError(f"object not found: {bucket}/{key}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {bucket}/{key}: {exc}") from None

    def download_file(self, bucket: str, key: str, dest: Path) -> None:
        """Copy ``bucket/key`` to ``dest`` via a temporary file next to it."""
        source = self.object_path(bucket, key)
        if not source.is_file():
            self._existing_bucket_dir(bucket)
            raise ObjectNotFoundError(f"object not found: {bucket}/{key}")
        dest = Path(dest)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as temp:
                shutil.copyfile(source, temp)
        except OSError as exc:
            raise StorageError(f"cannot download {bucket}/{key} to {dest}: {exc}") from None

    def exists(self, bucket: str, key: str) -> bool:
        """Whether the object file exists."""
        return self.object_path(bucket, key).is_file()

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Walk the bucket folder (only the sub-folder the prefix names, when it names one)."""
        bucket_dir = self._existing_bucket_dir(bucket)
        # Start the walk at the deepest folder the prefix fully names.
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = bucket_dir.joinpath(*folder_part.split("/")) if folder_part else bucket_dir
        stack = [(start, folder_part + "/" if folder_part else "")]
        while stack:
            folder, key_prefix = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            except NotADirectoryError:
                continue
            for entry in entries:
                key = key_prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        stack.append((Path(entry.path), key + "/"))
                elif key.startswith(prefix):
                    yield key

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object file (absent is fine); empty parent folders are left alone."""
        try:
            self.object_path(bucket, key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {bucket}/{key}: {exc}") from None

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket folder; also clear temporary files left by dead processes."""
        try:
            self._bucket_dir(bucket).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create bucket folder under {self.root}: {exc}") from None
        self.remove_stale_temp_files()

    def remove_stale_temp_files(self) -> int:
        """Delete ``.incoming`` files whose writing process no longer runs; return the count.

        A process killed between writing its temporary file and renaming it leaves one
        behind; it never became an object, so removing it loses nothing.
        """
        removed = 0
        incoming = self.root / _INCOMING_DIR
        if not incoming.is_dir():
            return 0
        for entry in os.scandir(incoming):
            pid_text = entry.name.split("-", 1)[0]
            if pid_text.isdigit() and _process_alive(int(pid_text)):
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as exc:  # pragma: no cover - exotic platforms
        return exc.errno != errno.ESRCH
    return True


# --------------------------------------------------------------------------------------
# S3 backend
# --------------------------------------------------------------------------------------

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
        "InvalidToken",
        "AccessDenied",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "403",
        "Forbidden",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3ObjectStore:
    """Objects in an S3-compatible service (MinIO, AWS, moto) through boto3.

    Args:
        endpoint_url: e.g. ``http://localhost:9000``; ``None`` means AWS itself.
        access_key, secret_key: the credentials (``S3_ACCESS_KEY_ID`` /
            ``S3_SECRET_ACCESS_KEY``: in the stack, the MinIO user limited to the project's
            buckets, never MinIO's root login).
        region: the signing region.
        max_attempts: total tries per call (botocore retries with exponential backoff).
        connect_timeout: seconds to wait for a TCP connection before a try fails.
        retry_mode: botocore retry mode, ``standard`` or ``adaptive`` (client-side rate
            limiting on throttling, useful with many upload threads).
        max_pool_connections: HTTP connection pool size (>= the number of upload threads).
    """

    def __init__(
        self,
        endpoint_url: str | None,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        *,
        retry_mode: Literal["standard", "adaptive"] = "standard",
        read_timeout: float = 60.0,
        max_pool_connections: int = 16,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint_url = endpoint_url
        self.region = region
        config = Config(
            region_name=region,
            # total_max_attempts counts the first try too (botocore's max_attempts does not).
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            s3={"addressing_style": "path"},
        )
        session = boto3.session.Session()
        # A boto3 client (unlike a session) is safe to share between threads.
        self._client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.endpoint_url!r})"

    # -- error mapping -----------------------------------------------------------------
    def _error(
        self, exc: Exception, action: str, bucket: str, key: str | None = None
    ) -> StorageError:
        """Turn any boto/botocore exception into one clear :class:`StorageError` line."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            NoCredentialsError,
        )

        where = f"{bucket}/{key}" if key else bucket
        endpoint = self.endpoint_url or "AWS S3"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "")) or str(
                exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            )
            message = error.get("Message") or code
            if code == "NoSuchBucket":
                return StorageError(
                    f"bucket {bucket!r} does not exist at {endpoint} (create it, or check "
                    "S3_PROCESSED_BUCKET / S3_MODELS_BUCKET)"
                )
            if code in _NOT_FOUND_CODES:
                return ObjectNotFoundError(f"object not found: {where} at {endpoint}")
            if code in _CREDENTIAL_CODES:
                return StorageError(
                    f"S3 endpoint {endpoint} refused the credentials on {action} {where} "
                    f"({code}); check S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY (the app's "
                    "S3 user and its access to this bucket)"
                )
            return StorageError(f"S3 {action} {where} failed at {endpoint}: {code} {message}")
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"no S3 credentials for {endpoint}; set S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, ConnectionError):
            return StorageError(
                f"cannot reach S3 endpoint {endpoint} ({type(exc).__name__}); is the object "
                "store running and S3_ENDPOINT_URL right?"
            )
        if isinstance(exc, BotoCoreError):
            return StorageError(f"S3 {action} {where} failed at {endpoint}: {exc}")
        return StorageError(f"S3 {action} {where} failed at {endpoint}: {exc}")

    def _call(self, action: str, bucket: str, key: str | None, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, method)(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, action, bucket, key) from None

    # -- interface ---------------------------------------------------------------------
    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        """One ``PutObject`` (atomic on the server side)."""
        self._call(
            "put",
            bucket,
            key,
            "put_object",
            Bucket=validate_bucket(bucket),
            Key=validate_key(key),
            Body=data,
        )

    def put_file(self, bucket: str, key: str, path: Path) -> None:
        """Upload a local file (multipart above boto3's threshold, retried per part)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.upload_file(str(path), validate_bucket(bucket), validate_key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "upload", bucket, key) from None
        except S3UploadFailedError as exc:
            cause = exc.__context__
            if isinstance(cause, BotoCoreError | ClientError):
                raise self._error(cause, "upload", bucket, key) from None
            raise StorageError(f"S3 upload {bucket}/{key} failed: {exc}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path} for upload: {exc}") from None

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """One ``GetObject``."""
        from botocore.exceptions import BotoCoreError, ClientError

        response = self._call(
            "get",
            bucket,
            key,
            "get_object",
            Bucket=validate_bucket(bucket),
            Key=validate_key(key),
        )
        try:
            return response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "get", bucket, key) from None

    def download_file(self, bucket: str, key: str, dest: Path) -> None:
        """Download to a temporary file next to ``dest``, then rename it."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as temp:
            self._call(
                "download",
                bucket,
                key,
                "download_file",
                Bucket=validate_bucket(bucket),
                Key=validate_key(key),
                Filename=str(temp),
            )

    def exists(self, bucket: str, key: str) -> bool:
        """``HeadObject``: 404 means absent; any other failure raises."""
        try:
            self._call(
                "head",
                bucket,
                key,
                "head_object",
                Bucket=validate_bucket(bucket),
                Key=validate_key(key),
            )
        except ObjectNotFoundError:
            return False
        return True

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """``ListObjectsV2`` pages of up to 1000 keys."""
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=validate_bucket(bucket), Prefix=prefix):
                for item in page.get("Contents", ()):
                    yield item["Key"]
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "list", bucket, prefix or None) from None

    def delete(self, bucket: str, key: str) -> None:
        """``DeleteObject`` (S3 treats an absent key as success)."""
        self._call(
            "delete",
            bucket,
            key,
            "delete_object",
            Bucket=validate_bucket(bucket),
            Key=validate_key(key),
        )

    def ensure_bucket(self, bucket: str) -> None:
        """``HeadBucket``, then ``CreateBucket`` when it answers 404."""
        from botocore.exceptions import BotoCoreError, ClientError

        validate_bucket(bucket)
        try:
            self._client.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise self._error(exc, "head bucket", bucket) from None
        except BotoCoreError as exc:
            raise self._error(exc, "head bucket", bucket) from None
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error(exc, "create bucket", bucket) from None
        except BotoCoreError as exc:
            raise self._error(exc, "create bucket", bucket) from None


# --------------------------------------------------------------------------------------
# Factory and helpers
# --------------------------------------------------------------------------------------


def make_object_store(settings: Settings, *, max_pool_connections: int = 16) -> ObjectStore:
    """The backend ``settings.storage_backend`` names (``local`` or ``s3``)."""
    if settings.storage_backend == "local":
        return LocalObjectStore(settings.local_object_root)
    if settings.storage_backend == "s3":
        secret = settings.s3_secret_access_key
        return S3ObjectStore(
            endpoint_url=settings.s3_endpoint_url,
            access_key=settings.s3_access_key_id or "",
            secret_key=secret.get_secret_value() if secret else "",
            region=settings.s3_region,
            max_attempts=settings.s3_max_attempts,
            connect_timeout=settings.s3_connect_timeout_s,
            max_pool_connections=max_pool_connections,
        )
    raise StorageError(f"unknown STORAGE_BACKEND {settings.storage_backend!r} (local or s3)")


def upload_directory(store: ObjectStore, bucket: str, prefix: str, local_dir: Path) -> list[str]:
    """Upload every file under ``local_dir`` to ``bucket/<prefix>/<relative path>``.

    Symlinks to files are uploaded as the file they point to; the bucket is created if
    needed. Returns the uploaded keys, sorted.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(f"cannot upload {local_dir}: not a directory")
    store.ensure_bucket(bucket)
    prefix = prefix.strip("/")
    keys = []
    for path in sorted(local_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(local_dir).as_posix()
        key = f"{prefix}/{relative}" if prefix else relative
        store.put_file(bucket, key, path)
        keys.append(key)
    return keys


def download_directory(store: ObjectStore, bucket: str, prefix: str, local_dir: Path) -> list[Path]:
    """Download every object under ``bucket/<prefix>/`` into ``local_dir`` (same layout).

    Raises:
        StorageError: nothing is stored under that prefix.
    """
    prefix = prefix.strip("/") + "/"
    keys = sorted(k for k in store.list_keys(bucket, prefix) if not k.endswith("/"))
    if not keys:
        raise StorageError(f"nothing stored under {bucket}/{prefix}")
    written = []
    for key in keys:
        dest = Path(local_dir) / key[len(prefix) :]
        store.download_file(bucket, key, dest)
        written.append(dest)
    return written
