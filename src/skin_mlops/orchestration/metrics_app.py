"""``/admin/metrics``: Airflow's state as Prometheus text, read from its metadata DB.

Mounted on the Airflow API server by :mod:`skin_mlops.orchestration.plugin` (prefix
``/admin``; both ``/admin/metrics`` and ``/admin/metrics/`` answer). Plugin apps get no
authentication from Airflow: this one serves counts only (no conf, no logs), for
Prometheus to scrape. Each scrape runs a handful of aggregate queries in a sync route
(FastAPI's thread pool); a DB error is a 503 with one line, never a trace.

Series (gauges of what the DB holds now, labels low-cardinality):

=================================================  ==========================================
``airflow_up``                                     1 when the DB answered this scrape
``airflow_api_server_uptime_seconds``              since this API server process started
``airflow_scheduler_heartbeat_age_seconds``        now - the newest SchedulerJob heartbeat
``airflow_scheduler_up``                           1 if a scheduler job is running
``airflow_task_instances{state}``                  task instances by state
``airflow_queue_depth``                            queued + scheduled task instances
``airflow_dag_runs{dag_id,state}``                 DAG runs by DAG and state (0 if none)
``airflow_dag_last_run_duration_seconds{dag_id}``  duration of the newest finished run
``airflow_dag_last_success_timestamp_seconds``     end of the newest successful run (UNIX s)
``airflow_dag_import_errors``                      files the DAG processor could not import
=================================================  ==========================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

log = logging.getLogger(__name__)
STARTED_AT = time.time()
TASK_STATES = (
    "scheduled",
    "queued",
    "running",
    "success",
    "failed",
    "up_for_retry",
    "upstream_failed",
    "skipped",
    "deferred",
    "removed",
    "restarting",
    "up_for_reschedule",
)

RUN_STATES = ("queued", "running", "success", "failed")

SessionFactory = Callable[[], AbstractContextManager[Any]]


def _default_session() -> AbstractContextManager[Any]:
    from airflow.utils.session import create_session

    return create_session()


def _timestamp(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def collect(session_factory: SessionFactory = _default_session) -> bytes:
    """Query the metadata DB and render the series above (raises on a DB error)."""
    from airflow.jobs.job import Job, most_recent_job
    from airflow.models import DagModel, DagRun, TaskInstance
    from airflow.models.errors import ParseImportError
    from sqlalchemy import func, select

    registry = CollectorRegistry(auto_describe=True)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    now = time.time()
    with session_factory() as session:
        task_counts = dict(
            session.execute(
                select(TaskInstance.state, func.count()).group_by(TaskInstance.state)
            ).all()
        )
        known_dags = list(session.scalars(select(DagModel.dag_id)).all())
        run_counts = session.execute(
            select(DagRun.dag_id, DagRun.state, func.count()).group_by(DagRun.dag_id, DagRun.state)
        ).all()
        finished = session.execute(
            select(DagRun.dag_id, DagRun.state, DagRun.start_date, DagRun.end_date)
            .where(DagRun.end_date.is_not(None))
            .order_by(DagRun.end_date.desc())
        ).all()
        import_errors = session.scalar(select(func.count()).select_from(ParseImportError)) or 0
        scheduler: Job | None = most_recent_job("SchedulerJob", session=session)
        scheduler_heartbeat = _timestamp(scheduler.latest_heartbeat) if scheduler else None
        scheduler_running = bool(scheduler and str(scheduler.state) == "running")

    gauge("airflow_up", "1 when the metadata DB answered this scrape.").set(1)
    gauge("airflow_api_server_uptime_seconds", "Seconds since this API server started.").set(
        now - STARTED_AT
    )
    age = gauge(
        "airflow_scheduler_heartbeat_age_seconds",
        "Seconds since the newest scheduler heartbeat (NaN: no scheduler ever ran).",
    )
    age.set(now - scheduler_heartbeat if scheduler_heartbeat else float("nan"))
    gauge("airflow_scheduler_up", "1 if a scheduler job is in the running state.").set(
        1 if scheduler_running else 0
    )
    by_state = gauge("airflow_task_instances", "Task instances by state.", ("state",))
    for state in TASK_STATES:
        by_state.labels(state=state).set(0)
    for state, count in task_counts.items():
        by_state.labels(state=str(state or "none")).set(count)
    gauge("airflow_queue_depth", "Task instances queued or scheduled, waiting for a slot.").set(
        task_counts.get("queued", 0) + task_counts.get("scheduled", 0)
    )
    runs = gauge("airflow_dag_runs", "DAG runs by DAG and state.", ("dag_id", "state"))
    # Every known DAG's run states exist at 0 from the start: a first failure is then a
    # step 0 -> 1 that delta()/increase() see, not a new series already at 1.
    for dag_id in known_dags:
        for state in RUN_STATES:
            runs.labels(dag_id=dag_id, state=state).set(0)
    for dag_id, state, count in run_counts:
        runs.labels(dag_id=dag_id, state=str(state)).set(count)
    duration = gauge(
        "airflow_dag_last_run_duration_seconds",
        "Duration of the newest finished run of each DAG.",
        ("dag_id",),
    )
    success = gauge(
        "airflow_dag_last_success_timestamp_seconds",
        "End time (UNIX seconds) of the newest successful run of each DAG.",
        ("dag_id",),
    )
    seen_duration: set[str] = set()
    seen_success: set[str] = set()
    for dag_id, state, start, end in finished:
        started, ended = _timestamp(start), _timestamp(end)
        if ended is None:
            continue
        if dag_id not in seen_duration and started is not None:
            seen_duration.add(dag_id)
            duration.labels(dag_id=dag_id).set(ended - started)
        if dag_id not in seen_success and str(state) == "success":
            seen_success.add(dag_id)
            success.labels(dag_id=dag_id).set(ended)
    gauge("airflow_dag_import_errors", "DAG files that failed to import.").set(import_errors)
    return generate_latest(registry)


def create_app(session_factory: SessionFactory = _default_session) -> FastAPI:
    """The FastAPI app the plugin mounts at ``/admin``."""
    app = FastAPI(
        title="skin-mlops Airflow metrics",
        description="Prometheus text of Airflow's metadata DB (no authentication: counts only).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def metrics() -> PlainTextResponse:
        try:
            body = collect(session_factory)
        except Exception as exc:  # any DB failure: one line for Prometheus and the log
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            log.warning("metrics scrape failed: %s", reason)
            return PlainTextResponse(
                f"airflow metadata DB unavailable: {type(exc).__name__}\n", status_code=503
            )
        return PlainTextResponse(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/metrics/", metrics, methods=["GET"])
    return app
