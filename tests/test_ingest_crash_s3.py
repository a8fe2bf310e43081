"""Crash safety of ``skin-mlops ingest`` on the S3 backend, against a real ``moto_server``.

The S3 twin of the local-store kill loop in ``tests/test_ingestion.py``: SIGKILL the command
at varied moments (start-up, mid-upload), check after each kill that no row lacks its
object, rerun until a run completes, then rows = objects in the bucket = files on disk,
with zero orphans (no object without its row, no unfinished multipart upload).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ingest_fixtures import RawDataset, write_dataset_config, write_image
from skin_mlops.core.errors import DataError, StorageError
from skin_mlops.metadata import LesionRecord, read_lesions
from skin_mlops.storage import S3ObjectStore
from utils.tools import missing_tool

pytestmark = [pytest.mark.slow, pytest.mark.service, pytest.mark.timeout(300)]

KILLS = 5


def _console_script() -> str:
    script = Path(sys.executable).with_name("skin-mlops")
    if not script.exists():
        missing_tool("skin-mlops console script not installed in this venv (uv sync)")
    return str(script)


def _rows(ds: RawDataset) -> list[LesionRecord]:
    """Every row of the dataset (none before a run created the DB and its schema)."""
    try:
        return read_lesions(
            ds.db_path, dataset=ds.dataset, statuses=("present", "missing", "conflict")
        )
    except (DataError, sqlite3.Error):
        return []


def test_sigkill_at_varied_moments_on_s3_then_a_clean_run_leaves_db_and_bucket_in_agreement(
    raw_dataset: RawDataset, moto_endpoint: str
) -> None:
    script = _console_script()
    bucket = f"crash-{uuid.uuid4().hex[:12]}"
    write_dataset_config(raw_dataset.config_path, raw_dataset.labels, bucket=bucket)
    store = S3ObjectStore(moto_endpoint, "testing", "testing")
    env = {
        **{k: v for k, v in os.environ.items() if k != "LOCAL_OBJECT_ROOT"},
        "STORAGE_BACKEND": "s3",
        "S3_ENDPOINT_URL": moto_endpoint,
        "S3_ACCESS_KEY_ID": "testing",
        "S3_SECRET_ACCESS_KEY": "testing",
        "S3_MAX_ATTEMPTS": "2",
    }
    command = [script, "ingest", "--config", str(raw_dataset.config_path)]
    rng = random.Random(4321)
    n_files = 0

    def add_images(count: int) -> None:
        """New photos = new work for the next run (a finished run leaves none)."""
        nonlocal n_files
        for index in range(n_files, n_files + count):
            split = "val" if index % 5 == 0 else "train"
            label = raw_dataset.labels[index % 3]
            write_image(
                raw_dataset.raw / split / label / f"img_{index:04d}.jpg",
                seed=index,
                size=(160, 120),
            )
        n_files += count

    def stored() -> set[str]:
        try:
            return set(store.list_keys(bucket))
        except StorageError:  # no bucket before the first run created it
            return set()

    add_images(300)
    killed = attempts = 0
    # Kill moments: the first during start-up / the scan (before any upload), the others
    # once a random number of new objects landed (at most half of what is left, so each
    # kill interrupts real work). A run that finishes before its kill is not counted, and
    # new photos give the next run work to be interrupted in.
    while killed < KILLS and attempts < 4 * KILLS:
        if len(stored()) >= n_files:
            add_images(100)
        process = subprocess.Popen(
            command,
            env=env,
            cwd=raw_dataset.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if attempts == 0:
            time.sleep(rng.uniform(0.05, 0.4))
        else:
            have = len(stored())
            target = have + rng.randint(1, max(1, (n_files - have) // 2))
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                if len(stored()) >= target:
                    break
                time.sleep(0.02)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        process.wait()
        attempts += 1
        # The invariant at any moment: a row's object was stored before the row committed.
        dangling = {r.object_key for r in _rows(raw_dataset)} - stored()
        assert not dangling, (attempts, sorted(dangling)[:5])
    assert killed == KILLS, (killed, attempts, len(stored()))  # the runs were really interrupted

    clean = subprocess.run(
        command, env=env, cwd=raw_dataset.root, capture_output=True, text=True, timeout=180
    )
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]

    records = _rows(raw_dataset)
    assert len(records) == n_files and all(r.status == "present" for r in records)
    keys = stored()  # the whole bucket, not only the dataset's prefix
    assert keys == {r.object_key for r in records}  # no orphan object, no row without object
    for record in records:
        data = store.get_bytes(bucket, record.object_key)
        assert hashlib.sha256(data).hexdigest() == record.sha256
        assert len(data) == record.size_bytes
    for split in ("train", "val"):
        for label in raw_dataset.labels:
            on_disk = len(list((raw_dataset.raw / split / label).iterdir()))
            in_db = sum(1 for r in records if (r.split, r.label) == (split, label))
            assert in_db == on_disk, (split, label)
    uploads = store._client.list_multipart_uploads(Bucket=bucket)
    assert not uploads.get("Uploads"), uploads["Uploads"]
    assert not (raw_dataset.objects).exists()  # nothing went to the local store instead
