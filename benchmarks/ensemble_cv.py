"""An ensemble of two recipes (e.g. two backbones) scored on the folds that scored them.

Usage (from the repo root, after ``recipe_levers.py`` has run both members)::

    uv run python benchmarks/ensemble_cv.py [--member default --member lite2]

An ensemble that averages the logits of two independently trained recipes predicts, for a
held-out photo, exactly the mean of the two recipes' held-out logits. ``skin-mlops cv``
logs those for every photo (``cv/oof_predictions.json``) and each fold's held-out photos
(``cv/heldout_photos.json``), so the ensemble's cross-validated score needs no new
training: this script reads both runs from the MLflow store in
``benchmarks/out/default-run-work`` (run ids from ``benchmarks/out/recipe_levers.json``),
checks that they held out the same photos in every fold, averages the logits and scores
each fold. The decision is the levers' rule: kept when the paired per-fold gain over the
default recipe beats its standard error. Serving it would cost both backbones per photo.

Prints the table; writes ``benchmarks/out/ensemble_cv.json``. Exits 2 when a member has
no stored run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from recipe_levers import DEFAULT, WORK
from rich.table import Table
from train_benchmark import LABELS, OUT, console

from skin_mlops.modeling.evaluate import evaluate_logits

app = typer.Typer(add_completion=False, help=__doc__)


def _client():
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{WORK / 'data' / 'mlflow' / 'mlflow.db'}")


def load_cv(run_id: str) -> tuple[dict[str, np.ndarray], dict[str, int], list[set[str]]]:
    """Held-out logits per photo (SHA-256), the label index per photo, and each fold's
    held-out photos, of one ``cv`` parent run."""
    client = _client()
    parent = client.get_run(run_id)
    payload = json.loads(
        Path(client.download_artifacts(run_id, "cv/oof_predictions.json")).read_text()
    )
    index = {label: i for i, label in enumerate(payload["labels"])}
    logits = {p["sha256"]: np.asarray(p["logits"], np.float64) for p in payload["photos"]}
    labels = {p["sha256"]: index[p["label"]] for p in payload["photos"]}
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.\"mlflow.parentRunId\" = '{run_id}'"
    )
    folds = {}
    for child in children:
        held = client.download_artifacts(child.info.run_id, "cv/heldout_photos.json")
        folds[int(child.data.params["fold"])] = set(
            json.loads(Path(held).read_text())["heldout_sha256"]
        )
    return logits, labels, [folds[k] for k in sorted(folds)]


def score(
    logits: dict[str, np.ndarray], labels: dict[str, int], folds: list[set[str]]
) -> dict[str, object]:
    """Per-fold macro-F1 and per-class F1 (as ``cv`` computes them), pooled ECE."""
    per_fold, per_class = [], []
    for held in folds:
        photos = sorted(held)
        evaluation = evaluate_logits(
            np.stack([logits[s] for s in photos]), np.array([labels[s] for s in photos]), LABELS
        )
        per_fold.append(evaluation.report.macro_f1)
        per_class.append([evaluation.report.per_class[label].f1 for label in LABELS])
    photos = sorted(labels)
    pooled = evaluate_logits(
        np.stack([logits[s] for s in photos]), np.array([labels[s] for s in photos]), LABELS
    )
    return {
        "fold_macro_f1": per_fold,
        "cv_macro_f1_mean": float(np.mean(per_fold)),
        "cv_macro_f1_std": float(np.std(per_fold, ddof=1)),  # as cv summarises
        "worst_class_f1": float(np.min(np.mean(per_class, axis=0))),
        "oof_ece_before": pooled.ece_before,
        "oof_ece_after": pooled.ece_after,
    }


def paired_gain(scores: list[float], base: list[float]) -> tuple[float, float]:
    diff = np.asarray(scores) - np.asarray(base)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


@app.command()
def main(
    member: Annotated[
        list[str] | None,
        typer.Option(help="Two levers of recipe_levers.json (default: default, lite2)."),
    ] = None,
) -> None:
    """Score the logit-averaged ensemble of two cross-validated recipes."""
    members = member or [DEFAULT, "lite2"]
    if len(members) != 2:
        raise typer.BadParameter("give exactly two --member levers")
    stored = OUT / "recipe_levers.json"
    rows = {r["lever"]: r for r in json.loads(stored.read_text())} if stored.is_file() else {}
    missing = [m for m in [*members, DEFAULT] if m not in rows]
    if missing:
        console.print(f"no cv run of {missing}: run benchmarks/recipe_levers.py --lever ... first")
        raise typer.Exit(2)
    runs = {m: load_cv(rows[m]["run_id"]) for m in dict.fromkeys([*members, DEFAULT])}
    (logits_a, labels, folds), (logits_b, labels_b, folds_b) = runs[members[0]], runs[members[1]]
    if labels != labels_b or folds != folds_b:
        raise SystemExit("the two runs did not hold out the same photos: not comparable")
    ensemble = {s: (logits_a[s] + logits_b[s]) / 2 for s in labels}
    results = {m: score(*runs[m]) for m in runs}
    for m in runs:  # the rescoring reproduces what cv logged per fold (rounded logits)
        if not np.allclose(results[m]["fold_macro_f1"], rows[m]["fold_macro_f1"], atol=5e-3):
            raise SystemExit(f"rescoring {m} does not reproduce its logged folds")
    results["ensemble"] = score(ensemble, labels, folds)
    base = results[DEFAULT]["fold_macro_f1"]
    for name, r in results.items():
        r["gain"], r["gain_se"] = paired_gain(r["fold_macro_f1"], base)
        r["kept"] = name == DEFAULT or r["gain"] > r["gain_se"]
    best = max(members, key=lambda m: results[m]["cv_macro_f1_mean"])
    over_best = paired_gain(results["ensemble"]["fold_macro_f1"], results[best]["fold_macro_f1"])
    results["ensemble"]["gain_over_best_member"] = over_best
    (OUT / "ensemble_cv.json").write_text(json.dumps(results, indent=2))
    table = Table(title=f"{members[0]} + {members[1]} ({len(folds)}-fold CV on dermnet5)")
    for column in ("recipe", "CV macro-F1", "gain vs default ± SE", "worst F1", "OOF ECE", "kept"):
        table.add_column(column)
    for name, r in results.items():
        table.add_row(
            f"ensemble ({' + '.join(members)})" if name == "ensemble" else name,
            f"{r['cv_macro_f1_mean']:.3f} ± {r['cv_macro_f1_std']:.3f}",
            f"{r['gain']:+.3f} ± {r['gain_se']:.3f}",
            f"{r['worst_class_f1']:.3f}",
            f"{r['oof_ece_before']:.3f} → {r['oof_ece_after']:.3f}",
            "yes" if r["kept"] else "no",
        )
    console.print(table)
    console.print(
        f"ensemble over its best member ({best}): {over_best[0]:+.3f} ± {over_best[1]:.3f}"
    )


if __name__ == "__main__":
    app()
