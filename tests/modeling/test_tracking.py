"""MLflow tracking: connect, registry champion logic, and a real `mlflow server`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from skin_mlops.core.config import load_settings
from skin_mlops.core.errors import ServiceUnavailableError
from skin_mlops.modeling import registry, tracking
from utils.tools import missing_tool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _store(tmp_path: Path, template: Path) -> str:
    shutil.copyfile(template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_connect_creates_the_experiment_under_the_artifact_root(tmp_path, mlflow_db_template):
    import mlflow

    settings = load_settings(
        mlflow_tracking_uri=_store(tmp_path, mlflow_db_template),
        mlflow_artifact_root=tmp_path / "artifacts",
        mlflow_experiment="exp-a",
    )
    experiment_id = tracking.connect(settings)
    assert tracking.connect(settings) == experiment_id  # idempotent
    experiment = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_experiment(experiment_id)
    assert experiment.name == "exp-a"
    assert experiment.artifact_location == (tmp_path / "artifacts").resolve().as_uri()


def test_connect_creates_the_sqlite_folder(tmp_path):
    tracking.check_reachable(f"sqlite:///{tmp_path / 'deep' / 'er' / 'mlflow.db'}")
    assert (tmp_path / "deep" / "er").is_dir()


def test_unreachable_server_is_one_clear_line():
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="unreachable") as caught:
        tracking.check_reachable(f"http://127.0.0.1:{_free_port()}")
    assert "\n" not in str(caught.value)
    assert time.monotonic() - started < 10


# --- the promotion gate ------------------------------------------------------------------


def _gate_settings(tmp_path, mlflow_db_template):
    return load_settings(
        mlflow_tracking_uri=_store(tmp_path, mlflow_db_template),
        mlflow_artifact_root=tmp_path / "artifacts",
        model_cache_dir=tmp_path / "model-cache",
    )


def _fixed_scores(scores: dict[str, float]):
    """A scorer for tests of the rule: each version's score on "these photos"."""

    def rescore(model_name: str, version: str) -> float:
        return scores[version]

    return rescore


def test_the_champion_is_compared_by_its_score_on_the_same_photos_with_a_margin(
    champion_kit,
) -> None:
    """Never by its stored number: v1 was registered with 0.95 on its own val set, but
    scores 0.60 on this run's photos; the candidate needs 0.60 + min_delta."""
    import mlflow

    settings = champion_kit.settings
    experiment_id = tracking.connect(settings)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    on_these_photos = {"1": 0.60, "2": 0.65, "3": 0.655, "4": 0.66, "5": 0.66}

    def gate(score: float, min_delta: float = 0.01):
        _, version = champion_kit.register(experiment_id, champion_kit.perfect, score)
        return registry.promote_if_better(
            "skin-classifier",
            version,
            score,
            rescore=_fixed_scores(on_these_photos),
            min_delta=min_delta,
            tracking_uri=settings.mlflow_tracking_uri,
        )

    first = gate(0.95)
    assert first.promoted and first.previous_version is None and "first" in first.summary
    better = gate(0.65)  # below v1's stored 0.95, above its 0.60 here by 0.05
    assert better.promoted and better.previous_version == "1"
    assert better.previous_score == 0.60 and better.margin == pytest.approx(0.05)
    assert "on the same val photos" in better.summary
    too_little = gate(0.655)  # +0.005 over v2 (0.65 here)
    assert not too_little.promoted and too_little.previous_version == "2"
    assert "does not take @champion" in too_little.summary and "< 0.0100" in too_little.reason
    just_enough = gate(0.66)  # exactly +0.01 over v2, whatever the float rounding
    assert just_enough.promoted and just_enough.margin == pytest.approx(0.01)
    equal = gate(0.66, min_delta=0.0)  # equal never takes it, even with no margin asked
    assert not equal.promoted and equal.previous_score == 0.66
    assert str(client.get_model_version_by_alias("skin-classifier", "champion").version) == "4"

    # a retried gate for the champion decides the same and moves nothing
    again = registry.promote_if_better(
        "skin-classifier", "4", 0.66, rescore=_fixed_scores({}), min_delta=0.01
    )
    assert again.promoted and "already holds" in again.summary


