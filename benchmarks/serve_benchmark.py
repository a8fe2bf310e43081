"""Serving speed: this service vs ``mlflow models serve`` of the same ONNX, side by side.

Same model, same machine, one run, loopback only. For each server:

* **latency**: one client posts dermnet5 val photos (640x480 JPEG) one after another
  (after a warm-up); p50 / p99 of the client-side wall time per request;
* **throughput** at 1, 8 and 32 concurrent clients (``httpx`` async, each client sends
  back to back for ``--seconds`` seconds): completed requests per second;
* **resident memory** of the server process tree (psutil, sampled every 0.2 s; peak).

Servers (each a single process with default settings):

* ``service`` - ``skin-mlops serve`` (ONNX Runtime, micro-batching, multipart JPEG);
* ``service-b1`` - the same with ``MAX_BATCH_SIZE=1``: what micro-batching adds;
* ``mlflow-pyfunc`` - **the baseline a user would build with MLflow**: ``mlflow models
  serve`` (``--env-manager local``, 1 worker) of an MLflow pyfunc
  (``benchmarks/mlflow_onnx_pyfunc.py``) wrapping the *same* ONNX file with the same ONNX
  Runtime session options, the same ``preprocess_bytes`` and the same calibrated softmax;
  its JSON carries the JPEG as base64 (``dataframe_split``), encoded before timing;
* ``naive`` - ``benchmarks/naive_keras_server.py``: Keras ``model.predict`` in the handler;
* ``mlflow`` - ``mlflow models serve`` of the Keras model (``mlflow.keras``). Its input is
  a JSON tensor, so the client preprocesses each photo with the same ``preprocess_bytes``
  and sends ``{"inputs": [...]}``, built *before* timing (this favours MLflow).

Prints a side-by-side table and each server's ratio to this service, writes
``benchmarks/out/serve_benchmark.json`` and a PNG.
Run: ``uv run python benchmarks/serve_benchmark.py [--export runs/skin5-current]
[--only service service-b1 mlflow-pyfunc]``
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import (  # noqa: E402
    OUT,
    REPO,
    LoadResult,
    RssSampler,
    Server,
    free_port,
    resolve_model,
    run_load,
    start_server,
    val_photos,
)

from skin_mlops.modeling.export import load_keras_model  # noqa: E402

CONCURRENCY = (1, 8, 32)
console = Console(width=160)


def multipart_sender(payloads: list[bytes]):  # noqa: ANN201
    """POST /predict with the photo bytes as multipart ``file``."""

    async def send(client: httpx.AsyncClient, index: int) -> httpx.Response:
        data = payloads[index % len(payloads)]
        return await client.post("/predict", files={"file": ("photo.jpg", data, "image/jpeg")})

    return send


def json_tensor_sender(payloads: list[bytes]):  # noqa: ANN201
    """POST /invocations with a prebuilt JSON body (MLflow scoring protocol: a tensor for
    the Keras flavour, a base64 ``dataframe_split`` for the ONNX pyfunc)."""

    async def send(client: httpx.AsyncClient, index: int) -> httpx.Response:
        body = payloads[index % len(payloads)]
        return await client.post(
            "/invocations", content=body, headers={"content-type": "application/json"}
        )

    return send


def log_keras_model_to_mlflow(export: Path) -> tuple[str, str]:
    """Log the export's Keras model to a temp MLflow store; return (tracking URI, model URI)."""
    import mlflow
    from mlflow.models import infer_signature

    from skin_mlops.export_format import KERAS_MODEL_FILE, read_signature

    store = OUT / "mlflow-bench"
    store.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    folder = export.resolve()
    signature = read_signature(folder)
    model = load_keras_model(folder / KERAS_MODEL_FILE, logits_only=True)
    size = signature.image_size
    example = np.zeros((1, size, size, 3), np.float32)
    mlflow_signature = infer_signature(example, np.asarray(model(example)))
    name = "serve-benchmark"
    experiment = mlflow.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment(name, artifact_location=(store / "artifacts").as_uri())
    )
    with mlflow.start_run(experiment_id=experiment_id):
        logged = mlflow.keras.log_model(
            model, name="model", signature=mlflow_signature, pip_requirements=[]
        )
    return tracking_uri, logged.model_uri


