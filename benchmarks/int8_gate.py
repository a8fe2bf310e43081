"""The product's int8 stage on the real model: every method on both engines, through its gate.

``skin_mlops.modeling.quantize`` (what ``skin-mlops train --int8`` runs) quantizes the
export with each of its methods (``ort-minmax``, ``ort-minmax-7bit``, ``ort-minmax-u8u8``,
``ort-percentile``, ``nncf``), calibrated
on ``--calibration-photos`` dermnet5 train photos (seeded sample, ``preprocess_bytes``:
what the server feeds), and scores the candidate on the 129 val photos on ONNX Runtime and
on OpenVINO against fp32 on ONNX Runtime with the same gate the stage applies
(``quantize.gate``: macro-F1 drop <= 0.005, top-1 and guard verdict agreement >= 99 %).
Speed, the same process, 2 threads: one image (median of ``--single-runs`` calls) and
photos/s in batches of 32 (median of ``--batch-runs``), fp32 on both engines included;
the reference ``../shared/reference/lite0-288-fp32.onnx`` is timed beside them. The
fp32 file on OpenVINO with bfloat16 inference (CPUs with AVX-512 BF16 or AMX) goes through
the same gate (``--no-bf16`` leaves it out).

Nothing is shipped; prints a table and writes ``benchmarks/out/int8_gate.json``.

Run: ``flock /tmp/heavy.lock uv run python benchmarks/int8_gate.py [--export DIR]``
(default export: ``benchmarks/out/default-run-work/runs/skin5-current``, made by
``benchmarks/train_benchmark.py default``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import OUT, int8_photos  # noqa: E402

from skin_mlops import export_format  # noqa: E402
from skin_mlops.modeling import quantize  # noqa: E402
from skin_mlops.runtimes import (  # noqa: E402
    ENGINES,
    OpenVinoSession,
    cpu_int8_arithmetic,
    open_session,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "lite0-288-fp32.onnx"
console = Console(width=160)


def _speed(session, input_name: str, images: np.ndarray, single: int, batch: int) -> tuple:  # noqa: ANN001
    one, many = images[:1], images[:32]
    for _ in range(3):
        session.run([session.get_outputs()[0].name], {input_name: one})
    times = []
    for _ in range(single):
        t0 = time.perf_counter()
        session.run([session.get_outputs()[0].name], {input_name: one})
        times.append((time.perf_counter() - t0) * 1000)
    rates = []
    for _ in range(batch):
        t0 = time.perf_counter()
        session.run([session.get_outputs()[0].name], {input_name: many})
        rates.append(len(many) / (time.perf_counter() - t0))
    return statistics.median(times), statistics.median(rates)


def main(
    export: Annotated[Path, typer.Option(help="Export folder.")] = (
        OUT / "default-run-work" / "runs" / "skin5-current"
    ),
    calibration_photos: Annotated[int, typer.Option(min=1)] = quantize.CALIBRATION_PHOTOS,
    single_runs: Annotated[int, typer.Option(min=1)] = 60,
    batch_runs: Annotated[int, typer.Option(min=1)] = 5,
    methods: Annotated[
        str, typer.Option(help="Comma-separated quantize.METHODS (percentile is slow: minutes).")
    ] = "ort-minmax,ort-minmax-7bit,nncf",
    engines: Annotated[str, typer.Option(help="Comma-separated engines.")] = ",".join(ENGINES),
    bf16: Annotated[
        bool, typer.Option(help="Also the fp32 file on OpenVINO with bfloat16 inference.")
    ] = True,
) -> None:
    folder = export_format.resolve_export_dir(export)
    signature = export_format.read_signature(folder)
    calibration, images, labels = int8_photos(
        signature.labels, signature.image_size, calibration_photos
    )
    fp32_path = folder / export_format.ONNX_MODEL_FILE
    fp32 = quantize.predict(open_session(fp32_path, "onnxruntime", 2), signature, images)
    console.print(
        f"model {folder.name} ({signature.backbone}, {signature.image_size} px); "
        f"{len(calibration)} calibration photos, {len(images)} val photos; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; int8 "
        f"arithmetic of this CPU: {cpu_int8_arithmetic()} (saturating: x86 without VNNI)"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = quantize.prepare_model(fp32_path, work)
        keep = quantize.float_nodes(
            prepared, signature.output.name, signature.ood.output.name if signature.ood else None
        )
        models = {("fp32", "-"): fp32_path}
        for method in [m.strip() for m in methods.split(",") if m.strip()]:
            path = work / f"{method}.onnx"
            t0 = time.perf_counter()
            quantize.quantize_onnx(prepared, calibration, signature.input.name, keep, path, method)
            console.print(f"{method}: quantized in {time.perf_counter() - t0:.0f} s")
            models[("int8", method)] = path
        runs = [
            (precision, method, engine, path)
            for (precision, method), path in models.items()
            for engine in [e.strip() for e in engines.split(",") if e.strip()]
        ]
        if bf16:  # the fp32 file, OpenVINO running its float parts in bfloat16
            runs.append(("bf16", "-", "openvino", fp32_path))
        for precision, method, engine, path in runs:
            if precision == "bf16":
                session = OpenVinoSession(path, 2, precision="bf16")
            else:
                session = open_session(path, engine, 2)
            report = quantize.gate(
                signature, labels, fp32, quantize.predict(session, signature, images)
            )
            p50, rate = _speed(session, signature.input.name, images, single_runs, batch_runs)
            rows.append(
                {
                    "precision": precision,
                    "method": method,
                    "engine": engine,
                    "macro_f1": report.int8_macro_f1,
                    "fp32_macro_f1": report.fp32_macro_f1,
                    "top1_disagreements": report.top1_disagreements,
                    "top1_agreement": report.top1_agreement,
                    "guard_agreement": report.guard_agreement,
                    "passed": report.passed,
                    "reasons": report.reasons,
                    "p50_ms": p50,
                    "photos_per_s_b32": rate,
                    "mb": path.stat().st_size / 1e6,
                    "cpu_int8_arithmetic": cpu_int8_arithmetic(),
                }
            )
        if REFERENCE.is_file():
            p50, rate = _speed(
                open_session(REFERENCE, "onnxruntime", 2), "image", images, single_runs, batch_runs
            )
            rows.append(
                {
                    "precision": "reference fp32",
                    "method": "-",
                    "engine": "onnxruntime",
                    "p50_ms": p50,
                    "photos_per_s_b32": rate,
                    "mb": REFERENCE.stat().st_size / 1e6,
                }
            )
    table = Table(
        "model",
        "engine",
        "val macro-F1",
        "flips / 129",
        "guard agree",
        "p50 ms (1)",
        "photos/s (32)",
        "MB",
        "gate",
    )
    for r in rows:
        table.add_row(
            f"{r['precision']} {r['method']}",
            r["engine"],
            f"{r['macro_f1']:.3f}" if "macro_f1" in r else "",
            str(r.get("top1_disagreements", "")),
            f"{r['guard_agreement']:.1%}" if r.get("guard_agreement") is not None else "",
            f"{r['p50_ms']:.1f}",
            f"{r['photos_per_s_b32']:.0f}",
            f"{r['mb']:.1f}",
            ""
            if "passed" not in r or r["precision"] == "fp32"
            else ("pass" if r["passed"] else "fail"),
        )
    console.print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "int8_gate.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    typer.run(main)
