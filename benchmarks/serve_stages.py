"""Where a request's time goes, and what each serving lever buys: one run, side by side.

1. **Reference** (in this process, before any server starts): the fixed reference model
   ``../shared/reference/lite0-288-fp32.onnx`` alone on ONNX Runtime, 2 intra-op threads
   (ORT's defaults otherwise, and the API's options): one image, and a batch of 32
   (photos/s). The issue's targets are ratios to these figures.
2. **In-process levers**: ONNX Runtime session options on the served model (optimisation
   level, spinning, memory arena, I/O binding with preallocated outputs, 1 vs 2 threads),
   interleaved; the JPEG decoder (Pillow vs libjpeg-turbo through ``simplejpeg``) per
   preprocessing step, with a pixel-parity count; the JSON serialiser.
3. **Servers** over HTTP on loopback, one after another, each a real ``skin-mlops serve``
   (or uvicorn on the same app factory for the uvicorn variants): warm-up, 1 client for
   ``--latency-requests`` requests, then 32 clients for ``--seconds``. Every answer's
   ``Server-Timing`` header gives the server's stages (see ``skin_mlops.api.timing``);
   ``outside app`` = the client's wall time minus the app's (uvicorn's HTTP parsing,
   sending, loopback, the client). RSS peak of the server's process tree.
   ``mlflow models serve`` of the ONNX pyfunc (``serve_benchmark.py``'s peer) runs last.

Prints a per-stage p50/p99 table (1 and 32 clients) for the first and the last server
(today's configuration and the chosen one), a lever table with the end-to-end figures,
and the target ratios; writes ``benchmarks/out/serve_stages.json``.

Run: ``flock /tmp/heavy.lock uv run python benchmarks/serve_stages.py
[--export benchmarks/out/default-run-work/runs/skin5-current] [--seconds 10]
[--only today chosen b1 ...]``
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
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
from serve_benchmark import json_tensor_sender, multipart_sender  # noqa: E402
from serve_common import (  # noqa: E402
    OUT,
    REPO,
    RssSampler,
    Server,
    free_port,
    resolve_model,
    run_load,
    start_server,
    val_photos,
)

from skin_mlops.api.timing import STAGES, TOTAL_STAGE, parse_server_timing  # noqa: E402

REFERENCE = REPO.parent / "shared" / "reference" / "lite0-288-fp32.onnx"
DEFAULT_EXPORT = OUT / "default-run-work" / "runs" / "skin5-current"
CLIENT = "client"
OUTSIDE = "outside app"
console = Console(width=170)

# name -> (description, launcher, extra environment). "uvicorn" runs the same app factory
# with uvicorn's CLI (for the loop/http/workers variants); "serve" is `skin-mlops serve`.
TODAY_ENV = {"JPEG_DECODER": "pillow", "MAX_BATCH_SIZE": "4"}
CHOSEN_ENV = {"JPEG_DECODER": "simplejpeg", "MAX_BATCH_SIZE": "1"}
VARIANTS: dict[str, tuple[str, str, dict[str, str], list[str]]] = {
    "today": ("today: Pillow decode, MAX_BATCH_SIZE=4", "serve", TODAY_ENV, []),
    "simplejpeg": (
        "JPEG_DECODER=simplejpeg",
        "serve",
        {**TODAY_ENV, "JPEG_DECODER": "simplejpeg"},
        [],
    ),
    "b1": ("MAX_BATCH_SIZE=1", "serve", {**TODAY_ENV, "MAX_BATCH_SIZE": "1"}, []),
    "b8": ("MAX_BATCH_SIZE=8", "serve", {**TODAY_ENV, "MAX_BATCH_SIZE": "8"}, []),
    "asyncio-h11": (
        "uvicorn --loop asyncio --http h11",
        "uvicorn",
        TODAY_ENV,
        ["--loop", "asyncio", "--http", "h11"],
    ),
    "workers2": (
        "2 workers x 1 thread",
        "uvicorn",
        {**TODAY_ENV, "ORT_INTRA_OP_THREADS": "1", "PREPROCESS_WORKERS": "1"},
        ["--workers", "2"],
    ),
    "chosen": ("chosen: simplejpeg, MAX_BATCH_SIZE=1", "serve", CHOSEN_ENV, []),
    "spin-run": (
        "chosen + ORT_SPINNING=during-run",
        "serve",
        {**CHOSEN_ENV, "ORT_SPINNING": "during-run"},
        [],
    ),
    "spin-on": ("chosen + ORT_SPINNING=on", "serve", {**CHOSEN_ENV, "ORT_SPINNING": "on"}, []),
    "openvino": (
        "chosen + FP32_ENGINE=openvino",
        "serve",
        {**CHOSEN_ENV, "FP32_ENGINE": "openvino"},
        [],
    ),
    "openvino-b8": (
        "FP32_ENGINE=openvino, MAX_BATCH_SIZE=8",
        "serve",
        {**CHOSEN_ENV, "FP32_ENGINE": "openvino", "MAX_BATCH_SIZE": "8"},
        [],
    ),
}
MLFLOW = "mlflow-pyfunc"


# ---------------------------------------------------------------------------- reference


def _percentile_ms(values_s: list[float], q: float) -> float:
    return float(np.percentile(values_s, q) * 1000) if values_s else float("nan")


def _time_runs(fn, n: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def reference_figures(images: np.ndarray, single_runs: int = 200) -> dict[str, float]:
    """The reference ONNX alone: p50/p99 of one image, photos/s of batches of 32."""
    import onnxruntime as ort

    from skin_mlops.api.model_runtime import session_options

    out: dict[str, float] = {}
    for label, options in (("ort_defaults", None), ("api_options", session_options(2))):
        if options is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 2
        session = ort.InferenceSession(
            str(REFERENCE), sess_options=options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        one, batch = images[:1], images[:32]
        for _ in range(10):
            session.run(None, {name: one})
        session.run(None, {name: batch})
        single = _time_runs(lambda s=session, n=name, x=one: s.run(None, {n: x}), single_runs)
        batched = _time_runs(lambda s=session, n=name, x=batch: s.run(None, {n: x}), 8)
        out[f"{label}_single_p50_ms"] = _percentile_ms(single, 50)
        out[f"{label}_single_p99_ms"] = _percentile_ms(single, 99)
        out[f"{label}_batch32_photos_s"] = 32 / float(np.median(batched))
    return out


# --------------------------------------------------------------------- in-process levers


def ort_levers(
    model_path: Path, images: np.ndarray, rounds: int = 8, per_round: int = 25
) -> list[dict]:
    """Session options on the served model, interleaved: single-image p50/p99."""
    import onnxruntime as ort

    from skin_mlops.api.model_runtime import session_options

    def opts(threads: int = 2, level: str = "all", spin: str = "off", arena: bool = False):  # noqa: ANN202
        o = session_options(threads, arena, spin)
        o.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        }[level]
        return o

    configs = {
        "api today (all, 2 thr, no spin, no arena)": (opts(), False),
        "opt level extended": (opts(level="extended"), False),
        "opt level basic": (opts(level="basic"), False),
        "spinning on": (opts(spin="on"), False),
        "spinning during the call only": (opts(spin="during-run"), False),
        "arena on": (opts(arena=True), False),
        "1 intra-op thread": (opts(threads=1), False),
        "I/O binding, preallocated outputs": (opts(), True),
    }
    sessions = {}
    for label, (options, binding) in configs.items():
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inp = session.get_inputs()[0].name
        outs = [o.name for o in session.get_outputs()]
        one = np.ascontiguousarray(images[:1])
        if binding:
            io = session.io_binding()
            io.bind_cpu_input(inp, one)
            buffers = [np.empty(o.shape, np.float32) for o in session.run(outs, {inp: one})]
            for name, buffer in zip(outs, buffers, strict=True):
                io.bind_output(name, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
            run = lambda s=session, b=io, _keep=buffers: s.run_with_iobinding(b)  # noqa: E731
        else:
            run = lambda s=session, i=inp, o=outs, x=one: s.run(o, {i: x})  # noqa: E731
        for _ in range(5):
            run()
        sessions[label] = run
    samples: dict[str, list[float]] = {label: [] for label in configs}
    for _ in range(rounds):
        for label, run in sessions.items():
            samples[label].extend(_time_runs(run, per_round))
    return [
        {"lever": label, "p50_ms": _percentile_ms(v, 50), "p99_ms": _percentile_ms(v, 99)}
        for label, v in samples.items()
    ]


def decoder_levers(payloads: list[bytes], size: int, rounds: int = 3) -> list[dict]:
    """Pillow vs simplejpeg through ``preprocess_bytes``: ms per step, pixel parity."""
    from skin_mlops import preprocessing

    before = preprocessing.jpeg_decoder()
    rows = []
    try:
        reference: list[np.ndarray] = []
        preprocessing.set_jpeg_decoder("pillow")
        reference = [preprocessing.preprocess_bytes(d, size) for d in payloads]
        preprocessing.set_jpeg_decoder("simplejpeg")
        identical = sum(
            np.array_equal(a, preprocessing.preprocess_bytes(d, size))
            for a, d in zip(reference, payloads, strict=True)
        )
        totals: dict[str, dict[str, float]] = {"pillow": {}, "simplejpeg": {}}
        for _ in range(rounds):
            for name in totals:
                preprocessing.set_jpeg_decoder(name)
                steps: dict[str, float] = {}
                t0 = time.perf_counter()
                for data in payloads:
                    preprocessing.preprocess_bytes(data, size, timings=steps)
                steps["total"] = time.perf_counter() - t0
                for k, v in steps.items():
                    totals[name][k] = totals[name].get(k, 0.0) + v
        n = rounds * len(payloads)
        for name, steps in totals.items():
            rows.append(
                {
                    "decoder": name,
                    **{f"{k}_ms": v / n * 1000 for k, v in steps.items()},
                    "identical_to_pillow": identical if name == "simplejpeg" else len(payloads),
                    "photos": len(payloads),
                }
            )
    finally:
        preprocessing.set_jpeg_decoder(before)
    return rows


def json_levers(n: int = 20000) -> list[dict]:
    """Serialising one answer: FastAPI's default path vs pydantic's own serialiser."""
    from fastapi.encoders import jsonable_encoder

    from skin_mlops.api.schemas import LabelProbability, Prediction

    body = Prediction(
        label="acne",
        confidence=0.91234567,
        top_k=[LabelProbability(label=f"label{i}", probability=0.1 + i / 10) for i in range(3)],
        model_version="20260101-000000",
        inference_ms=12.345,
        uncertain=False,
        in_distribution=True,
        ood_score=0.5123,
        warning=None,
        batch_size=1,
    )
    candidates = {
        "json.dumps(jsonable_encoder) (FastAPI's JSONResponse)": lambda: json.dumps(
            jsonable_encoder(body), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode(),
        "pydantic to_json (now)": lambda: body.__pydantic_serializer__.to_json(body),
    }
    try:
        import orjson  # type: ignore[import-not-found]

        candidates["orjson.dumps(model_dump())"] = lambda: orjson.dumps(body.model_dump())
    except ImportError:
        pass
    rows = []
    for label, fn in candidates.items():
        times = _time_runs(fn, n)
        rows.append({"serialiser": label, "p50_us": _percentile_ms(times, 50) * 1000})
    return rows


# ------------------------------------------------------------------------------ servers


@dataclass
class Sample:
    """One answered request: the client's wall time and the server's stages (ms)."""

    client_ms: float
    stages: dict[str, float]


@dataclass
class Measured:
    name: str
    c1: list[Sample] = field(default_factory=list)
    c32: list[Sample] = field(default_factory=list)
    rps_c32: float = 0.0
    failures: int = 0
    failure_examples: list[str] = field(default_factory=list)
    rss_peak_mib: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


def recording(send, into: list[Sample], batch_sizes: list[int] | None = None):  # noqa: ANN001, ANN201
    """Wrap a sender: keep each 200 answer's client time and ``Server-Timing`` stages."""

    async def wrapped(client: httpx.AsyncClient, index: int) -> httpx.Response:
        t0 = time.perf_counter()
        response = await send(client, index)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if response.status_code == 200:
            header = response.headers.get("server-timing")
            stages = parse_server_timing(header) if header else {}
            into.append(Sample(elapsed_ms, stages))
            if batch_sizes is not None and header:
                batch_sizes.append(int(response.json().get("batch_size", 0)))
        return response

    return wrapped


