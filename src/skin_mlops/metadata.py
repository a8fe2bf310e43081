"""The SQLite metadata DB written by ingestion and read by training.

Two tables:

``lesions_data``
    One row per distinct image (SHA-256) per dataset, split and label, pointing at its
    object in the store (``object_key`` in the dataset's bucket). A row is only ever
    inserted *after* its object was stored, so no row points at a missing object.
    ``status`` says whether training may use it:

    * ``present``  - a file with these bytes is on disk under this split/label;
    * ``missing``  - the source file disappeared; the object is kept in the store;
    * ``conflict`` - the same bytes are also filed under another label (not resolved
      silently: reported by every ingestion until someone fixes the data).

``source_files``
    The scan cache: one row per file seen under a split/label folder, with the
    ``stat()`` fingerprint (size, mtime, ctime, inode) taken when it was last read and what
    reading it found (its SHA-256 and whether it is an image). A rerun trusts a file
    whose fingerprint is unchanged without reading it again, like ``git status`` does.

The DB runs in WAL mode (readers never block the writer) with ``synchronous=NORMAL``,
which survives a killed process (a power cut may lose the last commits, which the next
ingestion redoes from the files on disk).

The schema version is SQLite's ``user_version``, written by every writer and checked on
every open: a DB from a newer skin-mlops (a higher version) is refused with one line
rather than half-understood; an older one (0: created before versioning) is brought up
to date by the idempotent ``CREATE ... IF NOT EXISTS`` script and stamped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from skin_mlops.core.errors import DataError

LesionStatus = Literal["present", "missing", "conflict"]
FileKind = Literal["image", "not_an_image", "corrupt"]

# Raise it (and bring older DBs up in `connect`) whenever the tables change.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lesions_data (
    id            INTEGER PRIMARY KEY,
    sha256        TEXT    NOT NULL,
    dataset       TEXT    NOT NULL,
    split         TEXT    NOT NULL,
    label         TEXT    NOT NULL,
    source_path   TEXT    NOT NULL,
    object_key    TEXT    NOT NULL UNIQUE,
    size_bytes    INTEGER NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    format        TEXT    NOT NULL,
    ingested_at   TEXT    NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'present'
                  CHECK (status IN ('present', 'missing', 'conflict')),
    status_changed_at TEXT,
    UNIQUE (dataset, split, label, sha256)
);
CREATE INDEX IF NOT EXISTS lesions_by_sha ON lesions_data (dataset, sha256);
CREATE TABLE IF NOT EXISTS source_files (
    path        TEXT    PRIMARY KEY,
    dataset     TEXT    NOT NULL,
    split       TEXT    NOT NULL,
    label       TEXT    NOT NULL,
    size_bytes  INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    ctime_ns    INTEGER NOT NULL,
    inode       INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('image', 'not_an_image', 'corrupt')),
    width       INTEGER,
    height      INTEGER,
    format      TEXT,
    problem     TEXT,
    checked_at  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS source_files_by_split ON source_files (dataset, split);
"""


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (second precision)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LesionRecord:
    """One row of ``lesions_data``: a distinct image filed under one split and label."""

    sha256: str
    dataset: str
    split: str
    label: str
    source_path: str
    object_key: str
    size_bytes: int
    width: int
    height: int
    format: str
    ingested_at: str
    status: LesionStatus = "present"


