"""Distillation: the soft targets, the heads learning from them, and ``train`` / ``cv`` with a
teacher on generated photos (tiny backbones: the student at 32 px, the teacher at 48)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from skin_mlops import export_format
from skin_mlops.core.errors import ConfigError
from skin_mlops.ingestion.run import run_ingestion
from skin_mlops.modeling.cross_validate import cross_validate
from skin_mlops.modeling.distill import soft_targets, teacher_options
from skin_mlops.modeling.heads import feature_dataset, make_progress, train_heads
from skin_mlops.modeling.options import TrainingOptions
from skin_mlops.modeling.train import run_training

TINY_IMAGE_SIZE = 32  # the conftest backbone's default size
TEACHER_SIZE = 48
OPTIONS = TrainingOptions(
    epochs=8,
    learning_rate=0.05,
    views=2,
    batch_size=8,
    seed=3,
    image_size=TINY_IMAGE_SIZE,
    teacher_image_size=TEACHER_SIZE,
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_soft_targets_mix_the_teachers_softened_distribution_with_the_label() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3, size=(6, 4, 5))
    labels = rng.integers(0, 5, 6)

    only_teacher = soft_targets(logits, labels, weight=1.0, temperature=1.0)
    np.testing.assert_allclose(only_teacher, _softmax(logits), rtol=1e-5)

    mixed = soft_targets(logits, labels, weight=0.5, temperature=2.0)
    assert mixed.shape == (6, 4, 5) and mixed.dtype == np.float32
    np.testing.assert_allclose(mixed.sum(axis=-1), 1.0, rtol=1e-5)
    expected = 0.5 * _softmax(logits / 2.0) + 0.5 * np.eye(5)[labels][:, None, :]
    np.testing.assert_allclose(mixed, expected, rtol=1e-5)

    # a higher temperature spreads the teacher's mass: higher entropy
    def entropy(p: np.ndarray) -> float:
        return float(-(p * np.log(p)).sum(axis=-1).mean())

    hot = soft_targets(logits, labels, 1.0, 4.0)
    assert entropy(hot) > entropy(only_teacher)


def test_the_dataset_yields_the_given_targets_per_view() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(7, 3, 4)).astype(np.float32)
    targets = _softmax(rng.normal(size=(7, 3, 5))).astype(np.float32)
    batches = list(
        feature_dataset(features, np.zeros(7, int), 5, 4, shuffle=False, seed=0, targets=targets)
    )
    y = np.concatenate([np.asarray(b[1]) for b in batches])
    np.testing.assert_allclose(y, targets.reshape(21, 5), rtol=1e-6)


def test_heads_learn_the_teachers_answers_not_the_labels() -> None:
    """A teacher that always answers the next class: a head trained only on its targets
    answers what the teacher says (the hard labels would give the opposite)."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 30)
    centres = rng.normal(scale=4, size=(3, 6))
    features = (centres[labels][:, None, :] + rng.normal(size=(90, 2, 6))).astype(np.float32)
    teacher_says = (labels + 1) % 3
    targets = np.repeat(np.eye(3, dtype=np.float32)[teacher_says][:, None, :], 2, axis=1)
    options = TrainingOptions(epochs=15, learning_rate=0.02, batch_size=16, seed=0)
    progress = make_progress(Console(quiet=True), enabled=False)
    heads, _ = train_heads(features, labels, features[:, :1], labels, 3, options, progress, targets)
    predicted = np.asarray(heads[0](features[:, 0], training=False)).argmax(axis=1)
    assert (predicted == teacher_says).mean() > 0.9


def test_distillation_options_are_checked_and_logged_only_when_on() -> None:
    with pytest.raises(ConfigError, match="the teacher is the student itself"):
        TrainingOptions(image_size=288, teacher_image_size=288)
    with pytest.raises(ConfigError, match="--fine-tune-layers 0"):
        TrainingOptions(image_size=224, teacher_image_size=288, fine_tune_layers=4)
    with pytest.raises(ConfigError, match="--teacher-image-size"):
        TrainingOptions(teacher_image_size=8)
    with pytest.raises(ConfigError, match="unknown backbone"):
        TrainingOptions(teacher_image_size=288, image_size=224, teacher_backbone="resnet")
    assert "teacher_image_size" not in TrainingOptions().params()
    on = TrainingOptions(image_size=224, teacher_image_size=288)
    assert on.params()["teacher_image_size"] == 288
    assert on.params()["teacher_backbone"] == "efficientnet_lite0"
    teacher = teacher_options(on)
    assert (teacher.image_size, teacher.distils, teacher.views) == (288, False, on.views)
    # from the MLflow params back to the same recipe (the teacher's backbone now explicit)
    back = TrainingOptions.from_params({k: str(v) for k, v in on.params().items()})
    assert back.teacher_spec == on.teacher_spec
    assert dataclasses.replace(back, teacher_backbone="") == on


