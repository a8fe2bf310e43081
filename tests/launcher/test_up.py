"""``skin-mlops up`` for real: every service on free ports with a tiny model, then SIGTERM.

The launcher runs as a subprocess in a fresh project folder (no ``.env`` of the checkout),
with the checkout's ``monitoring/`` for Prometheus' config and rules.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from utils.images import encode, two_tone
from utils.model_factory import TinyModels, publish_tiny_export
from utils.servers import free_port
from utils.tools import require_tool

pytestmark = [pytest.mark.service, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    ports: dict[str, int]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


@pytest.fixture
def project(tmp_path: Path, tiny_models: TinyModels) -> Project:
    root = tmp_path / "project"
    link = root / "runs" / "skin5-current"
    publish_tiny_export(link, tiny_models.v1, "v1")
    ports = {
        name: free_port() for name in ("api", "webapp", "webapp_metrics", "mlflow", "prometheus")
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW"))}
    for key in ("STORAGE_BACKEND", "MODEL_SOURCE", "MODEL_DIR", "API_BASE_URL", "ADMIN_TOKEN"):
        env.pop(key, None)
    env.update(
        {
            "API_PORT": str(ports["api"]),
            "WEBAPP_PORT": str(ports["webapp"]),
            "WEBAPP_METRICS_PORT": str(ports["webapp_metrics"]),
            "MLFLOW_PORT": str(ports["mlflow"]),
            "PROMETHEUS_PORT": str(ports["prometheus"]),
            "MODEL_SOURCE": str(link),
            "MODEL_DIR": str(link),
            "MONITORING_DIR": str(REPO / "monitoring"),
            "UP_HEALTH_TIMEOUT_S": "180",
        }
    )
    return Project(root, env, ports)


def start_up(project: Project, log_name: str = "up.out") -> tuple[subprocess.Popen[bytes], Path]:
    log = project.root / log_name
    process = subprocess.Popen(
        [sys.executable, "-m", "skin_mlops.cli", "up"],
        cwd=project.root,
        env=project.env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, log


def wait_until_up(process: subprocess.Popen[bytes], log: Path, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "all healthy in" in text:
            return text
        if process.poll() is not None:
            pytest.fail(f"up exited with {process.returncode}:\n{text[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"up not healthy within {timeout_s} s:\n{log.read_text(errors='replace')[-4000:]}")


def wait_targets_up(project: Project, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    targets: list[dict] = []
    while time.monotonic() < deadline:
        answer = httpx.get(f"{project.url('prometheus')}/api/v1/targets", timeout=5).json()
        targets = answer["data"]["activeTargets"]
        if targets and all(t["health"] == "up" for t in targets):
            return targets
        time.sleep(1)
    states = [(t["labels"]["job"], t["health"], t.get("lastError")) for t in targets]
    pytest.fail(f"targets not all up: {states}")


def family_of(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def all_gone(processes: list[psutil.Process], timeout_s: float = 10) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = []
        for proc in processes:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:  # a failed test must not leave a platform running
        family = family_of(process.pid) if process.poll() is None else []
        for proc in [*family]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_up_starts_every_service_healthy_and_sigterm_leaves_no_child(
    project: Project, cleanup: list[subprocess.Popen[bytes]]
) -> None:
    require_tool("prometheus", "apt-get install prometheus")
    process, log = start_up(project)
    cleanup.append(process)
    text = wait_until_up(process, log)

    assert "model v1 from" in text
    for name in ("api", "webapp", "mlflow", "prometheus"):
        assert project.url(name) in text  # every URL printed
    assert httpx.get(f"{project.url('mlflow')}/health", timeout=5).status_code == 200
    assert httpx.get(f"{project.url('api')}/ready", timeout=5).json()["ready"] is True
    assert httpx.get(f"{project.url('webapp')}/_stcore/health", timeout=5).text == "ok"
    assert httpx.get(f"{project.url('prometheus')}/-/ready", timeout=5).status_code == 200
    photo = encode(two_tone("red"), "JPEG")
    answer = httpx.post(
        f"{project.url('api')}/predict", files={"file": ("a.jpg", photo, "image/jpeg")}, timeout=30
    )
    assert answer.status_code == 200 and answer.json()["model_version"] == "v1"

    targets = wait_targets_up(project)
    jobs = {t["labels"]["job"]: t["scrapeUrl"] for t in targets}
    assert set(jobs) == {"skin-api", "skin-webapp", "prometheus"}  # no Airflow without the flag
    assert jobs["skin-webapp"] == f"{project.url('webapp_metrics')}/metrics"
    for service in ("mlflow", "api", "webapp", "prometheus"):
        assert (project.root / "logs" / f"{service}.log").stat().st_size > 0

    family = family_of(process.pid)
    assert len(family) >= 4
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0
    assert all_gone(family) == []
    assert not (project.root / "logs" / ".up-processes.json").exists()
    for name in ("api", "webapp", "mlflow", "prometheus"):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", project.ports[name]))  # every port released


def test_a_busy_port_stops_up_before_anything_starts(project: Project) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", project.ports["webapp"]))
        busy.listen()
        result = subprocess.run(
            [sys.executable, "-m", "skin_mlops.cli", "up"],
            cwd=project.root,
            env=project.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [
        f"error: port {project.ports['webapp']} on 127.0.0.1 is already in use; set WEBAPP_PORT "
        "(or --port) to another port"
    ]
    assert not (project.root / "logs").exists() or not list((project.root / "logs").glob("*.log"))


@pytest.mark.slow
def test_after_a_sigkilled_up_the_next_one_sweeps_its_children(
    project: Project, cleanup: list[subprocess.Popen[bytes]]
) -> None:
    first, log = start_up(project, "first.out")
    cleanup.append(first)
    wait_until_up(first, log)
    family = family_of(first.pid)
    first.kill()  # cannot be trapped: the children live on
    first.wait(timeout=10)
    assert all_gone(family, timeout_s=1)
    second, log2 = start_up(project, "second.out")
    cleanup.append(second)
    text = wait_until_up(second, log2)
    assert "stopped what an earlier `up` left running" in text
    assert all_gone(family) == []
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=90) == 0


@pytest.mark.slow
def test_up_with_airflow_adds_a_healthy_airflow_that_prometheus_scrapes(
    project: Project, cleanup: list[subprocess.Popen[bytes]]
) -> None:
    require_tool("prometheus", "apt-get install prometheus")
    project.ports["airflow"] = free_port()
    project.env.update(
        {
            "AIRFLOW_PORT": str(project.ports["airflow"]),
            "AIRFLOW_HOME": str(project.root / "airflow-home"),
            "AIRFLOW_DAGS_DIR": str(REPO / "airflow" / "dags"),
            "UP_HEALTH_TIMEOUT_S": "300",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "skin_mlops.cli", "up", "--with-airflow"],
        cwd=project.root,
        env=project.env,
        stdout=(project.root / "up.out").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cleanup.append(process)
    text = wait_until_up(process, project.root / "up.out", timeout_s=420)
    assert project.url("airflow") in text and "Airflow login: admin" in text
    health = httpx.get(f"{project.url('airflow')}/api/v2/monitor/health", timeout=10).json()
    assert health["metadatabase"]["status"] == "healthy"
    assert health["scheduler"]["status"] == "healthy"
    targets = wait_targets_up(project, timeout_s=90)
    assert {t["labels"]["job"] for t in targets} == {
        "skin-api",
        "skin-webapp",
        "airflow",
        "prometheus",
    }
    family = family_of(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    assert all_gone(family) == []
