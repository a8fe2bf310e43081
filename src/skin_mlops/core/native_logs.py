"""Keep TensorFlow's unconditional native start-up lines out of the CLI's stderr.

TensorFlow 2.21 writes these from C++ when it is imported, before any logging
configuration can apply (``TF_CPP_MIN_LOG_LEVEL`` does not silence them any more)::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. You may see slightly ...
    I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use ...
    To enable the following instructions: AVX2 ... in other operations, rebuild TensorFlow ...

They say nothing a user can act on, and a newcomer reads them as errors. The training
commands therefore point file descriptor 2 at a pipe read by a small **filter process**
(this file run as a script by a fresh interpreter), which forwards every line except these
(by exact markers) to the original stderr. Everything else - Python tracebacks, warnings,
our one-line errors, other native messages - passes unchanged.

Why a process and not a thread: the filter must never swallow a crash. A reader thread
dies with the command, so what is still in the pipe (or read but not yet written) when the
command segfaults, calls ``os._exit`` or is killed is lost - and faulthandler writes its
dump to fd 2 from the signal handler of the dying process. A separate reader does not die
with it: the kernel closes the command's end of the pipe when it dies, however it dies; the
bytes already written stay readable, and the filter forwards them all, then sees end of file
and exits. Subprocesses of the command inherit the pipe, so the filter also forwards what
they write, until the last of them closes it. The command's exit status is its own (the
filter is a child, not a wrapper): a segfault still ends the command with SIGSEGV.

* faulthandler is turned on (all threads, to fd 2) when the command had not, so a native
  crash in TensorFlow or ONNX Runtime prints the Python stack, not only "Segmentation fault".
* The filter ignores SIGINT, SIGTERM and SIGQUIT (they are blocked while it starts, so it
  cannot be hit before it ignores them): Ctrl-C and a group-wide SIGTERM reach the command,
  whose last words still pass; the filter ends at end of file, i.e. with the command.
* A line is forwarded as soon as it ends (``\\n``, ``\\r`` or ``\\r\\n``); an unterminated
  piece (a ``\\r`` progress bar, a prompt) after 50 ms without more bytes, so progress bars
  on stderr stay live. What the command sees is what it saw with the old reader thread:
  fd 2 is a pipe (``isatty()`` is false for stderr; stdout, where rich's progress and
  Keras' bars go, is untouched).
* At a normal exit the original stderr is put back on fd 2 and the filter is given up to
  5 s to forward the rest (longer only while a subprocess still holds the pipe; the filter
  then carries on alone).

Only for short-lived commands (``train``, ``pipeline``); never for the server.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

NOISE_MARKERS: tuple[bytes, ...] = (
    b"All log messages before absl::InitializeLog() is called are written to STDERR",
    b"] oneDNN custom operations are on.",
    b"cpu_feature_guard.cc",
    # the second line of cpu_feature_guard's message (written as its own line)
    b"in other operations, rebuild TensorFlow with the appropriate compiler flags.",
)

IDLE_FLUSH_S = 0.05  # an unterminated piece is forwarded after this long without more bytes
MAX_PENDING = 1 << 16  # ... or once it is this long
EXIT_WAIT_S = 5.0  # how long a normal exit waits for the filter to forward the rest

# Blocked while the filter starts, ignored by it (see the module docstring).
_FILTER_IGNORES = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGQUIT") if hasattr(signal, name)
)

_filter: subprocess.Popen[bytes] | None = None
_target_fd: int | None = None  # the original stderr, while the filter runs


# --------------------------------------------------------------------------------------
# The filter process
# --------------------------------------------------------------------------------------


def split_segments(data: bytes) -> tuple[list[bytes], bytes]:
    """``data`` as complete segments (each ending in ``\\n``, ``\\r`` or ``\\r\\n``) and
    the unterminated rest (``b""`` when ``data`` ends with a terminator)."""
    segments = data.splitlines(keepends=True)  # bytes: only \n, \r and \r\n end a line
    if segments and not segments[-1].endswith((b"\n", b"\r")):
        return segments, segments.pop()
    return segments, b""


def pump(read_fd: int, write_fd: int, markers: tuple[bytes, ...]) -> None:
    """Forward ``read_fd`` to ``write_fd`` until end of file, dropping each segment that
    contains a marker. A failing ``write_fd`` (terminal gone) is given up on, but the pipe
    is still drained, so the writers never block on it."""
    writable = True

    def forward(segments: list[bytes]) -> None:
        nonlocal writable
        kept = b"".join(s for s in segments if not any(m in s for m in markers))
        view = memoryview(kept)
        while writable and view:
            try:
                view = view[os.write(write_fd, view) :]
            except OSError:
                writable = False

    pending = b""
    while True:
        if pending and not select.select([read_fd], [], [], IDLE_FLUSH_S)[0]:
            forward([pending])
            pending = b""
            continue
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:  # every writer closed its end: the command (and its children) ended
            break
        segments, pending = split_segments(pending + chunk)
        if len(pending) >= MAX_PENDING:
            segments.append(pending)
            pending = b""
        forward(segments)
    if pending:
        forward([pending])


def _filter_main(hex_markers: list[str]) -> None:
    """The filter process: stdin is the pipe, stdout the original stderr."""
    for signum in _FILTER_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FILTER_IGNORES)
    pump(0, 1, tuple(bytes.fromhex(marker) for marker in hex_markers))


# --------------------------------------------------------------------------------------
# The command's side
# --------------------------------------------------------------------------------------


def filter_native_stderr(markers: tuple[bytes, ...] = NOISE_MARKERS) -> bool:
    """Start filtering fd 2 (idempotent). Returns False where it cannot (no pipes/fds, no
    interpreter to run the filter); stderr is then left as it was."""
    global _filter, _target_fd
    if _filter is not None:
        return True
    import subprocess

    if not sys.executable or not hasattr(signal, "pthread_sigmask"):
        return False  # no interpreter to run the filter, or not POSIX
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        target_fd = os.dup(2)
    except OSError:
        return False
    read_fd = write_fd = -1
    try:
        read_fd, write_fd = os.pipe()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FILTER_IGNORES)
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__)]
                + [marker.hex() for marker in markers],
                stdin=read_fd,
                stdout=target_fd,
                stderr=target_fd,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.dup2(write_fd, 2)  # from here on, the kernel closes this end however we die
    except (OSError, ValueError, subprocess.SubprocessError):
        for fd in (read_fd, write_fd, target_fd):
            if fd >= 0:
                os.close(fd)
        return False
    os.close(read_fd)
    os.close(write_fd)
    _filter, _target_fd = process, target_fd
    _enable_faulthandler()
    atexit.register(restore_stderr)
    return True


def _enable_faulthandler() -> None:
    """Dump the Python stack of every thread to fd 2 on a fatal signal, unless the command
    already chose where faulthandler writes."""
    import faulthandler

    if not faulthandler.is_enabled():
        faulthandler.enable(file=2, all_threads=True)


def restore_stderr() -> None:
    """Point fd 2 back at the original stderr and let the filter forward what is left."""
    import subprocess

    global _filter, _target_fd
    if _filter is None or _target_fd is None:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    os.dup2(_target_fd, 2)  # closes our end of the pipe: the filter sees end of file
    os.close(_target_fd)
    try:
        _filter.wait(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        pass  # a subprocess still holds the pipe; the filter forwards until it closes it
    _filter = _target_fd = None


if __name__ == "__main__":
    _filter_main(sys.argv[1:])
