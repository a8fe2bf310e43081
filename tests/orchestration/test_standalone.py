"""One real run outside ``dag.test()``: ``airflow standalone`` (LocalExecutor, SQLite), the
training pipeline triggered from the CLI with a conf, ``/admin/metrics`` scraped by a real
Prometheus (Debian's package). Slow: about 3 minutes on the 2-core box."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ingest_fixtures import RawDataset
from utils.servers import free_port, start_command, stop_command, wait_http
from utils.tools import require_tool

from .conftest import DAGS
from .test_dags import populate

pytestmark = [pytest.mark.slow, pytest.mark.service, pytest.mark.timeout(900)]


def airflow_cli(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    airflow = str(Path(sys.executable).with_name("airflow"))
    return subprocess.run(
        [airflow, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


def wait_for_run(env: dict[str, str], dag_id: str, run_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = "unknown"
    while time.monotonic() < deadline:
        out = airflow_cli(env, "dags", "list-runs", dag_id, "-o", "json")
        lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
        if out.returncode == 0 and lines:
            runs = {r["run_id"]: r["state"] for r in json.loads(lines[-1])}
            state = runs.get(run_id, state)
            if state in ("success", "failed"):
                return state
        time.sleep(3)
    return state


def test_standalone_runs_the_pipeline_and_prometheus_scrapes_it(
    tmp_path: Path, platform_env: RawDataset
) -> None:
    prometheus = require_tool("prometheus", "apt-get install prometheus")
    populate(platform_env, per_label=4)
    port = free_port()
    home = tmp_path / "airflow-home"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "test-jwt-secret-" + "x" * 32,
        "AIRFLOW__API__SECRET_KEY": "test-secret-key",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log = tmp_path / "standalone.log"
    standalone = start_command(
        [str(Path(sys.executable).with_name("airflow")), "standalone"],
        env,
        log,
        cwd=platform_env.root,
    )
    prom = None
    try:
        wait_http(f"http://127.0.0.1:{port}/admin/metrics", standalone, log, timeout_s=240)
        refused = airflow_cli(
            env, "dags", "trigger", "train_model_pipeline", "--conf", '{"epochs": -1}'
        )
        assert refused.returncode != 0
        assert "epochs" in refused.stdout + refused.stderr
        conf = {"epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "image_size": 64}
        run_id = f"manual-test-{int(time.time())}"
        trigger = airflow_cli(
            env,
            "dags",
            "trigger",
            "train_model_pipeline",
            "--conf",
            json.dumps(conf),
            "--run-id",
            run_id,
        )
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        # Unpaused after the trigger: the manual run is queued first (max_active_runs=1).
        assert airflow_cli(env, "dags", "unpause", "train_model_pipeline").returncode == 0
        state = wait_for_run(env, "train_model_pipeline", run_id, timeout_s=480)
        assert state == "success", log.read_text(errors="replace")[-3000:]

        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: airflow\n"
            "    metrics_path: /admin/metrics\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        )
        prom_log = tmp_path / "prometheus.log"
        prom = start_command(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            {},
            prom_log,
        )
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", prom, prom_log)
        query = 'airflow_dag_runs{dag_id="train_model_pipeline",state="success"}'
        deadline = time.monotonic() + 60
        result: list = []
        while time.monotonic() < deadline and not result:
            answer = httpx.get(
                f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": query}, timeout=5
            ).json()
            result = answer["data"]["result"]
            time.sleep(1)
        assert result and float(result[0]["value"][1]) >= 1
        targets = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/targets", timeout=5).json()
        assert [t["health"] for t in targets["data"]["activeTargets"]] == ["up"]
    finally:
        if prom is not None:
            stop_command(prom)
        stop_command(standalone, timeout_s=30)