def test_the_scorer_runs_the_registered_onnx_at_its_own_size_and_labels(champion_kit) -> None:
    from skin_mlops.modeling.promotion import SamePhotoScorer

    settings = champion_kit.settings
    experiment_id = tracking.connect(settings)
    photos = champion_kit.val_photos(per_label=2)
    reordered = ("blue_lesion", "red_lesion", "green_lesion")  # its own label order
    permutation = [2, 0, 1]  # output j of the model = label reordered[j] = colour index
    versions = {
        name: champion_kit.register(experiment_id, weights, 0.5, **export)[1]
        for name, weights, export in (
            ("perfect", champion_kit.perfect, {"image_size": 16}),
            ("wrong", champion_kit.wrong, {"image_size": 16}),
            ("bigger", champion_kit.perfect, {"image_size": 40}),
            ("reordered", champion_kit.perfect[:, permutation], {"labels": reordered}),
        )
    }
    scorer = SamePhotoScorer(photos.val_set, photos.load, settings)
    assert scorer("skin-classifier", versions["perfect"]) == 1.0
    assert scorer("skin-classifier", versions["wrong"]) == 0.0
    assert scorer("skin-classifier", versions["bigger"]) == 1.0  # preprocessed at 40 px
    assert scorer("skin-classifier", versions["reordered"]) == 1.0  # labels matched by name


def test_a_champion_this_code_cannot_run_is_replaced_with_the_reason(champion_kit) -> None:
    from skin_mlops.modeling.promotion import SamePhotoScorer

    settings = champion_kit.settings
    experiment_id = tracking.connect(settings)
    photos = champion_kit.val_photos(per_label=1)
    _, old = champion_kit.register(
        experiment_id, champion_kit.perfect, 0.99, preprocessing_id="another-preprocessing-v0"
    )
    scorer = SamePhotoScorer(photos.val_set, photos.load, settings)
    first = registry.promote_if_better("skin-classifier", old, 0.99, rescore=scorer)
    assert first.promoted
    _, new = champion_kit.register(experiment_id, champion_kit.wrong, 0.1)
    decision = registry.promote_if_better("skin-classifier", new, 0.1, rescore=scorer)
    assert decision.promoted and decision.previous_version == old
    assert decision.previous_score is None
    assert "cannot be re-scored" in decision.reason and "another-preprocessing" in decision.reason


def test_no_model_or_no_alias_is_no_champion(tmp_path, mlflow_db_template) -> None:
    import mlflow

    settings = _gate_settings(tmp_path, mlflow_db_template)
    tracking.connect(settings)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    assert registry.current_champion(client, "no-such-model") is None
    client.create_registered_model("no-alias-yet")
    assert registry.current_champion(client, "no-alias-yet") is None


