"""The out-of-distribution guard: which score, and what it flags, on real photos.

Usage (from the repo root)::

    uv run python benchmarks/ood_guard.py [--work benchmarks/out/default-run-work]

On the default recipe's pooled backbone features (EfficientNet-Lite0, 288 px, ``multi``
pooling; computed with the package's feature pipeline and cached in ``<work>/.cache``, so
a work folder where ``skin-mlops train`` ran reuses its features), each candidate score is
fitted on the dermnet5 training photos (their 12 cached views), its threshold chosen on 5
held-out folds of them at a 95 % pass rate (as training does), and then applied to:

* **dermnet5 val** (129 clinical photos, the same distribution): the share flagged, target
  at most 5 %;
* **ham10000-sample** (70 dermoscopy photos: skin, but another imaging modality): the
  share flagged (no target: reported);
* **non-skin images** (generated: flat colours, noise, rendered text pages,
  checkerboards, photo-like gradients; 4 seeds of each = 20): the share flagged, target
  100 %.

Candidates: ``mahalanobis-tied`` (what training ships: :mod:`skin_mlops.modeling.ood`) and
``knn``, the distance of the L2-normalised features to the k-th nearest training view
(Sun et al., 2022; k = 10). The cost per photo of each score (batch of 1, this process,
after the backbone) is reported too.

With ``--export`` (default: ``<work>/runs/skin5-current``, when it has a guard) the served
model itself is run on the same photos through the API's loader: the in-graph guard's
verdicts, and for comparison the share of each set that today's uncertainty warning
alone (confidence below 0.5) would have flagged.

Prints a table and writes ``benchmarks/out/ood_guard.json``. Exits 2 without the shared
data sets.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
OUT = REPO / "benchmarks" / "out"
sys.path.insert(0, str(REPO / "tests"))
console = Console(width=160)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def photos(root: Path) -> tuple[list[Path], list[str]]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files, [p.parent.name for p in files]


def non_skin_pixels(size: int) -> tuple[list[str], np.ndarray]:
    """The test suite's generated non-skin images, 4 seeds each, as model inputs."""
    from skin_mlops.preprocessing import to_model_input
    from utils.images import non_skin_images

    names, arrays = [], []
    for seed in range(4):
        for name, image in non_skin_images(seed=seed).items():
            if name == "flat colour":  # a different colour per seed
                image = image.point(lambda v, s=seed: (v + 60 * s) % 256)
            names.append(name)
            arrays.append(to_model_input(image, size))
    return names, np.stack(arrays)


