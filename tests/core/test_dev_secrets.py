"""The dev-secret guard: production refuses the secrets committed in .env, development warns.

Like tests/core/test_config.py, every test runs without the Settings keys (and the guarded
compose keys) of the real environment, and without reading the repo's .env unless it says so.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from skin_mlops.core.config import Settings, get_settings, load_settings
from skin_mlops.core.dev_secrets import DEV_SECRETS, check_secrets
from skin_mlops.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = REPO_ROOT / ".env"
# What a secret is called in .env: a new key matching this must be guarded (or renamed).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|(?<!ACCESS)_KEY$")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [*Settings.model_fields, *(k.lower() for k in DEV_SECRETS)]:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def refusal(settings: Settings, env_file: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        check_secrets(settings, component="the API", env_file=env_file)
    message = str(info.value)
    assert "\n" not in message, f"must be one line: {message!r}"
    assert info.value.exit_code == 2
    for value in DEV_SECRETS.values():
        assert value not in message, "a secret value was printed"
    return message


def env_file_with(tmp_path: Path, **changes: str) -> Path:
    """A copy of the repo's .env with ``changes`` applied (replacing or appending keys)."""
    lines = ENV_FILE.read_text(encoding="utf-8").splitlines()
    for key, value in changes.items():
        lines = [line for line in lines if not line.startswith(f"{key}=")] + [f"{key}={value}"]
    path = tmp_path / ".env"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- the committed .env -------------------------------------------------------------------------


def test_the_committed_env_is_development() -> None:
    assert dotenv_values(ENV_FILE)["ENVIRONMENT"] == "development"
    assert load_settings(_env_file=ENV_FILE).environment == "development"


def test_every_secret_of_the_committed_env_is_guarded_with_its_value() -> None:
    """Both ways: a new secret in .env, or a changed dev value, fails here (no drift)."""
    committed = {k: v for k, v in dotenv_values(ENV_FILE).items() if SECRET_NAME.search(k)}
    assert set(committed) == set(DEV_SECRETS)
    assert committed == DEV_SECRETS


def test_production_is_the_default_without_env_file_or_variable() -> None:
    assert load_settings(_env_file=None).environment == "production"


# --- production -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(DEV_SECRETS))
def test_production_refuses_each_dev_secret_naming_the_key_only(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv(key, DEV_SECRETS[key])
    message = refusal(load_settings(_env_file=None))
    assert message.startswith("refusing to start the API in production")
    assert key in message
    assert "ENVIRONMENT=development" in message  # says the way out


def test_production_refuses_the_committed_env_and_names_every_key(tmp_path: Path) -> None:
    env_file = env_file_with(tmp_path, ENVIRONMENT="production")
    settings = load_settings(_env_file=env_file)
    assert settings.environment == "production"
    message = refusal(settings, env_file)
    assert ", ".join(sorted(DEV_SECRETS)) in message


def test_compose_only_keys_are_read_from_the_env_file(tmp_path: Path) -> None:
    fresh = {k: secrets.token_urlsafe(16) for k in DEV_SECRETS if k != "AIRFLOW_FERNET_KEY"}
    env_file = env_file_with(tmp_path, ENVIRONMENT="production", **fresh)
    message = refusal(load_settings(_env_file=env_file), env_file)
    assert message.split(" with the development value of ")[1].startswith("AIRFLOW_FERNET_KEY (")


def test_the_environment_beats_the_env_file_for_compose_only_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"MINIO_ROOT_PASSWORD={DEV_SECRETS['MINIO_ROOT_PASSWORD']}\n")
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "a-real-one-" + secrets.token_urlsafe(8))
    assert check_secrets(load_settings(_env_file=None), component="x", env_file=env_file) == []


def test_production_with_every_secret_replaced_starts(tmp_path: Path) -> None:
    fresh = {k: secrets.token_urlsafe(24) for k in DEV_SECRETS}
    env_file = env_file_with(tmp_path, ENVIRONMENT="production", **fresh)
    settings = load_settings(_env_file=env_file)
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == fresh["ADMIN_TOKEN"]
    assert check_secrets(settings, component="the API", env_file=env_file) == []


def test_keys_nobody_set_are_not_checked() -> None:
    """Without .env, the password fields keep weak defaults nothing uses: not refused."""
    settings = load_settings(_env_file=None)
    assert settings.airflow_admin_password.get_secret_value() == "admin"
    assert check_secrets(settings, component="the API", env_file=None) == []


def test_a_settings_default_given_explicitly_counts_as_a_dev_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_DB_PASSWORD", "mlflow")  # Settings' default, not .env's
    assert "MLFLOW_DB_PASSWORD" in refusal(load_settings(_env_file=None))


# --- development -------------------------------------------------------------------------------


def test_development_starts_with_one_warning_naming_the_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(_env_file=ENV_FILE)
    with caplog.at_level(logging.WARNING, logger="skin_mlops.core.dev_secrets"):
        found = check_secrets(settings, component="skin-mlops up", env_file=ENV_FILE)
    assert found == sorted(DEV_SECRETS)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith("skin-mlops up runs with the development values of ADMIN_TOKEN")
    assert "\n" not in message
    assert not any(value in message for value in DEV_SECRETS.values())


def test_development_without_dev_secrets_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(_env_file=None, environment="development", admin_token="t" * 32)
    with caplog.at_level(logging.WARNING):
        assert check_secrets(settings, component="the API", env_file=None) == []
    assert caplog.records == []


# --- where it runs: `skin-mlops serve` and `skin-mlops up` -------------------------------------


@pytest.mark.parametrize("command", [["serve"], ["up"]])
def test_serve_and_up_refuse_to_start_in_production_with_a_dev_secret(
    tmp_path: Path, command: list[str]
) -> None:
    """One line, exit 2, nothing started (no logs folder), the secret not printed."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in DEV_SECRETS}
    env.update(
        ENVIRONMENT="production",
        ADMIN_TOKEN=DEV_SECRETS["ADMIN_TOKEN"],
        API_PORT="1",  # never bound: the refusal comes first
        COLUMNS="200",
    )
    result = subprocess.run(
        [sys.executable, "-m", "skin_mlops.cli", *command],
        cwd=tmp_path,  # no .env here
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to start" in lines[0] and "ADMIN_TOKEN" in lines[0]
    assert DEV_SECRETS["ADMIN_TOKEN"] not in result.stdout + result.stderr
    assert not (tmp_path / "logs").exists()
