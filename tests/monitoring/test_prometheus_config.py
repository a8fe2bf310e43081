"""monitoring/prometheus/prometheus.yml: checked by the real ``promtool`` and wired to the API.

``promtool`` comes with Debian's ``prometheus`` package (.ci/run installs it). Without it the
promtool tests skip with a loud reason (and fail under CI=true); the wiring checks still run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from utils.tools import missing_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_tool(
            "promtool not found: the Prometheus config was not validated "
            "(apt-get install prometheus provides promtool)"
        )
    return path


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_promtool_accepts_the_config() -> None:
    result = check_config(PROMETHEUS_CONFIG)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output


def test_promtool_rejects_a_broken_copy(tmp_path: Path) -> None:
    """The check above can fail: an invalid scrape interval is refused by promtool."""
    broken = tmp_path / "prometheus.yml"
    broken.write_text(
        PROMETHEUS_CONFIG.read_text(encoding="utf-8").replace(
            "scrape_interval: 15s", "scrape_interval: fifteen", 1
        ),
        encoding="utf-8",
    )
    assert "fifteen" in broken.read_text(encoding="utf-8")
    result = check_config(broken)
    assert result.returncode != 0
    assert "fifteen" in result.stdout + result.stderr


def test_the_api_is_scraped_on_its_container_port() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["skin-api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for group in api["static_configs"] for t in group["targets"]]
    assert targets == ["api:8000"]

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    api_ports = compose["services"]["api"]["ports"]
    assert any(str(p).endswith(":8000") for p in api_ports), "api listens on 8000 in compose"


def test_the_webapp_exporter_and_airflow_metrics_are_scraped() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    webapp = jobs["skin-webapp"]
    assert [t for g in webapp["static_configs"] for t in g["targets"]] == ["webapp:9100"]
    assert compose["services"]["webapp"]["environment"]["WEBAPP_METRICS_PORT"] == "9100"
    airflow = jobs["airflow"]
    assert airflow["metrics_path"] == "/admin/metrics"
    assert [t for g in airflow["static_configs"] for t in g["targets"]] == [
        "airflow-webserver:8080"
    ]
    assert compose["services"]["airflow-webserver"]["command"] == "api-server"
