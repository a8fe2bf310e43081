"""The Airflow plugin: mounts ``/admin/metrics`` on the API server.

Registered through the ``airflow.plugins`` entry point only (see ``pyproject.toml``); a copy
in the plugins folder too would be skipped and logged as an import error. Restart the API
server after editing.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from skin_mlops.orchestration.metrics_app import create_app


class SkinMlopsPlugin(AirflowPlugin):
    """``/admin/metrics`` and ``/admin/metrics/``: Prometheus text of Airflow's state."""

    name = "skin_mlops"
    fastapi_apps = [  # noqa: RUF012 (Airflow reads this class attribute)
        {"app": create_app(), "url_prefix": "/admin", "name": "skin-mlops metrics"}
    ]
