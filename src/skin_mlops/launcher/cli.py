"""``skin-mlops up``: the command line of :mod:`skin_mlops.launcher.up`.

Imports nothing heavy at module level (:mod:`skin_mlops.cli` imports this module at start).
"""

from __future__ import annotations

from typing import Annotated

import typer


def up_command(
    with_airflow: Annotated[
        bool,
        typer.Option("--with-airflow", help="also run Airflow standalone with the project's DAGs"),
    ] = False,
) -> None:
    """Run the whole platform here: MLflow, the API, the web app and Prometheus.

    Trains a model first when none is published and data/raw holds photos.
    Ctrl-C (or SIGTERM) stops everything; each service logs to logs/<service>.log.
    """
    from rich.console import Console

    from skin_mlops.core.config import get_settings
    from skin_mlops.launcher.up import run_up

    run_up(get_settings(), with_airflow=with_airflow, console=Console(highlight=False))
