"""The guard against deploying the development secrets committed in ``.env``.

The versioned ``.env`` holds working development values for every secret of the stack
(the admin token, the admin passwords, the database passwords, the Airflow Fernet, API and
JWT keys, MinIO's root login, the app's MinIO user) and sets ``ENVIRONMENT=development``.
:func:`check_secrets` runs where the API (``skin-mlops serve``) and the stack
(``skin-mlops up``) start:

* ``ENVIRONMENT=production`` (also the default when neither the environment nor a
  ``.env`` says otherwise): any guarded key still set to its committed value refuses the
  start with one :class:`~skin_mlops.core.errors.ConfigError` line naming the keys (never
  their values);
* ``ENVIRONMENT=development``: the start goes on with one warning line naming them.

A key counts when this process was given it, by a real environment variable or the
``.env`` file; a key nobody set (the API container gets ``ADMIN_TOKEN`` only) is not the
process's concern. Settings fields are read from :class:`Settings`; the keys only
``docker compose`` reads (``[compose]`` in ``.env``, never Settings fields) from the
environment, else the ``.env`` file. :data:`DEV_SECRETS` repeats the committed values (a
deployment's own ``.env`` no longer has them); ``tests/core/test_dev_secrets.py`` checks it
against ``.env``, both ways, so the two cannot drift.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import SecretStr

from skin_mlops.core.config import Settings
from skin_mlops.core.errors import ConfigError

log = logging.getLogger(__name__)

# Every secret of the versioned .env, with its committed development value.
DEV_SECRETS: dict[str, str] = {
    "ADMIN_TOKEN": "dev-admin-token-change-me",
    "S3_SECRET_ACCESS_KEY": "skin-app-dev-password",
    "MINIO_ROOT_PASSWORD": "minioadmin-dev-password",
    "AIRFLOW_ADMIN_PASSWORD": "admin",
    "GRAFANA_ADMIN_PASSWORD": "admin",
    "MLFLOW_DB_PASSWORD": "mlflow-dev-password",
    "AIRFLOW_DB_PASSWORD": "airflow-dev-password",
    "AIRFLOW_FERNET_KEY": "_Ekt2ugwA8mxfXxcN3q-ZTssp9XkdwYB9mD8IyQmXHg=",
    "AIRFLOW_SECRET_KEY": "sMUsxvjV1vza51_SYYGscmj1O5SWYHVp3QlJ372k2g4",
    "AIRFLOW_JWT_SECRET": "hR-Hgb8b5bzNG0hTukyl1FfmJdQyf5L5cqCYFutyu_g",
}


def _plain(value: object) -> str | None:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return None if value is None else str(value)


def dev_values(key: str) -> set[str]:
    """The known development values of ``key``: the committed one and Settings' default."""
    values = {DEV_SECRETS[key]}
    field = Settings.model_fields.get(key.lower())
    default = _plain(field.default) if field is not None else None
    if default:
        values.add(default)
    return values


def given_secrets(settings: Settings, env_file: Path | str | None) -> dict[str, str]:
    """``{KEY: value}`` of the guarded keys this process was given (environment or .env)."""
    from dotenv import dotenv_values  # pydantic-settings' own .env parser

    file_values: dict[str, str | None] | None = None
    given: dict[str, str] = {}
    for key in DEV_SECRETS:
        field = key.lower()
        if field in Settings.model_fields:
            # model_fields_set: given by the environment, .env or the caller, not a default
            value = _plain(getattr(settings, field)) if field in settings.model_fields_set else None
        elif key in os.environ:
            value = os.environ[key]
        else:
            if file_values is None:
                path = Path(env_file) if env_file is not None else None
                file_values = dict(dotenv_values(path)) if path and path.is_file() else {}
            value = file_values.get(key)
        if value:
            given[key] = value
    return given


def check_secrets(
    settings: Settings, *, component: str, env_file: Path | str | None = ".env"
) -> list[str]:
    """Refuse to start ``component`` in production with a committed development secret.

    Args:
        settings: the settings the component runs with (``environment`` decides).
        component: named in the message (``the API``, ``skin-mlops up``).
        env_file: where the ``[compose]`` keys are looked up after the environment (the
            ``.env`` Settings reads: the working directory's).

    Returns:
        list[str]: the keys still holding their development value (development only;
        one warning was logged when there are any).

    Raises:
        ConfigError: ``ENVIRONMENT=production`` and at least one key holds its development
            value (the keys are named, their values never shown).
    """
    found = sorted(
        key for key, value in given_secrets(settings, env_file).items() if value in dev_values(key)
    )
    if not found:
        return []
    keys = ", ".join(found)
    values = "value" if len(found) == 1 else "values"
    if settings.environment == "production":
        raise ConfigError(
            f"refusing to start {component} in production with the development {values} of "
            f"{keys} (committed in .env): set real values in the environment or .env, or "
            "ENVIRONMENT=development on a development machine"
        )
    log.warning(
        "%s runs with the development %s of %s (ENVIRONMENT=development): do not expose it; "
        "ENVIRONMENT=production refuses them",
        component,
        values,
        keys,
    )
    return found
