"""What ``--orientation canonical`` costs at inference: the backbone with and without it.

Usage (from the repo root)::

    uv run python benchmarks/orientation_cost.py [--image-size 288] [--rounds 7]

Both graphs are the real EfficientNet-Lite0 (ImageNet weights, ``multi`` pooling, the
default recipe's backbone), converted to ONNX exactly as training converts them
(``onnx_backbone.ensure_backbone_onnx``, cached under ``benchmarks/out/orientation-cost``),
run on ONNX Runtime with the API's session settings (2 intra-op threads). The
baseline is the same backbone without the layer: same inputs (dermnet5 val photos
through the one preprocessing when present, else seeded noise), same session options,
rounds interleaved so that drift on a shared machine hits both alike. Prints the median
per-image time at batch 1 and batch 32 and the dihedral check (features of the 8
transforms of each photo, max |difference|).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "orientation-cost"
DERMNET_VAL = REPO.parent / "shared" / "datasets" / "dermnet5" / "val"
console = Console()
app = typer.Typer(add_completion=False, help=__doc__)


def photos(size: int, n: int) -> tuple[np.ndarray, str]:
    from skin_mlops.preprocessing import preprocess_bytes

    files = sorted(DERMNET_VAL.glob("*/*.jpg"))[:n]
    if len(files) == n:
        return np.stack([preprocess_bytes(f.read_bytes(), size) for f in files]), "dermnet5 val"
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32), "seeded noise"


def time_per_image(run, batch: np.ndarray, repeats: int) -> float:  # noqa: ANN001
    run(batch)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    return (time.perf_counter() - started) / repeats / len(batch) * 1000


@app.command()
def main(
    image_size: Annotated[int, typer.Option(help="Input side in pixels.")] = 288,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds.")] = 7,
) -> None:
    """Time the backbone with and without the canonical orientation layer."""
    import onnxruntime as ort

    from skin_mlops.api.model_runtime import session_options
    from skin_mlops.modeling import onnx_backbone
    from skin_mlops.modeling.backbones import build_backbone
    from skin_mlops.modeling.features import FeatureSpace, dihedral

    runs = {}
    for orientation in ("none", "canonical"):
        extra = {} if orientation == "none" else {"orientation": orientation}
        backbone = build_backbone(
            image_size=image_size, pooling="multi", weights_cache_dir=OUT, **extra
        )
        key = FeatureSpace.of(backbone, f"pooling=multi,orientation={orientation}").key
        path = onnx_backbone.ensure_backbone_onnx(backbone, key, OUT)
        if path is None:
            raise SystemExit(f"the {orientation} backbone did not convert to ONNX")
        session = ort.InferenceSession(
            str(path), session_options(2), providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        runs[orientation] = lambda x, s=session, n=name: s.run(None, {n: x})[0]
    images, source = photos(image_size, 32)
    single, batch = images[:1], images
    times: dict[str, dict[str, list[float]]] = {o: {"1": [], "32": []} for o in runs}
    for _ in range(rounds):
        for orientation, run in runs.items():
            times[orientation]["1"].append(time_per_image(run, single, 20))
            times[orientation]["32"].append(time_per_image(run, batch, 2))
    invariance = {}
    for orientation, run in runs.items():
        reference = run(images[:8])
        invariance[orientation] = max(
            float(np.abs(run(np.stack([dihedral(x, k) for x in images[:8]])) - reference).max())
            for k in range(1, 8)
        )
    table = Table(title=f"Lite0 {image_size} px backbone on ONNX Runtime, {source}")
    for column in ("orientation", "ms/image @1", "ms/image @32", "dihedral max |Δ feature|"):
        table.add_column(column)
    for orientation in runs:
        table.add_row(
            orientation,
            f"{statistics.median(times[orientation]['1']):.2f}",
            f"{statistics.median(times[orientation]['32']):.2f}",
            f"{invariance[orientation]:.2e}",
        )
    console.print(table)
    for b in ("1", "32"):
        ratio = statistics.median(times["canonical"][b]) / statistics.median(times["none"][b])
        console.print(f"batch {b}: canonical / none = {ratio:.3f} (median of {rounds} rounds)")


if __name__ == "__main__":
    app()
