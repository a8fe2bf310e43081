"""``skin-mlops serve``: run the prediction API with uvicorn.

``--reload`` (development; the Docker stack's ``api`` service uses it with ``./src``
mounted): uvicorn watches the package's own source folder and restarts its worker process
on every saved ``.py`` file. The worker builds the app from the import string
``skin_mlops.api.cli:reloadable_app`` (a factory), so the options that shape the app travel
through the environment (``MODEL_SOURCE``), not through an object built here.

Imports nothing heavy at module level: :mod:`skin_mlops.cli` imports this module at start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI

RELOADABLE_APP = "skin_mlops.api.cli:reloadable_app"
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def package_source_dir() -> Path:
    """The folder the running ``skin_mlops`` package is imported from (what reload watches).

    With ``./src`` mounted and ``PYTHONPATH=/app/src`` (the compose stack) this is the
    mounted source, not the copy installed in the image's site-packages.
    """
    import skin_mlops

    return Path(skin_mlops.__file__).resolve().parent


def reloadable_app() -> FastAPI:
    """The app factory uvicorn's reload worker calls (a fresh process after each change)."""
    from skin_mlops.api.main import create_app
    from skin_mlops.api.memory import tune_malloc

    tune_malloc()
    # uvicorn has set its own loggers to --log-level in this process; follow it.
    level = logging.getLogger("uvicorn.error").getEffectiveLevel()
    logging.basicConfig(level=level, format=_LOG_FORMAT)
    return create_app()


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
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="development: restart when a source file of the package is saved",
        ),
    ] = False,
) -> None:
    """Serve the model over HTTP: /predict, /predict/batch, /ready, /model, /metrics, /docs."""
    import uvicorn

    from skin_mlops.api.main import create_app
    from skin_mlops.api.memory import tune_malloc
    from skin_mlops.core.config import get_settings
    from skin_mlops.core.dev_secrets import check_secrets

    settings = get_settings()  # a bad setting fails here, in one line, in either mode
    overrides = {
        key: value
        for key, value in (("api_host", host), ("api_port", port), ("model_source", model_source))
        if value is not None
    }
    if overrides:
        settings = settings.model_copy(update=overrides)
    logging.basicConfig(level=log_level.upper(), format=_LOG_FORMAT)
    check_secrets(settings, component="the API")  # production: no dev secret from .env
    if reload:
        # The worker process reads its settings itself (same environment, same .env).
        if model_source is not None:
            os.environ["MODEL_SOURCE"] = model_source
        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # uvicorn says it once
        target: str | FastAPI = RELOADABLE_APP
    else:
        tune_malloc()  # before the model and the worker threads allocate anything
        target = create_app(settings)
    uvicorn.run(
        target,
        host=settings.api_host,
        port=settings.api_port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
        factory=reload,
        reload=reload,
        reload_dirs=[str(package_source_dir())] if reload else None,
    )
