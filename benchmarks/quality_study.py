"""Quality study: which frozen-Lite0 recipe reaches val macro-F1 >= 0.78 / acc >= 0.80?

Run from the repo root (needs ../shared/datasets/dermnet5; exits clearly without it)::

    uv run python benchmarks/quality_study.py extract --size 224 --aug-views 16
    uv run python benchmarks/quality_study.py extract --size 288 --aug-views 8
    uv run python benchmarks/quality_study.py evaluate

``extract`` runs the frozen EfficientNet-Lite0 once per (photo, view) and caches pooled
features in ``benchmarks/out/quality/`` (gitignored). Train views: the centre crop that
serving sees (``preprocessing.preprocess_bytes``), its 7 other dihedral transforms
(quarter turns x flip, computed on the array exactly as an in-graph TTA would), and
``--aug-views`` random-resized-crop views from ``skin_mlops.modeling.features`` (crop,
flip, quarter turn, brightness/contrast). Val views: centre + its 7 dihedral transforms.
Several poolings come from the same forward pass: GAP and GeM (p=3) of the 1280-channel
head, and GAP of block 6's output (192 channels, "mid").

``evaluate`` trains heads on the cached features (train -> val) and prints one table:
recipe, val accuracy, macro-F1 (centre view only = what the exported single-view model
does; and with 8-view dihedral test-time averaging), extraction and head-training time.
It also writes ``results.csv`` and ``results.png`` next to the features.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from skin_mlops.export_format import softmax
from skin_mlops.modeling.features import DIHEDRAL_VIEWS, dihedral
from skin_mlops.modeling.heads import class_weights as balanced_class_weights

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "dermnet5"
OUT = ROOT / "benchmarks" / "out" / "quality"
LABELS = [
    "acne",
    "actinic_keratosis",
    "atopic_dermatitis",
    "basal_cell_carcinoma",
    "lichen_planus",
]
DIHEDRAL = DIHEDRAL_VIEWS  # 8 views; view 0 = identity (the centre crop)


def list_split(split: str) -> list[tuple[Path, int]]:
    return [
        (path, index)
        for index, label in enumerate(LABELS)
        for path in sorted((DATASET / split / label).glob("*.jpg"))
    ]


# --- extraction ---------------------------------------------------------------------------


def _pooling_model(size: int):
    """Lite0 returning the head map and block-6 map; pooled in numpy afterwards."""
    import keras

    from skin_mlops.modeling.backbones import build_backbone

    full = build_backbone(image_size=size, include_top=True).model
    names = ["top_relu", "block6d_add", "block5c_add", "block4c_add"]
    maps = [full.get_layer(name).output for name in names]
    return keras.Model(full.input, maps), build_backbone(image_size=size).weights_sha256


def _pool(
    top: np.ndarray, mid: np.ndarray, b5: np.ndarray, b4: np.ndarray
) -> dict[str, np.ndarray]:
    return {
        "gap": top.mean(axis=(1, 2)),
        "gem": np.cbrt(np.mean(np.maximum(top, 0) ** 3, axis=(1, 2))),
        "mid": mid.mean(axis=(1, 2)),
        "b5": b5.mean(axis=(1, 2)),
        "b4": b4.mean(axis=(1, 2)),
    }


def _flush(run, batch: list[np.ndarray], batch_size: int, pooled: dict[str, list]) -> int:
    """Run one (zero-padded) batch through the backbone, pool, append; empties ``batch``."""
    import tensorflow as tf

    x = np.stack(batch)
    pad = (-len(x)) % batch_size
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
    maps = [np.asarray(t)[: len(batch)] for t in run(tf.constant(x))]
    for key, value in _pool(*maps).items():
        pooled[key].append(value)
    done = len(batch)
    batch.clear()
    return done


def extract(size: int, aug_views: int, batch_size: int = 32) -> Path:
    """Compute and cache features for train (8 + aug_views views) and val (8 views)."""
    import tensorflow as tf
    from rich.progress import Progress

    from skin_mlops.modeling.features import render_views, view_ids
    from skin_mlops.preprocessing import preprocess_bytes

    target = OUT / f"features_s{size}_a{aug_views}.npz"
    if target.exists():
        print(f"cached: {target}")
        return target
    model, weights_sha = _pooling_model(size)
    run = tf.function(lambda x: model(x, training=False))
    aug_ids = view_ids(aug_views + 1)[1:]
    result: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    with Progress() as progress:
        for split in ("train", "val"):
            items = list_split(split)
            n_views = DIHEDRAL + (aug_views if split == "train" else 0)
            task = progress.add_task(f"{split} @ {size}px", total=len(items) * n_views)
            pooled: dict[str, list[np.ndarray]] = {k: [] for k in ("gap", "gem", "mid", "b5", "b4")}
            batch: list[np.ndarray] = []

            for path, _ in items:
                data = path.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                centre = preprocess_bytes(data, size)
                views = [dihedral(centre, k) for k in range(DIHEDRAL)]
                if split == "train" and aug_views:
                    views += render_views(data, sha, aug_ids, size)
                batch.extend(views)
                if len(batch) >= batch_size:
                    progress.advance(task, _flush(run, batch, batch_size, pooled))
            if batch:
                progress.advance(task, _flush(run, batch, batch_size, pooled))
            for key, chunks in pooled.items():
                result[f"{split}_{key}"] = (
                    np.concatenate(chunks).reshape(len(items), n_views, -1).astype(np.float32)
                )
            result[f"{split}_y"] = np.array([label for _, label in items])
    seconds = time.perf_counter() - started
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(target, **result, extract_seconds=seconds, size=size, weights_sha=weights_sha)
    n = sum(result[f"{s}_gap"].shape[0] * result[f"{s}_gap"].shape[1] for s in ("train", "val"))
    print(f"{n} views in {seconds:.0f}s ({n / seconds:.1f} views/s) -> {target}")
    return target


# --- heads ------------------------------------------------------------------------------


@dataclass
class Result:
    recipe: str
    acc: float
    f1: float
    acc_tta: float
    f1_tta: float
    extract_s: float
    train_s: float


def _scores(y: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = probs.argmax(axis=1)
    return accuracy_score(y, pred), f1_score(y, pred, average="macro")


def _features(data, split: str, kind: str) -> np.ndarray:
    parts = [data[f"{split}_{k}"] for k in kind.split("+")]
    return np.concatenate(parts, axis=-1)


def _train_views(n_total: int, which: str, aug_views: int) -> list[int]:
    if which == "centre":
        return [0]
    if which == "dihedral":
        return list(range(DIHEDRAL))
    if which == "aug":
        return [0] + list(range(DIHEDRAL, DIHEDRAL + aug_views))
    return list(range(n_total))  # all


def logistic_head(xtr, ytr, xva_views, c: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, max_iter=3000, class_weight="balanced"),
    )
    clf.fit(xtr, ytr)
    return np.stack([clf.predict_proba(v) for v in xva_views])


def mlp_head(
    xtr,
    ytr,
    xva_views,
    *,
    hidden: int = 512,
    dropout: float = 0.5,
    smoothing: float = 0.1,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    class_weights: bool = True,
) -> np.ndarray:
    """Normalization (adapted on train) -> Dropout -> Dense(hidden, relu) -> Dropout -> logits."""
    import keras

    keras.utils.set_random_seed(seed)
    norm = keras.layers.Normalization()
    norm.adapt(xtr)
    inputs = keras.Input((xtr.shape[1],))
    x = norm(inputs)
    x = keras.layers.Dropout(0.2)(x)
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
    logits = keras.layers.Dense(len(LABELS))(x)
    model = keras.Model(inputs, logits)
    steps = epochs * int(np.ceil(len(xtr) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing),
    )
    weights = balanced_class_weights(ytr, len(LABELS)) if class_weights else None
    model.fit(
        xtr,
        keras.utils.to_categorical(ytr, len(LABELS)),
        epochs=epochs,
        batch_size=batch_size,
        class_weight=weights,
        shuffle=True,
        verbose=0,
    )
    probs = []
    for v in xva_views:
        probs.append(softmax(model.predict(v, batch_size=256, verbose=0)))
    return np.stack(probs)


def run_recipe(data, name: str, feats: str, views: str, head: str, **kw) -> Result:
    aug_views = int(data["train_gap"].shape[1]) - DIHEDRAL
    xtr_all = _features(data, "train", feats)
    chosen = _train_views(xtr_all.shape[1], views, aug_views)
    xtr = xtr_all[:, chosen].reshape(-1, xtr_all.shape[-1])
    ytr = np.repeat(data["train_y"], len(chosen))
    xva = _features(data, "val", feats)
    xva_views = [xva[:, k] for k in range(DIHEDRAL)]
    yva = data["val_y"]
    started = time.perf_counter()
    seeds = kw.pop("seeds", [0])
    if head == "logreg":
        probs = logistic_head(xtr, ytr, xva_views, kw.get("c", 0.1))
        seeds = [0]
    else:
        probs = np.mean([mlp_head(xtr, ytr, xva_views, seed=s, **kw) for s in seeds], axis=0)
    train_s = (time.perf_counter() - started) / len(seeds)
    acc, f1 = _scores(yva, probs[0])
    acc_t, f1_t = _scores(yva, probs.mean(axis=0))
    ext = float(data["extract_seconds"])
    res = Result(name, acc, f1, acc_t, f1_t, ext, train_s)
    print(
        f"{name:<58} acc {acc:.3f} F1 {f1:.3f} | TTA8 acc {acc_t:.3f} F1 {f1_t:.3f}"
        f" | head {train_s:5.1f}s",
        flush=True,
    )
    return res


def evaluate(files: list[Path], quick: bool) -> None:
    results: list[Result] = []
    for path in files:
        data = dict(np.load(path))
        size, aug = int(data["size"]), int(data["train_gap"].shape[1]) - DIHEDRAL
        tag = f"s{size}"
        print(
            f"--- {path.name}: {size}px, train views 8 dihedral + {aug} aug, "
            f"extraction {float(data['extract_seconds']):.0f}s"
        )
        recipes: list[tuple[str, str, str, str, dict]] = [
            (f"{tag} logreg C=0.1 gap centre", "gap", "centre", "logreg", {"c": 0.1}),
            (f"{tag} logreg C=0.1 gap all views", "gap", "all", "logreg", {"c": 0.1}),
            (f"{tag} logreg C=0.1 gap+mid all views", "gap+mid", "all", "logreg", {"c": 0.1}),
            (f"{tag} mlp512 gap centre", "gap", "centre", "mlp", {"epochs": 60}),
            (f"{tag} mlp512 gap dihedral", "gap", "dihedral", "mlp", {}),
            (f"{tag} mlp512 gap aug", "gap", "aug", "mlp", {}),
            (f"{tag} mlp512 gap all", "gap", "all", "mlp", {}),
            (f"{tag} mlp512 gem all", "gem", "all", "mlp", {}),
            (f"{tag} mlp512 gap+mid all", "gap+mid", "all", "mlp", {}),
            (f"{tag} mlp512 gem+mid all", "gem+mid", "all", "mlp", {}),
            (f"{tag} linear(softmax) gap+mid all", "gap+mid", "all", "mlp", {"hidden": 0}),
            (f"{tag} mlp1024 gap+mid all", "gap+mid", "all", "mlp", {"hidden": 1024}),
            (
                f"{tag} mlp512 gap+mid all no class weights",
                "gap+mid",
                "all",
                "mlp",
                {"class_weights": False},
            ),
            (f"{tag} mlp512 gap+mid all no smoothing", "gap+mid", "all", "mlp", {"smoothing": 0.0}),
        ]
        if quick:
            recipes = recipes[:1] + recipes[6:9]
        for name, feats, views, head, kw in recipes:
            if head == "mlp":
                kw = {"seeds": [0, 1, 2], **kw}
            results.append(run_recipe(data, name, feats, views, head, **kw))
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["recipe", "acc", "macro_f1", "acc_tta8", "macro_f1_tta8", "extract_s", "head_train_s"]
        )
        for r in results:
            writer.writerow(
                [
                    r.recipe,
                    f"{r.acc:.3f}",
                    f"{r.f1:.3f}",
                    f"{r.acc_tta:.3f}",
                    f"{r.f1_tta:.3f}",
                    f"{r.extract_s:.0f}",
                    f"{r.train_s:.1f}",
                ]
            )
    _plot(results, OUT / "results.png")
    print(f"wrote {OUT / 'results.csv'} and {OUT / 'results.png'}")


def _plot(results: list[Result], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.32 * len(results) + 1.5))
    y = np.arange(len(results))
    ax.barh(y - 0.2, [r.f1 for r in results], 0.4, label="macro-F1 (centre view)")
    ax.barh(y + 0.2, [r.f1_tta for r in results], 0.4, label="macro-F1 (8-view TTA)")
    ax.axvline(0.78, color="red", linestyle="--", label="target 0.78")
    ax.axvline(0.73, color="grey", linestyle=":", label="reference logreg 0.73")
    ax.set_yticks(y, [r.recipe for r in results], fontsize=7)
    ax.set_xlim(0.5, 0.95)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("dermnet5 val (129 photos), frozen EfficientNet-Lite0 features")
    fig.tight_layout()
    fig.savefig(target, dpi=120)


app = typer.Typer(
    help="Find which frozen-Lite0 recipe reaches val macro-F1 >= 0.78 / accuracy >= 0.80.",
    no_args_is_help=True,
    add_completion=False,
)


def _need_dataset() -> None:
    if not DATASET.is_dir():
        sys.exit(f"dataset not found: {DATASET} (this benchmark needs ../shared/datasets)")


@app.command("extract")
def extract_command(
    size: Annotated[int, typer.Option(help="Input side S in pixels.")] = 224,
    aug_views: Annotated[
        int, typer.Option(min=0, help="Random augmented views per training photo.")
    ] = 16,
) -> None:
    """Compute and cache pooled frozen-backbone features for train and val."""
    _need_dataset()
    extract(size, aug_views)


@app.command("evaluate")
def evaluate_command(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Cached feature files (default: every features_*.npz)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Four recipes only (a quick check).")
    ] = False,
) -> None:
    """Train heads on the cached features and print the recipes' val scores."""
    _need_dataset()
    files = files or sorted(OUT.glob("features_*.npz"))
    if not files:
        sys.exit("no cached features: run `extract` first")
    evaluate(files, quick)


if __name__ == "__main__":
    app()
