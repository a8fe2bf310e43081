"""``skin-mlops``: one command per stage of the platform.

Each stage module defines its own Typer command function and keeps heavy imports
(TensorFlow, MLflow, ONNX Runtime) inside the function body, so ``skin-mlops --help`` and
``skin-mlops ingest`` start fast and the API image works without TensorFlow.

Errors meant for users (:class:`~skin_mlops.core.errors.SkinMlopsError`) are printed as
one red line and turned into an exit code; anything else is a bug and keeps its trace.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from skin_mlops.core.cli_options import DatasetConfigOption
from skin_mlops.core.config import get_settings
from skin_mlops.core.errors import SkinMlopsError

app = typer.Typer(
    name="skin-mlops",
    help="Skin-disease photo classification platform: up, ingest, train, serve, predict, webapp.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# --- stage commands (registered here, defined in their stage modules) -------------
from skin_mlops.ingestion.cli import ingest_command  # noqa: E402

app.command("ingest")(ingest_command)
from skin_mlops.modeling.train_cli import train_command  # noqa: E402

app.command("train")(train_command)
from skin_mlops.modeling.cv_cli import cv_command  # noqa: E402

app.command("cv")(cv_command)
from skin_mlops.modeling.model_card import model_card_command  # noqa: E402

app.command("model-card")(model_card_command)
from skin_mlops.api.cli import serve_command  # noqa: E402

app.command("serve")(serve_command)
from skin_mlops.webapp.cli import webapp_command  # noqa: E402

app.command("webapp")(webapp_command)
from skin_mlops.launcher.cli import up_command  # noqa: E402

app.command("up")(up_command)
from skin_mlops.modeling.predict import predict_command  # noqa: E402

app.command("predict")(predict_command)


@app.command("pipeline")
def pipeline_command(
    config: DatasetConfigOption = None,
    epochs: Annotated[
        int | None, typer.Option(help="Head training epochs (default: train's default).")
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(help="Stop before training when ingestion reported corrupt files/conflicts."),
    ] = False,
) -> None:
    """Run the main job: ingest data/raw (train + val), then train, evaluate, register, export."""
    settings = get_settings()
    config_path = config or settings.dataset_config
    console = Console()
    console.rule("[bold]1/2 ingest")
    ingest_failed = False
    try:
        ingest_command(config=config_path, splits=["train", "val"], dry_run=False, more_splits=None)
    except typer.Exit as exc:
        ingest_failed = exc.exit_code != 0
        if strict and ingest_failed:
            raise
        if ingest_failed:
            console.print(
                "[yellow]ingestion reported problems (above); training on what was "
                "ingested. Use --strict to stop instead.[/]"
            )
    console.rule("[bold]2/2 train")
    if epochs is None:
        train_command(dataset_config=config_path)
    else:
        train_command(dataset_config=config_path, epochs=epochs)
    if ingest_failed:
        raise typer.Exit(code=1)


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
    except Exception as exc:
        if not type(exc).__module__.startswith("mlflow."):
            raise  # a bug of ours: keep the trace
        # MLflow refusing or unreachable is the tracking service's answer, not our bug: one
        # line, its first (e.g. an experiment whose artifacts need the server it was made on).
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        Console(stderr=True).print(
            f"[bold red]error:[/] MLflow: {first}", highlight=False, soft_wrap=True
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
