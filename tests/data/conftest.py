"""Fixtures of the data suite: the dataset config, ``--data-dir`` and one scan of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from skin_mlops.core.errors import SkinMlopsError
from skin_mlops.dataset_config import DatasetConfig, load_dataset_config
from utils.perceptual import Photo, scan_photos
from utils.suite_options import record_figure, require_options, write_figures


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``-m data`` without ``--data-dir`` is a usage error (one line), not a skip."""
    require_options(config, items, "data", ["--data-dir"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The measured figures (photos, decode failures, duplicates), after the results."""
    write_figures(terminalreporter, "data")


@pytest.fixture(scope="session")
def dataset_config(pytestconfig: pytest.Config) -> DatasetConfig:
    """The ``--dataset-config`` (splits and labels)."""
    try:
        return load_dataset_config(pytestconfig.getoption("--dataset-config"))
    except SkinMlopsError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def data_dir(pytestconfig: pytest.Config) -> Path:
    """``--data-dir``: ``<split>/<label>/*`` photo folders."""
    path = Path(pytestconfig.getoption("--data-dir"))
    if not path.is_dir():
        pytest.fail(f"--data-dir {path} is not a folder", pytrace=False)
    return path


@pytest.fixture(scope="session")
def photos(
    data_dir: Path, dataset_config: DatasetConfig, pytestconfig: pytest.Config
) -> list[Photo]:
    """Every file of the config's splits under ``--data-dir``, read, hashed and decoded once."""
    scanned = scan_photos(data_dir, dataset_config.splits)
    counts = ", ".join(
        f"{split} {sum(p.split == split for p in scanned)}" for split in dataset_config.splits
    )
    record_figure(pytestconfig, "data", f"{len(scanned)} files under {data_dir} ({counts})")
    return scanned


@pytest.fixture
def figure(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """``figure(line)``: report a measured figure in the summary."""
    return lambda line: record_figure(pytestconfig, "data", line)
