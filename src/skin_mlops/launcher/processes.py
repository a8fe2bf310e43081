"""Child processes of ``skin-mlops up``: start, probe, stop, and sweep what a crash left.

Knows nothing about the platform's services (see :mod:`skin_mlops.launcher.services`).

* Each child runs in its own session (``start_new_session=True``), so its process group
  id is its pid: stopping a child is ``SIGTERM`` to the whole group, a wait, then
  ``SIGKILL`` to the group and to any descendant that left it (found with psutil before
  the stop), so servers that fork workers (MLflow, Airflow) leave nothing behind.
* Its stdout and stderr go to ``logs/<name>.log`` (truncated at each start).
* A run file (``logs/.up-processes.json``) records every child's pid and start time; a
  launcher killed with ``SIGKILL`` cannot clean up, so the next one sweeps those groups
  first (only processes whose start time still matches: a reused pid is left alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from skin_mlops.core.files import atomic_write_text

# A probe answers None when healthy, else a short reason ("connection refused", "503").
Probe = Callable[[], str | None]


@dataclass
class Child:
    """One started child process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> int | None:
        """The exit code once the child has exited, else None."""
        return self.process.poll()

    def last_lines(self, count: int = 20) -> list[str]:
        """The last ``count`` lines of the child's log (empty when there is none)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-count:]


def start_child(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_path: Path | None,
) -> Child:
    """Start ``argv`` in its own session; output to ``log_path`` (None: this terminal)."""
    if log_path is None:
        process = subprocess.Popen(list(argv), cwd=cwd, env=env, start_new_session=True)
        return Child(name, process, Path(os.devnull))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left (not yet reaped by their parent) count as gone.
    members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == pgid]
    return bool(_alive(members))


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_child(child: Child, timeout_s: float = 15.0) -> int | None:
    """Stop a child and everything it started; return its exit code.

    ``SIGTERM`` to its process group, up to ``timeout_s`` for the group to empty, then
    ``SIGKILL`` to the group and to every descendant seen before the stop (those that
    started a session of their own escape the group).
    """
    family = _descendants(child.pid)
    pgid = child.pid  # start_new_session: the child leads its own group
    _signal_group(pgid, signal.SIGTERM)
    for proc in family:
        with contextlib.suppress(psutil.Error):
            if _pgid(proc.pid) != pgid:
                proc.terminate()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        child.process.poll()
        if child.process.returncode is not None and not _group_alive(pgid) and not _alive(family):
            break
        time.sleep(0.1)
    else:
        _signal_group(pgid, signal.SIGKILL)
        for proc in _alive(family):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.process.wait(timeout=5)
    psutil.wait_procs(_alive(family), timeout=5)
    return child.process.returncode


# --- the run file: what a SIGKILLed launcher leaves for the next one to sweep ---------


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class RunFile:
    """``{"launcher": {pid, started}, "children": {name: {pid, started}}}`` on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.children: dict[str, dict[str, float]] = {}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = os.getpid()
        body = {"launcher": {"pid": me, "started": _start_time(me)}, "children": self.children}
        atomic_write_text(self.path, json.dumps(body, indent=2))

    def running_launcher(self) -> int | None:
        """The pid of another live launcher that owns this run file, else None."""
        entry = self._read().get("launcher") or {}
        pid = int(entry.get("pid", 0))
        if pid and pid != os.getpid() and _start_time(pid) == entry.get("started"):
            return pid
        return None

    def sweep(self) -> list[str]:
        """Stop the process groups a previous launcher left; return their names."""
        swept = []
        for name, entry in (self._read().get("children") or {}).items():
            pid = int(entry.get("pid", 0))
            if pid and _start_time(pid) == entry.get("started"):
                _signal_group(pid, signal.SIGTERM)
                swept.append((name, pid))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_group_alive(pid) for _, pid in swept):
            time.sleep(0.2)
        for _, pid in swept:
            _signal_group(pid, signal.SIGKILL)
        self.children = {}
        self._write()
        return [name for name, _ in swept]

    def add(self, child: Child) -> None:
        self.children[child.name] = {"pid": child.pid, "started": _start_time(child.pid) or 0}
        self._write()

    def remove(self, name: str) -> None:
        self.children.pop(name, None)
        self._write()

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _read(self) -> dict:
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}
