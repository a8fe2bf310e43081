"""How long the scheduler's DAG processor spends importing each DAG file.

Each file is timed in a fresh interpreter, after ``airflow.sdk`` itself is imported (that
cost is Airflow's, paid once per parsing process), median of N runs. Target: < 1 s a file;
the heavy imports (TensorFlow, MLflow, the training code) live inside the tasks.
Run: ``uv run python benchmarks/dag_import_time.py [--runs 5]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "airflow" / "dags"
PROBE = """
import json, runpy, sys, time
t0 = time.perf_counter(); import airflow.sdk; t1 = time.perf_counter()
runpy.run_path(sys.argv[1]); t2 = time.perf_counter()
print(json.dumps({"sdk_s": t1 - t0, "dag_s": t2 - t1}))
"""


def main(
    runs: Annotated[int, typer.Option(min=1, help="Timed imports per DAG file (median).")] = 5,
) -> None:
    """Print the import time of every DAG file."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": tempfile.mkdtemp(prefix="dag-import-"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    table = Table(title=f"DAG file import time, median of {runs} fresh interpreters")
    for column in ("file", "airflow.sdk import (s)", "DAG file (s)", "target < 1 s"):
        table.add_column(column)
    for path in sorted(DAGS.glob("*.py")):
        samples = []
        for _ in range(runs):
            out = subprocess.run(
                [sys.executable, "-c", PROBE, str(path)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
        sdk = statistics.median(s["sdk_s"] for s in samples)
        dag = statistics.median(s["dag_s"] for s in samples)
        table.add_row(path.name, f"{sdk:.2f}", f"{dag:.3f}", "met" if dag < 1 else "MISSED")
    Console().print(table)


if __name__ == "__main__":
    typer.run(main)