def test_train_with_a_teacher_exports_the_student_alone(
    tmp_path: Path, colour_dataset_factory, settings_factory, backbone_factory
) -> None:
    import mlflow

    dataset = colour_dataset_factory(tmp_path, per_label={"train": 6, "val": 3})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    result = run_training(
        dataset.config_path,
        settings=settings,
        options=OPTIONS,
        backbone=backbone_factory(seed=1),
        teacher_backbone=backbone_factory(seed=2, image_size=TEACHER_SIZE),
        show_progress=False,
    )
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["teacher_image_size"] == str(TEACHER_SIZE)
    assert run.data.metrics["teacher_oof_macro_f1"] > 0.8  # the colours are learnable
    assert "time_distillation_s" in run.data.metrics
    history = client.get_metric_history(result.run_id, "teacher_epoch_train_loss")
    # cross-fitted: one teacher per inner fold (6 training photos per label: 5 folds)
    assert [m.step for m in history] == list(range(1, OPTIONS.epochs + 1)) * 5
    assert len(client.get_metric_history(result.run_id, "epoch_train_loss")) == OPTIONS.epochs
    assert result.metrics["val_macro_f1"] > 0.8
    signature = export_format.read_signature(result.published_dir)
    assert signature.image_size == TINY_IMAGE_SIZE  # the student is what serves
    assert result.parity_max_abs_prob_diff <= 1e-4


def test_cv_teaches_each_fold_on_its_own_training_photos(
    tmp_path: Path, colour_dataset_factory, settings_factory, backbone_factory
) -> None:
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 6, "val": 3})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    result = cross_validate(
        dataset.config_path,
        settings=settings,
        options=dataclasses.replace(OPTIONS, epochs=6),
        folds=3,
        backbone=backbone_factory(seed=1),
        teacher_backbone=backbone_factory(seed=2, image_size=TEACHER_SIZE),
        show_progress=False,
    )
    taught = [fold.metrics["teacher_oof_macro_f1"] for fold in result.folds]
    assert len(taught) == 3 and all(0.0 <= f <= 1.0 for f in taught)
    assert result.summary["cv_teacher_oof_macro_f1_mean"] == pytest.approx(np.mean(taught))
    assert result.summary["cv_macro_f1_mean"] > 0.8


def test_the_teacher_is_cross_fitted_so_it_cannot_hand_back_memorised_labels() -> None:
    """On features that carry no signal a teacher fitted on all photos memorises them and
    its targets would repeat the labels; cross-fitted, it is at chance on every photo."""
    from skin_mlops.modeling.distill import teach
    from skin_mlops.modeling.stages import FrozenFeatures

    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 20)
    noise = rng.normal(size=(60, 2, 64)).astype(np.float32)
    teacher = FrozenFeatures(noise, noise[:, :1], None, None, None, None)  # type: ignore[arg-type]
    options = TrainingOptions(
        epochs=40, learning_rate=0.02, batch_size=16, image_size=224, teacher_image_size=288
    )
    progress = make_progress(Console(quiet=True), enabled=False)
    targets, oof_f1 = teach(teacher, slice(None), labels, 3, options, progress)
    assert targets.shape == (60, 2, 3)
    np.testing.assert_allclose(targets.sum(axis=-1), 1.0, rtol=1e-5)
    assert oof_f1 < 0.6  # chance is 1/3; memorised it would be ~1
    teacher_part = targets - (1 - options.distillation_weight) * np.eye(3)[labels][:, None]
    assert (teacher_part.argmax(axis=-1) == labels[:, None]).mean() < 0.6
