"""Keep TensorFlow's unconditional native start-up lines out of the CLI's stderr.

TensorFlow 2.21 writes these from C++ when it is imported, before any logging
configuration can apply (``TF_CPP_MIN_LOG_LEVEL`` does not silence them any more)::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. You may see slightly ...
    I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use ...

They say nothing a user can act on, and a newcomer reads them as errors. The training
commands therefore route file descriptor 2 through a pipe whose reader thread forwards
every line except these (by exact markers) to the original stderr. Everything else -
Python tracebacks, warnings, our one-line errors, other native messages - passes
unchanged. At exit the original stderr is restored and the pipe drained.

Only for short-lived commands (``train``, ``pipeline``); never for the server.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

NOISE_MARKERS: tuple[bytes, ...] = (
    b"All log messages before absl::InitializeLog() is called are written to STDERR",
    b"] oneDNN custom operations are on.",
    b"cpu_feature_guard.cc",
)

_state: dict[str, object] = {}


def _pump(read_fd: int, target_fd: int, markers: tuple[bytes, ...]) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        for line in pipe:
            if not any(marker in line for marker in markers):
                os.write(target_fd, line)


def filter_native_stderr(markers: tuple[bytes, ...] = NOISE_MARKERS) -> bool:
    """Start filtering fd 2 (idempotent). Returns False where it cannot (no pipes/fds)."""
    if "thread" in _state:
        return True
    try:
        sys.stderr.flush()
        target_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except (OSError, ValueError, AttributeError):
        return False
    thread = threading.Thread(
        target=_pump, args=(read_fd, target_fd, markers), name="stderr-filter", daemon=True
    )
    thread.start()
    _state.update(thread=thread, target_fd=target_fd)
    atexit.register(restore_stderr)
    return True


def restore_stderr() -> None:
    """Point fd 2 back at the original stderr and forward what is still in the pipe."""
    thread = _state.pop("thread", None)
    target_fd = _state.pop("target_fd", None)
    if thread is None or not isinstance(target_fd, int):
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(target_fd, 2)  # closes the pipe's last write end: the reader sees EOF
    assert isinstance(thread, threading.Thread)
    thread.join(timeout=5)
    os.close(target_fd)
