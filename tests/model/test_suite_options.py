"""A selected model/data suite without its option is refused in one line (runs by default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("marker", "folder", "option"),
    [("model", "model", "--model-source"), ("data", "data", "--data-dir")],
)
def test_a_suite_without_its_option_is_a_usage_error(marker: str, folder: str, option: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider", folder],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert lines == [
        f"ERROR: the {marker} suite (-m {marker}) needs {option}: "
        f"e.g. pytest -m {marker} {option}=<{option[2:].replace('-', '_')}>"
    ]
