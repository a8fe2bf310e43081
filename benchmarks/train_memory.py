"""Training memory: peak resident memory of ``skin-mlops train``, per stage, at 1x and Nx data.

Usage (from the repo root)::

    uv run python benchmarks/train_memory.py [--scale 1 --scale 4]

For each scale, in a fresh working folder (``benchmarks/out/train-memory-<N>x/``, cold
caches, default recipe):

1. ``data/raw`` = the dermnet5 photos, plus for ``N > 1`` ``N - 1`` new files per photo
   (mirrored, cropped to 90 % and turned copies, re-encoded at JPEG quality 85-92, so each
   is a new file with new bytes and its own features);
2. ``skin-mlops ingest``, then ``skin-mlops train`` under ``/usr/bin/time -v``: its
   maximum resident set size (of the largest process) and wall time, and the peak of
   the summed RSS of the whole process tree, sampled every 50 ms (training converts its
   backbone in a child process: the sum is what the machine must hold);
3. from the run's MLflow metrics: ``peak_rss_mb_after_<stage>`` (the process's peak so
   far when each stage ends, so the stage where memory grows shows) and
   ``time_<stage>_s``.

Prints one table per scale and the Nx / 1x ratios (target: peak within 15 % of 1x, wall
time growing no faster than the photo count). Writes ``benchmarks/out/train_memory.json``.
Exits 2 without the shared data set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import psutil
import typer
from PIL import Image
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets" / "dermnet5"
OUT = REPO / "benchmarks" / "out"
console = Console(width=140)


def variants(image: Image.Image, count: int) -> list[tuple[Image.Image, int]]:
    """``count`` different copies of ``image`` with the JPEG quality to save each at."""
    width, height = image.size
    crop = image.crop((width // 20, height // 20, width - width // 20, height - height // 20))
    made = [
        (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 88),
        (crop, 90),
        (image.transpose(Image.Transpose.ROTATE_90), 85),
        (crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM), 92),
    ]
    while len(made) < count:
        made.append((made[len(made) % 4][0].transpose(Image.Transpose.ROTATE_180), 87))
    return made[:count]


def build_tree(work: Path, scale: int) -> Path:
    """``work/data/raw/<split>/<label>/`` with the photos and ``scale - 1`` copies each."""
    raw = work / "data" / "raw"
    for photo in sorted(SHARED.glob("*/*/*.jpg")):
        split, label = photo.parent.parent.name, photo.parent.name
        target = raw / split / label
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, target / photo.name)
        if scale > 1:
            with Image.open(photo) as image:
                upright = image.convert("RGB")
            for k, (copy, quality) in enumerate(variants(upright, scale - 1), start=1):
                copy.save(target / f"{photo.stem}-copy{k}.jpg", quality=quality)
    labels = sorted(p.name for p in (raw / "train").iterdir())
    config = work / "configs" / "dataset_config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "dataset: dermnet5\nsplits:\n  train: data/raw/train\n  val: data/raw/val\nlabels:\n"
        + "".join(f"  - {label}\n" for label in labels)
        + "metadata_db: data/metadata/skin_metadata.db\n"
    )
    return config


def clean_env() -> dict[str, str]:
    from skin_mlops.core.config import Settings

    fields = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in fields}
    env.update(COLUMNS="120", TF_CPP_MIN_LOG_LEVEL="2")
    return env


class TreePeak(threading.Thread):
    """The peak of the *summed* resident memory of a process and all its descendants.

    ``/usr/bin/time -v`` reports the largest single process; training converts its
    backbone in a child process, so what the machine must hold is the sum, sampled here
    every 50 ms.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_mb = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.05):
            total = 0
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in tree:
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def stop(self) -> None:
        self._done.set()
        self.join()


def measured_train(work: Path, config: Path) -> dict:
    """``skin-mlops train`` under ``/usr/bin/time -v``; its peak RSS, wall and stage figures."""
    script = Path(sys.executable).with_name("skin-mlops")
    env = clean_env()
    subprocess.run(
        [str(script), "ingest", "--config", str(config), "--splits", "train", "val"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
    )
    process = subprocess.Popen(
        ["/usr/bin/time", "-v", str(script), "train", "--config", str(config)],
        cwd=work,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tree_peak = TreePeak(process.pid)
    tree_peak.start()
    stdout, stderr = process.communicate()
    tree_peak.stop()
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if done.returncode != 0:
        console.print(done.stdout[-2000:], done.stderr[-2000:])
        raise SystemExit(f"skin-mlops train failed ({done.returncode})")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)[1]
    parts = [float(x) for x in wall.split(":")]
    wall_s = sum(v * 60**i for i, v in enumerate(reversed(parts)))
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'data' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("skin-classifier")
    (run,) = client.search_runs([experiment.experiment_id], max_results=1)
    metrics = run.data.metrics
    return {
        "peak_rss_mb": peak_kb / 1024,
        "tree_peak_rss_mb": tree_peak.peak_mb,
        "wall_s": wall_s,
        "n_train": int(run.data.params["n_train"]),
        "val_macro_f1": metrics["val_macro_f1"],
        "stages": {
            key[len("peak_rss_mb_after_") :]: {
                "peak_rss_mb": value,
                "time_s": metrics.get(f"time_{key[len('peak_rss_mb_after_') :]}_s"),
            }
            for key, value in metrics.items()
            if key.startswith("peak_rss_mb_after_")
        },
    }


def main(
    scale: Annotated[
        list[int] | None, typer.Option(min=1, help="Dataset sizes to train on (1 = dermnet5).")
    ] = None,
) -> None:
    """Peak memory and time of the default training per stage, at each --scale."""
    if not SHARED.is_dir():
        console.print(f"[red]{SHARED} not found")
        raise typer.Exit(2)
    results = {}
    for n in scale or [1]:
        work = OUT / f"train-memory-{n}x"
        shutil.rmtree(work, ignore_errors=True)
        config = build_tree(work, n)
        console.print(f"{n}x: training in {work} ...")
        result = measured_train(work, config)
        results[n] = result
        table = Table(
            title=f"{n}x dermnet5 ({result['n_train']} training photos): peak RSS "
            f"{result['peak_rss_mb']:.0f} MiB (largest process; whole process tree "
            f"{result['tree_peak_rss_mb']:.0f} MiB), wall {result['wall_s']:.0f} s, val macro-F1 "
            f"{result['val_macro_f1']:.3f} ({os.cpu_count()} CPUs)"
        )
        for column in ("stage", "peak RSS so far (MiB)", "time (s)"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        ordered = sorted(result["stages"].items(), key=lambda kv: kv[1]["peak_rss_mb"])
        for stage, figures in ordered:
            table.add_row(stage, f"{figures['peak_rss_mb']:.0f}", f"{figures['time_s'] or 0:.1f}")
        console.print(table)
    if 1 in results:
        for n, result in results.items():
            if n == 1:
                continue
            base = results[1]
            console.print(
                f"{n}x / 1x: peak RSS {result['peak_rss_mb'] / base['peak_rss_mb']:.2f}x "
                f"(process tree {result['tree_peak_rss_mb'] / base['tree_peak_rss_mb']:.2f}x) "
                f"(target <= 1.15), wall {result['wall_s'] / base['wall_s']:.2f}x for "
                f"{result['n_train'] / base['n_train']:.2f}x the training photos"
            )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train_memory.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(main)
