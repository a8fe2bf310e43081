"""The MLflow server `up` starts shares its store with the embedded default, both ways."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from skin_mlops.core.config import load_settings
from skin_mlops.launcher.services import mlflow_service
from skin_mlops.launcher.up import Launcher
from utils.servers import free_port

pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]


def test_a_run_logged_through_up_s_server_is_continued_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = load_settings(
        mlflow_tracking_uri=store,
        mlflow_artifact_root=tmp_path / "artifacts",
        mlflow_port=free_port(),
        logs_dir=tmp_path / "logs",
    )
    launcher = Launcher(settings, [mlflow_service(settings)], Console(file=io.StringIO()))
    try:
        launcher.start_all()
        mlflow.set_tracking_uri(f"http://127.0.0.1:{settings.mlflow_port}")
        experiment = mlflow.create_experiment("through-the-server")
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text("served", "note.txt")
    finally:
        launcher.stop_all()
    # Without the server, on the same SQLite store (what `skin-mlops train` does):
    mlflow.set_tracking_uri(store)
    found = mlflow.get_experiment(experiment)
    assert found.artifact_location.startswith("file://"), found.artifact_location
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_text("direct", "note.txt")
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "served"
    assert (tmp_path / "artifacts").is_dir()
