"""``tune_malloc`` applies on glibc (the serve command calls it before loading the model)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc-specific malloc settings")
def test_tune_malloc_is_accepted_by_glibc() -> None:
    script = "from skin_mlops.api.memory import tune_malloc; assert tune_malloc() is True"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_ort_memory_arena_follows_the_setting() -> None:
    from skin_mlops.api.model_runtime import session_options
    from skin_mlops.core.config import Settings

    assert Settings(_env_file=None).ort_memory_arena is False
    assert session_options(2).enable_cpu_mem_arena is False
    on = Settings(_env_file=None, ort_memory_arena=True)
    assert session_options(on.ort_intra_op_threads, on.ort_memory_arena).enable_cpu_mem_arena
