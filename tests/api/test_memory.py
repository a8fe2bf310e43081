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


def _config_entry(options, key: str) -> str | None:  # noqa: ANN001
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # ONNX Runtime raises for a key that was never set
        return None


@pytest.mark.parametrize(
    ("spinning", "allow", "force_stop"),
    [("off", "0", None), ("during-run", "1", "1"), ("on", "1", None)],
)
def test_ort_spinning_modes_set_onnx_runtimes_keys(
    spinning: str, allow: str, force_stop: str | None
) -> None:
    from skin_mlops.runtimes import ort_session_options

    options = ort_session_options(2, spinning=spinning)
    assert _config_entry(options, "session.intra_op.allow_spinning") == allow
    assert _config_entry(options, "session.inter_op.allow_spinning") == allow
    assert _config_entry(options, "session.force_spinning_stop") == force_stop


def test_served_session_spins_as_the_setting_says(export_link, settings_for) -> None:  # noqa: ANN001
    from skin_mlops.api.model_runtime import load_model
    from skin_mlops.core.config import Settings
    from skin_mlops.export_format import resolve_export_dir

    assert Settings(_env_file=None).ort_spinning == "off"
    folder = resolve_export_dir(export_link)
    loaded = load_model(folder, str(folder), settings_for(export_link, ort_spinning="during-run"))
    options = loaded.session.get_session_options()
    assert _config_entry(options, "session.intra_op.allow_spinning") == "1"
    assert _config_entry(options, "session.force_spinning_stop") == "1"
