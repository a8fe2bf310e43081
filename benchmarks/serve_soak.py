"""Soak: ``skin-mlops serve`` under steady load for minutes; errors, latency drift, memory.

``--clients`` concurrent clients (default 32; ``httpx`` async, each posts a dermnet5 val
photo as soon as its previous answer came back) for ``--duration`` seconds (default 600)
against ``skin-mlops serve`` started as a subprocess on the trained model (default
``runs/skin5-current``; the stand-in of ``serve_common`` when there is none). For each
``--window`` (default 60 s) it reports requests, errors, p50 / p99 client-side latency and
the server's resident memory (psutil, sampled every second), then three checks:

* **errors**: 0 non-200 answers and 0 transport errors over the whole run;
* **memory**: the server's RSS at the end (median of the last 5 s) is at most 10 % above
  its RSS after the first window (median of that window's last 5 s);
* **latency drift**: p99 of the last window is at most 1.5x the p99 of the first.

The machine's 1-minute load average is printed per window too (on a shared machine other
work moves the latencies). Writes ``benchmarks/out/serve_soak.json``; exits 1 when a check
fails.

Run: ``uv run python benchmarks/serve_soak.py [--export /path/runs/skin5-current]
[--duration 600] [--clients 32]``
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import OUT, Server, free_port, resolve_model, start_server, val_photos  # noqa: E402

console = Console()
MAX_RSS_GROWTH = 0.10
MAX_P99_RATIO = 1.5


@dataclass
class Samples:
    """What the run recorded: one row per request, one per RSS / load sample."""

    # (end s, latency s, HTTP status; 0 = transport error)
    requests: list[tuple[float, float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # s, MiB
    load: list[tuple[float, float]] = field(default_factory=list)  # s, 1-min load average


def sample_rss(server: Server, samples: Samples, start: float, stop: threading.Event) -> None:
    while not stop.is_set():
        now = time.perf_counter() - start
        samples.rss.append((now, server.tree_rss_mib()))
        samples.load.append((now, os.getloadavg()[0]))
        stop.wait(1.0)


async def drive(server: Server, photos: list[bytes], clients: int, duration_s: float) -> Samples:
    """``clients`` back-to-back POST /predict loops for ``duration_s``; RSS every second."""
    samples = Samples()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    stop = threading.Event()
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        sampler = threading.Thread(
            target=sample_rss, args=(server, samples, start, stop), daemon=True
        )
        sampler.start()
        deadline = start + duration_s
        counter = 0

        async def client_loop() -> None:
            nonlocal counter
            while time.perf_counter() < deadline:
                data = photos[counter % len(photos)]
                counter += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post(
                        "/predict", files={"file": ("photo.jpg", data, "image/jpeg")}
                    )
                    status = response.status_code
                    if status != 200:
                        samples.errors.append(f"{status} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    status = 0
                    samples.errors.append(f"{type(exc).__name__}: {exc}")
                t1 = time.perf_counter()
                samples.requests.append((t1 - start, t1 - t0, status))

        await asyncio.gather(*(client_loop() for _ in range(clients)))
    stop.set()
    sampler.join()
    return samples


def median_in(series: list[tuple[float, float]], lo: float, hi: float) -> float:
    values = [v for t, v in series if lo <= t <= hi]
    return statistics.median(values) if values else float("nan")


def windows(samples: Samples, duration_s: float, window_s: float) -> list[dict]:
    rows = []
    n = max(1, int(np.ceil(duration_s / window_s - 1e-9)))
    for i in range(n):
        lo, hi = i * window_s, min((i + 1) * window_s, duration_s)
        if i == n - 1:
            hi = float("inf")  # the last requests end just after the deadline
        rows_in = [(lat, status) for end, lat, status in samples.requests if lo <= end < hi]
        ok = [lat for lat, status in rows_in if status == 200]
        rss = [v for t, v in samples.rss if lo <= t < hi]
        load = [v for t, v in samples.load if lo <= t < hi]
        rows.append(
            {
                "window": i + 1,
                "from_s": lo,
                "requests": len(rows_in),
                "errors": len(rows_in) - len(ok),
                "rps": len(rows_in) / (min(hi, duration_s) - lo),
                "p50_ms": float(np.percentile(ok, 50) * 1000) if ok else float("nan"),
                "p99_ms": float(np.percentile(ok, 99) * 1000) if ok else float("nan"),
                "rss_end_mib": median_in(samples.rss, min(hi, duration_s) - 5, min(hi, duration_s)),
                "rss_max_mib": max(rss) if rss else float("nan"),
                "load_avg": statistics.mean(load) if load else float("nan"),
            }
        )
    return rows


def main(
    export: Annotated[
        Path | None,
        typer.Option(help="Export folder (default: runs/skin5-current, else the stand-in)."),
    ] = None,
    duration: Annotated[float, typer.Option(min=5, help="Seconds of load.")] = 600.0,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent clients.")] = 32,
    window: Annotated[float, typer.Option(min=5, help="Seconds per reported window.")] = 60.0,
) -> None:
    """Steady load on `skin-mlops serve`: per-window latency, errors, RSS; three checks."""
    photos = [p.read_bytes() for p in val_photos()]
    export, model_description = resolve_model(export)
    console.print(f"model: {model_description}; {len(photos)} dermnet5 val photos")
    console.print(
        f"{clients} clients for {duration:.0f} s; machine: {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()}"
    )
    port = free_port()
    venv_bin = Path(sys.executable).parent
    server = start_server(
        "skin-mlops serve (soak)",
        [str(venv_bin / "skin-mlops"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        port,
        "/ready",
        {"MODEL_SOURCE": str(export), "MODEL_POLL_SECONDS": "0"},
    )
    try:
        rss_ready = server.tree_rss_mib()
        samples = asyncio.run(drive(server, photos, clients, duration))
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
    rows = windows(samples, duration, window)

    table = Table(title=f"soak - {model_description}, {clients} clients")
    for column in ("min", "requests", "req/s", "errors", "p50 ms", "p99 ms", "RSS MiB", "load"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["window"]),
            str(row["requests"]),
            f"{row['rps']:.1f}",
            str(row["errors"]),
            f"{row['p50_ms']:.0f}",
            f"{row['p99_ms']:.0f}",
            f"{row['rss_end_mib']:.0f}",
            f"{row['load_avg']:.2f}",
        )
    console.print(table)

    total_errors = len(samples.errors)
    first, last = rows[0], rows[-1]
    rss_end = median_in(samples.rss, duration - 5, duration + 60)
    growth = rss_end / first["rss_end_mib"] - 1
    p99_ratio = last["p99_ms"] / first["p99_ms"]
    several = len(rows) > 1
    checks = {
        "errors == 0": (total_errors == 0, f"{total_errors} errors of {len(samples.requests)}"),
        "RSS growth after the first window <= 10 %": (
            not several or growth <= MAX_RSS_GROWTH,
            f"{first['rss_end_mib']:.0f} -> {rss_end:.0f} MiB ({growth:+.1%}); peak "
            f"{max(v for _, v in samples.rss):.0f} MiB; at ready {rss_ready:.0f} MiB"
            + ("" if several else " (one window: n/a)"),
        ),
        "p99 last window <= 1.5x first": (
            not several or p99_ratio <= MAX_P99_RATIO,
            f"{first['p99_ms']:.0f} -> {last['p99_ms']:.0f} ms ({p99_ratio:.2f}x)"
            + ("" if several else " (one window: n/a)"),
        ),
    }
    for name, (ok, detail) in checks.items():
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/] {name}: {detail}")
    if samples.errors:
        console.print("first errors:", *samples.errors[:5], sep="\n  ")
    dropped = [line for line in metrics.splitlines() if line.startswith("api_images_dropped")]
    console.print("server counters:", ", ".join(dropped) or "no dropped images")
    console.print(f"load average at end {os.getloadavg()}")
    OUT.mkdir(parents=True, exist_ok=True)
    result = {
        "meta": {
            "model": model_description,
            "clients": clients,
            "duration_s": duration,
            "window_s": window,
            "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "rss_ready_mib": rss_ready,
        },
        "windows": rows,
        "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        "errors": samples.errors[:20],
    }
    path = OUT / "serve_soak.json"
    path.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {path}")
    if not all(ok for ok, _ in checks.values()):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
