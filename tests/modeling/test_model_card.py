"""``skin-mlops model-card`` on a tiny model: every number comes from what the runs logged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from skin_mlops.core.errors import ConfigError
from skin_mlops.ingestion.run import run_ingestion
from skin_mlops.modeling import model_card, model_card_data, stages
from skin_mlops.modeling.cross_validate import cross_validate
from skin_mlops.modeling.options import TrainingOptions
from skin_mlops.modeling.train import run_training

OPTIONS = TrainingOptions(epochs=4, learning_rate=0.05, views=1, batch_size=8, seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colour_dataset_factory, settings_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("card")
    dataset = colour_dataset_factory(root, per_label={"train": 8, "val": 4})
    settings = settings_factory(root)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    result = run_training(
        dataset.config_path,
        settings=settings,
        options=OPTIONS,
        backbone=tiny_backbone,
        show_progress=False,
    )
    return root, dataset, settings, result


def _client(settings):
    import mlflow

    return mlflow.MlflowClient(settings.mlflow_tracking_uri)


def test_training_logs_what_the_card_reads(trained) -> None:
    _, dataset, settings, result = trained
    client = _client(settings)
    folder = client.download_artifacts(result.run_id, "", None)
    predictions = json.loads(Path(folder, stages.VAL_PREDICTIONS_ARTIFACT).read_text())
    tones = json.loads(Path(folder, stages.SKIN_TONES_ARTIFACT).read_text())
    assert len(predictions["photos"]) == 4 * len(dataset.labels)
    assert len(tones["photos"]) == 12 * len(dataset.labels)  # train + val
    assert {p["split"] for p in tones["photos"]} == {"train", "val"}
    # the logged logits, calibrated by the logged temperature, give the logged val metrics
    card = model_card_data.Predictions.from_artifact(predictions, dataset.labels)
    metrics = client.get_run(result.run_id).data.metrics
    assert model_card.accuracy(card.y, card.predicted) == pytest.approx(metrics["val_accuracy"])
    assert card.temperature == pytest.approx(metrics["temperature"])


def test_card_without_cv_says_so_then_includes_it(trained, tiny_backbone) -> None:
    root, dataset, settings, result = trained
    out = root / "docs" / "model_card.md"
    model_card.write_model_card(settings, out)
    text = out.read_text()
    metrics = _client(settings).get_run(result.run_id).data.metrics
    assert f"MLflow run `{result.run_id}`" in text
    assert f"| val | {4 * len(dataset.labels)} | {metrics['val_accuracy']:.3f}" in text
    assert "No cross-validation run of this recipe" in text
    assert "No known flaws are recorded in the dataset config" in text  # the test config
    assert "not a diagnosis" in text
    for image in ("confusion_matrix", "reliability_diagram", "skin_tones"):
        assert (root / "docs" / "model_card" / f"{image}.png").stat().st_size > 1000
        assert f"(model_card/{image}.png)" in text
    # the card's skin-tone table counts every photo (train + val) once
    lines = text.splitlines()
    start = lines.index("| skin tone (ITA) | " + " | ".join(dataset.labels) + " | all |") + 2
    body = [line for line in lines[start:] if line.startswith("| ")]
    body = body[: next((i for i, line in enumerate(body) if "photos" in line), len(body))]
    assert sum(int(line.rstrip(" |").split("|")[-1]) for line in body) == 12 * len(dataset.labels)

    cv = cross_validate(
        dataset.config_path,
        settings=settings,
        options=OPTIONS,
        folds=3,
        backbone=tiny_backbone,
        show_progress=False,
    )
    other = cross_validate(
        dataset.config_path,
        settings=settings,
        options=dataclasses.replace(OPTIONS, epochs=2),
        folds=3,
        backbone=tiny_backbone,
        show_progress=False,
    )
    model_card.write_model_card(settings, out)
    text = out.read_text()
    # the lever table: every recipe cross-validated, what differs, its CV score
    own = f"| **this model** | 3 | {cv.summary['cv_macro_f1_mean']:.3f} ± "
    assert own in text
    assert f"| epochs=2 | 3 | {other.summary['cv_macro_f1_mean']:.3f} ± " in text
    assert text.index(own) < text.index("| epochs=2 |")
    assert f"cross-validation run `{cv.run_id}`" in text
    assert "3-fold CV (train + val), out of fold" in text
    assert f"{cv.summary['cv_macro_f1_mean']:.3f} ± {cv.summary['cv_macro_f1_std']:.3f}" in text


def test_no_registered_model_is_one_line(tmp_path: Path, settings_factory) -> None:
    settings = settings_factory(tmp_path)
    with pytest.raises(ConfigError, match="no registered model skin-classifier @champion"):
        model_card.write_model_card(settings, tmp_path / "card.md")


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_photos() -> None:
    rng = np.random.default_rng(0)
    intervals = []
    for n in (50, 800):
        y = rng.integers(0, 3, n)
        predicted = np.where(rng.random(n) < 0.8, y, (y + 1) % 3)
        low, high = model_card.bootstrap_interval(y, predicted, model_card.accuracy)
        assert low <= model_card.accuracy(y, predicted) <= high
        intervals.append(high - low)
    assert intervals[1] < intervals[0] / 2  # ~ 1/sqrt(n)


def test_group_metrics_only_where_a_group_has_enough_photos() -> None:
    n = 40
    predictions = model_card_data.Predictions(
        [f"s{i}" for i in range(n + 5)],
        np.zeros(n + 5, np.int64),
        np.tile([0.9, 0.1], (n + 5, 1)),
        1.0,
    )
    groups = {f"s{i}": "light (41-55)" for i in range(n)}
    groups |= {f"s{i}": "dark (<-30)" for i in range(n, n + 5)}
    rows = {row.group: row for row in model_card.group_metrics(predictions, groups, 2)}
    assert rows["light (41-55)"].accuracy == 1.0 and rows["light (41-55)"].photos == n
    assert rows["dark (<-30)"].accuracy is None and rows["dark (<-30)"].photos == 5


def test_a_recipe_param_added_later_reads_as_its_old_value() -> None:
    """A training run logged before ``dihedral_views`` existed matches a new cv run of
    the same recipe (which logs it as False), not one that trained on dihedral views."""
    old, new = {"views": "12"}, {"views": "12", "dihedral_views": "False"}
    assert model_card_data.recipe_param(old, "dihedral_views") == "False"
    assert model_card_data.recipe_param(new, "dihedral_views") == "False"
    assert model_card_data.recipe_param({"dihedral_views": "True"}, "dihedral_views") == "True"
    assert model_card_data.recipe_param(old, "views") == "12"
