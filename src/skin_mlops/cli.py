"""``skin-mlops``: one command per stage of the platform.

Each stage module defines its own Typer command function and keeps heavy imports
(TensorFlow, MLflow, ONNX Runtime) inside the function body, so ``skin-mlops --help`` and
``skin-mlops ingest`` start fast and the API image works without TensorFlow.

Errors meant for users (:class:`~skin_mlops.core.errors.SkinMlopsError`) are printed as
one red line and turned into an exit code; anything else is a bug and keeps its trace.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from skin_mlops.core.errors import SkinMlopsError

app = typer.Typer(
    name="skin-mlops",
    help="Skin-disease photo classification platform: ingest, train, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# --- stage commands (registered here, defined in their stage modules) -------------
from skin_mlops.dataset import ingest_command  # noqa: E402

app.command("ingest")(ingest_command)
from skin_mlops.modeling.train import train_command  # noqa: E402

app.command("train")(train_command)
from skin_mlops.api.cli import serve_command  # noqa: E402

app.command("serve")(serve_command)


def main() -> None:
    """Console-script entry point: run the Typer app, turning user errors into one line."""
    try:
        app()
    except SkinMlopsError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