def test_a_registry_error_while_reading_the_champion_is_one_line_not_no_champion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading an error as "no champion" would crown the candidate blindly."""
    import mlflow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens: MLflow's own error
    with pytest.raises(ServiceUnavailableError, match="failed while reading") as caught:
        registry.current_champion(mlflow.MlflowClient(uri), "skin-classifier")
    assert "\n" not in str(caught.value)
    with pytest.raises(ServiceUnavailableError, match="failed while reading"):
        registry.promote_if_better(
            "skin-classifier", "7", 0.9, rescore=_fixed_scores({}), tracking_uri=uri
        )


def test_two_gates_at_once_make_one_champion_and_the_second_sees_the_first(
    champion_kit,
) -> None:
    """Two trainings finishing together. Without the store's lock both read v1, both beat
    it, both move the alias and publish, and each believes it is champion."""
    import threading

    import mlflow

    from skin_mlops import export_format
    from skin_mlops.modeling.promotion import SamePhotoScorer

    settings = champion_kit.settings
    uri = settings.mlflow_tracking_uri
    experiment_id = tracking.connect(settings)
    photos = champion_kit.val_photos(per_label=2)
    _, v1 = champion_kit.register(experiment_id, champion_kit.wrong, 0.9)
    registry.promote_if_better("skin-classifier", v1, 0.9, rescore=_fixed_scores({}))
    candidates = [
        champion_kit.register(experiment_id, champion_kit.perfect, 1.0)[1] for _ in range(2)
    ]
    link = champion_kit.root / "runs" / "skin5-current"
    barrier = threading.Barrier(len(candidates))
    results: dict[str, object] = {}

    def gate(version: str) -> None:
        scorer = SamePhotoScorer(photos.val_set, photos.load, settings)

        def rescore(model_name: str, champion_version: str) -> float:
            score = scorer(model_name, champion_version)
            time.sleep(0.5)  # a slow re-score: the window between reading and moving
            return score

        def publish() -> Path:
            staging = export_format.new_version_dir(link, f"exp-{version}")
            champion_kit.export(staging, champion_kit.perfect, f"exp-{version}")
            return export_format.publish(staging, link, f"exp-{version}")

        barrier.wait(timeout=60)
        try:
            results[version] = registry.promote_if_better(
                "skin-classifier",
                version,
                1.0,
                rescore=rescore,
                min_delta=0.01,
                tracking_uri=uri,
                publish=publish,
            )
        except Exception as exc:  # noqa: BLE001 - shown by the assertion below
            results[version] = exc

    threads = [threading.Thread(target=gate, args=(v,)) for v in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    decisions = [results[v] for v in candidates]
    assert all(isinstance(d, registry.ChampionDecision) for d in decisions), decisions
    (winner,) = [d for d in decisions if d.promoted]
    (second,) = [d for d in decisions if not d.promoted]
    assert winner.previous_version == v1 and winner.previous_score == 0.0
    assert second.previous_version == winner.version, "the second gate compared with the first"
    assert second.previous_score == 1.0 and second.margin == 0.0
    client = mlflow.MlflowClient(uri)
    champion = client.get_model_version_by_alias("skin-classifier", "champion")
    assert str(champion.version) == winner.version
    published = export_format.read_signature(export_format.resolve_export_dir(link))
    assert published.model_version == f"exp-{winner.version}"
    assert winner.published_dir is not None and second.published_dir is None
    assert registry.champion_lock_path(uri).is_file()


def test_log_params_logs_more_than_one_store_batch_and_skips_none(tmp_path, mlflow_db_template):
    """250 params (MLflow sends 100 per request): all logged by one call, None ones left out."""
    import mlflow

    settings = load_settings(
        mlflow_tracking_uri=_store(tmp_path, mlflow_db_template),
        mlflow_artifact_root=tmp_path / "artifacts",
    )
    experiment_id = tracking.connect(settings)
    params = {f"p{i:03d}": i for i in range(250)} | {"fine_tune_lr": None}
    with mlflow.start_run(experiment_id=experiment_id) as run:
        tracking.log_params(params)
    logged = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(run.info.run_id).data.params
    assert logged == {key: str(value) for key, value in params.items() if value is not None}


def test_mlflow_signature_matches_the_model_contract():
    signature = tracking.mlflow_signature(224, 5)
    (image,) = signature.inputs.inputs
    (logits,) = signature.outputs.inputs
    assert image.name == "image" and image.shape == (-1, 224, 224, 3)
    assert logits.name == "logits" and logits.shape == (-1, 5)


# --- a real tracking server --------------------------------------------------------------


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_db_template: Path) -> Iterator[str]:
    """``mlflow server`` on a free port (SQLite backend, proxied artifacts in tmp_path)."""
    binary = Path(sys.executable).with_name("mlflow")
    if not binary.exists():
        missing_tool("mlflow binary not found next to the interpreter (uv sync)")
    shutil.copyfile(mlflow_db_template, tmp_path / "server.db")
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(binary),
            "server",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not answer within 120 s") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow  # ~50 s: server start-up + a full run over HTTP
@pytest.mark.service
def test_training_against_a_real_mlflow_server(
    tmp_path,
    mlflow_server,
    colour_dataset_factory,
    settings_factory,
    backbone_factory,
):
    import mlflow

    from skin_mlops.ingestion.run import run_ingestion
    from skin_mlops.modeling.options import TrainingOptions
    from skin_mlops.modeling.train import run_training

    dataset = colour_dataset_factory(tmp_path / "data", per_label={"train": 4, "val": 2})
    settings = settings_factory(tmp_path / "work", mlflow_tracking_uri=mlflow_server)
    run_ingestion(dataset.config_path, ["train", "val"], settings=settings)
    result = run_training(
        dataset.config_path,
        settings=settings,
        backbone=backbone_factory(),
        options=TrainingOptions(
            fine_tune_layers=0, epochs=3, views=1, batch_size=4, learning_rate=0.05
        ),
        show_progress=False,
    )
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3"
    assert [m.step for m in client.get_metric_history(result.run_id, "epoch_val_loss")] == [1, 2, 3]
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} >= {
        "plots/confusion_matrix.png",
        "plots/reliability_diagram.png",
    }
    champion = client.get_model_version_by_alias("skin-classifier", "champion")
    assert champion.run_id == result.run_id
    # artifacts went through the server into its artifact destination
    assert list((tmp_path / "server-artifacts").rglob("model.onnx"))
    # the same recipe again: the champion is downloaded through the server and re-scored on
    # the same photos; equal is not better
    again = run_training(
        dataset.config_path,
        settings=settings,
        backbone=backbone_factory(),
        options=TrainingOptions(
            fine_tune_layers=0, epochs=3, views=1, batch_size=4, learning_rate=0.05
        ),
        show_progress=False,
    )
    assert not again.promoted
    kept = client.get_run(again.run_id).data
    assert kept.tags["promotion_decision"] == "kept"
    assert kept.metrics["champion_val_macro_f1_same_photos"] == pytest.approx(
        result.metrics["val_macro_f1"], abs=1e-6
    )
