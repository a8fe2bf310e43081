"""The ingestion run: :func:`run_ingestion` (what ``skin-mlops ingest`` and the Airflow
``ingestion`` DAG call) checks its arguments, takes the DB's lock and runs the steps in
order; :func:`_ingest` is that order, top to bottom.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from skin_mlops.core.config import Settings, get_settings
from skin_mlops.core.errors import ConfigError, DataError
from skin_mlops.dataset_config import DatasetConfig, load_dataset_config
from skin_mlops.ingestion.keys import list_store_keys
from skin_mlops.ingestion.lock import ingestion_lock
from skin_mlops.ingestion.reconcile import Reconciler
from skin_mlops.ingestion.report import IngestionSummary, ProgressCallback
from skin_mlops.ingestion.resolve import Resolver
from skin_mlops.ingestion.scan import scan_splits
from skin_mlops.ingestion.verify import VerifyMode
from skin_mlops.metadata import MetadataDB
from skin_mlops.storage import ObjectStore, make_object_store

DEFAULT_SPLITS = ("train", "val")


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
            slower on new files); see :func:`~skin_mlops.ingestion.verify.check_file`.

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
    with ingestion_lock(config.metadata_db):
        return _ingest(
            config,
            splits,
            dry_run,
            settings,
            None if dry_run else store,
            workers or default_workers(),
            progress or (lambda phase, done, total: None),
            verify,
        )


def _ingest(
    config: DatasetConfig,
    splits: list[str],
    dry_run: bool,
    settings: Settings,
    store: ObjectStore | None,
    workers: int,
    progress: ProgressCallback,
    verify: VerifyMode,
) -> IngestionSummary:
    """The steps in order (the lock is held); ``store`` is ``None`` on a dry run."""
    started = time.perf_counter()
    summary = IngestionSummary(
        dataset=config.dataset,
        splits=list(splits),
        dry_run=dry_run,
        store="(dry run: not touched)" if dry_run else repr(store),
        bucket=config.storage.bucket,
    )
    # 1. scan
    files = scan_splits(config, splits, summary)
    progress("scan", len(files), len(files))
    with MetadataDB(config.metadata_db) as db:
        rows = db.lesions(config.dataset)
        keys_in_store: set[str] = set()
        if store is not None:
            prefix = config.storage.prefix.strip("/")
            keys_in_store = list_store_keys(store, config.storage.bucket, prefix, splits, rows)
        cache = db.source_files(config.dataset, splits)
        # 2-4. check, resolve, upload, commit
        resolver = Resolver(
            config=config,
            dry_run=dry_run,
            store=store,
            db=db,
            summary=summary,
            rows=rows,
            keys_in_store=keys_in_store,
            workers=workers,
            max_image_pixels=settings.max_image_pixels,
            verify=verify,
            progress=progress,
        )
        with ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool:
            resolver.process(files, cache, pool)
        # 5. reconcile
        reconciler = Reconciler(
            config=config,
            splits=splits,
            db=db,
            summary=summary,
            rows=rows,
            seen=resolver.seen,
            image_sha=resolver.image_sha,
            store=store,
            keys_in_store=keys_in_store,
        )
        reconciler.forget_vanished_files(files, cache)
        reconciler.refresh_seen_rows()
        reconciler.mark_missing()
        reconciler.find_conflicts_and_leakage()
        if store is not None:
            reconciler.reconcile_store()
        summary.rows_missing_total = sum(
            1 for r in rows.values() if r.status == "missing" and r.split in splits
        )
    summary.duration_s = round(time.perf_counter() - started, 3)
    return summary
