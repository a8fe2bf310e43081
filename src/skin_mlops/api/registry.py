"""Serve a model from the MLflow registry: ``MODEL_SOURCE=models:/skin-classifier@champion``.

The key of the source is ``<name>/<version>`` of the model version the alias (or the fixed
version number) points at, asked from the registry on every poll: moving the alias
``champion`` to a new version makes the service load it.

Only the **registered artifact of that version** is read: training registers its
``mlflow.onnx`` model, which holds ``model.onnx`` and, as the flavour's ``extra_files``,
the export's ``signature.json`` and ``class_index.json``. :func:`materialize` downloads it
with ``mlflow.artifacts.download_artifacts("models:/<name>/<version>")``, refuses anything
that is not an ONNX model with those two files, and lays it out as an export folder under
``MODEL_CACHE_DIR/<name>/<version>-<sha256 of model.onnx>/`` (staged in a temporary folder,
then renamed), so loading and validating is the same code as for ``runs/skin5-current``.
The content hash in the name means a cached copy is only reused for the very same bytes
(a registry rebuilt from scratch numbers its versions from 1 again).

Failures are one of three errors with a short, redacted line (never MLflow's own text,
which carries URLs and possibly credentials; that goes to the log):
:class:`~skin_mlops.api.model_runtime.ModelSourceUnavailableError` (MLflow unreachable or
refusing access: retried by the poller, 503 on ``/admin/reload``),
:class:`~skin_mlops.api.model_runtime.ModelNotFoundError` (no such name, alias or version)
and :class:`~skin_mlops.api.model_runtime.ModelRefusedError` (not a usable ONNX export).

An HTTP tracking server is probed (``GET /health``, a few seconds) before every use, and
MLflow's own HTTP retries are bounded (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and friends
default to a few seconds here, not MLflow's ~4 minutes): the poller is the retry loop, and
a start-up against a stopped server must not hang the service.

Imports ``mlflow`` (``mlflow-skinny`` in the serve group) inside functions only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from skin_mlops import export_format
from skin_mlops.api.model_runtime import (
    ModelNotFoundError,
    ModelRefusedError,
    ModelSourceUnavailableError,
)
from skin_mlops.api.redact import redact_text, redact_uri
from skin_mlops.core.errors import ConfigError, SkinMlopsError

log = logging.getLogger("skin_mlops.api.registry")

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
HEALTH_TIMEOUT_S = 3.0
# MLflow's HTTP client defaults (7 retries, backoff factor 2, 120 s timeout) hold a reload
# for minutes when the server is down; an operator's own environment values still win.
_MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"}
_ACCESS_CODES = {"PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED"}
_EXPORT_EXTRAS = {
    export_format.SIGNATURE_FILE.name: export_format.SIGNATURE_FILE,
    export_format.CLASS_INDEX_FILE.name: export_format.CLASS_INDEX_FILE,
}


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/3`` -> ``(name, alias, version)``."""
    match = _URI.match(uri)
    if not match:
        raise ConfigError(
            f"MODEL_SOURCE {uri!r} is not models:/<name>@<alias> or models:/<name>/<version>"
        )
    return match["name"], match["alias"], match["version"]


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class RegistrySource:
    """A model version in the MLflow registry, by alias or number."""

    def __init__(self, uri: str, tracking_uri: str, cache_dir: Path) -> None:
        self.name, self.alias, self.version = parse_model_uri(uri)
        self.uri = uri
        self.tracking_uri = tracking_uri
        self.cache_dir = cache_dir
        self.description = f"{uri} (MLflow at {redact_uri(tracking_uri)})"
        self._last_warning: str | None = None
        for key, value in _MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)

    def _client(self):  # noqa: ANN202 - mlflow types are imported lazily
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _warn(self, message: str) -> None:
        """Log ``message`` once per outage (the poller asks every few seconds)."""
        if message != self._last_warning:
            self._last_warning = message
            log.warning("%s", message)

    def _check_reachable(self) -> None:
        """Fail fast (seconds) when an HTTP tracking server does not answer its health URL."""
        if urlsplit(self.tracking_uri).scheme not in ("http", "https"):
            return
        import httpx

        try:
            response = httpx.get(
                self.tracking_uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            self._warn(
                f"MLflow at {redact_uri(self.tracking_uri)} does not answer: "
                + redact_text(f"{type(exc).__name__}: {exc}")
            )
            raise ModelSourceUnavailableError(
                f"model source unreachable: {self.description}"
            ) from None
        if response.status_code >= 500:
            raise ModelSourceUnavailableError(
                f"model source unreachable: {self.description} answers HTTP {response.status_code}"
            )

    def _failure(self, exc: Exception, not_found: str) -> SkinMlopsError:
        """The error (with a short public line) for an exception raised by MLflow."""
        self._warn(f"MLflow call for {self.description} failed: {_describe(exc)}")
        code = getattr(exc, "error_code", None)
        if code in _NOT_FOUND_CODES:
            return ModelNotFoundError(f"model not found: {not_found}")
        if code in _ACCESS_CODES:
            return ModelSourceUnavailableError(f"model source refused access: {self.description}")
        return ModelSourceUnavailableError(f"model source unreachable: {self.description}")

    def current_key(self) -> str:
        """``<name>/<version>`` the alias points at now."""
        self._check_reachable()
        reference = f"@{self.alias}" if self.alias is not None else f" version {self.version}"
        try:
            client = self._client()
            if self.alias is not None:
                version = client.get_model_version_by_alias(self.name, self.alias)
            else:
                version = client.get_model_version(self.name, str(self.version))
        except Exception as exc:  # MlflowException, connection errors
            raise self._failure(
                exc, f"the registry has no {self.name}{reference} ({self.description})"
            ) from None
        self._last_warning = None  # MLflow answers again: log the next outage
        return f"{self.name}/{version.version}"

    def materialize(self, key: str) -> Path:
        """Download version ``key``'s registered ONNX model; its export folder in the cache."""
        import mlflow.artifacts

        name, version = key.rsplit("/", 1)
        self._check_reachable()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=self.cache_dir))
        try:
            try:
                downloaded = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=f"models:/{name}/{version}",
                        dst_path=str(staging / "download"),
                        tracking_uri=self.tracking_uri,
                        registry_uri=self.tracking_uri,
                    )
                )
            except Exception as exc:  # MlflowException, connection errors, OSError
                raise self._failure(
                    exc, f"the registered artifact of {key} is gone ({self.description})"
                ) from None
            export = _export_from_onnx_artifact(downloaded, staging / "export", key)
            digest = _sha256(export / export_format.ONNX_MODEL_FILE)
            target = self.cache_dir / name / f"{version}-{digest}"
            if not (target / export_format.SIGNATURE_FILE).is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():  # an incomplete copy (cannot happen with the rename)
                    shutil.rmtree(target)
                os.replace(export, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, redacted, on one line, bounded (for the log)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return redact_text(text)[:500]


def _export_from_onnx_artifact(artifact: Path, export: Path, key: str) -> Path:
    """Lay a downloaded ``mlflow.onnx`` model folder out as an export folder at ``export``.

    Raises:
        ModelRefusedError: not an ONNX model, or without the export's metadata files.
    """
    from mlflow.models import Model

    try:
        flavors = Model.load(str(artifact)).flavors
    except Exception as exc:  # no MLmodel file, or not YAML
        log.warning("registered artifact of %s has no readable MLmodel: %s", key, _describe(exc))
        raise ModelRefusedError(f"{key}: the registered artifact is not an MLflow model") from None
    onnx_flavor = flavors.get("onnx")
    if not isinstance(onnx_flavor, dict) or not onnx_flavor.get("data"):
        raise ModelRefusedError(
            f"{key} is not an ONNX model (flavours: {', '.join(sorted(flavors)) or 'none'})"
        )
    data = (artifact / str(onnx_flavor["data"])).resolve()
    if not data.is_file() or not data.is_relative_to(artifact.resolve()):
        raise ModelRefusedError(f"{key}: the ONNX flavour's model file is missing")
    extras: dict[str, Path] = {}
    for entry in onnx_flavor.get("extra_files") or []:
        if not isinstance(entry, dict):
            continue
        path = (artifact / str(entry.get("path", ""))).resolve()
        if path.is_file() and path.is_relative_to(artifact.resolve()):
            extras.setdefault(path.name, path)
    missing = sorted(set(_EXPORT_EXTRAS) - set(extras))
    if missing:
        raise ModelRefusedError(
            f"{key}: the registered ONNX model has no {' and '.join(missing)} among its "
            "extra files (training logs them with mlflow.onnx.log_model(extra_files=...))"
        )
    optional = {export_format.INT8_MODEL_FILE.name: export_format.INT8_MODEL_FILE}
    for file_name, relative in {**_EXPORT_EXTRAS, **optional}.items():
        if file_name not in extras:  # an optional one (the int8 twin) that this version lacks
            continue
        destination = export / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(extras[file_name], destination)
    # The ONNX file and what sits beside it (external tensor data) become model/.
    model_dir = export / export_format.ONNX_MODEL_FILE.parent
    model_dir.mkdir(parents=True, exist_ok=True)
    for item in data.parent.iterdir():
        if item.is_file():
            name = export_format.ONNX_MODEL_FILE.name if item == data else item.name
            shutil.move(item, model_dir / name)
    return export
