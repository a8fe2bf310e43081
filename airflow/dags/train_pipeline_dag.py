"""Weekly training: re-ingest, train, promote only when better, tell the API.

``sync_dataset`` -> ``train_model`` -> ``evaluate_and_promote`` -> ``reload_api``; each task
calls a function of :mod:`skin_mlops.orchestration.tasks`. Trigger one with
``airflow dags trigger train_model_pipeline --conf '{"epochs": 10, "learning_rate": 5e-4}'``;
a conf that breaks a param's schema is refused before any task runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from skin_mlops.orchestration.params import TRAIN_PARAMS


@dag(
    dag_id="train_model_pipeline",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["skin-mlops", "training"],
    params={
        name: Param(default, description=description, **schema)
        for name, (default, schema, description) in TRAIN_PARAMS.items()
    },
    doc_md=__doc__,
)
def train_model_pipeline() -> None:
    @task(retries=3, retry_delay=timedelta(minutes=2), execution_timeout=timedelta(hours=1))
    def sync_dataset() -> dict:
        from skin_mlops.orchestration import airflow_glue, tasks

        return airflow_glue.call(tasks.ingest)

    # No blind retries of a long job after a real error: only store/MLflow outages retry.
    @task(retries=1, retry_delay=timedelta(minutes=5), execution_timeout=timedelta(hours=6))
    def train_model(ingested: dict) -> dict:
        from skin_mlops.orchestration import airflow_glue, tasks
        from skin_mlops.orchestration.params import run_params

        context = get_current_context()
        params = run_params(context["params"], context["dag_run"].conf)
        return airflow_glue.call(tasks.train, params)

    @task(retries=2, retry_delay=timedelta(minutes=1), execution_timeout=timedelta(minutes=30))
    def evaluate_and_promote(candidate: dict) -> dict:
        from skin_mlops.orchestration import airflow_glue, tasks

        return airflow_glue.call(tasks.evaluate_and_promote, candidate)

    @task(retries=2, retry_delay=timedelta(seconds=30), execution_timeout=timedelta(minutes=5))
    def reload_api(decision: dict) -> dict:
        from skin_mlops.orchestration import airflow_glue, tasks

        return airflow_glue.skip_unless_done(airflow_glue.call(tasks.reload_api, decision))

    reload_api(evaluate_and_promote(train_model(sync_dataset())))


train_model_pipeline()
