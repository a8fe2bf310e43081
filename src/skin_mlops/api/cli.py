"""``skin-mlops serve``: run the prediction API with uvicorn.

Imports nothing heavy at module level: :mod:`skin_mlops.cli` imports this module at start.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer


def serve_command(
    host: Annotated[str | None, typer.Option(help="interface to bind (default: API_HOST)")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="port (default: API_PORT)")
    ] = None,
    model_source: Annotated[
        str | None,
        typer.Option(
            help="export folder (runs/skin5-current) or models:/<name>@<alias> "
            "(default: MODEL_SOURCE)"
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="log every request")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the model over HTTP: /predict, /predict/batch, /ready, /model, /metrics, /docs."""
    import uvicorn

    from skin_mlops.api.main import create_app
    from skin_mlops.api.memory import tune_malloc
    from skin_mlops.core.config import get_settings

    tune_malloc()  # before the model and the worker threads allocate anything
    settings = get_settings()
    overrides = {
        key: value
        for key, value in (("api_host", host), ("api_port", port), ("model_source", model_source))
        if value is not None
    }
    if overrides:
        settings = settings.model_copy(update=overrides)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
