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

_thread: threading.Thread | None = None
_target_fd: int | None = None  # the original stderr, while the filter runs


def _pump(read_fd: int, target_fd: int, markers: tuple[bytes, ...]) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        for line in pipe:
            if not any(marker in line for marker in markers):
                os.write(target_fd, line)


def filter_native_stderr(markers: tuple[bytes, ...] = NOISE_MARKERS) -> bool:
    """Start filtering fd 2 (idempotent). Returns False where it cannot (no pipes/fds)."""
    global _thread, _target_fd
    if _thread is not None:
        return True
    try:
        sys.stderr.flush()
        target_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except (OSError, ValueError, AttributeError):
        return False
    _thread = threading.Thread(
        target=_pump, args=(read_fd, target_fd, markers), name="stderr-filter", daemon=True
    )
    _thread.start()
    _target_fd = target_fd
    atexit.register(restore_stderr)
    return True


def restore_stderr() -> None:
    """Point fd 2 back at the original stderr and forward what is still in the pipe."""
    global _thread, _target_fd
    if _thread is None or _target_fd is None:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_target_fd, 2)  # closes the pipe's last write end: the reader sees EOF
    _thread.join(timeout=5)
    os.close(_target_fd)
    _thread = _target_fd = None
