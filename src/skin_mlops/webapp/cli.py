"""``skin-mlops webapp``: run Streamlit on the page, in production mode by default.

Imports nothing heavy at module level (:mod:`skin_mlops.cli` imports this module at start).
The command checks the settings and the ports first, so a mistake is one line, starts the
Prometheus exporter, then runs Streamlit's own command line in this process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer

from skin_mlops.core.errors import ConfigError
from skin_mlops.core.net import check_port_free

APP_FILE = Path(__file__).with_name("app.py")


def streamlit_argv(host: str, port: int, *, dev: bool) -> list[str]:
    """The ``python -m streamlit run`` command line for the page.

    Production: headless, no usage statistics, no file watcher. ``dev``: the file watcher
    on and re-run on save (for compose's mounted ``./src``).
    """
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_FILE),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--server.fileWatcherType",
        "auto" if dev else "none",
        "--server.runOnSave",
        "true" if dev else "false",
        "--client.toolbarMode",
        "developer" if dev else "viewer",
        "--client.showErrorDetails",
        "full" if dev else "none",
    ]


def webapp_command(
    host: Annotated[
        str | None, typer.Option(help="interface to bind (default: WEBAPP_HOST)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="port (default: WEBAPP_PORT)")
    ] = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="re-run the page when a source file is saved")
    ] = False,
) -> None:
    """Run the web app (Streamlit) that calls the prediction API at API_BASE_URL."""
    from skin_mlops.core.config import get_settings

    settings = get_settings()
    if importlib.util.find_spec("streamlit") is None:
        raise ConfigError(
            "the web app needs Streamlit: install the webapp group (uv sync --group webapp)"
        )
    host = host or settings.webapp_host
    port = port or settings.webapp_port
    check_port_free(host, port, "WEBAPP_PORT")
    if settings.webapp_metrics_port:
        check_port_free(
            settings.webapp_metrics_host, settings.webapp_metrics_port, "WEBAPP_METRICS_PORT"
        )
    from skin_mlops.webapp.metrics import process_metrics

    # The exporter starts with the process (not at the first visit), so Prometheus sees the
    # web app up from the start; the page gets the same object back.
    exporter = process_metrics(settings.webapp_metrics_port, settings.webapp_metrics_host)
    where = f", metrics on :{exporter.port}" if exporter.port else ""
    typer.echo(f"web app on http://{host}:{port} (API: {settings.api_base_url}{where})", err=True)
    run_streamlit(streamlit_argv(host, port, dev=dev))


def run_streamlit(argv: list[str]) -> None:
    """Run Streamlit's own command line (``argv`` as for ``python -m streamlit``) in-process."""
    import altair  # noqa: F401  (the first chart otherwise pays this import: ~1.3 s)
    from streamlit.web import cli as streamlit_cli

    sys.argv = ["streamlit", *argv[3:]]
    streamlit_cli.main(prog_name="streamlit")