def measure(server: Server, send, progress: Progress, seconds: float, latency_n: int) -> dict:  # noqa: ANN001
    """Warm up, single-client latency, then throughput at each concurrency."""
    results: dict[str, object] = {}
    with RssSampler(server) as rss:
        asyncio.run(run_load(server.url, send, 1, requests_per_client=10))
        task = progress.add_task(f"{server.name}: latency", total=None)
        latency = asyncio.run(run_load(server.url, send, 1, requests_per_client=latency_n))
        progress.remove_task(task)
        results["latency"] = latency
        for concurrency in CONCURRENCY:
            task = progress.add_task(f"{server.name}: {concurrency} clients", total=None)
            results[f"c{concurrency}"] = asyncio.run(
                run_load(server.url, send, concurrency, duration_s=seconds)
            )
            progress.remove_task(task)
        results["rss_end_mib"] = server.tree_rss_mib()
    results["rss_peak_mib"] = rss.peak_mib
    return results


def summarize(name: str, results: dict) -> dict:
    latency: LoadResult = results["latency"]  # type: ignore[assignment]
    row = {
        "server": name,
        "p50_ms": latency.percentile_ms(50),
        "p99_ms": latency.percentile_ms(99),
        "latency_requests": latency.completed,
        "rss_peak_mib": results["rss_peak_mib"],
        "rss_end_mib": results["rss_end_mib"],
        "failures": latency.failures,
    }
    for concurrency in CONCURRENCY:
        load: LoadResult = results[f"c{concurrency}"]  # type: ignore[assignment]
        row[f"rps_c{concurrency}"] = load.throughput
        row[f"p99_ms_c{concurrency}"] = load.percentile_ms(99)
        row["failures"] += load.failures
        if load.failure_examples:
            row.setdefault("failure_examples", []).extend(load.failure_examples)
    return row


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["server"] for r in rows]
    x = np.arange(len(CONCURRENCY))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        ax1.bar(x + i * width, [row[f"rps_c{c}"] for c in CONCURRENCY], width, label=row["server"])
    ax1.set_xticks(x + width * (len(rows) - 1) / 2, [f"{c} clients" for c in CONCURRENCY])
    ax1.set_ylabel("photos / s")
    ax1.set_title("throughput")
    ax1.legend()
    ax2.bar(np.arange(len(rows)) - 0.2, [r["p50_ms"] for r in rows], 0.4, label="p50")
    ax2.bar(np.arange(len(rows)) + 0.2, [r["p99_ms"] for r in rows], 0.4, label="p99")
    ax2.axhline(20, color="red", linestyle="--", linewidth=1, label="p50 target 20 ms")
    ax2.set_xticks(np.arange(len(rows)), names)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms per photo (1 client)")
    ax2.set_title("latency")
    ax2.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


SERVERS = ("service", "service-b1", "naive", "mlflow-pyfunc", "mlflow")


