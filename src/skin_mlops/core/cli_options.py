"""Command-line options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# The dataset config: `--config`/`-c` everywhere; `--dataset-config` is the spec's name.
DatasetConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        "--dataset-config",
        help="Dataset config YAML (default: DATASET_CONFIG).",
    ),
]
