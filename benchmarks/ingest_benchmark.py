"""Ingestion speed: first run vs ``sha256sum`` + ``cp`` of the same files, and a no-change rerun.

Usage (from the repo root)::

    uv run python benchmarks/ingest_benchmark.py [--images 10000] [--pools]

1. Generates (once, cached under ``benchmarks/out/jpeg<N>/``) N distinct 640x480 JPEGs in
   ``data/raw/<split>/<label>/`` (80 % train, 20 % val, 5 labels), photo-like in size.
2. Baseline, page cache warm: ``sha256sum`` of every file, then ``cp -r`` of the folder.
3. Through the ``skin-mlops ingest`` CLI, default mode (``--verify structure``): a first
   run into a fresh local object store, then a no-change rerun. Target: the rerun at least
   20x faster than the first run **in the same mode**. The CLI's fixed cost (interpreter
   start-up + imports, timed as ``skin-mlops ingest --help``, median of 3) is reported
   apart, and the ratio is also given without it.
4. The same pair in-process (:func:`run_ingestion`, no start-up at all), in both modes
   (``structure`` and ``decode``); the first run's target: within 2x of the baseline.
5. ``--pools``: the check stage (read + SHA-256 + decode) over 2,000 files with 1 thread,
   N threads and a 2-process pool, to show which pool pays on this machine.

Prints the figures side by side and writes ``benchmarks/out/ingest_benchmark.png``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
LABELS = ("acne", "actinic_keratosis", "atopic_dermatitis", "basal_cell_carcinoma", "lichen_planus")
WIDTH, HEIGHT = 640, 480
console = Console()


# --- the generated data set ---------------------------------------------------------------------


def _fields(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth colour fields and noise fields that combine into photo-like images."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    bases = np.empty((count, HEIGHT, WIDTH, 3), np.float32)
    for i in range(count):
        fx, fy, phase = rng.uniform(20, 90), rng.uniform(20, 90), rng.uniform(0, 6, 3)
        for c in range(3):
            bases[i, ..., c] = (
                130
                + 55 * np.sin(x / fx + phase[c]) * np.cos(y / fy - phase[c])
                + 25 * np.sin((x + y) / (fx + fy) * 3 + c)
            )
    noises = rng.normal(0, 7, (count, HEIGHT, WIDTH, 3)).astype(np.float32)
    return bases, noises


def _write_chunk(args: tuple[Path, list[tuple[int, str, str]], int]) -> int:
    """Encode one chunk of images (runs in a worker process)."""
    root, items, seed = args
    bases, noises = _fields(32, seed)
    for index, split, label in items:
        base = bases[index % 32]
        noise = np.roll(noises[(index // 32) % 32], shift=index % 97, axis=1)
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        # stamp the index into a corner so every file is distinct
        pixels[:8, : 8 * 16] = 0
        for bit in range(16):
            if index >> bit & 1:
                pixels[:8, bit * 8 : bit * 8 + 8] = 255
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        target = root / split / label / f"img_{index:05d}.jpg"
        target.write_bytes(buffer.getvalue())
    return len(items)


def generated_set(count: int) -> Path:
    """``benchmarks/out/jpeg<count>/data/raw`` (generated on first use, then reused)."""
    base = OUT / f"jpeg{count}"
    raw = base / "data" / "raw"
    marker = base / "done.json"
    if marker.exists():
        return raw
    shutil.rmtree(base, ignore_errors=True)
    items = []
    for index in range(count):
        split = "val" if index % 5 == 4 else "train"
        label = LABELS[index % len(LABELS)]
        items.append((index, split, label))
    for split in ("train", "val"):
        for label in LABELS:
            (raw / split / label).mkdir(parents=True, exist_ok=True)
    chunks = [(raw, items[i : i + 250], i) for i in range(0, count, 250)]
    with Progress(console=console) as bar, ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        task = bar.add_task(f"generating {count} JPEGs {WIDTH}x{HEIGHT}", total=count)
        for written in pool.map(_write_chunk, chunks):
            bar.advance(task, written)
    marker.write_text(json.dumps({"count": count, "size": [WIDTH, HEIGHT]}))
    return raw


def all_files(raw: Path) -> list[Path]:
    return sorted(p for p in raw.rglob("*") if p.is_file())


# --- measurements -------------------------------------------------------------------------------


def timed(command: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all child processes) of a shell command."""
    before = os.times()
    started = time.perf_counter()
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def baseline(raw: Path, scratch: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    """(wall, CPU) seconds of ``sha256sum`` of every file, then of ``cp -r`` of the tree."""
    copy = scratch / "cp-copy"
    shutil.rmtree(copy, ignore_errors=True)
    hashing = timed(f"find '{raw}' -type f -print0 | xargs -0 sha256sum > /dev/null")
    copying = timed(f"cp -r '{raw}' '{copy}'")
    shutil.rmtree(copy, ignore_errors=True)
    return hashing, copying


def write_config(work: Path, raw: Path) -> Path:
    config = work / "dataset_config.yaml"
    labels = "".join(f"  - {label}\n" for label in LABELS)
    config.write_text(
        f"dataset: bench\nsplits:\n  train: {raw / 'train'}\n  val: {raw / 'val'}\n"
        f"labels:\n{labels}metadata_db: {work / 'metadata.db'}\n"
        "storage:\n  bucket: skin-processed\n  prefix: skin\n"
    )
    return config


def run_in_process(config: Path, objects: Path, verify: str = "decode"):
    """One ingestion; returns (summary, wall seconds, CPU seconds)."""
    from skin_mlops.core.config import load_settings
    from skin_mlops.ingestion.run import run_ingestion

    settings = load_settings(storage_backend="local", local_object_root=objects)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = run_ingestion(config, ["train", "val"], settings=settings, verify=verify)
    return summary, time.perf_counter() - wall0, time.process_time() - cpu0


def run_cli(config: Path, objects: Path, work: Path) -> float:
    script = Path(sys.executable).with_name("skin-mlops")
    env = {**os.environ, "STORAGE_BACKEND": "local", "LOCAL_OBJECT_ROOT": str(objects)}
    started = time.perf_counter()
    subprocess.run(
        [str(script), "ingest", "--config", str(config), "--splits", "train", "val"],
        check=True,
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def run_cli_help(work: Path) -> float:
    """Wall time of ``skin-mlops ingest --help``: interpreter start-up + the CLI's imports."""
    script = Path(sys.executable).with_name("skin-mlops")
    started = time.perf_counter()
    subprocess.run(
        [str(script), "ingest", "--help"], check=True, cwd=work, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def _check(path: str) -> str:
    from skin_mlops.ingestion.verify import check_file

    return check_file(path, 40_000_000).sha256


def compare_pools(files: list[Path]) -> dict[str, float]:
    """Files/s of the check stage with 1 thread, 2x cores threads, and a process pool."""
    paths = [str(p) for p in files]
    cores = os.cpu_count() or 2
    results = {}
    for name, make in (
        ("1 thread", lambda: ThreadPoolExecutor(1)),
        (f"{2 * cores} threads", lambda: ThreadPoolExecutor(2 * cores)),
        (f"{cores} processes", lambda: ProcessPoolExecutor(cores)),
    ):
        with make() as pool:
            list(pool.map(_check, paths[:50]))  # warm up workers
            started = time.perf_counter()
            list(pool.map(_check, paths, chunksize=1 if "thread" in name else 32))
            results[name] = len(paths) / (time.perf_counter() - started)
    return results


def plot(figures: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, seconds = list(figures), list(figures.values())
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bars = ax.barh(
        names,
        seconds,
        color=["#888", "#888", "#2a7", "#27a", "#3b9", "#bbb", "#a72"][: len(names)],
    )
    ax.bar_label(bars, labels=[f"{s:.2f}s" for s in seconds], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds")
    ax.set_title(
        f"Ingestion of the generated JPEG set (local backend), "
        f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(
    images: Annotated[int, typer.Option(min=1, help="Generated JPEGs to ingest.")] = 10_000,
    pools: Annotated[
        bool, typer.Option("--pools", help="Also compare thread/process pools.")
    ] = False,
) -> None:
    """Time ingestion against sha256sum + cp of the same files, and a no-change rerun."""
    raw = generated_set(images)
    files = all_files(raw)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    console.print(
        f"{len(files)} files, {size_mb:.0f} MB, mean {size_mb * 1e3 / len(files):.0f} kB; "
        f"{os.cpu_count()} CPU cores"
    )
    timed(f"find '{raw}' -type f -exec cat {{}} + > /dev/null")  # warm the page cache for all

    work = OUT / "ingest-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (hashing, hashing_cpu), (copying, copying_cpu) = baseline(raw, work)
    base, base_cpu = hashing + copying, hashing_cpu + copying_cpu

    # through the CLI, default mode (structure): first run, then the no-change rerun
    cli_work = work / "cli"
    cli_work.mkdir()
    cli_config = write_config(cli_work, raw)
    startup = sorted(run_cli_help(cli_work) for _ in range(3))[1]
    cli_first = run_cli(cli_config, cli_work / "objects", cli_work)
    cli_rerun = run_cli(cli_config, cli_work / "objects", cli_work)

    # in-process, each mode: first run into a fresh store, then the no-change rerun
    in_process: dict[str, tuple[float, float, float, float]] = {}
    for mode in ("structure", "decode"):
        mode_work = work / f"in-process-{mode}"
        mode_work.mkdir()
        config = write_config(mode_work, raw)
        objects = mode_work / "objects"
        first, first_wall, first_cpu = run_in_process(config, objects, verify=mode)
        assert first.uploaded == len(files) and not first.failed, first.totals()
        rerun, rerun_wall, rerun_cpu = run_in_process(config, objects, verify=mode)
        assert rerun.uploaded == 0 and rerun.totals().unchanged == len(files)
        in_process[mode] = (first_wall, first_cpu, rerun_wall, rerun_cpu)

    load = os.getloadavg()[0]
    table = Table(
        title=f"Ingestion benchmark: {len(files)} JPEGs {WIDTH}x{HEIGHT}, "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end"
    )
    for column in ("what", "wall s", "CPU s", "vs"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row("sha256sum (all files)", f"{hashing:.2f}", f"{hashing_cpu:.2f}", "")
    table.add_row("cp -r (all files)", f"{copying:.2f}", f"{copying_cpu:.2f}", "")
    table.add_row("baseline = sha256sum + cp", f"{base:.2f}", f"{base_cpu:.2f}", "1.00x")
    table.add_row(
        "`skin-mlops ingest --help` (start-up + imports)", f"{startup:.2f}", "", "median of 3"
    )
    table.add_row(
        "CLI first run (default --verify structure)",
        f"{cli_first:.2f}",
        "",
        f"{cli_first / base:.2f}x baseline wall",
    )
    table.add_row(
        "CLI no-change rerun (same mode)",
        f"{cli_rerun:.2f}",
        "",
        f"{cli_first / cli_rerun:.1f}x faster than the CLI first run (target >= 20x); "
        f"{(cli_first - startup) / max(cli_rerun - startup, 1e-3):.0f}x without start-up",
    )
    for mode, (first_wall, first_cpu, rerun_wall, rerun_cpu) in in_process.items():
        table.add_row(
            f"in-process first run, --verify {mode} ({first_cpu / first_wall:.2f} cores busy)",
            f"{first_wall:.2f}",
            f"{first_cpu:.2f}",
            f"{first_wall / base:.2f}x baseline wall (target <= 2x)",
        )
        table.add_row(
            f"in-process no-change rerun, --verify {mode}",
            f"{rerun_wall:.3f}",
            f"{rerun_cpu:.2f}",
            f"{first_wall / rerun_wall:.0f}x faster than its first run",
        )
    console.print(table)
    cores = os.cpu_count() or 1
    for mode, (_, cpu, _, _) in in_process.items():
        ideal = cpu / cores
        console.print(
            f"Idle-machine estimate, --verify {mode}: {cpu:.1f} CPU-s spread on {cores} cores "
            f"= {ideal:.2f}s wall = {ideal / base_cpu:.2f}x the single-threaded baseline's "
            f"{base_cpu:.2f} CPU-s."
        )
    console.print(
        "Under load each process group gets a share of the cores, so a measured wall ratio "
        "is then close to the CPU ratio."
    )
    figures = {
        "sha256sum": hashing,
        "cp -r": copying,
        "baseline total": base,
        "CLI first (structure)": cli_first,
        "CLI rerun (structure)": cli_rerun,
        "CLI start-up": startup,
        "first, verify=decode": in_process["decode"][0],
    }
    (OUT / "ingest_benchmark.json").write_text(
        json.dumps(
            {
                "files": len(files),
                "cpus": os.cpu_count(),
                "baseline_s": base,
                "cli_startup_s": startup,
                "cli_first_s": cli_first,
                "cli_rerun_s": cli_rerun,
                "in_process": {
                    mode: dict(
                        zip(("first_s", "first_cpu_s", "rerun_s", "rerun_cpu_s"), v, strict=True)
                    )
                    for mode, v in in_process.items()
                },
            },
            indent=2,
        )
    )
    if pools:
        rates = compare_pools(files[:2000])
        pools = Table(title="check stage (read + SHA-256 + decode), 2,000 files")
        pools.add_column("pool")
        pools.add_column("files/s", justify="right")
        for name, rate in rates.items():
            pools.add_row(name, f"{rate:.0f}")
        console.print(pools)
    plot(figures, OUT / "ingest_benchmark.png")
    console.print(f"plot: {OUT / 'ingest_benchmark.png'}")


if __name__ == "__main__":
    typer.run(main)
