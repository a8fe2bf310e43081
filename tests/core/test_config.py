"""Settings: precedence (env > .env > defaults) and one clear error line naming a bad key.

Every test runs with the process environment stripped of the Settings keys and, unless it
passes its own ``_env_file``, without reading any ``.env``, so the results do not depend on
the machine or on the repo's versioned ``.env`` (tests/test_dev_env.py checks that file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from skin_mlops.core.config import Settings, get_settings, load_settings
from skin_mlops.core.errors import ConfigError, SkinMlopsError

PORT_FIELDS = [name for name in Settings.model_fields if name.endswith("_port")]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Settings key from the real environment leaks into a test."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def config_error(**overrides: object) -> str:
    """Load settings (no .env), expect a ConfigError and return its one-line message."""
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, **overrides)
    message = str(info.value)
    assert "\n" not in message, f"must be one line: {message!r}"
    assert info.value.exit_code == 2
    return message


# --- defaults and precedence -------------------------------------------------------------------


def test_embedded_defaults_need_no_file_and_no_environment() -> None:
    settings = load_settings(_env_file=None)
    assert settings.storage_backend == "local"
    assert settings.s3_processed_bucket == "skin-processed"
    assert settings.s3_models_bucket == "models-registry"
    assert settings.mlflow_tracking_uri == "sqlite:///data/mlflow/mlflow.db"
    assert settings.api_base_url == "http://localhost:8000"
    assert (settings.api_port, settings.webapp_port, settings.mlflow_port) == (8000, 8501, 5000)


def test_the_api_serves_where_training_publishes_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MODEL_DIR (publish target) and MODEL_SOURCE (what serve loads): one folder by default."""
    assert load_settings(_env_file=None).model_source == "runs/skin5-current"
    monkeypatch.setenv("MODEL_DIR", "/srv/models/current")
    assert load_settings(_env_file=None).model_source == "/srv/models/current"
    monkeypatch.setenv("MODEL_SOURCE", "models:/skin-classifier@champion")
    settings = load_settings(_env_file=None)
    assert settings.model_source == "models:/skin-classifier@champion"
    assert settings.model_dir == Path("/srv/models/current")


def test_env_file_is_read_and_real_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("API_PORT=8100\nS3_MODELS_BUCKET=from-file\nMLFLOW_PORT=5100\n")
    monkeypatch.setenv("API_PORT", "8200")

    settings = load_settings(_env_file=env_file)
    assert settings.api_port == 8200  # real environment variable beats .env
    assert settings.mlflow_port == 5100  # .env beats the default
    assert settings.s3_models_bucket == "from-file"


def test_env_file_in_the_working_directory_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("GRAFANA_PORT=3300\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().grafana_port == 3300


def test_keys_are_case_insensitive_and_unknown_keys_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("prometheus_port=9191\nAIRFLOW_UID=50000\nCOMPOSE_PROJECT_NAME=x\n")
    assert load_settings(_env_file=env_file).prometheus_port == 9191


def test_get_settings_is_cached_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PORT", "8111")
    first = get_settings()
    monkeypatch.setenv("API_PORT", "8222")
    assert get_settings() is first and first.api_port == 8111
    get_settings.cache_clear()
    assert get_settings().api_port == 8222


def test_get_settings_raises_the_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBAPP_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="WEBAPP_PORT"):
        get_settings()


# --- bad values: one line naming the key ---------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "65536", "70000", "-1", "eighty"])
def test_bad_api_port_names_api_port(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("API_PORT", value)
    message = config_error()
    assert message.startswith("Invalid setting API_PORT:")
    assert repr(value) in message  # the offending value is shown


@pytest.mark.parametrize("field", PORT_FIELDS)
def test_every_port_setting_is_range_checked(monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    monkeypatch.setenv(field.upper(), "99999")
    assert field.upper() in config_error()


def test_port_settings_cover_every_published_service() -> None:
    assert PORT_FIELDS == [
        "api_port",
        "webapp_port",
        "webapp_metrics_port",
        "mlflow_port",
        "minio_port",
        "minio_console_port",
        "airflow_port",
        "prometheus_port",
        "grafana_port",
    ]


def test_unknown_storage_backend_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_BACKEND", "ftp")
    message = config_error()
    assert "STORAGE_BACKEND" in message
    assert "'local'" in message and "'s3'" in message  # says what is allowed
    assert "'ftp'" in message


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ({}, "S3_ENDPOINT_URL"),
        ({"S3_ENDPOINT_URL": "http://127.0.0.1:9000"}, "S3_ACCESS_KEY_ID"),
        (
            {"S3_ENDPOINT_URL": "http://127.0.0.1:9000", "S3_ACCESS_KEY_ID": "u"},
            "S3_SECRET_ACCESS_KEY",
        ),
        (
            {
                "S3_ENDPOINT_URL": "http://127.0.0.1:9000",
                "S3_ACCESS_KEY_ID": "u",
                "S3_SECRET_ACCESS_KEY": "",
            },
            "S3_SECRET_ACCESS_KEY",
        ),
    ],
)
def test_s3_backend_without_credentials_names_the_missing_key(
    monkeypatch: pytest.MonkeyPatch, present: dict[str, str], missing: str
) -> None:
    monkeypatch.setenv("STORAGE_BACKEND", "s3")
    for key, value in present.items():
        monkeypatch.setenv(key, value)
    message = config_error()
    assert missing in message
    assert "STORAGE_BACKEND=s3" in message


def test_s3_backend_with_everything_set_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_BACKEND", "s3")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "user")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "secret-pass")
    settings = load_settings(_env_file=None)
    assert settings.storage_backend == "s3"
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "secret-pass"
    assert "secret-pass" not in repr(settings)  # secrets never printed


def test_several_bad_keys_are_all_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PORT", "0")
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "100")
    message = config_error()
    assert "API_PORT" in message and "S3_MAX_ATTEMPTS" in message


def test_overrides_are_validated_too() -> None:
    assert "MAX_BATCH_SIZE" in config_error(max_batch_size=0)


def test_config_error_is_a_user_error() -> None:
    assert issubclass(ConfigError, SkinMlopsError)


def test_environment_is_production_unless_set_and_only_two_values_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dev-secret guard (tests/core/test_dev_secrets.py) keys off this setting."""
    assert load_settings(_env_file=None).environment == "production"
    monkeypatch.setenv("ENVIRONMENT", "development")
    assert load_settings(_env_file=None).environment == "development"
    monkeypatch.setenv("ENVIRONMENT", "staging")
    message = config_error()
    assert "ENVIRONMENT" in message and "'staging'" in message
