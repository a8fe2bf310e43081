"""``skin-mlops model-card``: the registered model's card, written from its logged data.

Every number in ``docs/model_card.md`` is read back from MLflow - the registered version's
training run (params, metrics, ``evaluation/val_predictions.json``,
``data/skin_tones.json``, the plots, ``signature.json``) and the newest ``skin-mlops cv``
run of the same recipe on the same photos (``cv/oof_predictions.json``) - or computed
from those predictions here (bootstrap intervals, per-skin-tone metrics). Nothing is
typed by hand: rerun the command after training and the card follows the model.

Steps, top to bottom: :func:`load_card_data` (registry -> run -> artifacts, CV match),
:func:`bootstrap_interval` and :func:`group_metrics`, the two plots, :func:`render`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from skin_mlops.core.config import Settings
from skin_mlops.core.errors import ConfigError, DataError
from skin_mlops.export_format import softmax
from skin_mlops.modeling import evaluate, skin_tone, stages

CHAMPION = "champion"
BOOTSTRAP_DRAWS = 2000
MIN_GROUP_PHOTOS = 30  # per-skin-tone metrics only for groups with at least this many
# recipe params that must match for a cv run to describe the registered model's recipe
RECIPE_PARAMS = (
    "backbone",
    "backbone_options",
    "image_size",
    "views",
    "epochs",
    "batch_size",
    "learning_rate",
    "hidden_units",
    "input_dropout",
    "dropout",
    "label_smoothing",
    "weight_decay",
    "heads",
    "tta_views",
    "seed",
)


@dataclass
class Predictions:
    """One logged prediction per photo: SHA-256, true label index, calibrated probabilities."""

    sha256: list[str]
    y: np.ndarray
    probs: np.ndarray
    temperature: float

    @classmethod
    def from_artifact(cls, payload: dict[str, Any], labels: Sequence[str]) -> Predictions:
        index = {label: i for i, label in enumerate(labels)}
        photos = payload["photos"]
        logits = np.asarray([p["logits"] for p in photos], np.float64)
        temperature = float(payload["temperature"])
        return cls(
            [p["sha256"] for p in photos],
            np.asarray([index[p["label"]] for p in photos], np.int64),
            softmax(logits, temperature),
            temperature,
        )

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass
class CardData:
    """What the card is written from (all of it logged by ``train`` and ``cv``)."""

    model_name: str
    version: str
    aliases: list[str]
    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    labels: list[str]
    signature: dict[str, Any]
    val: Predictions
    skin_tones: dict[str, Any]
    plots: dict[str, Path]
    cv_run_id: str | None = None
    cv_params: dict[str, str] = field(default_factory=dict)
    cv_metrics: dict[str, float] = field(default_factory=dict)
    oof: Predictions | None = None
    recipes: list[TriedRecipe] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)


# --- reading it back ----------------------------------------------------------------------


def _download_json(client: Any, run_id: str, artifact: str, folder: Path) -> dict[str, Any]:
    path = client.download_artifacts(run_id, artifact, str(folder))
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _matching_cv_run(client: Any, run: Any) -> Any | None:
    """The newest ``cv`` run of this run's recipe on the same photos, or None."""
    runs = client.search_runs(
        [run.info.experiment_id], "tags.stage = 'cv'", order_by=["start_time DESC"]
    )
    params, dataset = run.data.params, run.data.tags.get("dataset")
    for candidate in runs:
        other = candidate.data.params
        if candidate.data.tags.get("dataset") == dataset and all(
            other.get(key) == params.get(key) for key in RECIPE_PARAMS
        ):
            return candidate
    return None


@dataclass(frozen=True)
class TriedRecipe:
    """One ``skin-mlops cv`` run on the model's dataset: how its recipe differs."""

    run_id: str
    differences: str  # "" = the registered model's own recipe
    folds: str
    macro_f1_mean: float
    macro_f1_std: float
    oof_ece_after: float
    time_s: float
    peak_rss_mb: float


