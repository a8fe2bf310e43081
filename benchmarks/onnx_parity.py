"""Keras vs ONNX Runtime on the dermnet5 val photos, for an exported model folder.

Usage (from the repo root)::

    uv run python benchmarks/onnx_parity.py [--export-dir DIR]

``DIR`` defaults to the model published by ``benchmarks/train_benchmark.py default``
(``benchmarks/out/default-run-work/runs/skin5-current``), else ``runs/skin5-current``.
Every val photo goes through ``skin_mlops.preprocessing.preprocess_bytes`` (the serving
path), then through ``model/model.keras`` (Keras) and ``model/model.onnx`` (ONNX
Runtime, CPU). Calibrated probabilities are ``softmax(logits / temperature)`` with the
temperature of ``signature.json``. Prints max |dprobability|, max |dlogit|, top-1
agreement, accuracy of each, and per-image latency; passes when max |dp| <= 1e-4 and
top-1 is identical on every photo (exit 0), else exit 1; exit 2 without the data set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from skin_mlops.modeling.export import load_keras_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets" / "dermnet5"
OUT = REPO / "benchmarks" / "out"
TOLERANCE = 1e-4
console = Console()


def main(
    export_dir: Annotated[
        Path | None,
        typer.Option(
            help="Export folder (default: the benchmark's default run, else runs/skin5-current)."
        ),
    ] = None,
) -> None:
    """Compare Keras and ONNX Runtime on the dermnet5 val photos for an exported model."""
    if not SHARED.is_dir():
        console.print(f"[red]{SHARED} not found: this benchmark needs the shared dermnet5 set")
        raise typer.Exit(2)
    candidates = (
        [export_dir]
        if export_dir
        else [OUT / "default-run-work" / "runs" / "skin5-current", REPO / "runs" / "skin5-current"]
    )
    export_dir = next((c for c in candidates if c is not None and c.exists()), None)
    if export_dir is None:
        console.print("[red]no exported model: run benchmarks/train_benchmark.py default first")
        raise typer.Exit(2)

    from skin_mlops import export_format
    from skin_mlops.modeling.export import keras_logits, onnx_logits, onnx_session
    from skin_mlops.preprocessing import preprocess_bytes

    folder = export_format.resolve_export_dir(export_dir)
    signature = export_format.read_signature(folder)
    photos = [
        (path, signature.labels.index(path.parent.name))
        for path in sorted((SHARED / "val").glob("*/*.jpg"))
    ]
    images = np.stack([preprocess_bytes(p.read_bytes(), signature.image_size) for p, _ in photos])
    labels = np.array([y for _, y in photos])

    model = load_keras_model(folder / export_format.KERAS_MODEL_FILE)
    session = onnx_session(folder / export_format.ONNX_MODEL_FILE)
    keras_logits(model, images[:2])  # warm-up (graph tracing)
    onnx_logits(session, images[:2])
    started = time.perf_counter()
    k_logits = keras_logits(model, images, batch_size=16)
    keras_s = time.perf_counter() - started
    started = time.perf_counter()
    o_logits = onnx_logits(session, images, batch_size=16)
    onnx_s = time.perf_counter() - started

    k_probs = export_format.softmax(k_logits, signature.temperature)
    o_probs = export_format.softmax(o_logits, signature.temperature)
    max_dp = float(np.abs(k_probs - o_probs).max())
    max_dlogit = float(np.abs(k_logits - o_logits).max())
    agree = int((k_probs.argmax(1) == o_probs.argmax(1)).sum())
    passed = max_dp <= TOLERANCE and agree == len(photos)

    table = Table(
        title=f"Keras vs ONNX Runtime on {len(photos)} dermnet5 val photos "
        f"({signature.backbone}, S={signature.image_size}, "
        f"T={signature.temperature:.3f}; {os.cpu_count()}-core CPU)"
    )
    for column in ("", "Keras (TensorFlow)", "ONNX Runtime"):
        table.add_column(column, justify="right")
    table.add_row(
        "val accuracy",
        f"{(k_probs.argmax(1) == labels).mean():.4f}",
        f"{(o_probs.argmax(1) == labels).mean():.4f}",
    )
    table.add_row(
        "ms / image (batch 16)",
        f"{1000 * keras_s / len(photos):.1f}",
        f"{1000 * onnx_s / len(photos):.1f}",
    )
    console.print(table)
    console.print(
        f"max |dprobability| = {max_dp:.2e} (limit {TOLERANCE:.0e}); "
        f"max |dlogit| = {max_dlogit:.2e}; identical top-1: {agree}/{len(photos)}; "
        f"{'PASS' if passed else 'FAIL'}",
        highlight=False,
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "onnx_parity.json").write_text(
        json.dumps(
            {
                "export_dir": str(folder),
                "n_photos": len(photos),
                "max_abs_prob_diff": max_dp,
                "max_abs_logit_diff": max_dlogit,
                "top1_identical": agree,
                "passed": passed,
                "keras_ms_per_image": 1000 * keras_s / len(photos),
                "onnx_ms_per_image": 1000 * onnx_s / len(photos),
            },
            indent=2,
        )
    )
    raise typer.Exit(0 if passed else 1)


if __name__ == "__main__":
    typer.run(main)
