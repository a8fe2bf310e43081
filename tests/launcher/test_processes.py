"""The launcher's process handling with plain Python children: groups, escapes, sweeps."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from skin_mlops.launcher.processes import RunFile, start_child, stop_child

# A parent that starts a grandchild in a session of its own (as some servers' workers do),
# prints its pid, then sleeps.
ESCAPING_PARENT = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              start_new_session=True)
print(grandchild.pid, flush=True)
time.sleep(600)
"""
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


def wait_for_line(path: Path, timeout_s: float = 20) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return text.strip().splitlines()[0]
        time.sleep(0.05)
    raise AssertionError(f"{path} stayed empty")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_child_runs_in_its_own_group_with_its_output_in_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "echo.log"
    child = start_child(
        "echo",
        [sys.executable, "-c", "print('hello from the child')"],
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=log,
    )
    assert child.process.wait(timeout=20) == 0
    assert child.last_lines() == ["hello from the child"]


def test_stop_kills_the_whole_family_even_a_grandchild_that_left_the_group(
    tmp_path: Path,
) -> None:
    log = tmp_path / "parent.log"
    child = start_child(
        "parent",
        [sys.executable, "-c", ESCAPING_PARENT],
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=log,
    )
    grandchild = int(wait_for_line(log))
    assert os.getpgid(child.pid) == child.pid
    assert os.getpgid(grandchild) != child.pid  # escaped the group
    stop_child(child, timeout_s=5)
    assert child.exited() is not None
    deadline = time.monotonic() + 5
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(grandchild)


def test_a_child_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    child = start_child(
        "stubborn",
        [sys.executable, "-c", STUBBORN],
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=log,
    )
    assert wait_for_line(log) == "ready"
    started = time.monotonic()
    code = stop_child(child, timeout_s=1)
    assert code == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_the_next_launcher_sweeps_what_a_killed_one_left(tmp_path: Path) -> None:
    path = tmp_path / "logs" / ".up-processes.json"
    left = RunFile(path)
    child = start_child(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=tmp_path / "sleeper.log",
    )
    left.add(child)  # ...and then the launcher is SIGKILLed: nothing stops the child
    assert RunFile(path).sweep() == ["sleeper"]
    child.process.wait(timeout=15)
    assert gone(child.pid)
    assert RunFile(path).sweep() == []  # nothing twice


def test_a_reused_pid_is_not_swept(tmp_path: Path) -> None:
    path = tmp_path / ".up-processes.json"
    stranger = start_child(
        "stranger",
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=tmp_path / "stranger.log",
    )
    try:
        record = RunFile(path)
        record.add(stranger)
        record.children["stranger"]["started"] -= 1000  # the recorded process was another
        record._write()
        assert RunFile(path).sweep() == []
        assert stranger.exited() is None
    finally:
        stop_child(stranger, timeout_s=2)


@pytest.mark.parametrize("same_launcher", [True, False])
def test_a_live_launcher_owning_the_run_file_is_reported(
    tmp_path: Path, same_launcher: bool
) -> None:
    path = tmp_path / ".up-processes.json"
    RunFile(path)._write()  # written by this process
    if same_launcher:
        assert RunFile(path).running_launcher() is None
    else:
        import json

        body = json.loads(path.read_text())
        parent = psutil.Process(os.getppid())
        body["launcher"] = {"pid": parent.pid, "started": parent.create_time()}
        path.write_text(json.dumps(body))
        assert RunFile(path).running_launcher() == parent.pid