def main(
    export: Annotated[
        Path | None,
        typer.Option(help="Export folder (default: runs/skin5-current, else the stand-in)."),
    ] = None,
    seconds: Annotated[float, typer.Option(help="Load time per concurrency level.")] = 15.0,
    latency_requests: Annotated[
        int, typer.Option(min=1, help="Sequential requests for the latency figures.")
    ] = 100,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Servers to run, a subset of: --only service service-b1 naive mlflow-pyfunc "
            "mlflow."
        ),
    ] = None,
    more_only: Annotated[list[str] | None, typer.Argument(hidden=True, metavar="SERVER")] = None,
) -> None:
    """Compare the API with MLflow's server (pyfunc on the same ONNX), no batching, naive Keras."""
    # ``--only service naive``: Click gives the option the first value and the rest as
    # (hidden) arguments; join them back, in order (as ``skin-mlops ingest --splits`` does).
    wanted = [w for value in [*(only or []), *(more_only or [])] for w in value.split(",") if w]
    unknown = sorted(set(wanted) - set(SERVERS))
    if unknown:
        raise typer.BadParameter(f"unknown server {', '.join(unknown)}", param_hint="--only")
    wanted = wanted or list(SERVERS)

    photos = val_photos()
    export, model_description = resolve_model(export)
    photo_bytes = [p.read_bytes() for p in photos]
    console.print(f"model: {model_description}; {len(photos)} dermnet5 val photos")
    console.print(f"machine: {os.cpu_count()} CPUs; load average at start {os.getloadavg()}")
    rows = []
    venv_bin = Path(sys.executable).parent

    def bench(server: Server, send, progress: Progress) -> None:  # noqa: ANN001
        try:
            rows.append(
                summarize(server.name, measure(server, send, progress, seconds, latency_requests))
            )
        finally:
            server.stop()

    def service(name: str, extra_env: dict[str, str]) -> Server:
        port = free_port()
        return start_server(
            name,
            [str(venv_bin / "skin-mlops"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            port,
            "/ready",
            {"MODEL_SOURCE": str(export), "MODEL_POLL_SECONDS": "0", **extra_env},
        )

    def mlflow_serve(name: str, model_uri: str, tracking_uri: str) -> Server:
        port = free_port()
        return start_server(
            name,
            [
                str(venv_bin / "mlflow"),
                "models",
                "serve",
                "-m",
                model_uri,
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "--env-manager",
                "local",
            ],
            port,
            "/ping",
            # it execs `uvicorn` by name: this venv's bin first, also without `uv run`
            {
                "MLFLOW_TRACKING_URI": tracking_uri,
                "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            },
        )

    with Progress(console=console, transient=True) as progress:
        if "service" in wanted:
            bench(service("skin-mlops serve", {}), multipart_sender(photo_bytes), progress)

        if "service-b1" in wanted:
            bench(
                service("skin-mlops serve, MAX_BATCH_SIZE=1", {"MAX_BATCH_SIZE": "1"}),
                multipart_sender(photo_bytes),
                progress,
            )

        if "naive" in wanted:
            port = free_port()
            server = start_server(
                "naive keras",
                [
                    sys.executable,
                    str(REPO / "benchmarks" / "naive_keras_server.py"),
                    "--export",
                    str(export),
                    "--port",
                    str(port),
                ],
                port,
                "/ready",
                {},
            )
            bench(server, multipart_sender(photo_bytes), progress)

        if "mlflow-pyfunc" in wanted:
            import base64

            from mlflow_onnx_pyfunc import log_pyfunc

            task = progress.add_task("mlflow-pyfunc: logging the ONNX pyfunc", total=None)
            store = OUT / "mlflow-bench"
            store.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
            model_uri = log_pyfunc(export, tracking_uri, store / "artifacts-pyfunc")
            bodies = [
                json.dumps(
                    {
                        "dataframe_split": {
                            "columns": ["image"],
                            "data": [[base64.b64encode(data).decode("ascii")]],
                        }
                    }
                ).encode()
                for data in photo_bytes
            ]
            progress.remove_task(task)
            bench(
                mlflow_serve("mlflow models serve (ONNX pyfunc)", model_uri, tracking_uri),
                json_tensor_sender(bodies),
                progress,
            )

        if "mlflow" in wanted:
            from skin_mlops.export_format import read_signature
            from skin_mlops.preprocessing import preprocess_bytes

            size = read_signature(export.resolve()).image_size
            task = progress.add_task(
                "mlflow: logging the Keras model + building JSON bodies", total=None
            )
            tracking_uri, model_uri = log_keras_model_to_mlflow(export)
            bodies = [
                json.dumps({"inputs": preprocess_bytes(data, size)[None].tolist()}).encode()
                for data in photo_bytes[:64]
            ]
            progress.remove_task(task)
            bench(
                mlflow_serve("mlflow models serve (Keras)", model_uri, tracking_uri),
                json_tensor_sender(bodies),
                progress,
            )

    table = Table(title=f"serving benchmark - {model_description}")
    for column in (
        "server",
        "p50 ms",
        "p99 ms",
        "req/s @1",
        "req/s @8",
        "req/s @32",
        "p99 ms @32",
        "RSS peak MiB",
        "failures",
    ):
        table.add_column(column, justify="right" if column != "server" else "left")
    for row in rows:
        table.add_row(
            row["server"],
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['rps_c1']:.1f}",
            f"{row['rps_c8']:.1f}",
            f"{row['rps_c32']:.1f}",
            f"{row['p99_ms_c32']:.0f}",
            f"{row['rss_peak_mib']:.0f}",
            str(row["failures"]),
        )
    console.print(table)
    by_name = {r["server"]: r for r in rows}
    ours = by_name.get("skin-mlops serve")
    for peer in (
        "mlflow models serve (ONNX pyfunc)",
        "skin-mlops serve, MAX_BATCH_SIZE=1",
        "naive keras",
        "mlflow models serve (Keras)",
    ):
        if ours and peer in by_name:
            other = by_name[peer]
            console.print(
                f"this service vs {peer}: throughput at 32 clients "
                f"{ours['rps_c32'] / other['rps_c32']:.2f}x, "
                f"p50 at 1 client {ours['p50_ms'] / other['p50_ms']:.2f}x",
                highlight=False,
            )
    console.print(f"load average at end {os.getloadavg()}")
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": model_description,
        "cpus": os.cpu_count(),
        "seconds_per_level": seconds,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (OUT / "serve_benchmark.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows, OUT / "serve_benchmark.png", f"{model_description}; {os.cpu_count()} CPUs")
    console.print(f"wrote {OUT / 'serve_benchmark.json'} and {OUT / 'serve_benchmark.png'}")


if __name__ == "__main__":
    typer.run(main)
