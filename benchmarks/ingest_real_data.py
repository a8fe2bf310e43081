"""Real-data check: ingest ``../shared/datasets/dermnet5`` as a newcomer would.

Usage (from the repo root)::

    uv run python benchmarks/ingest_real_data.py

Copies ``../shared/datasets/dermnet5/{train,val}`` to ``data/raw`` in a fresh temporary
working directory with the repo's ``configs/dataset_config.yaml``, runs
``skin-mlops ingest --splits train val`` twice, and checks: rows per split/label == image
files on disk, objects in the store == rows, the second run uploads 0 objects.
Exits 1 when a check fails, 2 when the shared data set is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets" / "dermnet5"
console = Console()


def run_cli(work: Path) -> tuple[subprocess.CompletedProcess, float]:
    script = Path(sys.executable).with_name("skin-mlops")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("STORAGE_BACKEND", "LOCAL_OBJECT_ROOT", "DATASET_CONFIG")
    }
    env["COLUMNS"] = "140"
    started = time.perf_counter()
    result = subprocess.run(
        [str(script), "ingest", "--splits", "train", "val"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    return result, time.perf_counter() - started


def uploaded_count(output: str) -> int:
    match = re.search(r"uploaded (\d+) object", " ".join(output.split()))
    return int(match.group(1)) if match else -1


def main() -> None:
    """Ingest dermnet5 twice as a newcomer would and check rows, objects and the rerun."""
    if not SHARED.is_dir():
        console.print(f"[red]{SHARED} not found: the real-data check needs the shared data set")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="skin-real-") as temp:
        work = Path(temp)
        for split in ("train", "val"):
            shutil.copytree(SHARED / split, work / "data" / "raw" / split)
        (work / "configs").mkdir()
        shutil.copy(REPO / "configs" / "dataset_config.yaml", work / "configs")

        first, first_s = run_cli(work)
        second, second_s = run_cli(work)
        console.print(first.stdout)

        files = Counter(
            (p.parent.parent.name, p.parent.name)
            for p in (work / "data" / "raw").rglob("*")
            if p.is_file()
        )
        with sqlite3.connect(work / "data" / "metadata" / "skin_metadata.db") as conn:
            rows = conn.execute("SELECT split, label, object_key, status FROM lesions_data")
            rows = rows.fetchall()
        per_label = Counter((split, label) for split, label, _, _ in rows)
        bucket = work / "data" / "objects" / "skin-processed"
        objects = {p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file()}

        table = Table(title="dermnet5 -> data/raw -> skin-mlops ingest")
        for column in ("split", "label", "files on disk", "rows"):
            table.add_column(
                column, justify="right" if column in ("files on disk", "rows") else "left"
            )
        for key in sorted(files):
            table.add_row(*key, str(files[key]), str(per_label.get(key, 0)))
        table.add_row("total", "", str(sum(files.values())), str(len(rows)))
        console.print(table)
        checks = {
            "first run exit code 0": first.returncode == 0,
            "rows per split/label == files on disk": per_label == files,
            "all rows present": all(status == "present" for *_, status in rows),
            "objects == rows (same keys)": objects == {key for _, _, key, _ in rows},
            "second run exit code 0": second.returncode == 0,
            "second run uploads 0 objects": uploaded_count(second.stdout) == 0,
        }
        for name, ok in checks.items():
            console.print(f"{'[green]ok[/]' if ok else '[red]FAILED[/]'}  {name}")
        console.print(
            f"files {sum(files.values())}, rows {len(rows)}, objects {len(objects)}; "
            f"first run {first_s:.2f}s (uploaded {uploaded_count(first.stdout)}), "
            f"second run {second_s:.2f}s (uploaded {uploaded_count(second.stdout)}), "
            "CLI wall time incl. interpreter start"
        )
        if first.returncode or second.returncode:
            console.print(first.stderr, second.stderr)
        raise typer.Exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    typer.run(main)