def knn_guard(
    train: np.ndarray, labels: np.ndarray, k: int, pass_rate: float
) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """kNN distance on L2-normalised features; threshold on 5 held-out folds."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import NearestNeighbors

    def normalise(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    def fit(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        index = NearestNeighbors(n_neighbors=k).fit(
            normalise(train[rows].reshape(-1, train.shape[-1]))
        )
        return lambda x: index.kneighbors(normalise(x))[0][:, -1]

    heldout = np.empty(len(labels))
    for fit_rows, held in StratifiedKFold(5, shuffle=True, random_state=0).split(labels, labels):
        heldout[held] = fit(fit_rows)(train[held, 0])
    return fit(np.arange(len(labels))), float(np.quantile(heldout, pass_rate))


def per_photo_us(score: Callable[[np.ndarray], np.ndarray], one: np.ndarray) -> float:
    score(one)
    started = time.perf_counter()
    for _ in range(200):
        score(one)
    return (time.perf_counter() - started) / 200 * 1e6


def main(
    work: Annotated[
        Path, typer.Option(help="A working folder (its .cache holds the feature cache).")
    ] = OUT / "default-run-work",
    export: Annotated[
        Path | None,
        typer.Option(help="Exported model to run (default: <work>/runs/skin5-current)."),
    ] = None,
) -> None:
    """Compare out-of-distribution scores on dermnet5, ham10000 and non-skin images."""
    dermnet, ham = SHARED / "dermnet5", SHARED / "ham10000-sample"
    if not dermnet.is_dir() or not ham.is_dir():
        console.print(f"[red]{SHARED} lacks dermnet5 or ham10000-sample")
        raise typer.Exit(2)
    from skin_mlops.modeling import ood
    from skin_mlops.modeling.backbones import build_backbone
    from skin_mlops.modeling.data import sha256_bytes
    from skin_mlops.modeling.features import FeatureSpace, FeatureStore, ImageRef, extract_features
    from skin_mlops.modeling.heads import make_progress
    from skin_mlops.modeling.onnx_backbone import ensure_backbone_onnx, onnx_feature_function
    from skin_mlops.modeling.options import DEFAULT_VIEWS, TrainingOptions

    options = TrainingOptions()
    backbone = build_backbone(
        options.backbone,
        image_size=options.image_size,
        weights_cache_dir=work / ".cache" / "weights",
        **dict(options.backbone_options),
    )
    space = FeatureSpace.of(backbone, options.backbone_options_key)
    onnx_path = ensure_backbone_onnx(backbone, space.key, work / ".cache" / "weights")
    compute = onnx_feature_function(onnx_path) if onnx_path else None
    store = FeatureStore(work / ".cache" / "features")

    def refs(files: list[Path]) -> list[ImageRef]:
        return [
            ImageRef(sha256_bytes(p.read_bytes()), (lambda p=p: p.read_bytes()), str(p))
            for p in files
        ]

    train_files, train_names = photos(dermnet / "train")
    val_files, val_names = photos(dermnet / "val")
    ham_files, _ = photos(ham)
    labels_sorted = sorted(set(train_names))
    y_train = np.array([labels_sorted.index(n) for n in train_names])
    with make_progress(console) as progress:

        def features(files: list[Path], views: int, what: str) -> np.ndarray:
            return extract_features(
                backbone,
                refs(files),
                views,
                store,
                backbone_options=options.backbone_options_key,
                progress=progress,
                description=what,
                compute=compute,
            ).features

        train = features(train_files, DEFAULT_VIEWS, f"dermnet5 train ({DEFAULT_VIEWS} views)")
        val = features(val_files, 1, "dermnet5 val")[:, 0]
        ham_x = features(ham_files, 1, "ham10000-sample")[:, 0]
    strange_names, strange_pixels = non_skin_pixels(options.image_size)
    strange = compute(strange_pixels) if compute else np.asarray(backbone.model(strange_pixels))
    console.print(
        f"features: {train.shape[-1]} per photo; train {train.shape[0]} photos x "
        f"{train.shape[1]} views; val {len(val)}; ham10000 {len(ham_x)}; non-skin {len(strange)}"
    )

    guard = ood.fit_guard(train, y_train, len(labels_sorted))
    knn_score, knn_threshold = knn_guard(train, y_train, 10, 0.95)
    candidates = {
        "mahalanobis-tied (shipped)": (guard.scores, guard.threshold),
        "knn (k=10, cosine)": (knn_score, knn_threshold),
    }
    rows = []
    for name, (score, threshold) in candidates.items():
        flagged = {
            "dermnet5 val": float(np.mean(score(val) > threshold)),
            "ham10000": float(np.mean(score(ham_x) > threshold)),
            "non-skin": float(np.mean(score(strange) > threshold)),
        }
        missed = [n for n, s in zip(strange_names, score(strange), strict=True) if s <= threshold]
        rows.append(
            {
                "method": name,
                **flagged,
                "non_skin_missed": missed,
                "us_per_photo": per_photo_us(score, val[:1]),
            }
        )

    table = Table(
        title="share flagged out of distribution (threshold: 95 % of held-out train pass)"
    )
    for column in (
        "score",
        "dermnet5 val (<= 5 %)",
        "ham10000 dermoscopy",
        "non-skin (100 %)",
        "µs / photo",
    ):
        table.add_column(column, justify="right" if column != "score" else "left")
    for row in rows:
        table.add_row(
            row["method"],
            f"{row['dermnet5 val']:.1%}",
            f"{row['ham10000']:.1%}",
            f"{row['non-skin']:.0%}"
            + (f" (missed {', '.join(row['non_skin_missed'])})" if row["non_skin_missed"] else ""),
            f"{row['us_per_photo']:.0f}",
        )
    console.print(table)

    served = served_model(
        export or work / "runs" / "skin5-current", val_files, ham_files, strange_pixels
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ood_guard.json").write_text(
        json.dumps({"cpus": os.cpu_count(), "candidates": rows, "served": served}, indent=2)
    )
    console.print(f"wrote {OUT / 'ood_guard.json'}")


def served_model(
    export: Path, val_files: list[Path], ham_files: list[Path], strange_pixels: np.ndarray
) -> dict | None:
    """The exported model through the API's loader: the guard's verdicts vs confidence."""
    from skin_mlops import export_format
    from skin_mlops.api.model_runtime import load_model
    from skin_mlops.core.config import load_settings
    from skin_mlops.preprocessing import preprocess_bytes

    if not (export / export_format.SIGNATURE_FILE).is_file():
        console.print(f"no export at {export}: served-model figures skipped")
        return None
    folder = export_format.resolve_export_dir(export)
    signature = export_format.read_signature(folder)
    if signature.ood is None:
        console.print(f"{folder.name} has no guard (exported before it): served figures skipped")
        return None
    model = load_model(folder, "benchmark", load_settings())
    size = signature.image_size

    def verdicts(pixels: np.ndarray) -> tuple[float, float]:
        flagged, unsure = [], []
        for start in range(0, len(pixels), 16):
            logits, scores = model.outputs(pixels[start : start + 16])
            flagged += [not model.in_distribution(float(s)) for s in scores]
            unsure += list(model.probabilities(logits).max(axis=1) < 0.5)
        return float(np.mean(flagged)), float(np.mean(unsure))

    sets = {
        "dermnet5 val": np.stack([preprocess_bytes(p.read_bytes(), size) for p in val_files]),
        "ham10000": np.stack([preprocess_bytes(p.read_bytes(), size) for p in ham_files]),
        "non-skin": strange_pixels,
    }
    table = Table(
        title=f"served model {signature.model_version}: in-graph guard vs confidence alone"
    )
    for column in ("set", "flagged by the guard", "confidence < 0.5 (today's warning)"):
        table.add_column(column, justify="right" if column != "set" else "left")
    result = {"model_version": signature.model_version, "threshold": signature.ood.threshold}
    for name, pixels in sets.items():
        flagged, unsure = verdicts(pixels)
        result[name] = {"flagged": flagged, "low_confidence": unsure}
        table.add_row(name, f"{flagged:.1%}", f"{unsure:.1%}")
    console.print(table)
    return result


if __name__ == "__main__":
    typer.run(main)
