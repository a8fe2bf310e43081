"""``skin-mlops model-card``: the registered model's card, written from its logged data.

Every number in ``docs/model_card.md`` is read back from MLflow - the registered version's
training run (params, metrics, ``evaluation/val_predictions.json``,
``data/skin_tones.json``, the plots, ``signature.json``) and the newest ``skin-mlops cv``
run of the same recipe on the same photos (``cv/oof_predictions.json``) - or computed
from those predictions here (bootstrap intervals, per-skin-tone metrics). Nothing is
typed by hand: rerun the command after training and the card follows the model.

Steps, top to bottom: :func:`~skin_mlops.modeling.model_card_data.load_card_data`
(registry -> run -> artifacts, CV match; its own module),
:func:`bootstrap_interval` and :func:`group_metrics`, the two plots, :func:`render`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from skin_mlops.core.config import Settings
from skin_mlops.modeling import evaluate, skin_tone
from skin_mlops.modeling.model_card_data import CardData, Predictions, load_card_data

BOOTSTRAP_DRAWS = 2000
MIN_GROUP_PHOTOS = 30  # per-skin-tone metrics only for groups with at least this many


# --- statistics ---------------------------------------------------------------------------


def bootstrap_interval(
    y: np.ndarray,
    predicted: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of ``metric(y, predicted)`` over photos."""
    if len(y) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(y), size=(draws, len(y)))
    values = np.array([metric(y[i], predicted[i]) for i in index])
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def macro_f1_of(num_classes: int) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda y, p: evaluate.macro_f1(y, p, num_classes)


def accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(y == predicted)) if len(y) else float("nan")


@dataclass(frozen=True)
class GroupRow:
    group: str
    photos: int
    accuracy: float | None
    accuracy_interval: tuple[float, float] | None
    macro_f1: float | None


def group_metrics(
    predictions: Predictions, groups: dict[str, str], num_classes: int
) -> list[GroupRow]:
    """Accuracy (with its bootstrap interval) and macro-F1 per skin-tone group; metrics
    only where a group has :data:`MIN_GROUP_PHOTOS` photos or more."""
    names = [name for name, _ in skin_tone.ITA_GROUPS] + [skin_tone.NO_SKIN]
    of_photo = np.asarray([groups.get(sha, "") for sha in predictions.sha256])
    rows = []
    for name in names:
        mask = of_photo == name
        n = int(mask.sum())
        if n == 0:
            continue
        if n < MIN_GROUP_PHOTOS:
            rows.append(GroupRow(name, n, None, None, None))
            continue
        y, p = predictions.y[mask], predictions.predicted[mask]
        rows.append(
            GroupRow(
                name,
                n,
                accuracy(y, p),
                bootstrap_interval(y, p, accuracy),
                evaluate.macro_f1(y, p, num_classes),
            )
        )
    return rows


