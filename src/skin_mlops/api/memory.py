"""Keep the server's resident memory flat: glibc ``malloc`` settings for this workload.

Each batch allocates and frees tens of MiB of activations (ONNX Runtime, arena off) and
each request a decoded photo, from several threads. With glibc's defaults every thread
that allocates gets its own heap ("arena", up to 8 per core), and each keeps the freed
blocks of its worst moment, so RSS ratchets up with the number of threads. Two arenas
bound that.

The mmap threshold is left to glibc (it adapts to the largest block freed). An earlier
version fixed it at 1 MiB to hand large blocks back on every free: that made each
request map and fault in its activation and image buffers again - Lite0 at 288 px,
batch 1, went from ~9 ms to 17-24 ms per model call (measured here, same process,
interleaved), for ~60 MiB less peak RSS.

Equivalent to ``MALLOC_ARENA_MAX=2`` in the environment; a no-op where the C library is
not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("skin_mlops.api")

_M_ARENA_MAX = -8  # from glibc's <malloc.h>
ARENA_MAX = 2


def tune_malloc() -> bool:
    """Apply the settings above to this process; True when glibc accepted them."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    log.debug("glibc malloc tuned: %s", ok)
    return ok
