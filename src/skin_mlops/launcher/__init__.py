"""``skin-mlops up``: the platform on one machine (MLflow, API, web app, Prometheus and,
with ``--with-airflow``, Airflow standalone), started in dependency order, health-checked,
and stopped together."""
