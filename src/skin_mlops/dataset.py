"""Dataset ingestion: ``data/raw/<split>/<label>/*`` -> object store + ``lesions_data``.

``skin-mlops ingest --splits train val [--dry-run]`` (and :func:`run_ingestion` for the
Airflow DAG) does, for every file under each configured ``<split>/<label>/`` folder:

1. **Scan**: walk the folder; symlinks are followed only when they stay inside a
   configured split root. Each file's ``stat()`` fingerprint is compared with the scan
   cache (``source_files``): an unchanged file is not read again (that is what makes a
   no-change rerun fast).
2. **Check** (thread pool, both cores): read the bytes, SHA-256 them, sniff the format from
   the content (:func:`skin_mlops.preprocessing.probe`) and decode the image to prove it is
   whole (:func:`skin_mlops.preprocessing.load_rgb`; a JPEG is decoded at 1/8 scale, which
   still entropy-decodes every byte, so truncation is caught at a fraction of the cost).
3. **Resolve** (in path order, so results are deterministic): the same bytes twice under one
   split/label are one image (the others count as duplicates); an image already stored is
   unchanged; anything else is uploaded (thread pool) under a collision-safe key
   ``<prefix>/<split>/<label>/<stem>-<sha256[:16]>.<ext>``.
4. **Commit**: a ``lesions_data`` row is committed only *after* its object is stored.
5. **Reconcile**: rows of images no longer on disk are marked ``missing`` (objects kept);
   label conflicts (same bytes, two labels) are marked ``conflict`` and reported; train/val
   leakage is listed; objects without a row (left by a process killed between upload and
   commit) are adopted as ``missing`` rows or, when a row already holds those bytes, deleted.

Crash safety follows from the order: object first, row second, reconcile on every run.
``--dry-run`` refreshes the metadata (scan cache, missing/conflict marks) and never
touches the object store. One ingestion at a time per metadata DB (a lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from skin_mlops.core.config import Settings, get_settings
from skin_mlops.core.errors import ConfigError, DataError, StorageError
from skin_mlops.dataset_config import DatasetConfig, load_dataset_config
from skin_mlops.metadata import (
    FileKind,
    LesionRecord,
    LesionStatus,
    MetadataDB,
    SourceFileRecord,
    utc_now,
)
from skin_mlops.preprocessing import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    load_rgb,
    probe,
)
from skin_mlops.storage import ObjectNotFoundError, ObjectStore, make_object_store

DEFAULT_SPLITS = ("train", "val")
FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png"}
VERIFY_MIN_SIDE = 8
"""Decode JPEGs for verification at the smallest DCT scale (1/8): every entropy-coded byte
is still decoded (a truncated or damaged stream fails), the IDCT work is skipped."""
COMMIT_EVERY_ROWS = 500
COMMIT_EVERY_SECONDS = 1.0

_KEY_NAME_RE = re.compile(r"^(?P<stem>.+)-(?P<sha>[0-9a-f]{16}|[0-9a-f]{64})\.(?P<ext>jpg|png)$")
_UNSAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9._-]+")

VerifyMode = Literal["decode", "structure"]
ProgressCallback = Callable[[str, int, int], None]
"""``callback(phase, done, total)``, called from the ingesting thread."""


# --------------------------------------------------------------------------------------
# The summary (what run_ingestion returns, and what the CLI prints)
# --------------------------------------------------------------------------------------


@dataclass
class LabelCounts:
    """What happened to the files of one split/label (files, except the row counts).

    ``new``/``unchanged``/``not_an_image``/``corrupt``/``duplicates``/``errors`` count files
    on disk (each file is in exactly one of them); ``conflicts`` and ``leakage`` count the
    distinct images of this split/label involved in one; ``missing`` counts rows whose
    files vanished since the previous run.
    """

    new: int = 0
    unchanged: int = 0
    not_an_image: int = 0
    corrupt: int = 0
    duplicates: int = 0
    conflicts: int = 0
    leakage: int = 0
    missing: int = 0
    errors: int = 0

    def add(self, other: LabelCounts) -> None:
        """Add ``other`` into this one (for totals)."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class Place:
    """Where one copy of an image lives."""

    split: str
    label: str
    source_path: str


@dataclass
class Finding:
    """Bytes filed in several places: a label conflict or a train/val leak."""

    sha256: str
    places: list[Place]


@dataclass
class Problem:
    """A file (or object) that could not be ingested as it is, and why."""

    path: str
    kind: Literal["corrupt", "unreadable", "symlink_outside_root", "object_lost", "foreign_object"]
    message: str


