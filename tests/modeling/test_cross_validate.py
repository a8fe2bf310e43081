"""``skin-mlops cv``: folds disjoint and complete, near-duplicates kept together, one MLflow
child run per fold, the summary on the parent, the same stages as training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_mlops.core.errors import ConfigError
from skin_mlops.ingestion.run import run_ingestion
from skin_mlops.modeling.cross_validate import cross_validate, fold_assignment
from skin_mlops.modeling.options import TrainingOptions

OPTIONS = TrainingOptions(epochs=6, learning_rate=0.05, views=2, batch_size=8, seed=3)


def test_fold_assignment_is_stratified_and_keeps_groups_whole() -> None:
    labels = np.repeat(np.arange(3), 10)
    groups = np.arange(30)
    groups[[1, 2, 13]] = 1  # a group of three near-duplicates, across two labels
    splits = fold_assignment(labels, groups, 5, seed=0)

    held = np.concatenate([h for _, h in splits])
    assert sorted(held.tolist()) == list(range(30))  # every photo held out exactly once
    for fit, heldout in splits:
        assert not set(fit) & set(heldout)
        assert len(set(groups[fit]) & set(groups[heldout])) == 0
        assert set(labels[heldout]) == {0, 1, 2}


def test_too_few_photos_of_a_label_for_the_folds_is_one_line() -> None:
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ConfigError, match="at least 5 photos of every label"):
        fold_assignment(labels, np.arange(13), 5, seed=0)


def test_cv_logs_a_parent_and_one_child_run_per_fold(
    tmp_path: Path, colour_dataset_factory, settings_factory, tiny_backbone
) -> None:
    import mlflow

    dataset = colour_dataset_factory(tmp_path, per_label={"train": 6, "val": 3})
    # a val photo that is a re-saved training photo, and one with the same bytes
    label = dataset.labels[0]
    with Image.open(tmp_path / "raw" / "train" / label / f"{label}_0.jpg") as original:
        original.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
            tmp_path / "raw" / "val" / label / "resaved.jpg", quality=70
        )
    shutil.copyfile(
        tmp_path / "raw" / "train" / label / f"{label}_1.jpg",
        tmp_path / "raw" / "val" / label / "same_bytes.jpg",
    )
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)

    result = cross_validate(
        dataset.config_path,
        settings=settings,
        options=OPTIONS,
        folds=3,
        backbone=tiny_backbone,
        show_progress=False,
    )

    n_photos = 3 * (6 + 3) + 1  # the same-bytes copy counts once
    assert result.n_photos == n_photos and result.n_groups == n_photos - 1
    assert [f.fold for f in result.folds] == [1, 2, 3]
    assert sum(f.n_heldout for f in result.folds) == n_photos
    assert all(f.n_train + f.n_heldout == n_photos for f in result.folds)
    assert result.summary["cv_macro_f1_mean"] > 0.8  # the colours are learnable
    values = [f.metrics["val_macro_f1"] for f in result.folds]
    assert result.summary["cv_macro_f1_std"] == pytest.approx(np.std(values, ddof=1))

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    parent = client.get_run(result.run_id)
    assert parent.data.tags["stage"] == "cv" and parent.data.params["folds"] == "3"
    assert parent.data.metrics["cv_macro_f1_mean"] == pytest.approx(
        result.summary["cv_macro_f1_mean"]
    )
    assert "oof_ece_after_scaling" in parent.data.metrics
    # how often a quarter turn or mirror image keeps the top-1, per transform and worst
    agreement = [parent.data.metrics[f"oof_dihedral_agreement_{k}"] for k in range(1, 8)]
    assert parent.data.metrics["oof_dihedral_agreement_min"] == min(agreement)
    assert all(0.0 <= a <= 1.0 for a in agreement)
    assert all("val_dihedral_agreement_min" in f.metrics for f in result.folds)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert sorted(c.data.tags["fold"] for c in children) == ["1", "2", "3"]
    heldout = []
    for child in children:
        path = client.download_artifacts(
            child.info.run_id, "cv/heldout_photos.json", str(tmp_path / child.info.run_id)
        )
        heldout.append(set(json.loads(Path(path).read_text())["heldout_sha256"]))
    assert sum(len(h) for h in heldout) == n_photos and len(set().union(*heldout)) == n_photos
    artifacts = [a.path for a in client.list_artifacts(result.run_id, "plots")]
    assert artifacts == ["plots/cv_summary.png"]

    # the re-saved copy is held out together with its original
    import hashlib

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    pair = {
        sha(tmp_path / "raw" / "train" / label / f"{label}_0.jpg"),
        sha(tmp_path / "raw" / "val" / label / "resaved.jpg"),
    }
    assert sum(1 for h in heldout if pair <= h) == 1


def test_cv_fine_tunes_each_fold_from_the_imagenet_top(
    tmp_path: Path, colour_dataset_factory, settings_factory, backbone_factory
) -> None:
    """``--fine-tune-layers``: the activation maps are cached once, every fold fine-tunes
    its own top (curves in its child run), and the backbone is left as it came."""
    import dataclasses

    import mlflow

    dataset = colour_dataset_factory(tmp_path, per_label={"train": 4, "val": 2})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    backbone = backbone_factory(seed=5)
    before = [w.copy() for w in backbone.model.get_weights()]
    options = dataclasses.replace(OPTIONS, fine_tune_layers=1, fine_tune_epochs=2)
    result = cross_validate(
        dataset.config_path,
        settings=settings,
        options=options,
        folds=2,
        backbone=backbone,
        show_progress=False,
    )
    assert result.summary["cv_macro_f1_mean"] > 0.8  # the colours are learnable
    assert result.timings["fine_tuning"] > 0
    for kept, now in zip(before, backbone.model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    parent = client.get_run(result.run_id)
    assert parent.data.params["fine_tune_layers"] == "1"
    assert parent.data.params["fine_tune_cut"].startswith("tiny_conv+")
    for fold in result.folds:
        curve = client.get_metric_history(fold.run_id, "finetune_epoch_train_loss")
        assert [m.step for m in curve] == [1, 2]


def test_cv_of_a_canonical_backbone_keeps_every_top1_under_turns(
    tmp_path: Path, colour_dataset_factory, settings_factory, backbone_factory
) -> None:
    """With the canonical-orientation layer the 8 views are the same input: 100 %."""
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 4, "val": 2})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    result = cross_validate(
        dataset.config_path,
        settings=settings,
        options=OPTIONS,
        folds=2,
        backbone=backbone_factory(canonical=True),
        show_progress=False,
    )
    assert result.summary["oof_dihedral_agreement_min"] == 1.0
