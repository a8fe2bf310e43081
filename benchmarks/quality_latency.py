"""Quality versus latency: each backbone's export served fp32 and int8, in one run.

For each ``--export NAME=DIR`` (an export folder: ``model/``, ``inference/``), two rows:

* **fp32**: ``skin-mlops serve`` of the export (ONNX Runtime, the defaults);
* **int8**: the same export with its int8 twin made by ``skin_mlops.modeling.quantize``
  (ONNX Runtime static QDQ, 300 train photos, head + guard float), served with
  ``MODEL_PRECISION=int8``. The twin is made whatever the gate says, so that the table shows
  what int8 would buy; the gate's verdict is a column (``train --int8`` ships only a pass).

Per row: val macro-F1 (the served model's file on the 129 dermnet5 val photos, offline),
the gate verdict, CV macro-F1 (``--cv NAME=F1``: the figure of ``benchmarks/recipe_levers.py``
for that backbone; not measured here), and over HTTP (``serve_benchmark.measure``, 640x480
JPEGs): p50 / p99 of one client, photos/s at 32 clients, failures, peak resident memory of
the server; model file size. The reference ``../shared/reference/lite0-288-fp32.onnx`` is
timed alone in the same run (ONNX Runtime, 2 threads: one image, batch 32) and each row
gets the issue's ratios against it.

Writes ``benchmarks/out/quality_latency.json``.

Run: ``flock /tmp/heavy.lock uv run python benchmarks/quality_latency.py
--export lite0=DIR --cv lite0=0.767 [--export lite2=DIR --cv lite2=0.767] [--seconds 10]``
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_benchmark import measure, multipart_sender, summarize  # noqa: E402
from serve_common import OUT, free_port, int8_photos, start_server, val_photos  # noqa: E402

from skin_mlops import export_format  # noqa: E402
from skin_mlops.modeling import quantize  # noqa: E402
from skin_mlops.preprocessing import preprocess_bytes  # noqa: E402
from skin_mlops.runtimes import open_session  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "lite0-288-fp32.onnx"
console = Console(width=180)


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep:
            raise typer.BadParameter(f"{value!r}: expected NAME=VALUE", param_hint=what)
        out[name] = rest
    return out


def reference_alone(images: np.ndarray, runs: int = 60) -> dict[str, float]:
    """The reference model on ONNX Runtime (2 threads): one-image p50, batch-32 photos/s.

    ONNX Runtime's own defaults (threads spinning between calls), as a user would run the
    model alone: faster alone than the API's options (no spinning), so the fair baseline.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(REFERENCE), sess_options=options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    out = [session.get_outputs()[0].name]
    for _ in range(5):
        session.run(out, {name: images[:1]})
    single = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(out, {name: images[:1]})
        single.append((time.perf_counter() - t0) * 1000)
    rates = []
    for _ in range(6):
        t0 = time.perf_counter()
        session.run(out, {name: images[:32]})
        rates.append(32 / (time.perf_counter() - t0))
    return {"p50_ms": statistics.median(single), "photos_per_s_b32": statistics.median(rates)}


def int8_copy(export: Path, workdir: Path, calibration_photos: int) -> tuple[Path, dict]:
    """A copy of ``export`` with its int8 twin, whatever the gate says; ``(link, gate)``."""
    folder = export_format.resolve_export_dir(export)
    signature = export_format.read_signature(folder)
    calibration, images, labels = int8_photos(
        signature.labels, signature.image_size, calibration_photos
    )
    link = workdir / "runs" / "skin5-current"
    staging = export_format.new_version_dir(link, signature.model_version)
    shutil.copytree(folder, staging, dirs_exist_ok=True)
    prepared = quantize.prepare_model(staging / export_format.ONNX_MODEL_FILE, workdir)
    keep = quantize.float_nodes(
        prepared, signature.output.name, signature.ood.output.name if signature.ood else None
    )
    target = staging / export_format.INT8_MODEL_FILE
    quantize.quantize_onnx(prepared, calibration, signature.input.name, keep, target)
    fp32 = quantize.predict(
        open_session(staging / export_format.ONNX_MODEL_FILE, "onnxruntime", 2), signature, images
    )
    int8 = quantize.predict(open_session(target, "onnxruntime", 2), signature, images)
    report = quantize.gate(signature, labels, fp32, int8)
    spec = export_format.Int8Spec(
        engine="onnxruntime",
        calibration_photos=len(calibration),
        float_nodes=len(keep),
        gate_photos=report.photos,
        fp32_macro_f1=report.fp32_macro_f1,
        int8_macro_f1=report.int8_macro_f1,
        top1_agreement=report.top1_agreement,
        guard_agreement=report.guard_agreement,
    )
    export_format.write_metadata(staging, signature.model_copy(update={"int8": spec}))
    export_format.publish(staging, link, signature.model_version)
    gate = {
        "fp32_macro_f1": report.fp32_macro_f1,
        "int8_macro_f1": report.int8_macro_f1,
        "flips": report.top1_disagreements,
        "passed": report.passed,
    }
    return link, gate


