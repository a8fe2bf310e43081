"""The training stage end to end on generated photos with a tiny backbone.

One module-scoped sequence of three real runs against a real MLflow SQLite store and a
local object store (ingested with the real ingestion):

1. ``weak``   (1 epoch, tiny learning rate) - the first model: becomes champion;
2. ``strong`` (enough epochs)               - beats it: takes ``@champion``, is published;
   reuses every cached feature of run 1;
3. ``weak`` again                           - worse: registered, but the alias, the
   published folder and ``runs/skin5-current`` stay on run 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from skin_mlops import export_format, preprocessing
from skin_mlops.core.config import Settings
from skin_mlops.core.errors import DataError, ServiceUnavailableError, StorageError
from skin_mlops.ingestion.run import run_ingestion
from skin_mlops.metadata import read_lesions
from skin_mlops.modeling.export import load_keras_model
from skin_mlops.modeling.options import TrainingOptions
from skin_mlops.modeling.train import TrainingResult, run_training

WEAK = TrainingOptions(
    fine_tune_layers=0, epochs=1, learning_rate=1e-5, views=2, batch_size=8, seed=3
)
STRONG = TrainingOptions(
    fine_tune_layers=0, epochs=12, learning_rate=0.05, views=2, batch_size=8, seed=3
)
N_TRAIN, N_VAL = 8 * 3, 4 * 3


@dataclass
class Workspace:
    root: Path
    config_path: Path
    labels: tuple[str, ...]
    settings: Settings
    runs: list[TrainingResult]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, colour_dataset_factory, settings_factory, backbone_factory):
    root = tmp_path_factory.mktemp("train")
    dataset = colour_dataset_factory(root)
    settings = settings_factory(root)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    backbone = backbone_factory()
    runs = [
        run_training(
            dataset.config_path,
            settings=settings,
            options=options,
            backbone=backbone,
            show_progress=False,
        )
        for options in (WEAK, STRONG, WEAK)
    ]
    return Workspace(root, dataset.config_path, dataset.labels, settings, runs)


def _client(settings: Settings):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def test_the_strong_run_learns_the_colours(workspace: Workspace) -> None:
    weak, strong, _ = workspace.runs
    assert strong.metrics["val_macro_f1"] >= 0.9
    assert strong.metrics["val_accuracy"] >= 0.9
    assert weak.metrics["val_macro_f1"] < strong.metrics["val_macro_f1"]  # the premise below
    assert 0.05 <= strong.temperature <= 20
    assert strong.parity_max_abs_prob_diff <= 1e-4


def test_champion_alias_moves_only_to_a_better_model(workspace: Workspace) -> None:
    weak, strong, weak_again = workspace.runs
    assert [r.model_version for r in workspace.runs] == ["1", "2", "3"]
    assert [r.promoted for r in workspace.runs] == [True, True, False]
    client = _client(workspace.settings)
    champion = client.get_model_version_by_alias("skin-classifier", "champion")
    assert str(champion.version) == "2" and champion.run_id == strong.run_id
    kept = client.get_run(weak_again.run_id).data
    assert kept.tags["champion_decision"] == kept.tags["promotion_decision"] == "kept"
    assert kept.tags["champion_previous_version"] == "2"
    assert "re-scored on the same val photos" in kept.tags["promotion_reason"]
    # the champion's registered ONNX model, run on this run's val photos: its own score
    # (the same photos here), computed from pixels instead of cached features
    assert kept.metrics["champion_val_macro_f1_same_photos"] == pytest.approx(
        strong.metrics["val_macro_f1"], abs=1e-6
    )
    assert kept.metrics["champion_candidate_val_macro_f1"] == pytest.approx(
        weak_again.metrics["val_macro_f1"]
    )
    assert kept.metrics["promotion_margin"] == pytest.approx(
        weak_again.metrics["val_macro_f1"] - strong.metrics["val_macro_f1"], abs=1e-6
    )
    assert kept.metrics["promotion_min_delta"] == 0.01
    promoted = client.get_run(strong.run_id).data
    assert promoted.tags["champion_decision"] == "promoted"
    assert promoted.metrics["champion_val_macro_f1_same_photos"] == pytest.approx(
        weak.metrics["val_macro_f1"], abs=1e-6
    )
    assert promoted.metrics["promotion_margin"] >= 0.01
    assert promoted.tags["published_dir"] == str(strong.published_dir)
    first = client.get_run(weak.run_id).data
    assert first.tags["promotion_decision"] == "promoted"
    assert "first" in first.tags["promotion_reason"]
    assert "champion_val_macro_f1_same_photos" not in first.metrics


def test_the_run_has_every_param_metric_and_artifact(workspace: Workspace) -> None:
    strong = workspace.runs[1]
    client = _client(workspace.settings)
    run = client.get_run(strong.run_id)
    params, metrics = run.data.params, run.data.metrics
    for key in (
        "epochs",
        "batch_size",
        "learning_rate",
        "backbone",
        "image_size",
        "seed",
        "views",
        "dataset_fingerprint",
        "git_commit",
        "preprocessing_id",
        "labels",
    ):
        assert key in params, key
    assert params["epochs"] == "12" and params["backbone"] == "tiny_test"
    # the frozen backbone ran on ONNX Runtime, from the converted file in the weights cache
    assert params["feature_engine"] == "onnxruntime"
    assert list((workspace.settings.weights_cache_dir / "onnx").glob("backbone-*.onnx"))
    assert params["image_size"] == "32" and params["learning_rate"] == "0.05"
    for split, count in (("train", 8), ("val", 4)):
        for label in workspace.labels:
            assert params[f"count_{split}_{label}"] == str(count)
    hashes = sorted(
        r.sha256 for r in read_lesions(workspace.root / "metadata" / "skin_metadata.db")
    )
    assert params["dataset_fingerprint"] == strong.dataset_fingerprint
    assert len(hashes) == N_TRAIN + N_VAL

    for name in (
        "epoch_train_loss",
        "epoch_train_accuracy",
        "epoch_val_loss",
        "epoch_val_accuracy",
    ):
        history = client.get_metric_history(strong.run_id, name)
        assert [m.step for m in history] == list(range(1, 13)), name
    for key in (
        "val_accuracy",
        "val_balanced_accuracy",
        "val_macro_f1",
        "temperature",
        "val_ece_before_scaling",
        "val_ece_after_scaling",
        "onnx_parity_max_abs_prob_diff",
    ):
        assert key in metrics, key
    for label in workspace.labels:
        for kind in ("precision", "recall", "f1"):
            assert f"val_{kind}_{label}" in metrics
    # each stage's wall time and the peak resident memory after it (never decreasing)
    stages = ["checks", "data", "backbone", "features", "head_training", "ood_guard", "export"]
    peaks = [metrics[f"peak_rss_mb_after_{stage}"] for stage in stages]
    assert all(f"time_{stage}_s" in metrics for stage in stages)
    assert peaks == sorted(peaks) and 50 < peaks[0] <= metrics["peak_rss_mb"]

    artifacts = {a.path for a in client.list_artifacts(strong.run_id, "plots")}
    assert artifacts == {
        "plots/confusion_matrix.png",
        "plots/reliability_diagram.png",
        "plots/training_curves.png",
    }
    confusion = client.download_artifacts(
        strong.run_id, "evaluation/confusion_matrix.json", str(workspace.root / "cm")
    )
    matrix = json.loads(Path(confusion).read_text())["matrix"]
    assert np.asarray(matrix).sum() == N_VAL and np.trace(matrix) == round(
        strong.metrics["val_accuracy"] * N_VAL
    )
    assert [a.path for a in client.list_artifacts(strong.run_id, "export/data")] == [
        "export/data/class_index.json"
    ]
    assert [a.path for a in client.list_artifacts(strong.run_id, "export/inference")] == [
        "export/inference/signature.json"
    ]

    logged = client.search_logged_models(
        experiment_ids=[strong.experiment_id],
        filter_string=f"source_run_id = '{strong.run_id}'",
    )
    assert sorted(m.name for m in logged) == ["keras-model", "onnx-model"]
    version = client.get_model_version("skin-classifier", strong.model_version)
    onnx_model = next(m for m in logged if m.name == "onnx-model")
    assert onnx_model.model_id in version.source
    assert float(version.tags["val_macro_f1"]) == pytest.approx(strong.metrics["val_macro_f1"])


def test_registered_onnx_model_carries_its_metadata(workspace: Workspace) -> None:
    import mlflow

    mlflow.set_tracking_uri(workspace.settings.mlflow_tracking_uri)
    local = Path(
        mlflow.artifacts.download_artifacts(
            "models:/skin-classifier@champion", dst_path=str(workspace.root / "download")
        )
    )
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert {"model.onnx", "signature.json", "class_index.json", "MLmodel"} <= files


def test_published_export_is_complete_and_is_the_champion(workspace: Workspace) -> None:
    strong = workspace.runs[1]
    current = workspace.settings.model_dir
    assert current.is_symlink()
    folder = export_format.resolve_export_dir(current)
    assert folder == strong.published_dir.resolve()
    assert workspace.runs[2].published_dir is None
    signature = export_format.read_signature(folder)
    assert signature.run_id == strong.run_id
    assert signature.labels == list(workspace.labels)
    assert signature.temperature == pytest.approx(strong.temperature)
    assert signature.image_size == 32
    assert signature.preprocessing_id == preprocessing.PREPROCESSING_ID
    shares = {label: signature.metrics[f"train_share_{label}"] for label in workspace.labels}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5) and min(shares.values()) > 0
    assert signature.input.name == "image" and signature.output.name == "logits"
    assert signature.metrics["val_macro_f1"] == pytest.approx(
        strong.metrics["val_macro_f1"], abs=1e-6
    )
    assert (folder / export_format.KERAS_MODEL_FILE).is_file()
    # no leftover staging folders
    assert not list((folder.parent).glob(".*tmp*"))


def test_the_export_carries_an_ood_guard_that_flags_what_is_not_a_photo_of_the_data(
    workspace: Workspace,
) -> None:
    from skin_mlops.api.model_runtime import load_model
    from utils.images import non_skin_images

    strong = workspace.runs[1]
    folder = export_format.resolve_export_dir(workspace.settings.model_dir)
    signature = export_format.read_signature(folder)
    assert signature.ood is not None and signature.ood.output.name == "ood_score"
    assert signature.ood.heldout_photos == N_TRAIN and signature.ood.pass_rate == 0.95
    assert signature.ood.threshold == pytest.approx(strong.metrics["ood_threshold"], rel=1e-6)
    assert 0 <= strong.metrics["val_ood_flagged_rate"] <= 1
    run = _client(workspace.settings).get_run(strong.run_id)
    assert run.data.params["ood_guard"] == "mahalanobis-tied"

    model = load_model(folder, "test", workspace.settings)
    size = signature.image_size
    val = [
        preprocessing.preprocess_bytes(p.read_bytes(), size)
        for p in sorted((workspace.config_path.parent / "raw" / "val").rglob("*.jpg"))
    ]
    assert len(val) == N_VAL
    _, val_scores = model.outputs(np.stack(val))
    assert val_scores is not None
    assert np.mean([model.in_distribution(float(s)) for s in val_scores]) >= 0.75
    strangers = {
        name: preprocessing.to_model_input(image, size) for name, image in non_skin_images().items()
    }
    _, scores = model.outputs(np.stack(list(strangers.values())))
    flagged = {
        name: model.in_distribution(float(s)) is False
        for name, s in zip(strangers, scores, strict=True)
    }
    assert all(flagged.values()), flagged


def test_onnx_and_keras_exports_agree_on_generated_images(workspace: Workspace) -> None:

    from skin_mlops.modeling.evaluate import softmax
    from skin_mlops.modeling.export import keras_outputs, onnx_outputs, onnx_session

    folder = export_format.resolve_export_dir(workspace.settings.model_dir)
    signature = export_format.read_signature(folder)
    rng = np.random.default_rng(7)
    images = rng.uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    reloaded = load_keras_model(folder / export_format.KERAS_MODEL_FILE)
    keras_logits, keras_ood = keras_outputs(reloaded, images)
    onnx = onnx_outputs(onnx_session(folder / export_format.ONNX_MODEL_FILE), images)
    keras_probs = softmax(keras_logits, signature.temperature)
    onnx_probs = softmax(onnx["logits"], signature.temperature)
    assert np.max(np.abs(keras_probs - onnx_probs)) <= 1e-4
    assert (keras_probs.argmax(1) == onnx_probs.argmax(1)).all()
    assert keras_ood is not None  # the guard's score: the same in both
    np.testing.assert_allclose(onnx["ood_score"], keras_ood, rtol=1e-3)


def test_every_export_is_uploaded_under_its_run_id(workspace: Workspace) -> None:
    from skin_mlops.storage import make_object_store

    store = make_object_store(workspace.settings)
    for run in workspace.runs:
        prefix = f"skin/models/{run.run_id}/"
        assert run.export_uri == f"s3://models-registry/{prefix}"
        keys = set(store.list_keys("models-registry", prefix))
        assert keys == {
            prefix + str(p)
            for p in (
                export_format.CLASS_INDEX_FILE,
                export_format.SIGNATURE_FILE,
                export_format.KERAS_MODEL_FILE,
                export_format.ONNX_MODEL_FILE,
            )
        }


def test_later_runs_reuse_the_feature_cache(workspace: Workspace) -> None:
    first, second, third = workspace.runs
    total = N_TRAIN * 2 + N_VAL  # 2 views per training photo, centre view for val
    assert (first.features_extracted, first.features_reused) == (total, 0)
    assert (second.features_extracted, second.features_reused) == (0, total)
    assert third.features_extracted == 0
    assert first.dataset_fingerprint == second.dataset_fingerprint == third.dataset_fingerprint


# --- leakage: the same bytes in train and val ------------------------------------------


def test_val_photos_leaked_from_train_are_left_out_unless_kept(
    tmp_path,
    colour_dataset_factory,
    settings_factory,
    backbone_factory,
) -> None:
    import shutil

    from PIL import Image

    dataset = colour_dataset_factory(tmp_path, per_label={"train": 3, "val": 2})
    leaked = []
    for label in dataset.labels[:2]:  # two training photos copied into val (same label)
        source = tmp_path / "raw" / "train" / label / f"{label}_0.jpg"
        shutil.copyfile(source, tmp_path / "raw" / "val" / label / "copy_of_train.jpg")
        leaked.append(hashlib.sha256(source.read_bytes()).hexdigest())
    # and one re-saved copy: mirrored, 90 % size, JPEG quality 70 (other bytes, same picture)
    label = dataset.labels[2]
    with Image.open(tmp_path / "raw" / "train" / label / f"{label}_1.jpg") as original:
        resaved = tmp_path / "raw" / "val" / label / "resaved_train_photo.jpg"
        copy = original.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        copy.resize((original.width * 9 // 10, original.height * 9 // 10)).save(resaved, quality=70)
    leaked.append(hashlib.sha256(resaved.read_bytes()).hexdigest())
    settings = settings_factory(tmp_path)
    summary = run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    assert len(summary.leakage) == 2  # what ingestion reports: the same bytes only
    options = TrainingOptions(fine_tune_layers=0, epochs=2, views=1, batch_size=4)

    def train(keep: bool) -> TrainingResult:
        return run_training(
            dataset.config_path,
            settings=settings,
            options=dataclasses.replace(options, keep_leaked_val=keep),
            backbone=backbone_factory(),
            show_progress=False,
        )

    client = _client(settings)
    for keep, n_val, excluded in ((False, 6, 3), (True, 9, 0)):
        result = train(keep)
        assert result.val_leaked_excluded == excluded
        run = client.get_run(result.run_id).data
        assert run.params["keep_leaked_val"] == str(keep)
        assert run.params["n_val"] == str(n_val)
        assert run.metrics["val_leaked"] == 2
        assert run.metrics["val_near_duplicates"] == 1
        assert run.metrics["val_leaked_excluded"] == excluded
        folder = tmp_path / f"download-{keep}"
        val_set = json.loads(
            Path(
                client.download_artifacts(result.run_id, "evaluation/val_set.json", str(folder))
            ).read_text()
        )
        hashes = {photo["sha256"] for photo in val_set["photos"]}
        assert len(hashes) == n_val and (set(leaked) <= hashes) is keep
        confusion = client.download_artifacts(
            result.run_id, "evaluation/confusion_matrix.json", str(folder)
        )
        assert np.asarray(json.loads(Path(confusion).read_text())["matrix"]).sum() == n_val


def test_a_val_split_made_only_of_training_photos_is_one_line(
    tmp_path, colour_dataset_factory, settings_factory, tiny_backbone
) -> None:
    import shutil

    dataset = colour_dataset_factory(tmp_path, per_label={"train": 2, "val": 0})
    for label in dataset.labels:
        shutil.copyfile(
            tmp_path / "raw" / "train" / label / f"{label}_0.jpg",
            tmp_path / "raw" / "val" / label / "copy.jpg",
        )
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    with pytest.raises(DataError, match=r"all 3 val photos are also training photos"):
        run_training(
            dataset.config_path, settings=settings, backbone=tiny_backbone, show_progress=False
        )


# --- downloads from S3 (moto_server), fine-tuning ----------------------------------------


def test_images_come_from_the_object_store_when_files_are_gone(
    tmp_path,
    moto_endpoint,
    colour_dataset_factory,
    settings_factory,
    backbone_factory,
) -> None:
    from skin_mlops.storage import make_object_store

    suffix = uuid.uuid4().hex[:8]
    dataset = colour_dataset_factory(
        tmp_path, per_label={"train": 3, "val": 2}, bucket=f"processed-{suffix}"
    )
    settings = settings_factory(
        tmp_path,
        storage_backend="s3",
        s3_endpoint_url=moto_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
        s3_models_bucket=f"models-{suffix}",
    )
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    for image in (tmp_path / "raw").rglob("*.jpg"):
        image.unlink()

    result = run_training(
        dataset.config_path,
        settings=settings,
        show_progress=False,
        options=TrainingOptions(fine_tune_layers=0, epochs=2, views=1, batch_size=4),
        backbone=backbone_factory(),
    )
    records = read_lesions(dataset.db_path)
    assert len(records) == 15
    for record in records:  # downloaded, verified, cached by content hash
        cached = settings.dataset_cache_dir / record.sha256[:2] / record.sha256
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == record.sha256
    run = _client(settings).get_run(result.run_id)
    assert run.data.metrics["images_downloaded"] == 15
    store = make_object_store(settings)
    keys = set(store.list_keys(f"models-{suffix}", f"skin/models/{result.run_id}/"))
    assert f"skin/models/{result.run_id}/model/model.onnx" in keys


def test_fine_tuning_trains_the_top_of_the_backbone(
    tmp_path,
    colour_dataset_factory,
    settings_factory,
    backbone_factory,
) -> None:
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 4, "val": 2})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    backbone = backbone_factory(seed=5)
    top_before = backbone.model.get_layer("tiny_conv2").get_weights()[0].copy()
    bottom_before = backbone.model.get_layer("tiny_conv").get_weights()[0].copy()
    options = TrainingOptions(
        epochs=2, views=2, batch_size=4, learning_rate=0.05, fine_tune_layers=1, fine_tune_epochs=2
    )
    result = run_training(
        dataset.config_path,
        settings=settings,
        options=options,
        backbone=backbone,
        show_progress=False,
    )
    assert not np.array_equal(backbone.model.get_layer("tiny_conv2").get_weights()[0], top_before)
    np.testing.assert_array_equal(
        backbone.model.get_layer("tiny_conv").get_weights()[0], bottom_before
    )
    client = _client(settings)
    history = client.get_metric_history(result.run_id, "finetune_epoch_train_loss")
    assert [m.step for m in history] == [1, 2]
    params = client.get_run(result.run_id).data.params
    assert params["fine_tune_layers"] == "1"
    assert params["feature_engine"] == "keras"  # activation maps at the cut: Keras
    assert params["fine_tune_cut"]  # the cached activation map's layer
    # the exported graph (on pixels) matches the logits computed on cached maps
    assert result.parity_max_abs_prob_diff <= 1e-4
    again = run_training(
        dataset.config_path,
        settings=settings,
        options=options,
        backbone=backbone_factory(seed=5),
        show_progress=False,
    )
    assert again.features_extracted == 0  # the activation maps are cached too
    assert result.parity_max_abs_prob_diff <= 1e-4
    signature = export_format.read_signature(result.published_dir)
    assert signature.run_id == result.run_id


# --- one-line errors -------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_metadata_db_says_run_ingestion_first(
    tmp_path, colour_dataset_factory, settings_factory, tiny_backbone
) -> None:
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 1, "val": 1})
    with pytest.raises(DataError, match=r"run `skin-mlops ingest` first"):
        run_training(
            dataset.config_path,
            settings=settings_factory(tmp_path),
            backbone=tiny_backbone,
            show_progress=False,
        )


def test_empty_metadata_db_says_run_ingestion_first(
    tmp_path, colour_dataset_factory, settings_factory, tiny_backbone
) -> None:
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 0, "val": 0})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    with pytest.raises(DataError, match=r"no images .* run `skin-mlops ingest` first"):
        run_training(
            dataset.config_path, settings=settings, backbone=tiny_backbone, show_progress=False
        )


def test_label_in_db_but_not_in_config(
    tmp_path, colour_dataset_factory, settings_factory, tiny_backbone
) -> None:
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 1, "val": 1})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    narrowed = colour_dataset_factory(
        tmp_path, per_label={}, config_labels=("red_lesion", "green_lesion")
    )
    with pytest.raises(
        DataError,
        match=r"blue_lesion in the metadata DB are not in the "
        r"dataset config",
    ):
        run_training(
            narrowed.config_path, settings=settings, backbone=tiny_backbone, show_progress=False
        )


def test_unreachable_mlflow_is_one_line(
    tmp_path, colour_dataset_factory, settings_factory, tiny_backbone
) -> None:
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 1, "val": 1})
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings_factory(tmp_path))
    uri = f"http://127.0.0.1:{_free_port()}"
    settings = settings_factory(tmp_path, mlflow_tracking_uri=uri)
    with pytest.raises(ServiceUnavailableError, match=r"MLflow tracking server .* unreachable"):
        run_training(
            dataset.config_path, settings=settings, backbone=tiny_backbone, show_progress=False
        )


def test_unreachable_object_store_is_one_line(
    tmp_path, colour_dataset_factory, settings_factory, tiny_backbone
) -> None:
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 1, "val": 1})
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings_factory(tmp_path))
    settings = settings_factory(
        tmp_path,
        storage_backend="s3",
        s3_endpoint_url=f"http://127.0.0.1:{_free_port()}",
        s3_access_key_id="u",
        s3_secret_access_key="p",
        s3_max_attempts=1,
        s3_connect_timeout_s=1.0,
    )
    with pytest.raises(StorageError) as caught:
        run_training(
            dataset.config_path, settings=settings, backbone=tiny_backbone, show_progress=False
        )
    assert "\n" not in str(caught.value)


def test_bad_options_are_config_errors() -> None:
    from skin_mlops.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--views"):
        TrainingOptions(fine_tune_layers=0, views=0)
    with pytest.raises(ConfigError, match="--epochs"):
        TrainingOptions(fine_tune_layers=0, epochs=0)
    with pytest.raises(ConfigError, match="--mixup-alpha"):
        TrainingOptions(mixup_alpha=-0.1)


def test_mixup_is_a_param_only_when_on_and_round_trips() -> None:
    assert "mixup_alpha" not in TrainingOptions().params()
    options = TrainingOptions(mixup_alpha=0.4)
    params = {k: str(v) for k, v in options.params().items() if v is not None}
    assert params["mixup_alpha"] == "0.4"
    assert TrainingOptions.from_params(params) == options


# --- CLI ---------------------------------------------------------------------------------


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skin_mlops.cli", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_train_help_lists_the_options(tmp_path) -> None:
    done = _cli(["train", "--help"], tmp_path, {"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for option in (
        "--dataset-config",
        "--epochs",
        "--batch-size",
        "--learning-rate",
        "--backbone",
        "--image-size",
        "--views",
        "--fine-tune-layers",
        "--mixup-alpha",
        "--hidden-units",
        "--input-dropout",
        "--dropout",
        "--label-smoothing",
        "--weight-decay",
        "--keep-leaked-val",
        "--promotion-min-delta",
    ):
        assert option in done.stdout


@pytest.mark.parametrize("command", ["train", "cv"])
@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--weight-decay", "-1", "--weight-decay must be >= 0"),
        ("--dropout", "1.5", "--dropout must be in [0, 1)"),
        ("--hidden-units", "-4", "--hidden-units must be >= 0"),
        ("--fine-tune-lr-factor", "0", "--fine-tune-lr-factor must be in (0, 10]"),
    ],
)
def test_cli_head_options_are_checked_in_one_line(
    tmp_path, command: str, flag: str, value: str, message: str
) -> None:
    """The head's hyper-parameters are recipe flags of both ``train`` and ``cv``."""
    done = _cli([command, flag, value], tmp_path, {"COLUMNS": "300"})
    assert done.returncode != 0
    assert message in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