@dataclass(frozen=True)
class SourceFileRecord:
    """One row of ``source_files``: what the last read of a file found."""

    path: str
    dataset: str
    split: str
    label: str
    size_bytes: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str
    kind: FileKind
    width: int | None = None
    height: int | None = None
    format: str | None = None
    problem: str | None = None

    def same_stat(self, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> bool:
        """Whether a file's current ``stat()`` matches the one taken when it was read."""
        return (self.size_bytes, self.mtime_ns, self.ctime_ns, self.inode) == (
            size,
            mtime_ns,
            ctime_ns,
            inode,
        )


_LESION_COLUMNS = (
    "sha256, dataset, split, label, source_path, object_key, size_bytes, width, height, "
    "format, ingested_at, status"
)
_SOURCE_COLUMNS = (
    "path, dataset, split, label, size_bytes, mtime_ns, ctime_ns, inode, sha256, kind, "
    "width, height, format, problem"
)


def schema_version(conn: sqlite3.Connection) -> int:
    """The DB's ``PRAGMA user_version`` (0 for a new file or one older than versioning)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_schema_version(conn: sqlite3.Connection, db_path: Path) -> None:
    """Refuse (closing ``conn``) a DB written by a newer skin-mlops."""
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        conn.close()
        raise DataError(
            f"metadata DB {db_path} has schema version {found}, newer than the version "
            f"{SCHEMA_VERSION} this skin-mlops knows: upgrade skin-mlops to use it"
        )


def connect(db_path: Path | str) -> sqlite3.Connection:
    """Open (creating if needed) the metadata DB for writing, in WAL mode, schema ensured.

    Raises:
        DataError: the DB cannot be opened, or it comes from a newer skin-mlops.
    """
    db_path = Path(db_path)
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
        _check_schema_version(conn, db_path)  # before anything is written to it
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except (OSError, sqlite3.Error) as exc:
        raise DataError(f"cannot open metadata DB {db_path}: {exc}") from None
    return conn


def _connect_read_only(db_path: Path | str) -> sqlite3.Connection:
    db_path = Path(db_path)
    if not db_path.is_file():
        raise DataError(f"metadata DB not found: {db_path} (run `skin-mlops ingest` first)")
    try:
        conn = sqlite3.connect(f"file:{db_path.resolve()}?mode=ro", uri=True, timeout=30.0)
        _check_schema_version(conn, db_path)
        conn.execute("SELECT 1 FROM lesions_data LIMIT 1")
    except sqlite3.Error as exc:
        raise DataError(f"cannot read metadata DB {db_path}: {exc}") from None
    return conn


class MetadataDB:
    """The writer's view of the metadata DB (used by ingestion; one writer at a time).

    Mutating methods do not commit on their own: wrap them in :meth:`transaction`.
    """

    def __init__(self, db_path: Path | str) -> None:
        self.path = Path(db_path)
        self.conn = connect(self.path)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> MetadataDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> _Transaction:
        """``with db.transaction(): ...`` commits on success, rolls back on any error."""
        return _Transaction(self.conn)

    # -- reads ---------------------------------------------------------------------------
    def lesions(self, dataset: str) -> dict[tuple[str, str, str], LesionRecord]:
        """All rows of ``dataset`` keyed by ``(split, label, sha256)``."""
        rows = self.conn.execute(
            f"SELECT {_LESION_COLUMNS} FROM lesions_data WHERE dataset = ?", (dataset,)
        )
        return {(r[2], r[3], r[0]): LesionRecord(*r) for r in rows}

    def all_object_keys(self) -> set[str]:
        """Every ``object_key`` in the DB, whatever its dataset or status."""
        return {row[0] for row in self.conn.execute("SELECT object_key FROM lesions_data")}

    def object_keys_of_other_datasets(self, dataset: str) -> set[str]:
        """Object keys of rows that belong to other datasets (they share the DB/bucket)."""
        rows = self.conn.execute(
            "SELECT object_key FROM lesions_data WHERE dataset != ?", (dataset,)
        )
        return {row[0] for row in rows}

    def source_files(self, dataset: str, splits: Iterable[str]) -> dict[str, SourceFileRecord]:
        """The scan cache of the given splits, keyed by path."""
        splits = list(splits)
        marks = ",".join("?" * len(splits))
        rows = self.conn.execute(
            f"SELECT {_SOURCE_COLUMNS} FROM source_files WHERE dataset = ? AND split IN ({marks})",
            (dataset, *splits),
        )
        return {r[0]: SourceFileRecord(*r) for r in rows}

    # -- writes (inside a transaction) -----------------------------------------------------
    def upsert_lesion(self, record: LesionRecord) -> None:
        """Insert a row, or refresh the row of the same ``(dataset, split, label, sha256)``."""
        self.upsert_lesions([record])

    def upsert_lesions(self, records: Sequence[LesionRecord]) -> None:
        """:meth:`upsert_lesion` for many rows in one statement."""
        self.conn.executemany(
            f"INSERT INTO lesions_data ({_LESION_COLUMNS}, status_changed_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (dataset, split, label, sha256) DO UPDATE SET "
            "source_path = excluded.source_path, object_key = excluded.object_key, "
            "status = excluded.status, status_changed_at = excluded.status_changed_at",
            [
                (
                    r.sha256,
                    r.dataset,
                    r.split,
                    r.label,
                    r.source_path,
                    r.object_key,
                    r.size_bytes,
                    r.width,
                    r.height,
                    r.format,
                    r.ingested_at,
                    r.status,
                    r.ingested_at,
                )
                for r in records
            ],
        )

    def set_lesion_state(
        self,
        dataset: str,
        split: str,
        label: str,
        sha256: str,
        *,
        status: LesionStatus,
        source_path: str | None = None,
    ) -> None:
        """Change a row's status (and, when given, the file it was last seen as)."""
        self.conn.execute(
            "UPDATE lesions_data SET status = ?, "
            "status_changed_at = CASE WHEN status = ? THEN status_changed_at ELSE ? END, "
            "source_path = COALESCE(?, source_path) "
            "WHERE dataset = ? AND split = ? AND label = ? AND sha256 = ?",
            (status, status, utc_now(), source_path, dataset, split, label, sha256),
        )

    def delete_lesion_by_key(self, object_key: str) -> None:
        """Remove the row of an object (used when its object is gone from the store)."""
        self.conn.execute("DELETE FROM lesions_data WHERE object_key = ?", (object_key,))

    def upsert_source_files(self, records: Sequence[SourceFileRecord]) -> None:
        """Record what reading these files found (replacing older rows for the paths)."""
        now = utc_now()
        self.conn.executemany(
            f"INSERT OR REPLACE INTO source_files ({_SOURCE_COLUMNS}, checked_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    r.path,
                    r.dataset,
                    r.split,
                    r.label,
                    r.size_bytes,
                    r.mtime_ns,
                    r.ctime_ns,
                    r.inode,
                    r.sha256,
                    r.kind,
                    r.width,
                    r.height,
                    r.format,
                    r.problem,
                    now,
                )
                for r in records
            ],
        )

    def delete_source_files(self, paths: Iterable[str]) -> None:
        """Forget files that are no longer on disk."""
        self.conn.executemany("DELETE FROM source_files WHERE path = ?", [(p,) for p in paths])


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


