"""The task functions the DAGs call, without Airflow."""

from __future__ import annotations

import pytest

from skin_mlops.core.config import load_settings
from skin_mlops.core.errors import DataError
from skin_mlops.orchestration import tasks
from skin_mlops.orchestration.params import training_overrides
from utils.servers import ADMIN_TOKEN, free_port

PROMOTED = {"promoted": True, "outcome": "promoted", "version": "2"}


def test_reload_is_skipped_without_a_new_champion() -> None:
    result = tasks.reload_api({"promoted": False, "outcome": "kept"})
    assert result == {"reloaded": False, "skipped": "no new champion"}


def test_reload_is_skipped_without_an_admin_token() -> None:
    settings = load_settings(admin_token=None, _env_file=None)
    assert "ADMIN_TOKEN" in tasks.reload_api(PROMOTED, settings=settings)["skipped"]


def test_reload_is_skipped_when_the_api_is_not_running() -> None:
    settings = load_settings(
        admin_token=ADMIN_TOKEN, api_base_url=f"http://127.0.0.1:{free_port()}", _env_file=None
    )
    assert "not reachable" in tasks.reload_api(PROMOTED, settings=settings)["skipped"]


def test_reload_calls_the_real_api(live_api: str) -> None:
    settings = load_settings(admin_token=ADMIN_TOKEN, api_base_url=live_api, _env_file=None)
    result = tasks.reload_api(PROMOTED, settings=settings)
    assert "skipped" not in result and result["detail"]


def test_an_api_that_refuses_the_reload_fails_the_task(live_api: str) -> None:
    settings = load_settings(admin_token="x" * 20, api_base_url=live_api, _env_file=None)
    with pytest.raises(DataError, match="HTTP 401"):
        tasks.reload_api(PROMOTED, settings=settings)


def test_the_b0_backbone_gets_the_one_pooling_it_supports() -> None:
    from skin_mlops.modeling.options import TrainingOptions

    overrides = training_overrides({"backbone": "efficientnet_b0"})
    options = TrainingOptions(**overrides)
    assert dict(options.backbone_options)["pooling"] == "avg"  # B0's only pooling
    assert "backbone_options" not in training_overrides({"backbone": "efficientnet_lite0"})


def test_training_overrides_drop_defaults_and_refuse_unknown_keys() -> None:
    assert training_overrides({"epochs": 3, "image_size": None}) == {"epochs": 3}
    with pytest.raises(Exception, match="unknown training param"):
        training_overrides({"epoch": 3})
