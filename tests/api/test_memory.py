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