def main(
    export: Annotated[list[str], typer.Option(help="NAME=EXPORT_DIR, repeatable.")],
    cv: Annotated[
        list[str] | None, typer.Option(help="NAME=CV macro-F1 (recipe_levers), repeatable.")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Load time per concurrency level.")] = 10.0,
    latency_requests: Annotated[int, typer.Option(min=1)] = 100,
    calibration_photos: Annotated[int, typer.Option(min=1)] = quantize.CALIBRATION_PHOTOS,
) -> None:
    exports = {name: Path(path) for name, path in _pairs(export, "--export").items()}
    cv_f1 = {name: float(v) for name, v in _pairs(cv, "--cv").items()}
    photos = val_photos()
    send = multipart_sender([p.read_bytes() for p in photos])
    images288 = np.stack([preprocess_bytes(p.read_bytes(), 288) for p in photos[:32]])
    console.print(f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()}")
    reference = reference_alone(images288)
    console.print(
        f"reference alone: one image p50 {reference['p50_ms']:.2f} ms, "
        f"batch 32 {reference['photos_per_s_b32']:.1f} photos/s"
    )
    venv_bin = Path(sys.executable).parent
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="quality-latency-") as tmp,
        Progress(console=console, transient=True) as progress,
    ):
        for name, path in exports.items():
            folder = export_format.resolve_export_dir(path)
            signature = export_format.read_signature(folder)
            int8_link, gate = int8_copy(path, Path(tmp) / name, calibration_photos)
            for precision, link in (("fp32", path), ("int8", int8_link)):
                port = free_port()
                server = start_server(
                    f"{name} {precision}",
                    [
                        str(venv_bin / "skin-mlops"),
                        "serve",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    port,
                    "/ready",
                    {
                        "MODEL_SOURCE": str(link),
                        "MODEL_POLL_SECONDS": "0",
                        "MODEL_PRECISION": precision,
                    },
                )
                try:
                    result = summarize(
                        server.name, measure(server, send, progress, seconds, latency_requests)
                    )
                finally:
                    server.stop()
                model_file = (
                    export_format.ONNX_MODEL_FILE
                    if precision == "fp32"
                    else export_format.INT8_MODEL_FILE
                )
                resolved = export_format.resolve_export_dir(link)
                rows.append(
                    {
                        "backbone": signature.backbone,
                        "image_size": signature.image_size,
                        "precision": precision,
                        "engine": "onnxruntime",
                        "cv_macro_f1": cv_f1.get(name) if precision == "fp32" else None,
                        "val_macro_f1": gate[
                            "fp32_macro_f1" if precision == "fp32" else "int8_macro_f1"
                        ],
                        "gate": None
                        if precision == "fp32"
                        else ("pass" if gate["passed"] else f"fail ({gate['flips']} flips)"),
                        "model_mb": (resolved / model_file).stat().st_size / 1e6,
                        **result,
                    }
                )
    table = Table(
        "backbone",
        "px",
        "precision",
        "CV F1",
        "val F1",
        "int8 gate",
        "p50 ms",
        "p99 ms",
        "photos/s @32",
        "fail",
        "MB",
        "RSS MiB",
        "p50 / ref",
        "@32 / ref b32",
    )
    for r in rows:
        table.add_row(
            r["backbone"].replace("efficientnet_", ""),
            str(r["image_size"]),
            r["precision"],
            f"{r['cv_macro_f1']:.3f}" if r["cv_macro_f1"] is not None else "–",
            f"{r['val_macro_f1']:.3f}",
            r["gate"] or "–",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['rps_c32']:.1f}",
            str(r["failures"]),
            f"{r['model_mb']:.1f}",
            f"{r['rss_peak_mib']:.0f}",
            f"{r['p50_ms'] / reference['p50_ms']:.2f}",
            f"{r['rps_c32'] / reference['photos_per_s_b32']:.2f}",
        )
    console.print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quality_latency.json").write_text(
        json.dumps({"reference": reference, "rows": rows}, indent=2, default=str)
    )


if __name__ == "__main__":
    typer.run(main)
