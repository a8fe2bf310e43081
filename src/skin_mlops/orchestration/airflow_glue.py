"""What the DAG files share: how a task's error becomes Airflow's retry or fail.

Imported only inside Airflow processes (it imports ``airflow.sdk``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from skin_mlops.core.errors import ServiceUnavailableError, SkinMlopsError, StorageError

T = TypeVar("T")

#: Errors worth retrying: the object store or a service was briefly unreachable.
TRANSIENT = (StorageError, ServiceUnavailableError)


def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a task function: transient errors are retried, user errors fail at once.

    A :class:`SkinMlopsError` that retrying cannot fix (bad data, a bad param, no rows)
    becomes ``AirflowFailException`` (no retry, its one line in the task log); a
    :data:`TRANSIENT` one is raised as it is, so the task's ``retries`` apply.
    """
    try:
        return function(*args, **kwargs)
    except TRANSIENT:
        raise
    except SkinMlopsError as exc:
        raise AirflowFailException(str(exc)) from None


def skip_unless_done(result: dict[str, Any]) -> dict[str, Any]:
    """Turn a task result with ``skipped`` into Airflow's skip state (with the reason)."""
    if result.get("skipped"):
        raise AirflowSkipException(str(result["skipped"]))
    return result
