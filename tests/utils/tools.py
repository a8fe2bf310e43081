"""External tools a test needs: found, or skipped loudly, or (under ``CI=true``) failed.

CI must not be green because a check did not run: with ``CI=true`` in the environment a
missing tool fails the test; elsewhere it skips with a reason in capitals.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """True when ``CI`` is set to a true value (``.ci/run`` and GitHub Actions set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_tool(message: str) -> None:
    """Fail under CI, else skip, with ``message`` (it should say how to install the tool)."""
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message.upper())


def require_tool(name: str, install_hint: str, path: str | None = None) -> str:
    """The path of tool ``name`` (or of ``path`` when it exists), else :func:`missing_tool`."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if found is None:
        missing_tool(f"{name} not found: {install_hint}")
    assert found is not None
    return found