def measure(server: Server, send, seconds: float, latency_n: int) -> Measured:  # noqa: ANN001
    result = Measured(server.name)
    with RssSampler(server) as rss:
        asyncio.run(run_load(server.url, send, 1, requests_per_client=20))
        asyncio.run(run_load(server.url, send, 8, requests_per_client=5))  # every worker
        load = asyncio.run(
            run_load(server.url, recording(send, result.c1), 1, requests_per_client=latency_n)
        )
        result.failures += load.failures
        result.failure_examples += load.failure_examples
        load = asyncio.run(
            run_load(
                server.url, recording(send, result.c32, result.batch_sizes), 32, duration_s=seconds
            )
        )
        result.failures += load.failures
        result.failure_examples += load.failure_examples
        result.rps_c32 = load.throughput
    result.rss_peak_mib = rss.peak_mib
    return result


def stage_stats(samples: list[Sample]) -> dict[str, tuple[float, float]]:
    """stage -> (p50, p99) ms, with the client's time and the part outside the app."""
    columns: dict[str, list[float]] = {}
    for sample in samples:
        for stage, ms in sample.stages.items():
            columns.setdefault(stage, []).append(ms)
        columns.setdefault(CLIENT, []).append(sample.client_ms)
        if TOTAL_STAGE in sample.stages:
            columns.setdefault(OUTSIDE, []).append(sample.client_ms - sample.stages[TOTAL_STAGE])
    return {
        stage: (float(np.percentile(v, 50)), float(np.percentile(v, 99)))
        for stage, v in columns.items()
    }


