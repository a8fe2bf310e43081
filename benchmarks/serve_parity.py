"""Parity on real photos: the API's probabilities vs the Keras model's, every dermnet5 val photo.

For each photo of ``../shared/datasets/dermnet5/val``: ``POST /predict?top_k=<all>`` to the
real app (``create_app`` serving ``model/model.onnx`` of the export, through ASGI in
process) and, independently, ``model/model.keras`` on ``preprocess_bytes`` of the same
bytes with ``softmax(logits / temperature)``. Passes when max |dp| <= 1e-4 and the top-1
label is the same on every photo. Exit code 1 otherwise.

Run: ``uv run python benchmarks/serve_parity.py [--export runs/skin5-current]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import track

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import OUT, resolve_model, val_photos  # noqa: E402

from skin_mlops.modeling.export import load_keras_model

TOLERANCE = 1e-4
console = Console()


def keras_probabilities(export: Path, photos: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Calibrated probabilities from ``model.keras`` (TensorFlow), one row per photo."""

    from skin_mlops.export_format import KERAS_MODEL_FILE, read_signature, softmax
    from skin_mlops.preprocessing import preprocess_bytes

    folder = export.resolve()
    signature = read_signature(folder)
    model = load_keras_model(folder / KERAS_MODEL_FILE, logits_only=True)
    rows = []
    for photo in track(photos, description="keras", console=console):
        x = preprocess_bytes(photo.read_bytes(), signature.image_size)[None]
        logits = np.asarray(model(x, training=False))[0]
        rows.append(softmax(logits, signature.temperature))
    return np.stack(rows), signature.labels


def api_probabilities(
    export: Path, photos: list[Path], labels: list[str]
) -> tuple[np.ndarray, str]:
    """Calibrated probabilities from the API (``create_app`` on the export's ONNX model)."""
    from fastapi.testclient import TestClient

    from skin_mlops.api.main import create_app
    from skin_mlops.core.config import load_settings

    settings = load_settings(model_source=str(export), model_poll_seconds=0)
    rows = []
    with TestClient(create_app(settings)) as client:
        version = client.get("/model").json()["model_version"]
        for photo in track(photos, description="api", console=console):
            response = client.post(
                f"/predict?top_k={len(labels)}", files={"file": (photo.name, photo.read_bytes())}
            )
            response.raise_for_status()
            by_label = {item["label"]: item["probability"] for item in response.json()["top_k"]}
            rows.append([by_label[label] for label in labels])
    return np.array(rows), version


def main(
    export: Annotated[
        Path | None, typer.Option(help="Export folder (default: runs/skin5-current).")
    ] = None,
) -> None:
    """Check that the API's probabilities equal Keras' on the dermnet5 val photos."""
    photos = val_photos()
    export, description = resolve_model(export)
    reference, labels = keras_probabilities(export, photos)
    served, version = api_probabilities(export, photos, labels)
    diff = np.abs(served - reference)
    same_top1 = served.argmax(1) == reference.argmax(1)
    worst = int(diff.max(1).argmax())
    ok = bool(diff.max() <= TOLERANCE and same_top1.all())
    console.print(f"model: {description} (version {version}); {len(photos)} dermnet5 val photos")
    console.print(
        f"max |p_api - p_keras| = {diff.max():.2e} (tolerance {TOLERANCE:.0e}; worst photo "
        f"{photos[worst].parent.name}/{photos[worst].name}); mean {diff.mean():.2e}"
    )
    console.print(f"top-1 identical on {int(same_top1.sum())}/{len(photos)} photos")
    console.print("[bold green]PARITY OK[/]" if ok else "[bold red]PARITY FAILED[/]")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_parity.json").write_text(
        json.dumps(
            {
                "model": description,
                "model_version": version,
                "photos": len(photos),
                "max_abs_prob_diff": float(diff.max()),
                "mean_abs_prob_diff": float(diff.mean()),
                "top1_identical": int(same_top1.sum()),
                "ok": ok,
            },
            indent=2,
        )
    )
    raise typer.Exit(0 if ok else 1)


if __name__ == "__main__":
    typer.run(main)
