"""Training speed and quality on ``../shared/datasets/dermnet5``: cached features vs plain.

Usage (from the repo root)::

    uv run python benchmarks/train_benchmark.py compare [--epochs 10] [--views 12]
    uv run python benchmarks/train_benchmark.py default

``compare`` (the issue's benchmark), in a fresh working directory outside the repo
(``benchmarks/out/train-bench/``, default settings = everything under it):

1. ``skin-mlops ingest`` of dermnet5 train+val (not timed as training);
2. **cached, cold**: ``skin-mlops train --epochs E`` end to end as a subprocess (imports,
   backbone, feature extraction, head, evaluation, ONNX export + parity, MLflow, publish);
3. **cached, rerun** on unchanged data: the same command again (every feature cached);
4. **extract once, then fit**: what a practitioner writes by hand - the same views pushed
   once through the frozen Keras backbone into memory, then the package's own head
   ``fit`` on those features (same head, optimiser, class weights, epochs, seed); nothing
   persists, so every run costs the same; timed from backbone build to val logits;
5. **plain** (``--no-plain`` skips it): the same model trained the usual way - Keras
   ``fit`` of backbone + head in one graph with the backbone frozen, so every epoch
   recomputes the backbone on every training image (same views, head, optimiser, class
   weights, batch size, epochs, seed, per-epoch validation); timed like 4.

and prints wall times and val macro-F1 side by side (also ``train_benchmark_views<V>.json`` and a
bar chart ``train_benchmark_views<V>.png`` in ``benchmarks/out/``).

``default`` runs ``skin-mlops train`` with no hyper-parameter flags (the default recipe)
in a fresh working directory with cold caches, and prints the val metrics, ECE before /
after scaling, the confusion matrix and the wall time; the PNGs are copied to
``benchmarks/out/default-run/``.

Exits 2 when the shared data set is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets" / "dermnet5"
OUT = REPO / "benchmarks" / "out"
LABELS = ["acne", "actinic_keratosis", "atopic_dermatitis", "basal_cell_carcinoma", "lichen_planus"]
console = Console()


# --- a working directory that looks like a fresh checkout's ---------------------------


def prepare_workdir(work: Path) -> Path:
    """A clean folder with ``configs/dataset_config.yaml`` pointing at the shared photos."""
    if work.exists():
        shutil.rmtree(work)
    (work / "configs").mkdir(parents=True)
    config = work / "configs" / "dataset_config.yaml"
    config.write_text(
        "dataset: dermnet5\n"
        f"splits:\n  train: {SHARED / 'train'}\n  val: {SHARED / 'val'}\n"
        "labels:\n"
        + "".join(f"  - {label}\n" for label in LABELS)
        + "metadata_db: data/metadata/skin_metadata.db\n"
        + repo_dataset_notes(),
        encoding="utf-8",
    )
    return config


def repo_dataset_notes() -> str:
    """The repo config's ``description`` and ``known_flaws`` as YAML, so that the model
    card of a benchmark-trained model states the data's flaws as a checkout's would."""
    import yaml

    repo_config = Path(__file__).resolve().parents[1] / "configs" / "dataset_config.yaml"
    loaded = yaml.safe_load(repo_config.read_text(encoding="utf-8"))
    notes = {key: loaded[key] for key in ("description", "known_flaws") if key in loaded}
    return yaml.safe_dump(notes, sort_keys=False, width=88) if notes else ""


def clean_env() -> dict[str, str]:
    """This environment without any platform setting (defaults = under the working dir)."""
    from skin_mlops.core.config import Settings

    fields = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in fields}
    env.update(COLUMNS="120", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def cli(work: Path, *args: str) -> float:
    """Run ``skin-mlops <args>`` in ``work``; return the wall time (raise on failure)."""
    script = Path(sys.executable).with_name("skin-mlops")
    started = time.perf_counter()
    done = subprocess.run(
        [str(script), *args], cwd=work, env=clean_env(), text=True, capture_output=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        console.print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(f"skin-mlops {' '.join(args)} failed ({done.returncode})")
    tail = [line for line in done.stdout.splitlines() if line.strip()][-30:]
    console.print("\n".join(tail), highlight=False)
    return elapsed


def latest_run(work: Path) -> dict:
    """Params, metrics and tags of the newest MLflow run in the working dir's store."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'data' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("skin-classifier")
    (run,) = client.search_runs(
        [experiment.experiment_id], order_by=["start_time DESC"], max_results=1
    )
    return {
        "run_id": run.info.run_id,
        "params": run.data.params,
        "metrics": run.data.metrics,
        "tags": run.data.tags,
    }