def test_cli_train_without_ingestion_prints_one_red_line(
    tmp_path, colour_dataset_factory, mlflow_db_template
) -> None:
    import shutil

    dataset = colour_dataset_factory(tmp_path, per_label={"train": 1, "val": 1})
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "STORAGE_BACKEND": "local",
        "LOCAL_OBJECT_ROOT": str(tmp_path / "objects"),
        "COLUMNS": "300",
    }
    done = _cli(["train", "--dataset-config", str(dataset.config_path)], tmp_path, env)
    assert done.returncode == 1
    assert "run `skin-mlops ingest` first" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_options_round_trip_through_mlflow_params() -> None:
    options = TrainingOptions(
        epochs=7,
        learning_rate=3e-4,
        views=5,
        hidden_units=0,
        backbone_options=(("pooling", "avg+mid"),),
        fine_tune_layers=4,
        fine_tune_lr_factor=0.5,
    )
    params = {k: str(v) for k, v in options.params().items() if v is not None}
    assert float(params["fine_tune_learning_rate"]) == pytest.approx(1.5e-4)
    assert TrainingOptions.from_params(params) == options


def test_head_ensemble_run(
    tmp_path, colour_dataset_factory, settings_factory, backbone_factory
) -> None:
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 3, "val": 2})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    options = TrainingOptions(fine_tune_layers=0, epochs=2, views=1, batch_size=4, heads=2)
    result = run_training(
        dataset.config_path,
        settings=settings,
        options=options,
        backbone=backbone_factory(),
        show_progress=False,
    )
    client = _client(settings)
    assert len(client.get_metric_history(result.run_id, "head1_epoch_train_loss")) == 2
    assert client.get_run(result.run_id).data.params["heads"] == "2"
    assert result.parity_max_abs_prob_diff <= 1e-4


