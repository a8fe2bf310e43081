"""The training CLI's stderr filter drops TensorFlow's native start-up lines, nothing else."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


def test_only_the_known_native_lines_are_dropped() -> None:
    code = (
        "import os, sys\n"
        "from skin_mlops.core.native_logs import filter_native_stderr\n"
        "assert filter_native_stderr() and filter_native_stderr()\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1 1 port.cc:153] oneDNN custom operations are on. x\\n')\n"
        "os.write(2, b'a native error line\\n')\n"
        "print('a python warning', file=sys.stderr)\n"
        "sys.exit('one-line error')\n"
    )
    result = _run(code)
    assert result.returncode == 1
    assert "oneDNN" not in result.stderr and "InitializeLog" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines == ["a native error line", "a python warning", "one-line error"]


def test_a_traceback_still_reaches_stderr() -> None:
    result = _run(
        "from skin_mlops.core.native_logs import filter_native_stderr\n"
        "filter_native_stderr()\n"
        "raise RuntimeError('boom')\n"
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr


def test_importing_tensorflow_prints_nothing_under_the_filter() -> None:
    pytest.importorskip("tensorflow")
    baseline = _run("import tensorflow")
    filtered = _run(
        "from skin_mlops.core.native_logs import filter_native_stderr\n"
        "filter_native_stderr()\n"
        "import tensorflow\n"
    )
    assert filtered.returncode == 0, filtered.stderr
    assert "oneDNN" not in filtered.stderr and "InitializeLog" not in filtered.stderr
    # what is left is exactly what the unfiltered import printed minus the known lines
    kept = [
        line
        for line in baseline.stderr.splitlines()
        if "InitializeLog" not in line and "oneDNN" not in line and "cpu_feature_guard" not in line
    ]
    assert filtered.stderr.splitlines() == kept