def tone_table(tones: dict[str, Any], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{group: {label: photos}}`` over every photo the model saw (train + val)."""
    table: dict[str, dict[str, int]] = {}
    for photo in tones["photos"]:
        ita = photo["ita"]
        group = skin_tone.ita_group(float("nan") if ita is None else float(ita))
        row = table.setdefault(group, dict.fromkeys(labels, 0))
        row[photo["label"]] = row.get(photo["label"], 0) + 1
    order = [name for name, _ in skin_tone.ITA_GROUPS] + [skin_tone.NO_SKIN]
    return {group: table[group] for group in order if group in table}


def plot_skin_tones(table: dict[str, dict[str, int]], labels: Sequence[str], path: Path) -> Path:
    """Photos per skin-tone group, stacked by label."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.2))
    axes = figure.add_subplot()
    groups = list(table)
    bottom = np.zeros(len(groups))
    for label in labels:
        counts = np.array([table[g].get(label, 0) for g in groups], float)
        axes.bar(groups, counts, bottom=bottom, label=label)
        bottom += counts
    axes.set_ylabel("photos (train + val)")
    axes.set_title("skin tone (ITA of the lesion-free skin) by label")
    axes.tick_params(axis="x", labelrotation=25)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


# --- the card -------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _interval(interval: tuple[float, float] | None) -> str:
    if interval is None or not np.isfinite(interval[0]):
        return "n/a"
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def render(data: CardData, out: Path, settings: Settings) -> Path:
    """Write ``out`` (Markdown) and its images in ``<out stem>/`` beside it."""
    import shutil

    images = out.parent / out.stem
    images.mkdir(parents=True, exist_ok=True)
    for key, path in data.plots.items():
        shutil.copyfile(path, images / f"{key}.png")
    labels, k = data.labels, len(data.labels)
    m, p = data.metrics, data.params
    val = data.val
    val_f1_ci = bootstrap_interval(val.y, val.predicted, macro_f1_of(k))
    val_acc_ci = bootstrap_interval(val.y, val.predicted, accuracy)
    report = evaluate.classification_report(val.y, val.predicted, labels)
    tones = tone_table(data.skin_tones, labels)
    plot_skin_tones(tones, labels, images / "skin_tones.png")
    groups_of = {
        photo["sha256"]: skin_tone.ita_group(
            float("nan") if photo["ita"] is None else float(photo["ita"])
        )
        for photo in data.skin_tones["photos"]
    }
    scored = data.oof if data.oof is not None else val
    scored_name = "out-of-fold CV predictions" if data.oof is not None else "val predictions"
    group_rows = group_metrics(scored, groups_of, k)
    ood = data.signature.get("ood") or {}
    rel = images.name
    lines = [
        f"# Model card: {data.model_name} v{data.version}",
        "",
        f"_Generated by `skin-mlops model-card` from MLflow run `{data.run_id}`"
        + (f" and cross-validation run `{data.cv_run_id}`" if data.cv_run_id else "")
        + ". Every number below is read from what those runs logged; rerun the command "
        "after training to refresh it._",
        "",
        "| | |",
        "| --- | --- |",
        f"| registered | `{data.model_name}` version {data.version}"
        + (f" (`@{', @'.join(data.aliases)}`)" if data.aliases else "")
        + " |",
        f"| backbone | {p.get('backbone')} at {p.get('image_size')} px, pooling "
        f"`{p.get('backbone_options')}`, frozen ImageNet weights "
        f"(`{p.get('backbone_weights_sha256', '')[:12]}`) |",
        f"| head | MLP {p.get('hidden_units')} units x {p.get('heads')} head(s), "
        f"{p.get('views')} cached views per photo, {p.get('epochs')} epochs |",
        f"| data | {p.get('dataset')}: {p.get('n_train')} train / {p.get('n_val')} val photos, "
        f"fingerprint `{p.get('dataset_fingerprint', '')[:12]}` |",
        f"| code | git `{p.get('git_commit') or 'unknown'}`, preprocessing "
        f"`{data.signature.get('preprocessing_id')}` |",
        "",
        "## Intended use",
        "",
        "A research and teaching aid that sorts a clinical photo of a skin lesion into one of "
        f"{k} labels ({', '.join(labels)}) and says how sure it is. It is **not a diagnosis** "
        "and not a medical device: it knows only these labels (any other condition, including "
        "melanoma, gets one of them anyway), it was trained on a few hundred web-published "
        "photos, and it has not been validated prospectively or on any clinic's population.",
        "",
        "Misuse: triage or reassurance of a patient; photos of other body sites, other "
        "imaging modalities (dermoscopy), or of people the data does not cover (see "
        "skin tones below); any decision without a clinician.",
        "",
        "## Data and its known flaws",
        "",
        *([str(data.dataset["description"]), ""] if data.dataset.get("description") else []),
        "| label | train | val |",
        "| --- | --- | --- |",
        *[
            f"| {label} | {p.get(f'count_train_{label}', '?')} | "
            f"{p.get(f'count_val_{label}', '?')} |"
            for label in labels
        ],
        "",
        *(
            [f"- {flaw}" for flaw in data.dataset.get("known_flaws", [])]
            or ["- No known flaws are recorded in the dataset config (`known_flaws`)."]
        ),
        f"- Val photos that were byte copies of training photos: "
        f"{int(m.get('val_leaked', 0))}; re-saved near-duplicates "
        f"(perceptual hash): {int(m.get('val_near_duplicates', 0))}; both left out of val.",
        "",
        "## Performance",
        "",
        "Bootstrap 95 % intervals: 2,000 resamples of the photos.",
        "",
        "| split | photos | accuracy [95 % CI] | macro-F1 [95 % CI] |",
        "| --- | --- | --- | --- |",
        f"| val | {len(val.y)} | {_pct(accuracy(val.y, val.predicted))} "
        f"{_interval(val_acc_ci)} | {_pct(report.macro_f1)} {_interval(val_f1_ci)} |",
    ]
    if data.oof is not None:
        oof = data.oof
        lines.append(
            f"| {data.cv_params.get('folds', '?')}-fold CV (train + val), out of fold | "
            f"{len(oof.y)} | {_pct(accuracy(oof.y, oof.predicted))} "
            f"{_interval(bootstrap_interval(oof.y, oof.predicted, accuracy))} | "
            f"{_pct(evaluate.macro_f1(oof.y, oof.predicted, k))} "
            f"{_interval(bootstrap_interval(oof.y, oof.predicted, macro_f1_of(k)))} |"
        )
        lines += [
            "",
            f"CV macro-F1 over folds: {data.cv_metrics['cv_macro_f1_mean']:.3f} ± "
            f"{data.cv_metrics['cv_macro_f1_std']:.3f} (mean ± std).",
        ]
    else:
        lines += [
            "",
            "No cross-validation run of this recipe on these photos: run `skin-mlops cv` "
            "with the same flags as the training run, then this command again.",
        ]
    if data.recipes:
        lines += [
            "",
            "Every recipe cross-validated on these photos (the newest `skin-mlops cv` run of "
            "each; the model's own recipe first):",
            "",
            "| recipe (what differs from this model's) | folds | CV macro-F1 (mean ± std) "
            "| OOF ECE after scaling | wall s | peak RSS MiB |",
            "| --- | --- | --- | --- | --- | --- |",
            *[
                f"| {r.differences or '**this model**'} | {r.folds} | {r.macro_f1_mean:.3f} ± "
                f"{r.macro_f1_std:.3f} | {r.oof_ece_after:.3f} | {r.time_s:.0f} | "
                f"{r.peak_rss_mb:.0f} |"
                for r in data.recipes
            ],
        ]
    lines += [
        "",
        "Per class (val):",
        "",
        "| label | precision | recall | F1 | photos |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {name} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |"
            for name, c in report.per_class.items()
        ],
        "",
        f"![val confusion matrix]({rel}/confusion_matrix.png)",
        "",
        "## Calibration and the serving threshold",
        "",
        "The model's logits are divided by a temperature "
        f"T = {data.signature.get('temperature', 0):.3f} fitted on val (temperature "
        "scaling), so a confidence of 0.8 means right about 8 times in 10."
        f" Val ECE {m.get('val_ece_before_scaling', float('nan')):.3f} before, "
        f"{m.get('val_ece_after_scaling', float('nan')):.3f} after scaling; the ECE a perfectly "
        f"calibrated model would show on this many photos is about "
        f"{m.get('val_ece_floor_calibrated', float('nan')):.3f}.",
        "",
        f"The API marks a prediction `uncertain` (and the web app warns) when the top "
        f"confidence is below {settings.uncertainty_threshold:.2f} (`UNCERTAINTY_THRESHOLD`).",
        "",
        f"![reliability diagram]({rel}/reliability_diagram.png)",
        "",
        "## Photos it does not know",
        "",
    ]
    if ood:
        lines += [
            f"An out-of-distribution guard (`{ood.get('method')}`: Mahalanobis distance of the "
            "backbone features to the class means, shared covariance) runs inside the model. "
            f"Its threshold ({float(ood.get('threshold', 0)):.2f}) lets "
            f"{m.get('ood_heldout_pass_rate', float('nan')):.1%} of held-out training photos "
            f"through; it flagged {m.get('val_ood_flagged_rate', float('nan')):.1%} of val. "
            "A flagged photo comes back `in_distribution: false`, `uncertain`, with the "
            'warning "this does not look like the clinical skin photos the model was trained '
            'on".',
        ]
    else:
        lines.append("This model has no out-of-distribution guard.")
    lines += [
        "",
        "## Skin tones the data covers",
        "",
        "Individual Typology Angle (ITA, degrees; the colorimetric proxy for Fitzpatrick "
        f"type) of the lesion-free skin of each photo (`{data.skin_tones.get('method')}`: "
        "CIELAB of the skin-coloured pixels, lighter half). A proxy: lighting and white "
        "balance move it.",
        "",
        "| skin tone (ITA) | " + " | ".join(labels) + " | all |",
        "| --- | " + " | ".join("---" for _ in labels) + " | --- |",
        *[
            f"| {group} | "
            + " | ".join(str(row.get(label, 0)) for label in labels)
            + f" | {sum(row.values())} |"
            for group, row in tones.items()
        ],
        "",
        f"![skin tones]({rel}/skin_tones.png)",
        "",
        f"Per group ({scored_name}; metrics only for groups of {MIN_GROUP_PHOTOS}+ photos):",
        "",
        "| skin tone (ITA) | photos | accuracy [95 % CI] | macro-F1 |",
        "| --- | --- | --- | --- |",
        *[
            f"| {row.group} | {row.photos} | "
            + (
                f"{_pct(row.accuracy)} {_interval(row.accuracy_interval)} | {_pct(row.macro_f1)}"
                if row.accuracy is not None
                else "too few photos | too few photos"
            )
            + " |"
            for row in group_rows
        ],
        "",
    ]
    measured = [row for row in group_rows if row.accuracy is not None]
    if len(measured) >= 2:
        best = max(measured, key=lambda r: r.accuracy or 0.0)
        worst = min(measured, key=lambda r: r.accuracy or 0.0)
        lines.append(
            f"Gap: accuracy {_pct(best.accuracy)} on {best.group} against "
            f"{_pct(worst.accuracy)} on {worst.group} "
            f"({(best.accuracy or 0) - (worst.accuracy or 0):+.3f}); the intervals show how "
            "much of it the photo counts can explain. Groups with too few photos are not "
            "covered: the model's behaviour there is unknown."
        )
    else:
        lines.append("Too few groups with enough photos to compare.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def write_model_card(settings: Settings, out: Path, version: str | None = None) -> Path:
    """Load the registered model's logged data and write its card to ``out``."""
    with tempfile.TemporaryDirectory(prefix="skin-model-card-") as folder:
        data = load_card_data(settings, version, Path(folder))
        return render(data, out, settings)


def model_card_command(
    out: Annotated[
        Path, typer.Option(help="Markdown file to write (its images go in <stem>/ beside it).")
    ] = Path("docs/model_card.md"),
    version: Annotated[
        str | None,
        typer.Option(help="Registered version to describe (default: the @champion)."),
    ] = None,
) -> None:
    """Write the registered model's card (docs/model_card.md) from its logged MLflow data."""
    from rich.console import Console

    from skin_mlops.core.config import get_settings

    path = write_model_card(get_settings(), out, version)
    Console().print(f"model card: {path} (images in {path.parent / path.stem}/)", highlight=False)
