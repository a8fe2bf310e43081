"""Every recipe lever scored by ``skin-mlops cv`` on dermnet5: one table, kept or not.

Usage (from the repo root)::

    uv run python benchmarks/recipe_levers.py [--lever NAME ...] [--folds 5]

Each lever is a set of ``skin-mlops train`` flags; ``skin-mlops cv <flags>`` runs on the
dermnet5 photos ingested in ``benchmarks/out/default-run-work`` (the folder
``train_benchmark.py default`` makes; ingested here first if it is missing), with the same
folds for every lever (same seed, same near-duplicate groups). The feature cache is shared
with ``train``, so a lever that changes only the head reuses the extracted features.

A lever is **kept** when its CV macro-F1 beats the default's by more than one standard
error of the difference of the fold means (the folds are the same, so the per-fold
differences are paired); otherwise it is rejected, whatever val says. The table (macro-F1
mean +- std, accuracy, worst class F1, out-of-fold ECE before/after scaling, wall time) is
printed and written to ``benchmarks/out/recipe_levers.json`` and ``.md``.

Exits 2 when the shared data set is absent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table
from train_benchmark import LABELS, OUT, SHARED, cli, console, prepare_workdir

WORK = OUT / "default-run-work"
DEFAULT = "default"
LEVERS: dict[str, list[str]] = {
    DEFAULT: [],  # Lite0 at 288 px, multi pooling, 12 views, 1 head
    "lite0-224": ["--image-size", "224"],
    "lite0-256": ["--image-size", "256"],
    "lite0-320": ["--image-size", "320"],
    "lite0-352": ["--image-size", "352"],
    # a 224 px student taught by the default 288 px recipe (skin_mlops.modeling.distill)
    "lite0-224-distil": ["--image-size", "224", "--teacher-image-size", "288"],
    # mixup on the cached features (skin_mlops.modeling.heads.mix_batch)
    "mixup": ["--mixup-alpha", "0.4"],
    # fine-tuning Lite0's block 7a + head conv per fold on cached block-6d maps (with the
    # multi pooling's stage 4/5 averages riding along), BatchNorm frozen, lr / 10
    "fine-tune-8": ["--fine-tune-layers", "8"],
    "fine-tune-8-lr1": ["--fine-tune-layers", "8", "--fine-tune-lr-factor", "1"],
    # the head's own hyper-parameters (default: MLP-512, dropout 0.2 in / 0.5 hidden,
    # weight decay 1e-4, label smoothing 0.1)
    "linear-head": ["--hidden-units", "0"],
    "head-1024": ["--hidden-units", "1024"],
    "dropout-0.7": ["--input-dropout", "0.4", "--dropout", "0.7"],
    "weight-decay-1e-3": ["--weight-decay", "1e-3"],
    "label-smoothing-0.2": ["--label-smoothing", "0.2"],
    "lite1": ["--backbone", "efficientnet_lite1"],
    "lite2": ["--backbone", "efficientnet_lite2"],
    "lite2-320": ["--backbone", "efficientnet_lite2", "--image-size", "320"],
    "heads3": ["--heads", "3"],
    "lite2-heads3": ["--backbone", "efficientnet_lite2", "--heads", "3"],
    "views24": ["--views", "24"],
    "tta8": ["--tta-views", "8"],
    "canonical": ["--orientation", "canonical"],
    "dihedral": ["--dihedral-views"],
    "canonical-heads3": ["--orientation", "canonical", "--heads", "3"],
}
app = typer.Typer(add_completion=False, help=__doc__)


def cv_runs(work: Path) -> list[dict]:
    """Params and metrics of every ``skin-mlops cv`` parent run in the work dir's store."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'data' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("skin-classifier")
    if experiment is None:  # a fresh work dir: no run logged yet
        return []
    runs = client.search_runs(
        [experiment.experiment_id], "tags.stage = 'cv'", order_by=["start_time DESC"]
    )
    out = []
    for run in runs:
        if run.info.status != "FINISHED":  # an interrupted cv: no complete folds
            continue
        children = client.search_runs(
            [experiment.experiment_id], f"tags.\"mlflow.parentRunId\" = '{run.info.run_id}'"
        )
        folds = {int(c.data.params["fold"]): c.data.metrics["val_macro_f1"] for c in children}
        out.append(
            {
                "run_id": run.info.run_id,
                "params": run.data.params,
                "metrics": run.data.metrics,
                "fold_macro_f1": [folds[k] for k in sorted(folds)],
            }
        )
    return out


def row(name: str, flags: list[str], run: dict, wall_s: float) -> dict:
    m = run["metrics"]
    return {
        "lever": name,
        "flags": " ".join(flags) or "(default recipe)",
        "run_id": run["run_id"],
        "cv_macro_f1_mean": m["cv_macro_f1_mean"],
        "cv_macro_f1_std": m["cv_macro_f1_std"],
        "cv_accuracy_mean": m["cv_accuracy_mean"],
        "worst_class_f1": min(m[f"cv_f1_{label}_mean"] for label in LABELS),
        "oof_ece_before": m["oof_ece_before_scaling"],
        "oof_ece_after": m["oof_ece_after_scaling"],
        "fold_macro_f1": run["fold_macro_f1"],
        # worst of the 7 quarter turns / mirror images: share of photos keeping the top-1
        # (absent from runs made before cv measured it)
        "dihedral_agreement_min": m.get("oof_dihedral_agreement_min"),
        "peak_rss_mb": m.get("peak_rss_mb"),  # the cv process's peak resident memory
        "wall_s": round(wall_s, 1),
    }


