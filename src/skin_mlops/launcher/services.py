"""What ``skin-mlops up`` starts: one :class:`Service` per process, built from settings.

Every service is a command line, the environment it adds, the ports it takes (with the
setting that moves each), its health URL and what a healthy answer is, and the services
it waits for. Children are started with this interpreter (``python -m skin_mlops.cli``,
``python -m mlflow``), so they run the same installed project as the launcher.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from skin_mlops.core.config import Settings
from skin_mlops.core.errors import ConfigError

LOCALHOST = "127.0.0.1"
# A health answer -> None when healthy, else why not (shown when the wait times out).
HealthCheck = Callable[[httpx.Response], str | None]


def http_ok(response: httpx.Response) -> str | None:
    return None if response.status_code == 200 else f"HTTP {response.status_code}"


def airflow_healthy(response: httpx.Response) -> str | None:
    """Airflow 3's ``/api/v2/monitor/health`` answers 200 always: read each component."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return "health answer is not JSON"
    sick = [
        name
        for name in ("metadatabase", "scheduler", "dag_processor", "triggerer")
        if isinstance(body.get(name), dict) and body[name].get("status") != "healthy"
    ]
    return f"not healthy yet: {', '.join(sick)}" if sick else None


@dataclass(frozen=True)
class Port:
    host: str
    port: int
    setting: str


@dataclass(frozen=True)
class Service:
    """One process of the platform as ``up`` runs it."""

    name: str
    title: str
    argv: list[str]
    health_url: str
    url: str  # what the user opens (printed when everything is healthy)
    healthy: HealthCheck = http_ok
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    depends_on: tuple[str, ...] = ()
    # A one-shot job (ingest + train) is done when it exits 0 and prints to this terminal.
    one_shot: bool = False
    stop_timeout_s: float = 15.0


def tracking_server_url(settings: Settings) -> str | None:
    """The MLflow server ``up`` starts (None: MLFLOW_TRACKING_URI is already a server)."""
    if settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        return None
    return f"http://{LOCALHOST}:{settings.mlflow_port}"


def common_env(settings: Settings) -> dict[str, str]:
    """What every child gets on top of this environment: where the others are."""
    return {
        "MLFLOW_TRACKING_URI": tracking_server_url(settings) or settings.mlflow_tracking_uri,
        "API_BASE_URL": f"http://{LOCALHOST}:{settings.api_port}",
        "PYTHONUNBUFFERED": "1",
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "skin_mlops.cli", *args]


def mlflow_service(settings: Settings) -> Service:
    """``mlflow server`` on the embedded store (SQLite + local artifact files), one worker."""
    artifacts = settings.mlflow_artifact_root.resolve()
    store = settings.mlflow_tracking_uri
    if store.startswith("sqlite:///"):
        db = Path(store.removeprefix("sqlite:///"))
        (db if db.is_absolute() else Path.cwd() / db).parent.mkdir(parents=True, exist_ok=True)
    url = f"http://{LOCALHOST}:{settings.mlflow_port}"
    return Service(
        name="mlflow",
        title="MLflow tracking + registry",
        argv=[
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            store,
            # Artifacts as plain files under MLFLOW_ARTIFACT_ROOT, not proxied: an experiment
            # the server creates then works the same with the server (`up`) and without it
            # (`skin-mlops train` on the SQLite store), where mlflow-artifacts:/ URIs fail.
            "--default-artifact-root",
            artifacts.as_uri(),
            "--no-serve-artifacts",
            "--host",
            LOCALHOST,
            "--port",
            str(settings.mlflow_port),
            "--workers",
            "1",
        ],
        # No background job runner: nothing here uses MLflow jobs, and it forks workers.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        health_url=f"{url}/health",
        url=url,
        ports=(Port(LOCALHOST, settings.mlflow_port, "MLFLOW_PORT"),),
    )


def pipeline_service(settings: Settings, depends_on: tuple[str, ...]) -> Service:
    """``skin-mlops pipeline`` (ingest + train), its progress on this terminal."""
    return Service(
        name="pipeline",
        title="ingest + train",
        argv=_cli("pipeline"),
        health_url="",
        url="",
        one_shot=True,
        depends_on=depends_on,
        stop_timeout_s=30.0,
    )


def api_service(settings: Settings, *, expect_model: bool, depends_on: tuple[str, ...]) -> Service:
    """The prediction API; healthy = ``/ready`` when a model is expected, else ``/health``."""
    url = f"http://{LOCALHOST}:{settings.api_port}"
    return Service(
        name="api",
        title="Prediction API",
        argv=_cli("serve", "--host", settings.api_host, "--port", str(settings.api_port)),
        health_url=f"{url}/ready" if expect_model else f"{url}/health",
        url=f"{url}/docs",
        ports=(Port(settings.api_host, settings.api_port, "API_PORT"),),
        depends_on=depends_on,
    )


def webapp_service(settings: Settings) -> Service:
    if settings.webapp_metrics_port == 0:
        raise ConfigError(
            "WEBAPP_METRICS_PORT=0 (any port) cannot be scraped by Prometheus; set a port"
        )
    url = f"http://{LOCALHOST}:{settings.webapp_port}"
    return Service(
        name="webapp",
        title="Web app",
        argv=_cli("webapp", "--host", settings.webapp_host, "--port", str(settings.webapp_port)),
        health_url=f"{url}/_stcore/health",
        url=url,
        ports=(
            Port(settings.webapp_host, settings.webapp_port, "WEBAPP_PORT"),
            Port(settings.webapp_metrics_host, settings.webapp_metrics_port, "WEBAPP_METRICS_PORT"),
        ),
        depends_on=("api",),
    )


def prometheus_service(settings: Settings, binary: str, config: Path) -> Service:
    url = f"http://{LOCALHOST}:{settings.prometheus_port}"
    return Service(
        name="prometheus",
        title="Prometheus",
        argv=[
            binary,
            f"--config.file={config.resolve()}",
            f"--storage.tsdb.path={(settings.prometheus_data_dir / 'tsdb').resolve()}",
            f"--web.listen-address={LOCALHOST}:{settings.prometheus_port}",
        ],
        health_url=f"{url}/-/ready",
        url=f"{url}/targets",
        ports=(Port(LOCALHOST, settings.prometheus_port, "PROMETHEUS_PORT"),),
    )


def airflow_binary() -> str:
    binary = Path(sys.executable).with_name("airflow")
    if not binary.exists():
        raise ConfigError(
            "--with-airflow needs Airflow: install its group (uv sync --group airflow)"
        )
    return str(binary)


def airflow_service(settings: Settings, dags_folder: Path, depends_on: tuple[str, ...]) -> Service:
    """``airflow standalone`` (SQLite, LocalExecutor) with the project's DAGs and plugin.

    Every Airflow process must share the JWT and API secrets: they are made for this run.
    Standalone starts its children with ``airflow`` from PATH, so the venv comes first.
    """
    home = settings.airflow_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    url = f"http://{LOCALHOST}:{settings.airflow_port}"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder.resolve()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__HOST": LOCALHOST,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return Service(
        name="airflow",
        title="Airflow (standalone)",
        argv=[airflow_binary(), "standalone"],
        env=env,
        health_url=f"{url}/api/v2/monitor/health",
        healthy=airflow_healthy,
        url=url,
        ports=(Port(LOCALHOST, settings.airflow_port, "AIRFLOW_PORT"),),
        depends_on=depends_on,
        stop_timeout_s=30.0,
    )


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")
