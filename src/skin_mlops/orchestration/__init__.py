"""Orchestration: what the Airflow DAGs call, and the Airflow plugin.

* :mod:`~skin_mlops.orchestration.tasks` - one plain function per DAG task (ingest, train,
  promote, reload the API), returning small JSON-friendly dicts for XCom; no Airflow import.
* :mod:`~skin_mlops.orchestration.params` - the training DAG's params and their JSON schema.
* :mod:`~skin_mlops.orchestration.metrics_app` - ``/admin/metrics``: Airflow's state in
  Prometheus text, read from the metadata DB.
* :mod:`~skin_mlops.orchestration.plugin` - the Airflow plugin mounting it (entry point
  ``airflow.plugins``).

The DAG files under ``airflow/dags/`` are thin: they import ``airflow.sdk`` and call these.
"""