def stage_table(title: str, measured: list[Measured]) -> Table:
    table = Table(title=title)
    table.add_column("stage")
    for m in measured:
        for c in ("1 client", "32 clients"):
            table.add_column(f"{m.name[:24]} {c} p50/p99 ms", justify="right")
    stats = [(stage_stats(m.c1), stage_stats(m.c32)) for m in measured]
    for stage in (*STAGES, TOTAL_STAGE, OUTSIDE, CLIENT):
        cells = []
        for c1, c32 in stats:
            for s in (c1, c32):
                cells.append(f"{s[stage][0]:.2f} / {s[stage][1]:.2f}" if stage in s else "-")
        table.add_row(stage, *cells)
    return table


def summary(m: Measured) -> dict:
    c1 = [s.client_ms for s in m.c1]
    c32 = [s.client_ms for s in m.c32]
    return {
        "server": m.name,
        "p50_ms": float(np.percentile(c1, 50)) if c1 else float("nan"),
        "p99_ms": float(np.percentile(c1, 99)) if c1 else float("nan"),
        "p50_ms_c32": float(np.percentile(c32, 50)) if c32 else float("nan"),
        "p99_ms_c32": float(np.percentile(c32, 99)) if c32 else float("nan"),
        "photos_s_c32": m.rps_c32,
        "rss_peak_mib": m.rss_peak_mib,
        "failures": m.failures,
        "failure_examples": m.failure_examples[:3],
        "mean_batch_c32": float(np.mean(m.batch_sizes)) if m.batch_sizes else None,
        "stages_c1": stage_stats(m.c1),
        "stages_c32": stage_stats(m.c32),
    }


