"""What `up` does about the model, and the localhost Prometheus config it generates."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from ingest_fixtures import RawDataset
from skin_mlops.core.config import load_settings
from skin_mlops.core.errors import ConfigError
from skin_mlops.launcher.prometheus_config import (
    localhost_config,
    read_compose_config,
    write_localhost_config,
)
from skin_mlops.launcher.up import plan_model, plan_services
from utils.model_factory import TinyModels, publish_tiny_export
from utils.tools import require_tool

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"


def test_an_empty_data_raw_says_exactly_what_to_put_where(raw_dataset: RawDataset) -> None:
    plan = plan_model(raw_dataset.settings)
    assert plan.action == "wait-for-data"
    for split in ("train", "val"):
        assert f"data/raw/{split}/<label>/" in plan.detail  # as the config names it
    for label in raw_dataset.labels:
        assert label in plan.detail
    assert "503" in plan.detail  # and what the services do meanwhile


def test_photos_and_no_model_mean_ingest_and_train_first(raw_dataset: RawDataset) -> None:
    for i, label in enumerate(raw_dataset.labels):
        raw_dataset.add("train", label, f"t{i}.jpg", seed=i)
        raw_dataset.add("val", label, f"v{i}.jpg", seed=100 + i)
    plan = plan_model(raw_dataset.settings)
    assert plan.action == "train"
    assert f"{len(raw_dataset.labels)} train / {len(raw_dataset.labels)} val" in plan.detail
    services = plan_services(raw_dataset.settings, plan, with_airflow=False, prometheus=None)
    order = [s.name for s in services]
    assert order == ["mlflow", "pipeline", "api", "webapp"]
    api = services[2]
    assert api.depends_on == ("pipeline",) and api.health_url.endswith("/ready")


def test_a_published_model_is_served_without_training(
    raw_dataset: RawDataset, tiny_models: TinyModels
) -> None:
    link = raw_dataset.root / "runs" / "skin5-current"
    publish_tiny_export(link, tiny_models.v1, "v1")
    settings = raw_dataset.settings.model_copy(update={"model_source": str(link)})
    plan = plan_model(settings)
    assert plan.action == "serve" and "model v1" in plan.detail
    names = [s.name for s in plan_services(settings, plan, with_airflow=False, prometheus=None)]
    assert "pipeline" not in names


def test_a_tracking_server_given_is_not_started_again(raw_dataset: RawDataset) -> None:
    settings = raw_dataset.settings.model_copy(
        update={"mlflow_tracking_uri": "http://mlflow.example:5000"}
    )
    plan = plan_model(settings)
    names = [s.name for s in plan_services(settings, plan, with_airflow=False, prometheus=None)]
    assert "mlflow" not in names


def settings_for(tmp_path: Path):
    return load_settings(
        monitoring_dir=MONITORING,
        prometheus_data_dir=tmp_path / "prometheus",
        api_port=18000,
        webapp_metrics_port=19100,
        airflow_port=18080,
        prometheus_port=19090,
    )


def test_the_localhost_config_has_the_compose_jobs_on_localhost(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    compose = read_compose_config(settings)
    everything = localhost_config(compose, settings, {"api", "webapp", "airflow", "prometheus"})
    assert [j["job_name"] for j in everything["scrape_configs"]] == [
        j["job_name"] for j in compose["scrape_configs"]
    ]
    targets = {
        j["job_name"]: [t for s in j["static_configs"] for t in s["targets"]]
        for j in everything["scrape_configs"]
    }
    assert targets == {
        "skin-api": ["127.0.0.1:18000"],
        "skin-webapp": ["127.0.0.1:19100"],
        "airflow": ["127.0.0.1:18080"],
        "prometheus": ["127.0.0.1:19090"],
    }
    # What is not a target stays as in the compose file (paths, intervals, labels).
    for job, original in zip(everything["scrape_configs"], compose["scrape_configs"], strict=True):
        assert {k: v for k, v in job.items() if k != "static_configs"} == {
            k: v for k, v in original.items() if k != "static_configs"
        }
    assert everything["rule_files"] == [str(MONITORING / "prometheus" / "rules" / "*.yml")]
    without_airflow = localhost_config(compose, settings, {"api", "webapp", "prometheus"})
    assert "airflow" not in [j["job_name"] for j in without_airflow["scrape_configs"]]


def test_a_compose_target_up_does_not_know_is_an_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    compose = read_compose_config(settings)
    compose["scrape_configs"].append(
        {"job_name": "new", "static_configs": [{"targets": ["newservice:1234"]}]}
    )
    with pytest.raises(ConfigError, match="'newservice:1234'"):
        localhost_config(compose, settings, {"api"})


def test_a_missing_monitoring_folder_is_one_line(tmp_path: Path) -> None:
    settings = load_settings(monitoring_dir=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="MONITORING_DIR"):
        read_compose_config(settings)


def test_promtool_accepts_the_generated_config_and_its_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    path = write_localhost_config(settings_for(tmp_path), {"api", "webapp", "prometheus"})
    assert yaml.safe_load(path.read_text())["scrape_configs"]
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    assert "rule" in result.stdout + result.stderr  # the rule files were found and checked


def test_the_api_waits_for_mlflow_only_for_a_registry_source(
    raw_dataset: RawDataset, tiny_models: TinyModels
) -> None:
    link = raw_dataset.root / "runs" / "skin5-current"
    publish_tiny_export(link, tiny_models.v1, "v1")
    for source, expected in ((str(link), ()), ("models:/skin-classifier@champion", ("mlflow",))):
        settings = raw_dataset.settings.model_copy(update={"model_source": source})
        services = plan_services(
            settings, plan_model(settings), with_airflow=False, prometheus=None
        )
        api = next(s for s in services if s.name == "api")
        assert api.depends_on == expected