def decide(rows: list[dict]) -> None:
    """Kept = paired per-fold gain over the default larger than its standard error."""
    base = next((r for r in rows if r["lever"] == DEFAULT), None)
    for r in rows:
        if base is None or r is base:
            r["gain"], r["gain_se"], r["kept"] = 0.0, 0.0, r is base
            continue
        diff = np.asarray(r["fold_macro_f1"]) - np.asarray(base["fold_macro_f1"])
        se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
        r["gain"], r["gain_se"] = float(diff.mean()), se
        r["kept"] = bool(diff.mean() > se)


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| lever | flags | CV macro-F1 | gain vs default (± SE) | accuracy | worst class F1 "
        "| OOF ECE before → after | top-1 kept by a turn (worst) | wall s | peak RSS MiB "
        "| kept |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['lever']} | `{r['flags']}` | {r['cv_macro_f1_mean']:.3f} ± "
            f"{r['cv_macro_f1_std']:.3f} | {r['gain']:+.3f} ± {r['gain_se']:.3f} | "
            f"{r['cv_accuracy_mean']:.3f} | {r['worst_class_f1']:.3f} | "
            f"{r['oof_ece_before']:.3f} → {r['oof_ece_after']:.3f} | "
            f"{_share(r.get('dihedral_agreement_min'))} | {r['wall_s']:.0f} | "
            f"{_mib(r.get('peak_rss_mb'))} | {'yes' if r['kept'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


@app.command()
def main(
    lever: Annotated[
        list[str] | None, typer.Option(help=f"Levers to run (default: all of {list(LEVERS)}).")
    ] = None,
    folds: Annotated[int, typer.Option(min=2, max=20, help="CV folds.")] = 5,
    refresh_only: Annotated[
        bool, typer.Option(help="Rebuild the table from the stored runs; run only new levers.")
    ] = False,
) -> None:
    """Run ``skin-mlops cv`` once per lever and print the table."""
    if not SHARED.is_dir():
        console.print(f"{SHARED} not found: the benchmark needs the dermnet5 photos")
        raise typer.Exit(2)
    names = lever or list(LEVERS)
    unknown = sorted(set(names) - set(LEVERS))
    if unknown:
        raise typer.BadParameter(f"unknown lever(s) {unknown}; choose from {list(LEVERS)}")
    config = WORK / "configs" / "dataset_config.yaml"
    if not (WORK / "data" / "metadata" / "skin_metadata.db").is_file():
        config = prepare_workdir(WORK)
        cli(WORK, "ingest", "--config", str(config), "--splits", "train", "val")
    results_path = OUT / "recipe_levers.json"
    previous = json.loads(results_path.read_text()) if results_path.is_file() else []
    rows = {r["lever"]: r for r in previous}
    stored = {run["run_id"]: run for run in cv_runs(WORK)}
    for r in rows.values():  # per-fold scores re-read from the store (earlier runs' rows)
        if r["run_id"] in stored:
            r["fold_macro_f1"] = stored[r["run_id"]]["fold_macro_f1"]
            r["dihedral_agreement_min"] = stored[r["run_id"]]["metrics"].get(
                "oof_dihedral_agreement_min"
            )
            r["peak_rss_mb"] = stored[r["run_id"]]["metrics"].get("peak_rss_mb")
    for name in [n for n in names if not (refresh_only and n in rows)]:
        console.rule(f"lever {name}")
        started = time.perf_counter()
        cli(WORK, "cv", "--config", str(config), "--folds", str(folds), *LEVERS[name])
        rows[name] = row(name, LEVERS[name], cv_runs(WORK)[0], time.perf_counter() - started)
    ordered = [rows[n] for n in LEVERS if n in rows]
    decide(ordered)
    results_path.write_text(json.dumps(ordered, indent=2))
    (OUT / "recipe_levers.md").write_text(markdown(ordered))
    table = Table(title=f"recipe levers, {folds}-fold CV on dermnet5 (2-core CPU)")
    columns = ("lever", "CV macro-F1", "gain ± SE", "worst F1", "OOF ECE", "turn kept", "s", "kept")
    for column in columns:
        table.add_column(column)
    for r in ordered:
        table.add_row(
            r["lever"],
            f"{r['cv_macro_f1_mean']:.3f} ± {r['cv_macro_f1_std']:.3f}",
            f"{r['gain']:+.3f} ± {r['gain_se']:.3f}",
            f"{r['worst_class_f1']:.3f}",
            f"{r['oof_ece_before']:.3f} → {r['oof_ece_after']:.3f}",
            _share(r.get("dihedral_agreement_min")),
            f"{r['wall_s']:.0f}",
            "yes" if r["kept"] else "no",
        )
    console.print(table)


if __name__ == "__main__":
    app()