@dataclass
class IngestionSummary:
    """The outcome of one ingestion, as data (``to_dict()`` is JSON-serialisable)."""

    dataset: str
    splits: list[str]
    dry_run: bool
    store: str
    bucket: str
    counts: dict[str, dict[str, LabelCounts]] = field(default_factory=dict)
    conflicts: list[Finding] = field(default_factory=list)
    leakage: list[Finding] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unknown_label_folders: dict[str, list[str]] = field(default_factory=dict)
    missing_label_folders: dict[str, list[str]] = field(default_factory=dict)
    uploaded: int = 0
    orphans_adopted: int = 0
    orphans_deleted: int = 0
    rows_missing_total: int = 0
    duration_s: float = 0.0

    def label_counts(self, split: str, label: str) -> LabelCounts:
        """The counter of one split/label (created on first use)."""
        return self.counts.setdefault(split, {}).setdefault(label, LabelCounts())

    def totals(self) -> LabelCounts:
        """All split/label counters added up."""
        total = LabelCounts()
        for labels in self.counts.values():
            for counts in labels.values():
                total.add(counts)
        return total

    @property
    def failed(self) -> bool:
        """Corrupt or unreadable files, or unresolved label conflicts (exit code 1)."""
        totals = self.totals()
        return bool(totals.corrupt or totals.errors or totals.conflicts)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts/lists/str/int (for XCom, JSON, logs)."""
        data = asdict(self)
        data["totals"] = asdict(self.totals())
        data["failed"] = self.failed
        return data


# --------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScannedFile:
    """A file found under ``<split root>/<label>/`` with its ``stat()`` fingerprint."""

    path: str
    split: str
    label: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    def cache_record(
        self, dataset: str, sha256: str, kind: FileKind, **extra: Any
    ) -> SourceFileRecord:
        """The scan-cache row saying what reading this file found."""
        return SourceFileRecord(
            path=self.path,
            dataset=dataset,
            split=self.split,
            label=self.label,
            size_bytes=self.size,
            mtime_ns=self.mtime_ns,
            ctime_ns=self.ctime_ns,
            inode=self.inode,
            sha256=sha256,
            kind=kind,
            **extra,
        )


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def scan_label_folder(
    folder: Path, split: str, label: str, allowed_roots: list[str], problems: list[Problem]
) -> list[ScannedFile]:
    """Every regular file under ``folder`` (recursively), sorted by path.

    Symlinks (to files or folders) are followed only when their target resolves inside
    one of ``allowed_roots``; the others are recorded in ``problems`` and skipped.
    """
    found: list[ScannedFile] = []
    visited = {os.path.realpath(folder)}
    stack = [str(folder)]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            problems.append(Problem(current, "unreadable", f"cannot list folder: {exc}"))
            continue
        subfolders = []
        for entry in entries:
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not _inside(target, allowed_roots):
                        problems.append(
                            Problem(
                                entry.path,
                                "symlink_outside_root",
                                f"symlink to {target} leaves the data root; not followed",
                            )
                        )
                        continue
                    if os.path.isdir(target):
                        if target not in visited:
                            visited.add(target)
                            subfolders.append(entry.path)
                        continue
                    if not os.path.isfile(target):
                        continue  # dangling link, fifo, device...
                    st = os.stat(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.path)
                    continue
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                else:
                    continue
            except OSError as exc:
                problems.append(Problem(entry.path, "unreadable", f"cannot stat: {exc}"))
                continue
            found.append(
                ScannedFile(
                    entry.path if os.sep == "/" else Path(entry.path).as_posix(),
                    split,
                    label,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_ino,
                )
            )
        stack.extend(reversed(subfolders))
    found.sort(key=lambda f: f.path)
    return found


# --------------------------------------------------------------------------------------
# Checking one file (runs in worker threads)
# --------------------------------------------------------------------------------------


@dataclass
class CheckedFile:
    """What reading one file found. ``data`` is kept only for valid images (to upload)."""

    sha256: str = ""
    kind: Literal["image", "not_an_image", "corrupt", "unreadable"] = "unreadable"
    format: str | None = None
    width: int | None = None
    height: int | None = None
    problem: str | None = None
    data: bytes | None = None


def check_structure(data: bytes, image_format: str) -> None:
    """Prove a JPEG/PNG is complete without decoding its pixels (cheap: no entropy decoding).

    * JPEG: the last start-of-scan marker (``FFDA``) must be followed by an end-of-image
      marker (``FFD9``); entropy-coded data never contains ``FFD9`` (bytes are stuffed), so
      this catches every truncation, including files whose EXIF thumbnail is complete.
    * PNG: every chunk's CRC-32 must match and the file must end with ``IEND``; this catches
      truncation and any damaged byte.

    Raises:
        CorruptImageError: the file is cut short or damaged.
    """
    if image_format == "JPEG":
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.rfind(b"\xff\xd9") < last_scan:
            raise CorruptImageError("truncated JPEG: no end-of-image marker after the last scan")
        return
    if image_format == "PNG":
        offset, end = 8, len(data)
        while offset + 12 <= end:
            length = int.from_bytes(data[offset : offset + 4], "big")
            chunk_end = offset + 8 + length
            if chunk_end + 4 > end:
                raise CorruptImageError("truncated PNG: a chunk runs past the end of the file")
            expected = int.from_bytes(data[chunk_end : chunk_end + 4], "big")
            if zlib.crc32(data[offset + 4 : chunk_end]) != expected:
                chunk = data[offset + 4 : offset + 8].decode("latin-1")
                raise CorruptImageError(f"damaged PNG: CRC mismatch in chunk {chunk!r}")
            if data[offset + 4 : offset + 8] == b"IEND":
                return
            offset = chunk_end + 4
        raise CorruptImageError("truncated PNG: no IEND chunk")


def check_file(path: str, max_pixels: int, verify: VerifyMode = "structure") -> CheckedFile:
    """Read, hash, sniff and verify one file. Never raises for bad content.

    ``verify="decode"`` decodes the image through :func:`skin_mlops.preprocessing.load_rgb`
    (a JPEG at 1/8 scale): whatever is accepted, training and serving can decode.
    ``verify="structure"`` runs :func:`check_structure` instead: ~20x cheaper, catches
    truncated and damaged files, but not a stream that is whole yet undecodable.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return CheckedFile(kind="unreadable", problem=f"cannot read: {exc.strerror or exc}")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        info = probe(data)
        if info.width * info.height > max_pixels:
            raise ImageTooLargeError(
                f"image declares {info.width}x{info.height} pixels, over the limit of "
                f"{max_pixels:,} pixels"
            )
        if verify == "decode":
            load_rgb(data, max_pixels=max_pixels, min_side=VERIFY_MIN_SIDE)
        else:
            check_structure(data, info.format)
    except NotAnImageError as exc:
        return CheckedFile(sha256=sha256, kind="not_an_image", problem=str(exc))
    except (EmptyImageError, CorruptImageError, ImageTooLargeError, ImageError) as exc:
        return CheckedFile(sha256=sha256, kind="corrupt", problem=str(exc))
    if info.format not in FORMAT_EXTENSIONS:
        return CheckedFile(sha256=sha256, kind="not_an_image", problem=f"format {info.format}")
    return CheckedFile(sha256, "image", info.format, info.width, info.height, None, data)


