"""Steps 2-4, the files themselves: check them in the worker pool, resolve each in path
order (so results are deterministic), upload the new ones, commit their rows.

* **Check** (:func:`~skin_mlops.ingestion.verify.check_file`, in the pool): only files the
  scan cache does not vouch for are read, plus cached images whose object must be
  (re)uploaded.
* **Resolve**: the same bytes twice under one split/label are one image (the others count
  as duplicates); an image already stored is unchanged; anything else is new and uploaded
  (in the pool) under a collision-safe key (:mod:`~skin_mlops.ingestion.keys`).
* **Commit**: a ``lesions_data`` row is committed only *after* its object is stored, in
  batches (every :data:`COMMIT_EVERY_ROWS` rows or :data:`COMMIT_EVERY_SECONDS`).

A dry run resolves and refreshes the scan cache but never uploads.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from skin_mlops.core.errors import StorageError
from skin_mlops.dataset_config import DatasetConfig
from skin_mlops.ingestion.keys import claim_key
from skin_mlops.ingestion.report import IngestionSummary, Problem, ProgressCallback
from skin_mlops.ingestion.scan import ScannedFile
from skin_mlops.ingestion.verify import CheckedFile, VerifyMode, check_file
from skin_mlops.metadata import LesionRecord, MetadataDB, SourceFileRecord, utc_now
from skin_mlops.storage import ObjectStore

COMMIT_EVERY_ROWS = 500
COMMIT_EVERY_SECONDS = 1.0


@dataclass
class _PendingUpload:
    future: Future[None]
    record: LesionRecord
    cache: SourceFileRecord


@dataclass
class Resolver:
    """Steps 2-4 of one run. :meth:`process` is the whole of it; the run reads back
    :attr:`seen` and :attr:`image_sha` (and the shared ``rows``/``keys_in_store``, updated
    in place) to reconcile.

    Attributes:
        rows: every ``lesions_data`` row of the dataset, by ``(split, label, sha256)``;
            committed rows are added.
        keys_in_store: the keys listed before the run; uploaded keys are added.
        seen: ``(split, label, sha256)`` -> path of the first file holding those bytes.
        image_sha: path -> sha256 of every valid image file on disk.
    """

    config: DatasetConfig
    dry_run: bool
    store: ObjectStore | None
    db: MetadataDB
    summary: IngestionSummary
    rows: dict[tuple[str, str, str], LesionRecord]
    keys_in_store: set[str]
    workers: int
    max_image_pixels: int
    verify: VerifyMode
    progress: ProgressCallback
    seen: dict[tuple[str, str, str], str] = field(default_factory=dict)
    image_sha: dict[str, str] = field(default_factory=dict)
    uploads: deque[_PendingUpload] = field(default_factory=deque)
    batch_rows: list[LesionRecord] = field(default_factory=list)
    batch_cache: list[SourceFileRecord] = field(default_factory=list)
    last_commit: float = field(default_factory=time.monotonic)
    bucket: str = field(init=False)
    prefix: str = field(init=False)
    key_owner: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.bucket = self.config.storage.bucket
        self.prefix = self.config.storage.prefix.strip("/")
        self.key_owner = {r.object_key: r.sha256 for r in self.rows.values()}

    def process(
        self, files: list[ScannedFile], cache: dict[str, SourceFileRecord], pool: ThreadPoolExecutor
    ) -> None:
        """Steps 2-4: check files (in the pool), resolve them in path order, upload, commit."""
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
                pool.submit(check_file, scanned.path, self.max_image_pixels, self.verify)
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
        return claim_key(
            self.key_owner,
            self.prefix,
            scanned.split,
            scanned.label,
            name,
            checked.sha256,
            checked.format,
        )

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
