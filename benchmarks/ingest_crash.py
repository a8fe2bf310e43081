"""Crash test: SIGKILL ``skin-mlops ingest`` at random moments, then check DB and store agree.

Usage (from the repo root)::

    uv run python benchmarks/ingest_crash.py [--images 2000] [--kills 10] [--seed 0]

Starts ``skin-mlops ingest`` on a generated set of 640x480 JPEGs (cached under
``benchmarks/out/``) into a fresh local store, kills it with SIGKILL after a random delay,
``--kills`` times, recording what each kill left behind (objects, rows, objects without a
row). Then one clean run must exit 0 and leave:

* rows per split/label == image files per split/label on disk;
* objects == rows (same keys), every object's SHA-256 == its row's, no two objects with
  the same split/label/content, no temporary files: zero orphans.

Exits 1 when any check fails.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from ingest_benchmark import OUT, generated_set, write_config
from rich.console import Console
from rich.table import Table

console = Console()
BUCKET = "skin-processed"


def object_keys(objects: Path) -> set[str]:
    bucket = objects / BUCKET
    if not bucket.exists():
        return set()
    return {p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file()}


def db_rows(db: Path) -> list[tuple[str, str, str, str, str]]:
    """``(split, label, sha256, object_key, status)`` of every row (empty before the DB)."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute(
                "SELECT split, label, sha256, object_key, status FROM lesions_data"
            ).fetchall()
        except sqlite3.OperationalError:  # killed before the schema was created
            return []


def start_ingest(config: Path, objects: Path, work: Path) -> subprocess.Popen:
    script = Path(sys.executable).with_name("skin-mlops")
    env = {**os.environ, "STORAGE_BACKEND": "local", "LOCAL_OBJECT_ROOT": str(objects)}
    return subprocess.Popen(
        [str(script), "ingest", "--config", str(config), "--splits", "train", "val"],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def main(
    images: Annotated[int, typer.Option(min=1, help="Generated JPEGs to ingest.")] = 2000,
    kills: Annotated[int, typer.Option(min=0, help="Ingestions to SIGKILL.")] = 10,
    max_delay: Annotated[
        float, typer.Option(help="Latest kill, in seconds after the interpreter start-up.")
    ] = 8.0,
    seed: Annotated[int, typer.Option(help="Seed of the kill moments.")] = 0,
) -> None:
    """SIGKILL `skin-mlops ingest` at random moments, then check DB and store agree."""
    rng = random.Random(seed)

    raw = generated_set(images)
    work = OUT / "crash-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = write_config(work, raw)
    objects, db = work / "objects", work / "metadata.db"

    # Kill moments: uniform from half the CLI start-up time (killed while importing) to
    # start-up + --max-delay (killed while scanning, uploading, committing, reconciling).
    script = Path(sys.executable).with_name("skin-mlops")
    started = time.perf_counter()
    subprocess.run([str(script), "--help"], check=True, stdout=subprocess.DEVNULL)
    startup = time.perf_counter() - started
    console.print(
        f"CLI start-up: {startup:.2f}s; kills between {startup / 2:.2f}s and "
        f"{startup + max_delay:.2f}s"
    )
    killed = Table(title=f"{kills} ingestions killed with SIGKILL ({images} JPEGs)")
    dangling_after_kill = 0
    columns = (
        "#",
        "killed after s",
        "objects",
        "rows",
        "objects w/o row",
        "rows w/o object",
        "temp files",
    )
    for column in columns:
        killed.add_column(column, justify="right")
    for attempt in range(1, kills + 1):
        delay = rng.uniform(startup / 2, startup + max_delay)
        process = start_ingest(config, objects, work)
        time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            when = f"{delay:.2f}"
        else:
            when = f"finished (rc {process.returncode})"
        process.wait()
        keys, rows = object_keys(objects), db_rows(db)
        incoming = objects / ".incoming"
        temp = len(list(incoming.iterdir())) if incoming.exists() else 0
        dangling = len({r[3] for r in rows} - keys)
        dangling_after_kill += dangling
        killed.add_row(
            str(attempt),
            when,
            str(len(keys)),
            str(len(rows)),
            str(len(keys - {r[3] for r in rows})),
            str(dangling),
            str(temp),
        )
    console.print(killed)

    clean = start_ingest(config, objects, work)
    _, stderr = clean.communicate()
    keys, rows = object_keys(objects), db_rows(db)
    row_keys = {r[3] for r in rows}
    files = Counter((p.parent.parent.name, p.parent.name) for p in raw.rglob("*.jpg"))
    present = Counter((r[0], r[1]) for r in rows if r[4] == "present")
    wrong_content = [
        r[3]
        for r in rows
        if r[3] in keys
        and hashlib.sha256((objects / BUCKET / r[3]).read_bytes()).hexdigest() != r[2]
    ]
    contents = Counter((r[0], r[1], r[2]) for r in rows)
    incoming = objects / ".incoming"
    temp_left = list(incoming.iterdir()) if incoming.exists() else []
    checks = {
        "after every kill: rows pointing to a missing object == 0": dangling_after_kill == 0,
        "clean run exit code 0": clean.returncode == 0,
        "rows per split/label == files on disk": present == files,
        "rows == objects (same keys)": row_keys == keys,
        "orphan objects (no row) == 0": not (keys - row_keys),
        "rows pointing to a missing object == 0": not (row_keys - keys),
        "objects whose bytes != row sha256 == 0": not wrong_content,
        "duplicate objects (same split/label/content) == 0": max(contents.values(), default=1) == 1,
        "temporary files left == 0": not temp_left,
    }
    result = Table(title="after one clean run")
    result.add_column("check")
    result.add_column("ok")
    for name, ok in checks.items():
        result.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]")
    console.print(result)
    console.print(f"files {sum(files.values())}, rows {len(rows)}, objects {len(keys)}")
    if clean.returncode != 0:
        console.print(stderr)
    raise typer.Exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    typer.run(main)
