"""A value computed once per photo, kept by SHA-256 in a small SQLite file.

The perceptual hashes (:mod:`~skin_mlops.modeling.near_duplicates`) and the skin-tone
angles (:mod:`~skin_mlops.modeling.skin_tone`) each decode every photo once; a rerun on
unchanged photos decodes nothing. The file lives beside the feature cache
(``<feature cache>/<name>.sqlite``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class PhotoCache:
    """``sha256 -> bytes`` of ``compute(photo bytes)``, in ``<cache_dir>/<name>.sqlite``."""

    def __init__(self, cache_dir: Path, name: str, compute: Callable[[bytes], bytes]) -> None:
        self.path = Path(cache_dir) / f"{name}.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._compute = compute
        self._table = name
        with self._connect() as db:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({name})")]
            if columns and columns != ["sha256", "value"]:
                # another release's layout: it is only a cache, so start it again
                db.execute(f"DROP TABLE {name}")
            db.execute(f"CREATE TABLE IF NOT EXISTS {name} (sha256 TEXT PRIMARY KEY, value BLOB)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def values(self, images: Sequence[tuple[str, Callable[[], bytes]]]) -> list[bytes]:
        """The value of each ``(sha256, load bytes)`` pair; computes only the missing ones
        (two threads: Pillow releases the GIL while decoding)."""
        with self._connect() as db:
            known = dict(db.execute(f"SELECT sha256, value FROM {self._table}").fetchall())
        missing = [(sha, load) for sha, load in images if sha not in known]
        if missing:
            with ThreadPoolExecutor(2) as pool:
                computed = list(pool.map(lambda item: self._compute(item[1]()), missing))
            pairs = [(sha, value) for (sha, _), value in zip(missing, computed, strict=True)]
            with self._connect() as db:
                db.executemany(f"INSERT OR REPLACE INTO {self._table} VALUES (?, ?)", pairs)
            known.update(pairs)
        return [known[sha] for sha, _ in images]
