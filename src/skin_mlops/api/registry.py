"""Serve a model from the MLflow registry: ``MODEL_SOURCE=models:/skin-classifier@champion``.

The key of the source is ``<name>/<version>`` of the model version the alias (or the fixed
version number) points at, asked from the registry on every poll: moving the alias
``champion`` to a new version makes the service load it.

Training logs, for a registered version, the ONNX model, ``signature.json`` and
``class_index.json`` (issue 3). We look for them, by file name, first among the registered
model's own artifacts, then among its run's artifacts (a few levels deep), download only
those three files (plus the ONNX model's external-data files beside it), and lay them out
as an export folder under ``MODEL_CACHE_DIR/<name>-v<version>/`` (written to a temporary
folder, then renamed), so
loading and validating is the same code as for ``runs/skin5-current``.

Imports ``mlflow`` (``mlflow-skinny`` in the serve group) inside functions only.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from skin_mlops import export_format
from skin_mlops.core.errors import ConfigError, ServiceUnavailableError

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
_WANTED = {
    "model.onnx": export_format.ONNX_MODEL_FILE,
    "signature.json": export_format.SIGNATURE_FILE,
    "class_index.json": export_format.CLASS_INDEX_FILE,
}
_MAX_DEPTH = 4


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/3`` -> ``(name, alias, version)``."""
    match = _URI.match(uri)
    if not match:
        raise ConfigError(
            f"MODEL_SOURCE {uri!r} is not models:/<name>@<alias> or models:/<name>/<version>"
        )
    return match["name"], match["alias"], match["version"]


def _find_files(artifact_uri: str, tracking_uri: str) -> dict[str, str]:
    """Map each wanted file name to the first artifact URI holding it (breadth first)."""
    import mlflow.artifacts

    found: dict[str, str] = {}
    level = [""]
    for _ in range(_MAX_DEPTH):
        next_level: list[str] = []
        for folder in level:
            uri = f"{artifact_uri.rstrip('/')}/{folder}" if folder else artifact_uri
            for info in mlflow.artifacts.list_artifacts(
                artifact_uri=uri, tracking_uri=tracking_uri
            ):
                name = info.path.rsplit("/", 1)[-1]
                relative = f"{folder}/{name}" if folder else name
                if info.is_dir:
                    next_level.append(relative)
                elif name in _WANTED and name not in found:
                    found[name] = f"{artifact_uri.rstrip('/')}/{relative}"
                elif name.endswith(".onnx") and "model.onnx" not in found:
                    found.setdefault("*.onnx", f"{artifact_uri.rstrip('/')}/{relative}")
        level = next_level
        if not level or len(found.keys() & _WANTED.keys()) == len(_WANTED):
            break
    if "model.onnx" not in found and "*.onnx" in found:
        found["model.onnx"] = found["*.onnx"]
    found.pop("*.onnx", None)
    return found


_NOT_ONNX_DATA = (".json", ".yaml", ".yml", ".txt", ".keras", ".h5", ".pb", ".onnx", "MLmodel")


def _onnx_companions(onnx_uri: str, tracking_uri: str) -> list[str]:
    """Files beside the ONNX model that may hold its external tensor data (``*.data``...).

    MLflow's ONNX flavour saves large initializers as external data next to
    ``model.onnx``; ONNX Runtime needs those files in the same folder.
    """
    import mlflow.artifacts

    folder = onnx_uri.rsplit("/", 1)[0]
    return [
        f"{folder}/{info.path.rsplit('/', 1)[-1]}"
        for info in mlflow.artifacts.list_artifacts(artifact_uri=folder, tracking_uri=tracking_uri)
        if not info.is_dir and not info.path.endswith(_NOT_ONNX_DATA)
    ]


class RegistrySource:
    """A model version in the MLflow registry, by alias or number."""

    def __init__(self, uri: str, tracking_uri: str, cache_dir: Path) -> None:
        self.name, self.alias, self.version = parse_model_uri(uri)
        self.tracking_uri = tracking_uri
        self.cache_dir = cache_dir
        self.description = f"{uri} (MLflow at {tracking_uri})"

    def _client(self):  # noqa: ANN202 - mlflow types are imported lazily
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def current_key(self) -> str:
        """``<name>/<version>`` the alias points at now."""
        try:
            client = self._client()
            if self.alias is not None:
                version = client.get_model_version_by_alias(self.name, self.alias)
            else:
                version = client.get_model_version(self.name, str(self.version))
        except Exception as exc:  # MlflowException, connection errors
            raise ServiceUnavailableError(
                f"MLflow registry has no {self.name}@{self.alias or self.version}: {exc}"
            ) from None
        return f"{self.name}/{version.version}"

    def materialize(self, key: str) -> Path:
        """Download the export files of ``key`` into a cache folder laid out like an export."""
        name, version = key.rsplit("/", 1)
        target = self.cache_dir / f"{name}-v{version}"
        if (target / export_format.SIGNATURE_FILE).is_file():
            return target
        import mlflow.artifacts

        client = self._client()
        model_version = client.get_model_version(name, version)
        found = _find_files(client.get_model_version_download_uri(name, version), self.tracking_uri)
        if model_version.run_id and len(found) < len(_WANTED):
            run_artifacts = client.get_run(model_version.run_id).info.artifact_uri
            run_files = _find_files(run_artifacts, self.tracking_uri)
            found = {**run_files, **found}
        missing = sorted(_WANTED.keys() - found.keys())
        if missing:
            raise ServiceUnavailableError(
                f"registered model {key} has no {', '.join(missing)} among its artifacts "
                f"or its run's"
            )
        downloads = [(uri, _WANTED[file_name]) for file_name, uri in found.items()]
        downloads += [
            (uri, export_format.ONNX_MODEL_FILE.parent / uri.rsplit("/", 1)[-1])
            for uri in _onnx_companions(found["model.onnx"], self.tracking_uri)
        ]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-v{version}-", dir=self.cache_dir))
        try:
            for artifact_uri, relative in downloads:
                downloaded = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=artifact_uri,
                        dst_path=str(staging / "download"),
                        tracking_uri=self.tracking_uri,
                    )
                )
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(downloaded, destination)
            shutil.rmtree(staging / "download", ignore_errors=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
