"""Step 5, reconciling the metadata with the disk and the store (every run, dry runs
included except for the store):

* scan-cache rows of files no longer on disk are dropped;
* rows whose bytes are back on disk are ``present`` again; a row whose file was renamed,
  deleted or rewritten is pointed at a file that holds its bytes;
* rows of the scanned splits whose bytes are no longer on disk become ``missing`` (their
  objects are kept);
* the same bytes under two labels are a **conflict** (rows marked ``conflict``, reported,
  not used for training); in two splits, **leakage** (listed);
* objects without a row (left by a process killed between upload and commit) are adopted
  as ``missing`` rows or, when a row already holds those bytes, deleted; rows whose object
  and file are both gone are removed.

Crash safety follows from the order of the steps: object first, row second, reconcile on
every run.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, replace

from skin_mlops.dataset_config import DatasetConfig
from skin_mlops.ingestion.keys import parse_key, split_prefix
from skin_mlops.ingestion.report import Finding, IngestionSummary, Place, Problem
from skin_mlops.ingestion.scan import ScannedFile
from skin_mlops.metadata import LesionRecord, LesionStatus, MetadataDB, SourceFileRecord, utc_now
from skin_mlops.preprocessing import ImageError, probe
from skin_mlops.storage import ObjectNotFoundError, ObjectStore


@dataclass
class Reconciler:
    """Step 5 of one run, after :class:`~skin_mlops.ingestion.resolve.Resolver`: call the
    public methods in the order they are defined (:meth:`reconcile_store` only when not a
    dry run).

    ``rows`` is the resolver's dict (updated in place); ``seen`` and ``image_sha`` are what
    it found on disk; ``keys_in_store`` what the store holds now.
    """

    config: DatasetConfig
    splits: list[str]
    db: MetadataDB
    summary: IngestionSummary
    rows: dict[tuple[str, str, str], LesionRecord]
    seen: dict[tuple[str, str, str], str]
    image_sha: dict[str, str]
    store: ObjectStore | None
    keys_in_store: set[str]

    @property
    def bucket(self) -> str:
        return self.config.storage.bucket

    @property
    def prefix(self) -> str:
        return self.config.storage.prefix.strip("/")

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
        own_prefixes = tuple(split_prefix(self.prefix, split) for split in self.splits)
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
        parsed = parse_key(key, self.prefix, self.splits, self.config.labels)
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
