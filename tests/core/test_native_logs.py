"""The training CLI's stderr filter drops TensorFlow's native start-up lines, nothing else.

Each test runs a child interpreter that turns the filter on and then ends in one way (a
clean exit, a traceback, a segfault, ``os._exit``): whatever it wrote to stderr, except the
known lines, must reach the test's end of the pipe, and its exit status must be its own.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time

import pytest

# The start of every child: the filter on, then TensorFlow's three start-up lines.
PRELUDE = """\
import os, sys
from skin_mlops.core.native_logs import filter_native_stderr
assert filter_native_stderr()
os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written '
    b'to STDERR\\n')
os.write(2, b'I0000 00:00:1 1 port.cc:153] oneDNN custom operations are on. x\\n')
os.write(2, b'I0000 00:00:1 2 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\\n')
os.write(2, b'To enable the following instructions: AVX2 FMA, in other operations, rebuild '
    b'TensorFlow with the appropriate compiler flags.\\n')
"""


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


def _run_filtered(body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return _run(PRELUDE + textwrap.dedent(body), timeout=timeout)


def _assert_noise_dropped(stderr: str) -> None:
    for marker in ("InitializeLog", "oneDNN", "cpu_feature_guard", "rebuild TensorFlow"):
        assert marker not in stderr, stderr


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
    result = _run_filtered(
        """
        def train():
            raise RuntimeError('boom')
        train()
        """
    )
    assert result.returncode == 1
    _assert_noise_dropped(result.stderr)
    assert result.stderr.startswith("Traceback (most recent call last):"), result.stderr
    assert "in train" in result.stderr and result.stderr.endswith("RuntimeError: boom\n")


def test_a_traceback_survives_an_exit_hook_that_ends_the_process_hard() -> None:
    """The trace is printed, then an exit hook registered later (native libraries have
    them) ends the process with ``os._exit`` before the filter's own hook could drain."""
    result = _run_filtered(
        """
        import atexit
        atexit.register(os._exit, 4)
        raise RuntimeError('boom before a hard exit')
        """
    )
    assert result.returncode == 4, result.stderr
    _assert_noise_dropped(result.stderr)
    assert "Traceback (most recent call last):" in result.stderr
    assert "RuntimeError: boom before a hard exit" in result.stderr


@pytest.mark.parametrize("enabled_by", ["the program", "the filter"])
def test_a_segfault_trace_reaches_stderr_and_the_exit_is_the_signal(enabled_by: str) -> None:
    """faulthandler's dump is written to fd 2 from the signal handler of a dying process."""
    enable = "import faulthandler; faulthandler.enable()\n" if enabled_by == "the program" else ""
    result = _run_filtered(
        enable
        + """
import ctypes
print('last line before the crash', file=sys.stderr)
def load_native_backbone():
    ctypes.string_at(0)
load_native_backbone()
"""
    )
    assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stderr)
    _assert_noise_dropped(result.stderr)
    assert "last line before the crash" in result.stderr
    assert "Fatal Python error: Segmentation fault" in result.stderr, result.stderr
    assert "in load_native_backbone" in result.stderr  # the stack, innermost frame first


def test_the_last_line_before_os_exit_arrives_and_the_code_is_kept() -> None:
    result = _run_filtered(
        """
        print('python: giving up', file=sys.stderr)
        os.write(2, b'native: last words\\n')
        os._exit(3)
        """
    )
    assert result.returncode == 3, result.stderr
    _assert_noise_dropped(result.stderr)
    assert result.stderr.splitlines() == ["python: giving up", "native: last words"]


def test_a_child_process_that_outlives_the_command_is_still_heard() -> None:
    """A subprocess inherits fd 2 (the pipe): what it writes after the command exited arrives."""
    result = _run_filtered(
        """
        import subprocess
        subprocess.Popen([sys.executable, '-c',
            'import sys, time; time.sleep(0.5); print("late child line", file=sys.stderr)'])
        print('command done', file=sys.stderr)
        """
    )
    assert result.returncode == 0, result.stderr
    _assert_noise_dropped(result.stderr)
    assert result.stderr.splitlines() == ["command done", "late child line"]


def test_ctrl_c_reaches_the_command_and_its_last_words_still_pass() -> None:
    """SIGINT to the whole process group (what a terminal's Ctrl-C does): the filter,
    in the same group, must survive it to forward the command's reaction."""
    code = PRELUDE + (
        "import time\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', file=sys.stderr)\n"
        "    sys.exit(130)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == b"ready\n"
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.decode().splitlines() == ["interrupted"]


def test_a_progress_line_without_newline_is_shown_while_the_command_runs() -> None:
    """A ``\\r`` progress bar (tqdm's on stderr) must not wait for the end of the line."""
    code = PRELUDE + (
        "os.write(2, b'\\rdownloading  40%')\n"
        "sys.stdin.read()\n"  # runs until the test closes stdin
        "os.write(2, b'\\rdownloading 100%\\n')\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stderr is not None
    seen = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stderr, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while b"40%" not in seen and time.monotonic() < deadline:
                if selector.select(timeout=0.2):
                    chunk = os.read(process.stderr.fileno(), 4096)
                    if not chunk:
                        break
                    seen += chunk
        assert process.poll() is None, "the child ended early"
        assert b"downloading  40%" in seen, seen
    finally:
        process.stdin.close()
        rest = process.stderr.read()
        process.wait(timeout=30)
    assert process.returncode == 0
    assert (seen + rest).decode() == "\rdownloading  40%\rdownloading 100%\n"


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
    assert "rebuild TensorFlow" not in filtered.stderr
    # what is left is exactly what the unfiltered import printed minus the known lines
    kept = [
        line
        for line in baseline.stderr.splitlines()
        if not any(
            marker in line
            for marker in ("InitializeLog", "oneDNN", "cpu_feature_guard", "rebuild TensorFlow")
        )
    ]
    assert filtered.stderr.splitlines() == kept
