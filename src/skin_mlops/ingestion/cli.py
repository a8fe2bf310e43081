"""``skin-mlops ingest``: the command around :func:`~skin_mlops.ingestion.run.run_ingestion`
(a progress bar while it runs, then the summary table; exit code 1 when the summary says
it failed). Registered by :mod:`skin_mlops.cli`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from skin_mlops.core.cli_options import DatasetConfigOption
from skin_mlops.core.config import get_settings
from skin_mlops.ingestion.report import print_summary
from skin_mlops.ingestion.run import DEFAULT_SPLITS, run_ingestion


class _VerifyChoice(StrEnum):
    """``--verify`` values (see :func:`skin_mlops.ingestion.verify.check_file`)."""

    decode = "decode"
    structure = "structure"


def _merge_splits(option_values: list[str] | None, extra_values: list[str] | None) -> list[str]:
    """``--splits train val`` == ``--splits train --splits val``: Click gives the first value
    to the option and the rest as positional arguments; join them back, in order."""
    values = list(option_values or []) + list(extra_values or [])
    if not values:
        return list(DEFAULT_SPLITS)
    return list(dict.fromkeys(v for value in values for v in value.split(",") if v))


def ingest_command(
    config: DatasetConfigOption = None,
    splits: Annotated[
        list[str] | None,
        typer.Option(
            "--splits", "-s", help="Splits to ingest: --splits train val.", show_default="train val"
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Refresh metadata only; never touch the store.")
    ] = False,
    verify: Annotated[
        _VerifyChoice,
        typer.Option(
            "--verify",
            help="Prove new files whole by decoding them, or by markers/CRCs only (faster).",
        ),
    ] = _VerifyChoice.structure,
    more_splits: Annotated[list[str] | None, typer.Argument(hidden=True, metavar="SPLIT")] = None,
) -> None:
    """Ingest data/raw/<split>/<label>/ images into the object store and the metadata DB."""
    settings = get_settings()
    config_path = config or settings.dataset_config
    chosen = _merge_splits(splits, more_splits)
    console = Console()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("scanning", total=None)

        def on_progress(phase: str, done: int, total: int) -> None:
            bar.update(
                task,
                description="ingesting" if phase == "ingest" else "scanning",
                completed=done,
                total=total,
            )

        summary = run_ingestion(
            config_path,
            chosen,
            dry_run=dry_run,
            settings=settings,
            progress=on_progress,
            verify=verify.value,
        )
    print_summary(summary, console)
    if summary.failed:
        raise typer.Exit(code=1)