def object_key_for(
    prefix: str,
    split: str,
    label: str,
    source_name: str,
    sha256: str,
    image_format: str,
    *,
    full_hash: bool = False,
) -> str:
    """``<prefix>/<split>/<label>/<safe stem>-<sha256[:16]>.<ext>``: readable, collision-safe.

    The content hash in the name makes two different images never share a key, and the
    same image always get the same key (so a rerun after a crash overwrites, never forks).
    """
    stem = _UNSAFE_CHARS_RE.sub("_", Path(source_name).stem).strip("._-")[:64] or "image"
    digest = sha256 if full_hash else sha256[:16]
    name = f"{stem}-{digest}.{FORMAT_EXTENSIONS[image_format]}"
    return "/".join(part for part in (prefix.strip("/"), split, label, name) if part)


# --------------------------------------------------------------------------------------
# The ingestion run
# --------------------------------------------------------------------------------------


@contextmanager
def metadata_lock(db_path: Path, *, shared: bool, wait_s: float = 0.0) -> Iterator[None]:
    """Lock the metadata DB against concurrent ingestion (released even on SIGKILL).

    An ingestion holds it exclusively for its whole run; a training holds it shared while it
    reads rows and images, so the two never run over each other on one DB (several trainings
    may read at once). ``wait_s``: how long to wait for the lock before giving up.

    Raises:
        DataError: the lock is held by the other side for longer than ``wait_s``.
    """
    lock_path = db_path.with_name(db_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + wait_s
    with open(lock_path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = (
                        "an ingestion is writing"
                        if shared
                        else "another ingestion (or a training) is using"
                    )
                    raise DataError(
                        f"{holder} {db_path} (lock {lock_path}); wait for it and retry"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _ingestion_lock(db_path: Path) -> contextlib.AbstractContextManager[None]:
    """The ingestion's exclusive hold on the DB (fails at once when it is busy)."""
    return metadata_lock(db_path, shared=False)


@dataclass
class _PendingUpload:
    future: Future[None]
    record: LesionRecord
    cache: SourceFileRecord


class _Ingestion:
    """One run's state. Read top to bottom: :meth:`run` lists the phases in order."""

    def __init__(
        self,
        config: DatasetConfig,
        splits: list[str],
        dry_run: bool,
        settings: Settings,
        store: ObjectStore | None,
        workers: int,
        progress: ProgressCallback | None,
        verify: VerifyMode = "structure",
    ) -> None:
        self.config = config
        self.verify = verify
        self.splits = splits
        self.dry_run = dry_run
        self.settings = settings
        self.store = store
        self.workers = workers
        self.progress = progress or (lambda phase, done, total: None)
        self.bucket = config.storage.bucket
        self.prefix = config.storage.prefix.strip("/")
        self.summary = IngestionSummary(
            dataset=config.dataset,
            splits=list(splits),
            dry_run=dry_run,
            store="(dry run: not touched)" if dry_run else repr(store),
            bucket=self.bucket,
        )
        self.db: MetadataDB
        self.rows: dict[tuple[str, str, str], LesionRecord] = {}
        self.keys_in_store: set[str] = set()
        self.key_owner: dict[str, str] = {}
        self.seen: dict[tuple[str, str, str], str] = {}
        self.uploads: deque[_PendingUpload] = deque()
        self.batch_rows: list[LesionRecord] = []
        self.batch_cache: list[SourceFileRecord] = []
        self.image_sha: dict[str, str] = {}
        self.last_commit = time.monotonic()

    # -- phases ----------------------------------------------------------------------------
    def run(self) -> IngestionSummary:
        started = time.perf_counter()
        files = self.scan()
        with MetadataDB(self.config.metadata_db) as self.db:
            self.rows = self.db.lesions(self.config.dataset)
            self.key_owner = {r.object_key: r.sha256 for r in self.rows.values()}
            if not self.dry_run:
                self.keys_in_store = self.list_store_keys()
            cache = self.db.source_files(self.config.dataset, self.splits)
            with ThreadPoolExecutor(self.workers, thread_name_prefix="ingest") as pool:
                self.process(files, cache, pool)
            self.forget_vanished_files(files, cache)
            self.refresh_seen_rows()
            self.mark_missing()
            self.find_conflicts_and_leakage()
            if not self.dry_run:
                self.reconcile_store()
            self.summary.rows_missing_total = sum(
                1 for r in self.rows.values() if r.status == "missing" and r.split in self.splits
            )
        self.summary.duration_s = round(time.perf_counter() - started, 3)
        return self.summary

    def scan(self) -> list[ScannedFile]:
        """Phase 1: list every file of every requested split/label folder."""
        allowed = [os.path.realpath(self.config.split_root(s)) for s in self.config.splits]
        files: list[ScannedFile] = []
        for split in self.splits:
            root = self.config.split_root(split)
            if not root.is_dir():
                raise DataError(
                    f"split {split!r}: folder {root} does not exist (expected "
                    f"{root}/<label>/<image files>; see the dataset config "
                    f"{self.config.source or ''})"
                )
            self.summary.unknown_label_folders[split] = self.config.unknown_label_folders(split)
            self.summary.missing_label_folders[split] = self.config.missing_label_folders(split)
            for label in self.config.labels:
                self.summary.label_counts(split, label)
                folder = root / label
                if folder.is_symlink() and not _inside(os.path.realpath(folder), allowed):
                    self.summary.problems.append(
                        Problem(
                            str(folder),
                            "symlink_outside_root",
                            f"label folder links to {os.path.realpath(folder)}, outside "
                            "the data root; not followed",
                        )
                    )
                    continue
                if folder.is_dir():
                    files += scan_label_folder(folder, split, label, allowed, self.summary.problems)
        self.progress("scan", len(files), len(files))
        return files

    def list_store_keys(self) -> set[str]:
        """Keys already in the store under the requested splits (one listing per split)."""
        assert self.store is not None
        self.store.ensure_bucket(self.bucket)
        prefixes = {self._split_prefix(split) for split in self.splits}
        # Rows written under another prefix (the config's prefix changed): list their
        # folders too, so their objects are not mistaken for lost ones.
        for row in self.rows.values():
            folder = row.object_key.rsplit("/", 1)[0] + "/"
            if row.split in self.splits and not folder.startswith(tuple(prefixes)):
                prefixes.add(folder)
        keys: set[str] = set()
        for prefix in sorted(prefixes):
            keys.update(self.store.list_keys(self.bucket, prefix))
        return keys

    def process(
        self, files: list[ScannedFile], cache: dict[str, SourceFileRecord], pool: ThreadPoolExecutor
    ) -> None:
        """Phases 2-4: check files (in the pool), resolve them in path order, upload, commit."""
        window: deque[tuple[ScannedFile, SourceFileRecord | None, Future[CheckedFile] | None]]
        window = deque()
        max_window = max(8, 4 * self.workers)
        done = 0
        total = len(files)
        self.progress("ingest", 0, total)
        for scanned in files:
            cached = cache.get(scanned.path)
            if cached is not None and not (
                cached.split == scanned.split
                and cached.label == scanned.label
                and cached.same_stat(
                    scanned.size, scanned.mtime_ns, scanned.ctime_ns, scanned.inode
                )
            ):
                cached = None
            needs_read = cached is None or self._cached_image_needs_upload(scanned, cached)
            future = (
                pool.submit(check_file, scanned.path, self.settings.max_image_pixels, self.verify)
                if needs_read
                else None
            )
            window.append((scanned, cached, future))
            while len(window) > max_window:
                self.resolve(*window.popleft(), pool)
                done += 1
                self._maybe_commit(done, total)
        while window:
            self.resolve(*window.popleft(), pool)
            done += 1
            self._maybe_commit(done, total)
        while self.uploads:
            self._finish_upload(self.uploads.popleft())
        self.commit()
        self.progress("ingest", total, total)

    def _cached_image_needs_upload(self, scanned: ScannedFile, cached: SourceFileRecord) -> bool:
        """A cached valid image must be read again only to (re)upload it."""
        if cached.kind != "image":
            return False
        row = self.rows.get((scanned.split, scanned.label, cached.sha256))
        if self.dry_run:
            return False
        return row is None or row.object_key not in self.keys_in_store

    def resolve(
        self,
        scanned: ScannedFile,
        cached: SourceFileRecord | None,
        future: Future[CheckedFile] | None,
        pool: ThreadPoolExecutor,
    ) -> None:
        """Decide what one file is: counted, duplicate, unchanged, or to upload."""
        counts = self.summary.label_counts(scanned.split, scanned.label)
        if future is not None:
            checked = future.result()
        else:
            assert cached is not None
            checked = CheckedFile(
                cached.sha256,
                cached.kind,
                cached.format,
                cached.width,
                cached.height,
                cached.problem,
            )
        if checked.kind == "unreadable":
            counts.errors += 1
            self.summary.problems.append(Problem(scanned.path, "unreadable", checked.problem or ""))
            return

        def remember() -> None:
            """Record a fresh read in the scan cache (a cache hit is already there)."""
            if future is not None:
                self.batch_cache.append(self._cache_record(scanned, checked))

        if checked.kind != "image":
            if checked.kind == "corrupt":
                counts.corrupt += 1
                self.summary.problems.append(
                    Problem(scanned.path, "corrupt", checked.problem or "corrupt image")
                )
            else:
                counts.not_an_image += 1
            remember()
            return

        ident = (scanned.split, scanned.label, checked.sha256)
        if ident in self.seen:
            counts.duplicates += 1
            self.image_sha[scanned.path] = checked.sha256
            remember()
            return
        self.seen[ident] = scanned.path
        self.image_sha[scanned.path] = checked.sha256
        row = self.rows.get(ident)
        if row is not None and (self.dry_run or row.object_key in self.keys_in_store):
            counts.unchanged += 1
            remember()
            return

        counts.new += 1
        if self.dry_run:
            remember()
            return
        assert checked.data is not None and checked.format is not None
        key = row.object_key if row is not None else self._new_key(scanned, checked)
        record = LesionRecord(
            sha256=checked.sha256,
            dataset=self.config.dataset,
            split=scanned.split,
            label=scanned.label,
            source_path=scanned.path,
            object_key=key,
            size_bytes=len(checked.data),
            width=checked.width or 0,
            height=checked.height or 0,
            format=checked.format,
            ingested_at=utc_now(),
            status="present",
        )
        assert self.store is not None
        upload = pool.submit(self.store.put_bytes, self.bucket, key, checked.data)
        self.uploads.append(_PendingUpload(upload, record, self._cache_record(scanned, checked)))
        while self.uploads and (
            len(self.uploads) > 2 * self.workers or self.uploads[0].future.done()
        ):
            self._finish_upload(self.uploads.popleft())

    def _cache_record(self, scanned: ScannedFile, checked: CheckedFile) -> SourceFileRecord:
        kind = checked.kind
        if kind == "unreadable":  # handled (and never cached) before this is called
            raise AssertionError(f"an unreadable file reached the scan cache: {scanned.path}")
        return scanned.cache_record(
            self.config.dataset,
            checked.sha256,
            kind,
            width=checked.width,
            height=checked.height,
            format=checked.format,
            problem=checked.problem,
        )

    def _new_key(self, scanned: ScannedFile, checked: CheckedFile) -> str:
        assert checked.format is not None
        name = os.path.basename(scanned.path)
        key = object_key_for(
            self.prefix, scanned.split, scanned.label, name, checked.sha256, checked.format
        )
        if self.key_owner.get(key, checked.sha256) != checked.sha256:
            key = object_key_for(
                self.prefix,
                scanned.split,
                scanned.label,
                name,
                checked.sha256,
                checked.format,
                full_hash=True,
            )
        self.key_owner[key] = checked.sha256
        return key

    def _finish_upload(self, pending: _PendingUpload) -> None:
        """Wait for one upload; on success queue its row for the next commit."""
        try:
            pending.future.result()
        except StorageError:
            self.commit()  # keep what is already stored, then stop with one clear line
            raise
        self.keys_in_store.add(pending.record.object_key)
        self.summary.uploaded += 1
        self.batch_rows.append(pending.record)
        self.batch_cache.append(pending.cache)

    def _maybe_commit(self, done: int, total: int) -> None:
        if done % 64 == 0:
            self.progress("ingest", done, total)
        pending = len(self.batch_rows) + len(self.batch_cache)
        if pending >= COMMIT_EVERY_ROWS or (
            pending and time.monotonic() - self.last_commit > COMMIT_EVERY_SECONDS
        ):
            self.commit()

    def commit(self) -> None:
        """Write queued rows (their objects are already stored) in one transaction."""
        if not (self.batch_rows or self.batch_cache):
            return
        with self.db.transaction():
            self.db.upsert_lesions(self.batch_rows)
            for record in self.batch_rows:
                self.rows[(record.split, record.label, record.sha256)] = record
            self.db.upsert_source_files(self.batch_cache)
        self.batch_rows.clear()
        self.batch_cache.clear()
        self.last_commit = time.monotonic()

    def forget_vanished_files(
        self, files: list[ScannedFile], cache: dict[str, SourceFileRecord]
    ) -> None:
        """Drop scan-cache rows of files that are no longer on disk."""
        on_disk = {f.path for f in files}
        gone = [path for path in cache if path not in on_disk]
        if gone:
            with self.db.transaction():
                self.db.delete_source_files(gone)

    def refresh_seen_rows(self) -> None:
        """Rows of images on disk: ``missing`` ones are back (``present``), and a row whose
        file was renamed, deleted or rewritten now names a file that holds its bytes."""
        changes: list[tuple[tuple[str, str, str], LesionStatus, str]] = []
        for ident, path in self.seen.items():
            row = self.rows.get(ident)
            if row is None:
                continue  # dry run: not stored yet
            source_ok = self.image_sha.get(row.source_path) == ident[2]
            if row.status == "missing" or not source_ok:
                status: LesionStatus = "present" if row.status == "missing" else row.status
                changes.append((ident, status, row.source_path if source_ok else path))
        if changes:
            with self.db.transaction():
                for ident, status, path in changes:
                    self._set_state(ident, status, path)

    def mark_missing(self) -> None:
        """Rows of the scanned splits whose bytes are no longer on disk become ``missing``."""
        vanished = [
            ident
            for ident, row in self.rows.items()
            if row.split in self.splits and ident not in self.seen and row.status != "missing"
        ]
        if vanished:
            with self.db.transaction():
                for ident in vanished:
                    self._set_state(ident, "missing")
                    self.summary.label_counts(ident[0], ident[1]).missing += 1

    def _set_state(
        self, ident: tuple[str, str, str], status: LesionStatus, source_path: str | None = None
    ) -> None:
        """Change a row's status/source (inside a transaction) and the in-memory copy."""
        self.db.set_lesion_state(
            self.config.dataset, *ident, status=status, source_path=source_path
        )
        row = self.rows[ident]
        self.rows[ident] = replace(row, status=status, source_path=source_path or row.source_path)

    def find_conflicts_and_leakage(self) -> None:
        """Same bytes under two labels: conflict (marked); in two splits: leakage (listed)."""
        copies: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for (split, label, sha), path in self.seen.items():
            copies[sha].append((split, label, path))
        for (split, label, sha), row in self.rows.items():
            if split not in self.splits and row.status != "missing":
                copies[sha].append((split, label, row.source_path))
        conflicting: set[str] = set()
        for sha in sorted(sha for sha, found in copies.items() if len(found) > 1):
            where = [Place(*place) for place in copies[sha]]
            if len({p.label for p in where}) > 1:
                conflicting.add(sha)
                self.summary.conflicts.append(Finding(sha, where))
                for p in where:
                    if p.split in self.splits:
                        self.summary.label_counts(p.split, p.label).conflicts += 1
            if len({p.split for p in where}) > 1:
                self.summary.leakage.append(Finding(sha, where))
                for p in where:
                    if p.split in self.splits:
                        self.summary.label_counts(p.split, p.label).leakage += 1
        changes: list[tuple[tuple[str, str, str], LesionStatus]] = []
        for ident, row in self.rows.items():
            wanted: LesionStatus = "conflict" if ident[2] in conflicting else "present"
            if row.status != "missing" and row.status != wanted:
                changes.append((ident, wanted))
        if changes:
            with self.db.transaction():
                for ident, wanted in changes:
                    self._set_state(ident, wanted)

    def reconcile_store(self) -> None:
        """Objects without rows (crash leftovers): adopt or delete; rows without objects: drop.

        The lock guarantees no other ingestion writes meanwhile, so the store now holds
        exactly the listing taken at the start plus this run's uploads.
        """
        assert self.store is not None
        rows_by_key = {row.object_key: ident for ident, row in self.rows.items()}
        all_row_keys = set(rows_by_key) | self.db.object_keys_of_other_datasets(self.config.dataset)
        own_prefixes = tuple(self._split_prefix(split) for split in self.splits)
        for key in sorted(self.keys_in_store - all_row_keys):
            if key.startswith(own_prefixes):
                self._reconcile_orphan(key)
        lost = [
            (key, ident)
            for key, ident in rows_by_key.items()
            if ident[0] in self.splits and key not in self.keys_in_store
        ]
        if lost:
            with self.db.transaction():
                for key, ident in lost:
                    row = self.rows.pop(ident)
                    self.db.delete_lesion_by_key(key)
                    self.summary.problems.append(
                        Problem(
                            key,
                            "object_lost",
                            f"object gone from the store and its file {row.source_path} "
                            "from disk; row removed",
                        )
                    )

    def _reconcile_orphan(self, key: str) -> None:
        assert self.store is not None
        parsed = self._parse_key(key)
        if parsed is None:
            self.summary.problems.append(
                Problem(key, "foreign_object", "object not written by ingestion; left alone")
            )
            return
        split, label, short_sha = parsed
        try:
            data = self.store.get_bytes(self.bucket, key)
        except ObjectNotFoundError:
            return
        sha256 = hashlib.sha256(data).hexdigest()
        if not sha256.startswith(short_sha):
            self.summary.problems.append(
                Problem(key, "foreign_object", "content does not match its name; left alone")
            )
            return
        ident = (split, label, sha256)
        if ident in self.rows:
            self.store.delete(self.bucket, key)
            self.summary.orphans_deleted += 1
            return
        try:
            info = probe(data)
        except ImageError:
            self.summary.problems.append(Problem(key, "foreign_object", "not an image"))
            return
        record = LesionRecord(
            sha256=sha256,
            dataset=self.config.dataset,
            split=split,
            label=label,
            source_path="",
            object_key=key,
            size_bytes=len(data),
            width=info.width,
            height=info.height,
            format=info.format,
            ingested_at=utc_now(),
            status="missing",
        )
        with self.db.transaction():
            self.db.upsert_lesion(record)
        self.rows[ident] = record
        self.summary.orphans_adopted += 1

    # -- helpers ---------------------------------------------------------------------------
    def _split_prefix(self, split: str) -> str:
        return f"{self.prefix}/{split}/" if self.prefix else f"{split}/"

    def _parse_key(self, key: str) -> tuple[str, str, str] | None:
        """``(split, label, sha256 prefix)`` of a key this code writes, else ``None``."""
        for split in self.splits:
            rest = key.removeprefix(self._split_prefix(split))
            if rest == key:
                continue
            label, _, name = rest.partition("/")
            match = _KEY_NAME_RE.match(name)
            if label in self.config.labels and match:
                return split, label, match["sha"]
        return None


def default_workers() -> int:
    """Worker threads: two per core (reads and uploads wait on I/O; hashing and decoding
    release the GIL, so threads use every core)."""
    return max(2, 2 * (os.cpu_count() or 1))


def run_ingestion(
    config_path: Path | str,
    splits: list[str] | tuple[str, ...] = DEFAULT_SPLITS,
    dry_run: bool = False,
    settings: Settings | None = None,
    *,
    store: ObjectStore | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    verify: VerifyMode = "structure",
) -> IngestionSummary:
    """Ingest the given splits of a dataset config; return what happened.

    Args:
        config_path: the dataset config YAML.
        splits: split names of the config to scan (others are left untouched).
        dry_run: refresh metadata only; never touch the object store.
        settings: platform settings (defaults to :func:`get_settings`).
        store: an object store to use instead of the one ``settings`` describes.
        workers: worker threads (default :func:`default_workers`).
        progress: ``callback(phase, done, total)`` for a progress bar.
        verify: how new files are proven whole: ``structure`` (default: header parsed,
            JPEG end-of-image after the last scan, every PNG chunk CRC; catches truncated
            and damaged files at ~1.9x the cost of ``sha256sum`` + ``cp``) or ``decode``
            (also decodes through the shared preprocessing: the strongest proof, ~3x
            slower on new files); see :func:`check_file`.

    Raises:
        ConfigError: bad config or split name. DataError: a split folder is missing or
        another ingestion holds the lock. StorageError: the object store failed.
    """
    settings = settings or get_settings()
    config = load_dataset_config(config_path)
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise DataError("no split to ingest (pass --splits train val)")
    if verify not in ("decode", "structure"):
        raise ConfigError(f"unknown verify mode {verify!r} (decode or structure)")
    for split in splits:
        config.split_root(split)  # ConfigError for an unknown split
    if not dry_run and store is None:
        store = make_object_store(settings, max_pool_connections=2 * (workers or default_workers()))
    with _ingestion_lock(config.metadata_db):
        return _Ingestion(
            config,
            splits,
            dry_run,
            settings,
            None if dry_run else store,
            workers or default_workers(),
            progress,
            verify,
        ).run()


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _print_summary(summary: IngestionSummary, console: Console) -> None:
    """A per-split, per-label table, then conflicts, leakage and problems."""
    totals = summary.totals()
    headers = {
        "new": "new",
        "unchanged": "unchanged",
        "not_an_image": "not image",
        "corrupt": "corrupt",
        "duplicates": "dupes",
        "conflicts": "conflicts",
        "leakage": "leakage",
        "missing": "missing",
        "errors": "errors",
    }
    # Problem columns only appear when there is a problem (the table fits 80 columns on a
    # clean run); a line below says which checks found nothing.
    always = ("new", "unchanged")
    columns = [n for n in headers if n in always or getattr(totals, n)]
    clean = [headers[n] for n in headers if n not in always and not getattr(totals, n)]
    title = f"Ingestion of {summary.dataset}" + (" (dry run)" if summary.dry_run else "")
    table = Table(
        title=title, show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    table.add_column("split", footer="total", no_wrap=True)
    table.add_column("label", no_wrap=True)
    for name in columns:
        table.add_column(headers[name], justify="right", footer=str(getattr(totals, name)))
    for split, labels in summary.counts.items():
        for label, counts in labels.items():
            cells = []
            for name in columns:
                value = getattr(counts, name)
                bad = name in ("corrupt", "conflicts", "errors") and value
                warn = name in ("leakage", "missing") and value
                cells.append(
                    f"[red]{value}[/]" if bad else f"[yellow]{value}[/]" if warn else str(value)
                )
            table.add_row(split, label, *cells)
    console.print(table)
    verb = "would upload" if summary.dry_run else "uploaded"
    uploads = totals.new if summary.dry_run else summary.uploaded
    console.print(
        f"{verb} {uploads} object(s) to {summary.bucket} ({summary.store}); "
        f"adopted {summary.orphans_adopted} and deleted {summary.orphans_deleted} orphan "
        f"object(s); {summary.rows_missing_total} row(s) marked missing; "
        f"{summary.duration_s:.2f}s"
    )
    if clean:
        console.print(f"[green]none found:[/] {', '.join(clean)}", highlight=False)
    for split, names in summary.unknown_label_folders.items():
        if names:
            console.print(
                f"[yellow]{split}: folders that are not labels, skipped:[/] " + ", ".join(names)
            )
    for split, names in summary.missing_label_folders.items():
        if names:
            console.print(f"[yellow]{split}: no folder for labels:[/] " + ", ".join(names))
    shown = 20
    for title_text, findings, style in (
        (
            "label conflicts (same image under several labels; not used for training)",
            summary.conflicts,
            "red",
        ),
        ("train/val leakage (same image in several splits)", summary.leakage, "yellow"),
    ):
        if findings:
            console.print(f"[{style}]{len(findings)} {title_text}:[/]")
            for finding in findings[:shown]:
                where = "; ".join(
                    f"{p.split}/{p.label}: {p.source_path or '(object only)'}"
                    for p in finding.places
                )
                console.print(f"  {finding.sha256[:12]}  {where}", highlight=False)
            if len(findings) > shown:
                console.print(f"  ... and {len(findings) - shown} more (see to_dict())")
    if summary.problems:
        console.print(f"[red]{len(summary.problems)} problem(s):[/]")
        for problem in summary.problems[:shown]:
            console.print(f"  {problem.kind}: {problem.path}: {problem.message}", highlight=False)
        if len(summary.problems) > shown:
            console.print(f"  ... and {len(summary.problems) - shown} more")


class _VerifyChoice(StrEnum):
    """``--verify`` values (see :func:`check_file`)."""

    decode = "decode"
    structure = "structure"


def _merge_splits(option_values: list[str] | None, extra_values: list[str] | None) -> list[str]:
    """``--splits train val`` == ``--splits train --splits val``: Click gives the first value
    to the option and the rest as positional arguments; join them back, in order."""
    values = list(option_values or []) + list(extra_values or [])
    if not values:
        return list(DEFAULT_SPLITS)
    return list(dict.fromkeys(v for value in values for v in value.split(",") if v))


def ingest_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            "--dataset-config",
            help="Dataset config YAML (default: DATASET_CONFIG).",
        ),
    ] = None,
    splits: Annotated[
        list[str] | None,
        typer.Option(
            "--splits", "-s", help="Splits to ingest: --splits train val.", show_default="train val"
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Refresh metadata only; never touch the store.")
    ] = False,
    verify: Annotated[
        _VerifyChoice,
        typer.Option(
            "--verify",
            help="Prove new files whole by decoding them, or by markers/CRCs only (faster).",
        ),
    ] = _VerifyChoice.structure,
    more_splits: Annotated[list[str] | None, typer.Argument(hidden=True, metavar="SPLIT")] = None,
) -> None:
    """Ingest data/raw/<split>/<label>/ images into the object store and the metadata DB."""
    settings = get_settings()
    config_path = config or settings.dataset_config
    chosen = _merge_splits(splits, more_splits)
    console = Console()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("scanning", total=None)

        def on_progress(phase: str, done: int, total: int) -> None:
            bar.update(
                task,
                description="ingesting" if phase == "ingest" else "scanning",
                completed=done,
                total=total,
            )

        summary = run_ingestion(
            config_path,
            chosen,
            dry_run=dry_run,
            settings=settings,
            progress=on_progress,
            verify=verify.value,
        )
    _print_summary(summary, console)
    if summary.failed:
        raise typer.Exit(code=1)
