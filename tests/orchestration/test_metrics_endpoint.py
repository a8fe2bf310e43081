"""``/admin/metrics``: the real plugin app on a migrated temporary AIRFLOW_HOME."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ingest_fixtures import RawDataset
from utils.prometheus import parse_metrics
from utils.tools import require_tool

from .test_dags import populate

SERIES = (
    "airflow_up",
    "airflow_api_server_uptime_seconds",
    "airflow_scheduler_heartbeat_age_seconds",
    "airflow_scheduler_up",
    "airflow_task_instances",
    "airflow_queue_depth",
    "airflow_dag_runs",
    "airflow_dag_last_run_duration_seconds",
    "airflow_dag_last_success_timestamp_seconds",
    "airflow_dag_import_errors",
)


@pytest.fixture
def client(airflow_db: Path) -> TestClient:
    from skin_mlops.orchestration.plugin import SkinMlopsPlugin

    (entry,) = SkinMlopsPlugin.fastapi_apps
    assert entry["url_prefix"] == "/admin"
    return TestClient(entry["app"])


def test_both_urls_answer_prometheus_text_with_every_series(client: TestClient) -> None:
    for path in ("/metrics", "/metrics/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        for name in SERIES:
            assert f"# TYPE {name} gauge" in response.text, name
    values = parse_metrics(client.get("/metrics").text)
    assert values["airflow_up"] == 1
    assert values['airflow_task_instances{state="queued"}'] >= 0
    assert values["airflow_dag_import_errors"] == 0


def test_every_known_dag_has_its_run_states_at_zero_before_any_run(
    client: TestClient,
    dagbag,  # noqa: ANN001
) -> None:
    """As the DAG processor does: the DAG files written to the DB, no run yet."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    from skin_mlops.orchestration.metrics_app import RUN_STATES

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)
    values = parse_metrics(client.get("/metrics").text)
    for dag_id in dagbag.dags:
        for state in RUN_STATES:
            assert f'airflow_dag_runs{{dag_id="{dag_id}",state="{state}"}}' in values


def test_values_change_after_a_dag_run(
    client: TestClient,
    dagbag,  # noqa: ANN001
    platform_env: RawDataset,
) -> None:
    before = parse_metrics(client.get("/metrics").text)
    populate(platform_env, per_label=1)
    dagbag.dags["ingestion"].test()
    after = parse_metrics(client.get("/metrics").text)
    key = 'airflow_dag_runs{dag_id="ingestion",state="success"}'
    assert after[key] == before.get(key, 0) + 1
    assert after['airflow_task_instances{state="success"}'] > before.get(
        'airflow_task_instances{state="success"}', 0
    )
    assert 'airflow_dag_last_success_timestamp_seconds{dag_id="ingestion"}' in after
    assert after['airflow_dag_last_run_duration_seconds{dag_id="ingestion"}'] >= 0


def test_a_db_error_is_a_503_with_one_line(tmp_path: Path) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from skin_mlops.orchestration.metrics_app import create_app

    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no Airflow tables

    @contextmanager
    def broken_session():  # noqa: ANN202
        with Session(engine) as session:
            yield session

    response = TestClient(create_app(broken_session)).get("/metrics")
    assert response.status_code == 503
    assert response.text.count("\n") == 1 and "unavailable" in response.text
    assert "Traceback" not in response.text


def test_promtool_accepts_the_exposition(client: TestClient) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    text = client.get("/metrics").text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_plugin_is_registered_through_the_entry_point(airflow_db: Path) -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    result = subprocess.run([airflow, "plugins"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    assert "skin_mlops" in result.stdout and "airflow.plugins" in result.stdout