def tried_recipes(client: Any, run: Any) -> list[TriedRecipe]:
    """Every recipe cross-validated on this run's dataset (newest run of each), the model's
    own first: the lever table, from the tracking store rather than from a benchmark."""
    runs = client.search_runs(
        [run.info.experiment_id], "tags.stage = 'cv'", order_by=["start_time DESC"]
    )
    params, dataset = run.data.params, run.data.tags.get("dataset")
    seen: dict[str, TriedRecipe] = {}
    for candidate in runs:
        if candidate.data.tags.get("dataset") != dataset:
            continue
        other, m = candidate.data.params, candidate.data.metrics
        differences = ", ".join(
            f"{key}={other.get(key)}" for key in RECIPE_PARAMS if other.get(key) != params.get(key)
        )
        if differences in seen or "cv_macro_f1_mean" not in m:
            continue
        seen[differences] = TriedRecipe(
            candidate.info.run_id,
            differences,
            other.get("folds", "?"),
            m["cv_macro_f1_mean"],
            m.get("cv_macro_f1_std", float("nan")),
            m.get("oof_ece_after_scaling", float("nan")),
            m.get("time_total_s", float("nan")),
            max(m.get("peak_rss_mb", float("nan")), m.get("peak_rss_mb_child_processes", 0.0)),
        )
    return sorted(seen.values(), key=lambda r: (r.differences != "", -r.macro_f1_mean))


def load_card_data(settings: Settings, version: str | None, folder: Path) -> CardData:
    """The registered version (``@champion`` unless ``version``) and what its run logged.

    Raises:
        ConfigError: no such registered model or version.
        DataError: the run predates the logged data the card needs (train it again).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from skin_mlops.modeling import tracking

    tracking.connect(settings)
    client = mlflow.MlflowClient()
    name = settings.registered_model_name
    try:
        model_version = (
            client.get_model_version(name, version)
            if version
            else client.get_model_version_by_alias(name, CHAMPION)
        )
    except MlflowException:
        which = f"version {version}" if version else f"@{CHAMPION}"
        raise ConfigError(
            f"no registered model {name} {which} (run skin-mlops train first)"
        ) from None
    if not model_version.run_id:
        raise DataError(f"{name} v{model_version.version} has no training run to read")
    run = client.get_run(model_version.run_id)
    try:
        val_payload = _download_json(
            client, run.info.run_id, stages.VAL_PREDICTIONS_ARTIFACT, folder
        )
        tones = _download_json(client, run.info.run_id, stages.SKIN_TONES_ARTIFACT, folder)
        signature = _download_json(
            client, run.info.run_id, "export/inference/signature.json", folder
        )
        plots = {
            key: Path(client.download_artifacts(run.info.run_id, f"plots/{key}.png", str(folder)))
            for key in ("confusion_matrix", "reliability_diagram")
        }
    except (MlflowException, OSError) as exc:
        raise DataError(
            f"run {run.info.run_id} of {name} v{model_version.version} has no "
            f"{stages.VAL_PREDICTIONS_ARTIFACT} / {stages.SKIN_TONES_ARTIFACT}: it was trained "
            f"before the model card existed; train again ({str(exc).splitlines()[0]})"
        ) from None
    labels = list(signature["labels"])
    data = CardData(
        model_name=name,
        version=str(model_version.version),
        aliases=list(getattr(model_version, "aliases", []) or []),
        run_id=run.info.run_id,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        labels=labels,
        signature=signature,
        val=Predictions.from_artifact(val_payload, labels),
        skin_tones=tones,
        plots=plots,
    )
    data.recipes = tried_recipes(client, run)
    try:
        data.dataset = _download_json(client, run.info.run_id, stages.DATASET_ARTIFACT, folder)
    except (MlflowException, OSError):
        data.dataset = {}  # trained before datasets carried a description
    cv_run = _matching_cv_run(client, run)
    if cv_run is not None:
        try:
            oof = _download_json(
                client, cv_run.info.run_id, stages.OOF_PREDICTIONS_ARTIFACT, folder
            )
        except (MlflowException, OSError):
            oof = None
        if oof is not None:
            data.cv_run_id = cv_run.info.run_id
            data.cv_params = dict(cv_run.data.params)
            data.cv_metrics = dict(cv_run.data.metrics)
            data.oof = Predictions.from_artifact(oof, labels)
    return data


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
