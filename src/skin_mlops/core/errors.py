"""Errors that reach a user as one clear line (never a stack trace).

Every stage raises a subclass of :class:`SkinMlopsError` for problems the user can fix
(bad config, unreachable service, empty database). The CLI prints ``str(error)`` in red
and exits with :attr:`SkinMlopsError.exit_code`.
"""

from __future__ import annotations


class SkinMlopsError(Exception):
    """Base class for user-facing errors. ``str(err)`` is the one line shown to the user."""

    exit_code: int = 1


class ConfigError(SkinMlopsError):
    """A setting or config file is missing or invalid."""

    exit_code = 2


class StorageError(SkinMlopsError):
    """The object store is unreachable, refuses the credentials, or lacks an object."""


class ServiceUnavailableError(SkinMlopsError):
    """An external service (MLflow, S3, ...) cannot be reached."""


class DataError(SkinMlopsError):
    """The data is not usable as asked (no rows, unknown label, corrupt image...)."""