# --- the plain way ------------------------------------------------------------------------


def _photos_and_backbone(work: Path, options: Any) -> tuple[tuple, tuple, Any]:
    """``((train refs, labels), (val refs, labels), frozen Keras backbone)`` of the
    ingested dermnet5 rows in ``work``: what both hand-written baselines start from."""
    from skin_mlops.metadata import read_lesions
    from skin_mlops.modeling.backbones import build_backbone
    from skin_mlops.modeling.features import ImageRef

    records = read_lesions(work / "data" / "metadata" / "skin_metadata.db", "dermnet5")
    index = {label: i for i, label in enumerate(LABELS)}

    def refs(split: str) -> tuple[list[ImageRef], np.ndarray]:
        rows = [r for r in records if r.split == split]
        return (
            [ImageRef(r.sha256, (lambda p=r.source_path: Path(p).read_bytes())) for r in rows],
            np.array([index[r.label] for r in rows]),
        )

    backbone = build_backbone(
        options.backbone,
        image_size=options.image_size,
        weights_cache_dir=work / ".cache" / "weights",
        **dict(options.backbone_options),
    )
    backbone.model.trainable = False
    return refs("train"), refs("val"), backbone


def plain_training(work: Path, params: dict[str, str]) -> dict:
    """Keras fit with the frozen backbone inside the graph (features recomputed per epoch).

    Same options (read back from the cached run's MLflow params), same views, head,
    optimiser, class weights, seed and per-epoch validation. The head's input
    normalisation needs feature statistics: one adapt pass through the backbone over the
    training views (what ``Normalization.adapt`` on the composed pipeline would do).
    """
    import keras
    import tensorflow as tf

    from skin_mlops.modeling.evaluate import classification_report
    from skin_mlops.modeling.export import compose_model, keras_logits
    from skin_mlops.modeling.features import view_ids
    from skin_mlops.modeling.fine_tune import render_images
    from skin_mlops.modeling.heads import build_head, class_weights, compile_model, make_progress
    from skin_mlops.modeling.options import TrainingOptions

    options = TrainingOptions.from_params(params)
    started = time.perf_counter()
    (train_refs, y_train), (val_refs, y_val), backbone = _photos_and_backbone(work, options)
    y_views = np.repeat(y_train, options.views)
    with make_progress(console) as progress:
        train_pixels = render_images(
            train_refs,
            view_ids(options.views),
            options.image_size,
            progress,
            "plain: decoding train views",
        )
        val_pixels = render_images(
            val_refs, ["center"], options.image_size, progress, "plain: decoding val"
        )
        decoded = time.perf_counter()
        task = progress.add_task("plain: adapt pass", total=len(train_pixels))
        stats = []
        for start in range(0, len(train_pixels), 32):
            chunk = train_pixels[start : start + 32].astype(np.float32)
            stats.append(np.asarray(backbone.model(chunk, training=False)))
            progress.advance(task, len(chunk))
        adapted = time.perf_counter()
        keras.utils.set_random_seed(options.seed)
        features = np.concatenate(stats)
        heads = [build_head(features, len(LABELS), options, m) for m in range(options.heads)]
        model = compose_model(
            backbone.model, heads, options.image_size, tta_views=options.tta_views
        )
        compile_model(
            model,
            options.learning_rate,
            options,
            -(-len(train_pixels) // options.batch_size) * options.epochs,
        )

        def pipeline(pixels: np.ndarray, labels: np.ndarray, shuffle: bool, batch: int):
            one_hot = np.eye(len(LABELS), dtype=np.float32)[labels]
            dataset = tf.data.Dataset.from_tensor_slices((pixels, one_hot))
            if shuffle:
                dataset = dataset.shuffle(
                    len(labels), seed=options.seed, reshuffle_each_iteration=True
                )
            return dataset.batch(batch).map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(2)

        task = progress.add_task("plain: epochs", total=options.epochs)
        epoch_times: list[float] = []

        class Tick(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                epoch_times.append(time.perf_counter() - self.t)
                progress.update(
                    task,
                    advance=1,
                    description=(
                        f"plain: epoch {epoch + 1} val_acc {logs.get('val_accuracy', 0):.3f}"
                    ),
                )

        model.fit(
            pipeline(train_pixels, y_views, True, options.batch_size),
            validation_data=pipeline(val_pixels, y_val, False, 256),
            epochs=options.epochs,
            shuffle=False,
            verbose=0,
            callbacks=[Tick()],
            class_weight=class_weights(y_views, len(LABELS)),
        )
    logits = keras_logits(model, val_pixels.astype(np.float32), batch_size=64)
    elapsed = time.perf_counter() - started
    report = classification_report(y_val, logits.argmax(1), LABELS)
    return {
        "wall_s": elapsed,
        "decode_s": decoded - started,
        "adapt_s": adapted - decoded,
        "epoch_s": epoch_times,
        "val_macro_f1": report.macro_f1,
        "val_accuracy": report.accuracy,
    }


# --- extract once in memory, then fit ----------------------------------------------------


def extract_once_training(work: Path, params: dict[str, str]) -> dict:
    """What a practitioner writes by hand: features computed once in memory, then ``fit``.

    The same decoded views as the cached way, pushed once through the frozen Keras
    backbone (``model.predict`` in batches of 32, in memory, nothing written to disk),
    then the package's own head training on them (same head, optimiser, class weights,
    seed, epochs, per-epoch validation). Timed from backbone build to val logits, like the
    plain way; it costs the same on every run (nothing persists between runs).
    """
    from skin_mlops.modeling.evaluate import classification_report
    from skin_mlops.modeling.export import keras_logits
    from skin_mlops.modeling.features import view_ids
    from skin_mlops.modeling.fine_tune import render_images
    from skin_mlops.modeling.heads import make_progress, train_heads
    from skin_mlops.modeling.options import TrainingOptions

    options = TrainingOptions.from_params(params)
    started = time.perf_counter()
    (train_refs, y_train), (val_refs, y_val), backbone = _photos_and_backbone(work, options)
    with make_progress(console) as progress:
        train_pixels = render_images(
            train_refs,
            view_ids(options.views),
            options.image_size,
            progress,
            "extract-once: decoding train views",
        )
        val_pixels = render_images(
            val_refs, ["center"], options.image_size, progress, "extract-once: decoding val"
        )
        decoded = time.perf_counter()

        def features_of(pixels: np.ndarray, description: str) -> np.ndarray:
            task = progress.add_task(description, total=len(pixels))
            out = []
            for start in range(0, len(pixels), 32):
                chunk = pixels[start : start + 32].astype(np.float32)
                out.append(np.asarray(backbone.model.predict_on_batch(chunk)))
                progress.advance(task, len(chunk))
            return np.concatenate(out)

        train_features = features_of(train_pixels, "extract-once: train features").reshape(
            len(train_refs), options.views, -1
        )
        val_features = features_of(val_pixels, "extract-once: val features").reshape(
            len(val_refs), 1, -1
        )
        extracted = time.perf_counter()
        del train_pixels
        import keras

        keras.utils.set_random_seed(options.seed)
        heads, _ = train_heads(
            train_features, y_train, val_features, y_val, len(LABELS), options, progress
        )
    logits = np.mean([keras_logits(h, val_features[:, 0], batch_size=256) for h in heads], axis=0)
    finished = time.perf_counter()
    elapsed = finished - started
    report = classification_report(y_val, logits.argmax(1), LABELS)
    return {
        "wall_s": elapsed,
        "decode_s": decoded - started,
        "extract_s": extracted - decoded,
        "fit_s": finished - extracted,
        "val_macro_f1": report.macro_f1,
        "val_accuracy": report.accuracy,
    }


# --- commands -----------------------------------------------------------------------------


def compare(epochs: int, views: int, with_plain: bool = True) -> dict:
    work = OUT / "train-bench"
    config = prepare_workdir(work)
    t_ingest = cli(work, "ingest", "--config", str(config), "--splits", "train", "val")
    # One model, trained each way: views / heads / TTA / fine-tuning are fixed so that the
    # plain way (frozen backbone) trains exactly the same model (an ensemble trained jointly
    # by one fit would not be).
    flags = [
        "train",
        "--config",
        str(config),
        "--epochs",
        str(epochs),
        "--views",
        str(views),
        "--heads",
        "1",
        "--tta-views",
        "1",
        "--fine-tune-layers",
        "0",
    ]
    t_cold = cli(work, *flags)
    cold = latest_run(work)
    t_warm = cli(work, *flags)
    warm = latest_run(work)
    once = extract_once_training(work, cold["params"])
    plain = plain_training(work, cold["params"]) if with_plain else None

    def cached(run: dict, wall_s: float) -> dict:
        return {
            "wall_s": wall_s,
            "val_macro_f1": run["metrics"]["val_macro_f1"],
            "val_accuracy": run["metrics"]["val_accuracy"],
            "features_extracted": run["metrics"]["features_extracted"],
            "phases_s": {k[5:-2]: v for k, v in run["metrics"].items() if k.startswith("time_")},
        }

    results = {
        "machine": f"{os.cpu_count()}-core CPU",
        "epochs": epochs,
        "views": int(cold["params"]["views"]),
        "n_train": int(cold["params"]["n_train"]),
        "n_val": int(cold["params"]["n_val"]),
        "ingest_s": t_ingest,
        "cached_cold": cached(cold, t_cold),
        "cached_rerun": cached(warm, t_warm),
        "extract_once": once,
        "plain": plain,
    }
    n_features = results["n_train"] * results["views"] + results["n_val"]
    table = Table(
        title=f"train --epochs {epochs} on dermnet5 ({results['views']} views, "
        f"{results['machine']})"
    )
    for column in (
        "way",
        "wall time (s)",
        "vs extract-once",
        "vs plain",
        "val macro-F1",
        "val acc",
        "backbone passes",
    ):
        table.add_column(column, justify="right")
    ways = [
        ("plain Keras fit (frozen backbone in graph)", plain, f"{n_features * epochs}"),
        ("extract once in memory, then fit (any run)", once, f"{n_features}"),
        (
            "cached, cold (end to end, incl. export+MLflow)",
            results["cached_cold"],
            f"{int(results['cached_cold']['features_extracted'])}",
        ),
        (
            "cached, rerun on unchanged data",
            results["cached_rerun"],
            f"{int(results['cached_rerun']['features_extracted'])}",
        ),
    ]
    for name, row, computed in ways:
        if row is None:
            continue
        table.add_row(
            name,
            f"{row['wall_s']:.1f}",
            f"{once['wall_s'] / row['wall_s']:.2f}x",
            f"{plain['wall_s'] / row['wall_s']:.1f}x" if plain else "-",
            f"{row['val_macro_f1']:.4f}",
            f"{row['val_accuracy']:.4f}",
            computed,
        )
    console.print(table)
    console.print("cold run phases (s):", results["cached_cold"]["phases_s"], highlight=False)
    console.print("rerun phases (s):", results["cached_rerun"]["phases_s"], highlight=False)
    console.print(
        f"extract-once: decode {once['decode_s']:.1f} s, Keras features {once['extract_s']:.1f} s, "
        f"fit {once['fit_s']:.1f} s",
        highlight=False,
    )
    if plain:
        console.print(
            f"plain: decode {plain['decode_s']:.1f} s, adapt pass {plain['adapt_s']:.1f} s, "
            f"epochs {', '.join(f'{t:.0f}' for t in plain['epoch_s'])} s",
            highlight=False,
        )
    (OUT / f"train_benchmark_views{views}.json").write_text(json.dumps(results, indent=2))
    _plot(results)
    return results


def _plot(results: dict) -> None:
    from matplotlib.figure import Figure

    named = [
        ("plain fit", results["plain"], "#999999"),
        ("extract once", results["extract_once"], "#C44E52"),
        ("cached cold", results["cached_cold"], "#4C72B0"),
        ("cached rerun", results["cached_rerun"], "#55A868"),
    ]
    named = [(n, r, c) for n, r, c in named if r is not None]
    names = [n for n, _, _ in named]
    rows = [r for _, r, _ in named]
    colours = [c for *_, c in named]
    figure = Figure(figsize=(10, 4))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    left.bar(names, [r["wall_s"] for r in rows], color=colours)
    left.set_ylabel("wall time (s)")
    left.set_title(f"train --epochs {results['epochs']} ({results['views']} views)")
    right.bar(names, [r["val_macro_f1"] for r in rows], color=colours)
    right.set_ylim(0, 1)
    right.set_title("val macro-F1")
    figure.tight_layout()
    figure.savefig(OUT / f"train_benchmark_views{results['views']}.png", dpi=110)


def default_run() -> dict:
    work = OUT / "default-run-work"
    config = prepare_workdir(work)
    cli(work, "ingest", "--config", str(config), "--splits", "train", "val")
    wall = cli(work, "train", "--config", str(config))
    run = latest_run(work)
    m = run["metrics"]
    console.print(f"default training wall time: {wall:.1f} s ({wall / 60:.1f} min)")
    for key in (
        "val_accuracy",
        "val_balanced_accuracy",
        "val_macro_f1",
        "val_ece_before_scaling",
        "val_ece_after_scaling",
        "val_ece_floor_calibrated",
        "temperature",
    ):
        console.print(f"  {key}: {m[key]:.4f}")
    for label in LABELS:
        console.print(
            f"  {label}: P {m[f'val_precision_{label}']:.3f} "
            f"R {m[f'val_recall_{label}']:.3f} F1 {m[f'val_f1_{label}']:.3f}"
        )
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'data' / 'mlflow' / 'mlflow.db'}")
    confusion = json.loads(
        Path(
            client.download_artifacts(run["run_id"], "evaluation/confusion_matrix.json")
        ).read_text()
    )
    table = Table(title="val confusion matrix (rows = true, columns = predicted)")
    table.add_column("")
    for label in LABELS:
        table.add_column(label[:10], justify="right")
    for label, row in zip(LABELS, confusion["matrix"], strict=True):
        table.add_row(label, *(str(v) for v in row))
    console.print(table)
    target = OUT / "default-run"
    target.mkdir(parents=True, exist_ok=True)
    artifacts = work / "data" / "mlflow" / "artifacts"
    for png in artifacts.rglob("*.png"):
        if run["run_id"] in str(png):
            shutil.copy(png, target / png.name)
    result = {
        "wall_s": wall,
        "run_id": run["run_id"],
        "params": run["params"],
        "metrics": m,
        "confusion_matrix": confusion["matrix"],
    }
    (target / "default_run.json").write_text(json.dumps(result, indent=2))
    console.print(f"plots and metrics: {target}")
    return result


app = typer.Typer(
    help="Measure training speed and quality on dermnet5: cached features vs plain Keras fit.",
    no_args_is_help=True,
    add_completion=False,
)


def _need_dataset() -> None:
    if not SHARED.is_dir():
        console.print(f"[red]{SHARED} not found: this benchmark needs the shared dermnet5 set")
        raise typer.Exit(2)
    OUT.mkdir(parents=True, exist_ok=True)


@app.command("compare")
def compare_command(
    epochs: Annotated[int, typer.Option(min=1, help="Head training epochs, both ways.")] = 10,
    views: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Cached views per training photo in both ways (default: the training "
            "default, so the cached side is exactly `skin-mlops train --epochs E`).",
        ),
    ] = None,
    plain: Annotated[
        bool,
        typer.Option(
            "--plain/--no-plain",
            help="Also run the plain Keras fit (about 35 min at 10 epochs on 2 cores).",
        ),
    ] = True,
) -> None:
    """Compare cached-feature training with plain Keras fit (wall time, val macro-F1)."""
    _need_dataset()
    from skin_mlops.modeling.options import DEFAULT_VIEWS

    compare(epochs, views or DEFAULT_VIEWS, with_plain=plain)


@app.command("default")
def default_command() -> None:
    """Run the default training recipe with cold caches and print its val metrics."""
    _need_dataset()
    default_run()


if __name__ == "__main__":
    app()