def test_tta_run_exports_the_averaged_model(
    tmp_path,
    colour_dataset_factory,
    settings_factory,
    backbone_factory,
) -> None:
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 3, "val": 2})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    options = TrainingOptions(fine_tune_layers=0, epochs=2, views=1, batch_size=4, tta_views=8)
    result = run_training(
        dataset.config_path,
        settings=settings,
        options=options,
        backbone=backbone_factory(),
        show_progress=False,
    )
    assert result.features_extracted == 9 + 6 * 8  # val: centre + 7 dihedral views
    assert result.parity_max_abs_prob_diff <= 1e-4

    model = load_keras_model(result.published_dir / export_format.KERAS_MODEL_FILE)
    assert model.get_layer("tta_dihedral_views").views == 8


def test_a_feature_dead_in_training_cannot_blow_up_the_logits() -> None:
    """A feature constant on the training photos and active on a val one stays bounded."""
    from skin_mlops.modeling.heads import build_head, feature_variance_floor
    from skin_mlops.modeling.options import TrainingOptions

    rng = np.random.default_rng(0)
    train = rng.normal(1.0, 1.0, size=(64, 8))
    train[:, 3] = 0.0  # never active in training
    train[:5, 5] = 1e-4  # almost never
    floored = feature_variance_floor(train.var(axis=0))
    assert floored.min() >= 1e-2 * np.median(train.var(axis=0)[train.var(axis=0) > 0]) - 1e-12
    assert floored[0] == train.var(axis=0)[0]  # ordinary features unchanged
    head = build_head(train, 3, TrainingOptions(hidden_units=0))
    probe = np.ones((1, 8), dtype=np.float32)
    probe[0, 3] = 5.0  # active at val time
    normalised = head.get_layer("feature_norm_0")(probe).numpy()
    assert np.abs(normalised).max() < 100  # 1e-12 floor: ~5e6


