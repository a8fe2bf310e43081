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
from skin_mlops.modeling import tracking
from utils.tools import missing_tool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _store(tmp_path: Path, template: Path) -> str:
    shutil.copyfile(template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _tiny_onnx():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _log_candidate(experiment_id: str, score: float, model_name: str):
    """A run with a logged model, registered through register_and_promote."""
    import mlflow
    import mlflow.onnx

    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("val_macro_f1", score)
        info = mlflow.onnx.log_model(_tiny_onnx(), name="onnx-model", pip_requirements=["onnx"])
        return run.info.run_id, tracking.register_and_promote(
            info.model_uri, model_name, score, run_id=run.info.run_id
        )


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


def test_champion_moves_only_to_a_strictly_better_model(tmp_path, mlflow_db_template):
    import mlflow

    settings = load_settings(
        mlflow_tracking_uri=_store(tmp_path, mlflow_db_template),
        mlflow_artifact_root=tmp_path / "artifacts",
    )
    experiment_id = tracking.connect(settings)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    name = "skin-classifier"

    decisions = [_log_candidate(experiment_id, score, name)[1] for score in (0.5, 0.4, 0.5, 0.6)]
    assert [d.version for d in decisions] == ["1", "2", "3", "4"]
    assert [d.promoted for d in decisions] == [True, False, False, True]
    assert [d.previous_version for d in decisions] == [None, "1", "1", "1"]
    assert [d.previous_score for d in decisions] == [None, 0.5, 0.5, 0.5]
    assert "does not take @champion" in decisions[1].summary
    assert "0.4000 vs v1 0.5000" in decisions[1].summary
    assert str(client.get_model_version_by_alias(name, "champion").version) == "4"
    assert tracking.champion_score(client, name) == ("4", 0.6)


def test_an_equal_score_never_takes_champion_whatever_its_decimals(tmp_path, mlflow_db_template):
    import mlflow

    settings = load_settings(
        mlflow_tracking_uri=_store(tmp_path, mlflow_db_template),
        mlflow_artifact_root=tmp_path / "artifacts",
    )
    experiment_id = tracking.connect(settings)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    score = 0.74083612345678  # more decimals than a rounded tag would keep
    first = _log_candidate(experiment_id, score, "m")[1]
    second = _log_candidate(experiment_id, score, "m")[1]
    assert first.promoted and not second.promoted
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert tracking.champion_score(client, "m") == ("1", score)


def test_champion_score_falls_back_to_the_run_metric(tmp_path, mlflow_db_template):
    import mlflow

    settings = load_settings(
        mlflow_tracking_uri=_store(tmp_path, mlflow_db_template),
        mlflow_artifact_root=tmp_path / "artifacts",
    )
    experiment_id = tracking.connect(settings)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    _log_candidate(experiment_id, 0.7, "m")
    client.delete_model_version_tag("m", "1", tracking.SELECTION_METRIC)
    assert tracking.champion_score(client, "m") == ("1", 0.7)
    assert tracking.champion_score(client, "no-such-model") is None


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

    from skin_mlops.dataset import run_ingestion
    from skin_mlops.modeling.train import TrainingOptions, run_training

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