def main(
    export: Annotated[
        Path | None,
        typer.Option(
            help="Export to serve (default: the default training run's, else serve_common's)."
        ),
    ] = None,
    seconds: Annotated[float, typer.Option(help="Load time at 32 clients per server.")] = 10.0,
    latency_requests: Annotated[int, typer.Option(min=10, help="Sequential requests.")] = 150,
    only: Annotated[
        list[str] | None,
        typer.Option(help=f"Servers, in order, from: {', '.join([*VARIANTS, MLFLOW])}."),
    ] = None,
    more_only: Annotated[list[str] | None, typer.Argument(hidden=True, metavar="SERVER")] = None,
    in_process: Annotated[bool, typer.Option(help="Run the in-process levers.")] = True,
) -> None:
    """Per-stage table, levers side by side, and the issue's target ratios, in one run."""
    wanted = [w for value in [*(only or []), *(more_only or [])] for w in value.split(",") if w]
    unknown = sorted(set(wanted) - {*VARIANTS, MLFLOW})
    if unknown:
        raise typer.BadParameter(f"unknown server {', '.join(unknown)}", param_hint="--only")
    wanted = wanted or [*VARIANTS, MLFLOW]
    if export is None and (DEFAULT_EXPORT / "inference" / "signature.json").exists():
        export, model_description = (
            DEFAULT_EXPORT,
            f"default training run ({DEFAULT_EXPORT.resolve().name})",
        )
    else:
        export, model_description = resolve_model(export)
    if not REFERENCE.exists():
        sys.exit(f"the reference model is missing: {REFERENCE}")

    from skin_mlops.export_format import ONNX_MODEL_FILE, read_signature
    from skin_mlops.preprocessing import preprocess_bytes

    photos = val_photos()
    payloads = [p.read_bytes() for p in photos]
    folder = export.resolve()
    size = read_signature(folder).image_size
    console.print(f"model: {model_description}, {size} px; {len(photos)} dermnet5 val photos")
    console.print(
        f"machine: {os.cpu_count()} CPUs, {os.uname().machine}; load average at start "
        f"{os.getloadavg()}"
    )
    ref_images = np.stack([preprocess_bytes(d, 288) for d in payloads[:32]])
    reference = reference_figures(ref_images)
    console.print(
        "reference alone (2 threads, ORT defaults): one image p50 "
        f"{reference['ort_defaults_single_p50_ms']:.2f} ms, p99 "
        f"{reference['ort_defaults_single_p99_ms']:.2f} ms; batch 32 "
        f"{reference['ort_defaults_batch32_photos_s']:.1f} photos/s. With the API's options: "
        f"{reference['api_options_single_p50_ms']:.2f} ms, "
        f"{reference['api_options_batch32_photos_s']:.1f} photos/s",
        highlight=False,
    )
    report: dict = {"reference": reference}
    if in_process:
        images = np.stack([preprocess_bytes(d, size) for d in payloads[:32]])
        report["ort_levers"] = ort_levers(folder / ONNX_MODEL_FILE, images)
        report["decoder_levers"] = decoder_levers(payloads, size)
        report["json_levers"] = json_levers()
        t = Table(title="ONNX Runtime session options, served model, one image (interleaved)")
        for c in ("option", "p50 ms", "p99 ms"):
            t.add_column(c, justify="left" if c == "option" else "right")
        for row in report["ort_levers"]:
            t.add_row(row["lever"], f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}")
        console.print(t)
        t = Table(title=f"JPEG decoder, preprocess_bytes at {size} px, ms per photo")
        steps = ("probe", "decode", "exif", "resize", "normalise", "total")
        for c in ("decoder", *steps, "identical pixels"):
            t.add_column(c, justify="right")
        for row in report["decoder_levers"]:
            t.add_row(
                row["decoder"],
                *(f"{row.get(f'{s}_ms', float('nan')):.3f}" for s in steps),
                f"{row['identical_to_pillow']}/{row['photos']}",
            )
        console.print(t)
        for row in report["json_levers"]:
            console.print(f"JSON: {row['serialiser']}: {row['p50_us']:.1f} µs", highlight=False)

    venv_bin = Path(sys.executable).parent
    send = multipart_sender(payloads)
    measured: dict[str, Measured] = {}
    for name in wanted:
        port = free_port()
        if name == MLFLOW:
            from mlflow_onnx_pyfunc import log_pyfunc

            store = OUT / "mlflow-bench"
            store.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
            model_uri = log_pyfunc(folder, tracking_uri, store / "artifacts-pyfunc")
            bodies = [
                json.dumps(
                    {
                        "dataframe_split": {
                            "columns": ["image"],
                            "data": [[base64.b64encode(d).decode()]],
                        }
                    }
                ).encode()
                for d in payloads
            ]
            command = [
                str(venv_bin / "mlflow"), "models", "serve", "-m", model_uri, "-p", str(port),
                "-h", "127.0.0.1", "--env-manager", "local",
            ]  # fmt: skip
            env = {
                "MLFLOW_TRACKING_URI": tracking_uri,
                "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            server = start_server("mlflow models serve (ONNX pyfunc)", command, port, "/ping", env)
            server_send = json_tensor_sender(bodies)
        else:
            description, launcher, extra, args = VARIANTS[name]
            if launcher == "serve":
                command = [
                    str(venv_bin / "skin-mlops"),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ]
            else:
                command = [
                    str(venv_bin / "uvicorn"), "skin_mlops.api.cli:reloadable_app", "--factory",
                    "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                    "--log-level", "warning", *args,
                ]  # fmt: skip
            env = {"MODEL_SOURCE": str(export), "MODEL_POLL_SECONDS": "0", **extra}
            server = start_server(description, command, port, "/ready", env)
            server_send = send
        try:
            console.print(f"measuring {server.name} ...", highlight=False)
            measured[name] = measure(server, server_send, seconds, latency_requests)
        finally:
            server.stop()

    rows = {name: summary(m) for name, m in measured.items()}
    report["servers"] = rows
    services = [m for name, m in measured.items() if name != MLFLOW]
    if services:
        first_last = [services[0]] if len(services) == 1 else [services[0], services[-1]]
        console.print(stage_table("per-stage time (Server-Timing), ms", first_last))
    t = Table(title=f"end to end over HTTP - {model_description}")
    for c in (
        "server",
        "p50 ms",
        "p99 ms",
        "photos/s @32",
        "p50/p99 ms @32",
        "mean batch @32",
        "RSS peak MiB",
        "errors",
    ):
        t.add_column(c, justify="left" if c == "server" else "right")
    for row in rows.values():
        mean_batch = row["mean_batch_c32"]
        t.add_row(
            row["server"],
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['photos_s_c32']:.1f}",
            f"{row['p50_ms_c32']:.0f} / {row['p99_ms_c32']:.0f}",
            "-" if mean_batch is None else f"{mean_batch:.2f}",
            f"{row['rss_peak_mib']:.0f}",
            str(row["failures"]),
        )
    console.print(t)

    ref_single = reference["ort_defaults_single_p50_ms"]
    ref_batch = reference["ort_defaults_batch32_photos_s"]
    peer = rows.get(MLFLOW)
    targets = {}
    for name, row in rows.items():
        if name == MLFLOW:
            continue
        targets[name] = {
            "p50_over_ref_single": row["p50_ms"] / ref_single,
            "p99_over_ref_single": row["p99_ms"] / ref_single,
            "c32_over_ref_batch32": row["photos_s_c32"] / ref_batch,
            "rss_mib": row["rss_peak_mib"],
            **(
                {
                    "c32_over_mlflow": row["photos_s_c32"] / peer["photos_s_c32"],
                    "p50_over_mlflow": row["p50_ms"] / peer["p50_ms"],
                }
                if peer and peer["photos_s_c32"] > 0
                else {}
            ),
        }
    report["targets"] = targets
    t = Table(
        title="targets, ratios in this run: p50 <= 1.15x ref, p99 <= 2x ref, @32 >= 1.05x "
        "ref batch-32, RSS <= 400 MiB, >= 2x / <= 0.6x MLflow"
    )
    for c in ("server", "p50/ref", "p99/ref", "@32/ref b32", "RSS MiB", "@32/MLflow", "p50/MLflow"):
        t.add_column(c, justify="left" if c == "server" else "right")
    for name, r in targets.items():
        t.add_row(
            rows[name]["server"],
            f"{r['p50_over_ref_single']:.2f}",
            f"{r['p99_over_ref_single']:.2f}",
            f"{r['c32_over_ref_batch32']:.2f}",
            f"{r['rss_mib']:.0f}",
            f"{r['c32_over_mlflow']:.2f}" if "c32_over_mlflow" in r else "-",
            f"{r['p50_over_mlflow']:.2f}" if "p50_over_mlflow" in r else "-",
        )
    console.print(t)
    console.print(f"load average at end {os.getloadavg()}")
    report["meta"] = {
        "model": model_description,
        "cpus": os.cpu_count(),
        "seconds": seconds,
        "latency_requests": latency_requests,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_stages.json").write_text(json.dumps(report, indent=2, default=str))
    console.print(f"wrote {OUT / 'serve_stages.json'}")


if __name__ == "__main__":
    typer.run(main)
