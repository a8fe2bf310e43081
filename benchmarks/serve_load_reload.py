"""60 s of load at 32 clients while the model is swapped: zero failed requests.

A private export link ``benchmarks/out/reload/runs/skin5-current`` starts at version
``A`` (a copy of the benchmark model, see ``serve_common.resolve_model``). ``skin-mlops
serve`` watches it (``MODEL_POLL_SECONDS=1``, admin token set) while 32 clients post
dermnet5 val photos back to back for 60 s. During the load:

* t = 20 s: version ``B`` is published (atomic symlink swap) -> the poller swaps it in;
* t = 35 s: a broken version (``model.onnx`` = garbage) is published -> refused, ``B``
  keeps serving;
* t = 45 s: version ``C`` is published and ``POST /admin/reload`` swaps it in at once.

Reports failed requests (the target is zero), which versions answered in each 5-second
window, throughput and p99 latency per window; writes ``benchmarks/out/serve_load_reload.json``
and a PNG. Run: ``uv run python benchmarks/serve_load_reload.py [--export DIR]``
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import (
    OUT,
    RssSampler,
    free_port,
    resolve_model,
    run_load,
    start_server,
    val_photos,
)  # noqa: E402

from skin_mlops import export_format  # noqa: E402

console = Console()
ADMIN_TOKEN = "benchmark-admin-token"
WINDOW_S = 5.0


def publish_copy(source: Path, link: Path, version: str, *, broken: bool = False) -> None:
    """Publish a copy of the export ``source`` as ``version`` (``broken``: garbage ONNX)."""
    folder = source.resolve()
    staging = export_format.new_version_dir(link, version)
    shutil.rmtree(staging)
    shutil.copytree(folder, staging, ignore=shutil.ignore_patterns("model.keras"))
    signature = export_format.read_signature(staging).model_copy(update={"model_version": version})
    export_format.write_metadata(staging, signature)
    if broken:
        (staging / export_format.ONNX_MODEL_FILE).write_bytes(b"not an onnx model")
    export_format.publish(staging, link, version)


def main(
    export: Annotated[
        Path | None, typer.Option(help="Export folder (default: runs/skin5-current).")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Length of the load run.")] = 60.0,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent clients.")] = 32,
) -> None:
    """Load the API while models are swapped in (and one refused); zero failures expected."""

    photos = [p.read_bytes() for p in val_photos()]
    export, description = resolve_model(export)
    link = OUT / "reload" / "runs" / "skin5-current"
    if link.parent.exists():
        shutil.rmtree(link.parent)
    publish_copy(export, link, "A")
    console.print(f"model: {description}; load average at start {os.getloadavg()}")

    port = free_port()
    venv_bin = Path(sys.executable).parent
    server = start_server(
        "skin-mlops serve (reload)",
        [str(venv_bin / "skin-mlops"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        port,
        "/ready",
        {"MODEL_SOURCE": str(link), "MODEL_POLL_SECONDS": "1", "ADMIN_TOKEN": ADMIN_TOKEN},
    )
    answers: list[tuple[float, str]] = []
    events: list[tuple[float, str]] = []
    start = time.perf_counter()

    async def send(client: httpx.AsyncClient, index: int) -> httpx.Response:
        data = photos[index % len(photos)]
        response = await client.post("/predict", files={"file": ("photo.jpg", data, "image/jpeg")})
        if response.status_code == 200:
            answers.append((time.perf_counter(), response.json()["model_version"]))
        return response

    async def swaps() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as admin:
            plan = [(20, "B", False, False), (35, "broken", True, False), (45, "C", False, True)]
            for at, version, broken, use_admin in plan:
                await asyncio.sleep(max(0.0, at * seconds / 60 - (time.perf_counter() - start)))
                await asyncio.to_thread(publish_copy, export, link, version, broken=broken)
                events.append((time.perf_counter() - start, f"published {version}"))
                if use_admin:
                    reply = await admin.post(
                        "/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                    )
                    events.append(
                        (time.perf_counter() - start, f"admin reload -> {reply.status_code}")
                    )
            await asyncio.sleep(3)
            info = (await admin.get("/model")).json()
            events.append(
                (
                    time.perf_counter() - start,
                    f"/model: {info['model_version']}, last error: {info['last_reload_error']}",
                )
            )

    async def scenario():  # noqa: ANN202
        nonlocal start
        start = time.perf_counter()
        load, _ = await asyncio.gather(
            run_load(server.url, send, clients, duration_s=seconds), swaps()
        )
        return load

    try:
        with RssSampler(server) as rss:
            load = asyncio.run(scenario())
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()

    # one time origin for everything: the load's start
    answers = [(t - load.started_at, v) for t, v in answers]
    events = [(t + start - load.started_at, what) for t, what in events]
    finish = np.array(load.finish_times)
    latencies = np.array(load.latencies_s)
    table = Table(title=f"{clients} clients for {seconds:.0f} s with model swaps - {description}")
    for column in ("window s", "requests", "req/s", "p50 ms", "p99 ms", "versions answering"):
        table.add_column(column, justify="right" if column != "versions answering" else "left")
    windows = []
    for lo in np.arange(0, seconds, WINDOW_S):
        mask = (finish >= lo) & (finish < lo + WINDOW_S)
        versions = Counter(v for t, v in answers if lo <= t < lo + WINDOW_S)
        row = {
            "window": f"{lo:.0f}-{lo + WINDOW_S:.0f}",
            "requests": int(mask.sum()),
            "rps": float(mask.sum() / WINDOW_S),
            "p50_ms": float(np.percentile(latencies[mask], 50) * 1000)
            if mask.any()
            else float("nan"),
            "p99_ms": float(np.percentile(latencies[mask], 99) * 1000)
            if mask.any()
            else float("nan"),
            "versions": dict(versions),
        }
        windows.append(row)
        table.add_row(
            row["window"],
            str(row["requests"]),
            f"{row['rps']:.1f}",
            f"{row['p50_ms']:.0f}",
            f"{row['p99_ms']:.0f}",
            ", ".join(f"{k}:{n}" for k, n in sorted(versions.items())),
        )
    console.print(table)
    for at, what in events:
        console.print(f"  t={at:5.1f} s  {what}")
    reload_lines = [
        line for line in metrics.splitlines() if line.startswith("api_model_reloads_total")
    ]
    console.print(
        f"requests: {load.completed} ok, [bold]{load.failures} failed[/] (target 0); "
        f"throughput {load.throughput:.1f}/s; p99 {load.percentile_ms(99):.0f} ms; "
        f"server RSS peak {rss.peak_mib:.0f} MiB"
    )
    console.print("  " + "; ".join(reload_lines))
    if load.failure_examples:
        console.print(f"failure examples: {load.failure_examples}")
    console.print(f"load average at end {os.getloadavg()}")
    result = {
        "model": description,
        "clients": clients,
        "seconds": seconds,
        "completed": load.completed,
        "failed": load.failures,
        "failure_examples": load.failure_examples,
        "throughput": load.throughput,
        "p99_ms": load.percentile_ms(99),
        "rss_peak_mib": rss.peak_mib,
        "events": events,
        "windows": windows,
        "reload_metrics": reload_lines,
    }
    (OUT / "serve_load_reload.json").write_text(json.dumps(result, indent=2))
    plot(windows, events, OUT / "serve_load_reload.png", description)
    console.print(f"wrote {OUT / 'serve_load_reload.json'} and {OUT / 'serve_load_reload.png'}")


def plot(windows: list[dict], events: list[tuple[float, str]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    mids = [float(w["window"].split("-")[0]) + WINDOW_S / 2 for w in windows]
    ax.plot(mids, [w["rps"] for w in windows], marker="o", label="requests/s")
    ax2 = ax.twinx()
    ax2.plot(mids, [w["p99_ms"] for w in windows], marker="x", color="tab:red", label="p99 ms")
    for at, what in events:
        if what.startswith(("published", "admin")):
            ax.axvline(at, color="gray", linestyle="--", linewidth=1)
            ax.text(at, ax.get_ylim()[1] * 0.95, what, rotation=90, fontsize=7, va="top")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests / s")
    ax2.set_ylabel("p99 ms")
    ax.set_title(f"load with model swaps (zero failures expected) - {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    typer.run(main)