# --------------------------------------------------------------------------------------
# Read helpers for training and reports
# --------------------------------------------------------------------------------------


def read_lesions(
    db_path: Path | str,
    dataset: str | None = None,
    splits: Iterable[str] | None = None,
    statuses: Iterable[LesionStatus] = ("present",),
) -> list[LesionRecord]:
    """Rows of ``lesions_data``, ordered by split, label, SHA-256.

    Args:
        db_path: the metadata DB (``metadata_db`` of the dataset config).
        dataset: only this dataset (all when ``None``).
        splits: only these splits (all when ``None``).
        statuses: only rows in these states; by default the images training may use.

    Raises:
        DataError: the DB does not exist or cannot be read.
    """
    where, params = ["1 = 1"], []
    if dataset is not None:
        where.append("dataset = ?")
        params.append(dataset)
    for column, values in (("split", splits), ("status", statuses)):
        if values is not None:
            values = list(values)
            where.append(f"{column} IN ({','.join('?' * len(values))})" if values else "0")
            params.extend(values)
    conn = _connect_read_only(db_path)
    try:
        rows = conn.execute(
            f"SELECT {_LESION_COLUMNS} FROM lesions_data WHERE {' AND '.join(where)} "
            "ORDER BY split, label, sha256",
            params,
        ).fetchall()
    finally:
        conn.close()
    return [LesionRecord(*row) for row in rows]


def count_lesions(
    db_path: Path | str, dataset: str | None = None, statuses: Iterable[LesionStatus] = ("present",)
) -> dict[tuple[str, str], int]:
    """``{(split, label): number of rows}`` for a quick look at a dataset's balance."""
    counts: dict[tuple[str, str], int] = {}
    for record in read_lesions(db_path, dataset=dataset, statuses=statuses):
        key = (record.split, record.label)
        counts[key] = counts.get(key, 0) + 1
    return counts
