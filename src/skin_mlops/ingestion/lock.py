"""The metadata DB's lock file (``<db>.lock``, an ``flock``): one ingestion at a time per
DB, and never while a training reads it.

An ingestion holds it exclusively for its whole run (:func:`ingestion_lock`); a training
holds it shared while it reads rows and images (several trainings may read at once). The
kernel releases an ``flock`` when its holder dies, even on SIGKILL: no stale lock to clean.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from skin_mlops.core.errors import DataError


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


def ingestion_lock(db_path: Path) -> contextlib.AbstractContextManager[None]:
    """The ingestion's exclusive hold on the DB (fails at once when it is busy)."""
    return metadata_lock(db_path, shared=False)
