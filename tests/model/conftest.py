"""Fixtures of the model suite: the model of ``--model-source`` and its val photos, once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from skin_mlops.api.model_runtime import LoadedModel
from skin_mlops.core.errors import SkinMlopsError
from skin_mlops.dataset_config import load_dataset_config
from utils.model_checks import ValSet, load_served_model, read_val_set
from utils.suite_options import record_figure, require_options, write_figures


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``-m model`` without ``--model-source`` is a usage error (one line), not a skip."""
    require_options(config, items, "model", ["--model-source"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The measured figures (invariance, macro-F1, ECE, parity), after the results."""
    write_figures(terminalreporter, "model")


@pytest.fixture(scope="session")
def loaded(pytestconfig: pytest.Config) -> tuple[LoadedModel, Path]:
    """The ``--model-source`` model, loaded and validated as the API loads it, and its folder."""
    source = pytestconfig.getoption("--model-source")
    try:
        model, folder = load_served_model(source)
    except SkinMlopsError as exc:
        pytest.fail(f"--model-source {source}: {exc}", pytrace=False)
    record_figure(
        pytestconfig,
        "model",
        f"model {model.version} ({model.signature.backbone}, {model.image_size} px, "
        f"T = {model.signature.temperature:.3f}) from {source}",
    )
    return model, folder


@pytest.fixture(scope="session")
def served_model(loaded: tuple[LoadedModel, Path]) -> LoadedModel:
    """The served model (ONNX Runtime session + signature)."""
    return loaded[0]


@pytest.fixture(scope="session")
def model_folder(loaded: tuple[LoadedModel, Path]) -> Path:
    """The export folder the model was loaded from (resolved; downloaded for ``models:/``)."""
    return loaded[1]


@pytest.fixture(scope="session")
def val_root(pytestconfig: pytest.Config) -> Path:
    """``<--data-dir>/val``, else the dataset config's ``val`` split."""
    data_dir = pytestconfig.getoption("--data-dir")
    if data_dir:
        return Path(data_dir) / "val"
    try:
        return load_dataset_config(pytestconfig.getoption("--dataset-config")).split_root("val")
    except SkinMlopsError as exc:
        pytest.fail(f"no val photos (pass --data-dir): {exc}", pytrace=False)


@pytest.fixture(scope="session")
def val_set(served_model: LoadedModel, val_root: Path, pytestconfig: pytest.Config) -> ValSet:
    """The val photos decoded by the package's preprocessing and scored (ONNX)."""
    try:
        val = read_val_set(served_model, val_root)
    except ValueError as exc:
        pytest.fail(str(exc), pytrace=False)
    record_figure(pytestconfig, "model", f"{len(val.files)} val photos from {val_root}")
    return val


@pytest.fixture
def figure(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """``figure(line)``: report a measured figure in the summary."""
    return lambda line: record_figure(pytestconfig, "model", line)