def test_int8_training_fits_the_guard_on_the_int8_backbone_s_errors_and_gates_the_twin(
    tmp_path, colour_dataset_factory, settings_factory, backbone_factory
) -> None:
    """``train --int8``: residuals of the int8 backbone are measured before the guard is
    fitted (param ``int8_aware_guard``), the twin is gated on val, and the export holds it
    exactly when the gate passed."""
    dataset = colour_dataset_factory(tmp_path, per_label={"train": 4, "val": 3})
    settings = settings_factory(tmp_path)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)

    result = run_training(
        dataset.config_path,
        settings=settings,
        options=dataclasses.replace(STRONG, epochs=4),
        backbone=backbone_factory(),
        show_progress=False,
        int8=True,
        int8_method="ort-minmax-7bit",
    )

    run = _client(settings).get_run(result.run_id).data
    assert run.params["int8_aware_guard"] == "True"
    assert run.params["int8_residual_photos"] == str(4 * len(dataset.labels))
    assert run.tags["int8_method"] == "ort-minmax-7bit"
    assert run.metrics["int8_gate_photos"] == 3 * len(dataset.labels)
    assert result.timings["int8_residuals"] > 0 and result.timings["int8"] > 0
    signature = export_format.read_signature(settings.model_dir)
    shipped = run.metrics["int8_gate_passed"] == 1.0
    assert (signature.int8 is not None) is shipped
    assert (
        export_format.resolve_export_dir(settings.model_dir) / export_format.INT8_MODEL_FILE
    ).is_file() is shipped
