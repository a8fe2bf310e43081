"""Step 1, scanning: list every file under each requested ``<split root>/<label>/`` folder,
with its ``stat()`` fingerprint (size, mtime, ctime, inode). The run compares it with the
scan cache (``source_files``): an unchanged file is not read again, which is what makes a
no-change rerun fast.

Symlinks (to files or folders, label folders included) are followed only when their target
stays inside a configured split root; the others are reported as problems and skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skin_mlops.core.errors import DataError
from skin_mlops.dataset_config import DatasetConfig
from skin_mlops.ingestion.report import IngestionSummary, Problem
from skin_mlops.metadata import FileKind, SourceFileRecord


def scan_splits(
    config: DatasetConfig, splits: list[str], summary: IngestionSummary
) -> list[ScannedFile]:
    """Every file of every requested split/label folder, in path order per folder.

    Records in ``summary`` the folders that are not labels, the labels without a folder,
    an empty counter for every split/label, and the symlinks not followed.

    Raises:
        DataError: a requested split's folder does not exist.
    """
    allowed = [os.path.realpath(config.split_root(s)) for s in config.splits]
    files: list[ScannedFile] = []
    for split in splits:
        root = config.split_root(split)
        if not root.is_dir():
            raise DataError(
                f"split {split!r}: folder {root} does not exist (expected "
                f"{root}/<label>/<image files>; see the dataset config "
                f"{config.source or ''})"
            )
        summary.unknown_label_folders[split] = config.unknown_label_folders(split)
        summary.missing_label_folders[split] = config.missing_label_folders(split)
        for label in config.labels:
            summary.label_counts(split, label)
            folder = root / label
            if folder.is_symlink() and not _inside(os.path.realpath(folder), allowed):
                summary.problems.append(
                    Problem(
                        str(folder),
                        "symlink_outside_root",
                        f"label folder links to {os.path.realpath(folder)}, outside "
                        "the data root; not followed",
                    )
                )
                continue
            if folder.is_dir():
                files += scan_label_folder(folder, split, label, allowed, summary.problems)
    return files


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
    """``path`` is one of ``roots`` or under one (both already resolved)."""
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
