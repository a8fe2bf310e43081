"""Daily ingestion of ``data/raw`` into the metadata DB and the object store.

Thin on purpose: the task calls :func:`skin_mlops.orchestration.tasks.ingest`. The dataset
config comes from the Airflow Variable ``skin_dataset_config`` when set, else the
platform's ``DATASET_CONFIG`` setting. A summary with failures fails the run; store
errors are retried. Only counts go to XCom.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Variable, dag, task


@dag(
    dag_id="ingestion",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["skin-mlops", "data"],
    doc_md=__doc__,
)
def ingestion() -> None:
    @task(retries=3, retry_delay=timedelta(minutes=2), execution_timeout=timedelta(hours=1))
    def ingest_raw_data() -> dict:
        from skin_mlops.orchestration import airflow_glue, tasks

        config = Variable.get("skin_dataset_config", default=None)
        return airflow_glue.call(tasks.ingest, config)

    ingest_raw_data()


ingestion()
