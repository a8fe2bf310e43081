"""One typed settings object for the whole platform.

Values come from, in order of precedence: real environment variables, then the
versioned ``.env`` file in the working directory (dev values), then the defaults below.
The Docker stack overrides a few of them (``STORAGE_BACKEND=s3``, ``S3_ENDPOINT_URL``,
``MLFLOW_TRACKING_URI``) in ``docker-compose.yml``.

Use :func:`get_settings` everywhere; it turns a validation error into one
:class:`~skin_mlops.core.errors.ConfigError` line that names the bad key.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from skin_mlops.core.errors import ConfigError

Port = Annotated[int, Field(ge=1, le=65535)]
MIN_ADMIN_TOKEN_CHARS = 16


class Settings(BaseSettings):
    """Platform settings. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # --- deployment ------------------------------------------------------------------
    # production (the default) refuses to start the API or `up` with a secret still at its
    # development value from .env; the versioned .env sets development (one warning).
    # See skin_mlops.core.dev_secrets.
    environment: Literal["development", "production"] = "production"

    # --- storage -------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = "local"
    local_object_root: Path = Path("data/objects")
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # The app's own S3 user (in Docker: the MinIO user minio-mc creates, allowed only the
    # project's buckets). MinIO's root login (MINIO_ROOT_*) is never read by the app.
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_processed_bucket: str = "skin-processed"
    s3_models_bucket: str = "models-registry"
    s3_max_attempts: int = Field(default=5, ge=1, le=20)
    s3_connect_timeout_s: float = Field(default=5.0, gt=0)

    # --- data ----------------------------------------------------------------------
    dataset_config: Path = Path("configs/dataset_config.yaml")
    dataset_cache_dir: Path = Path(".cache/dataset")
    feature_cache_dir: Path = Path(".cache/features")
    weights_cache_dir: Path = Path(".cache/weights")

    # --- tracking / registry -------------------------------------------------------
    mlflow_tracking_uri: str = "sqlite:///data/mlflow/mlflow.db"
    mlflow_artifact_root: Path = Path("data/mlflow/artifacts")
    mlflow_experiment: str = "skin-classifier"
    registered_model_name: str = "skin-classifier"
    # The promotion gate: a candidate takes @champion only when its val macro-F1 beats the
    # champion's, re-scored on the same photos, by at least this much.
    promotion_min_delta: float = Field(default=0.01, ge=0, le=1)

    # --- model export / serving ----------------------------------------------------
    # Two concepts, one folder by default: MODEL_DIR is where training and promotion
    # publish the champion's export (always a local folder: the link runs/skin5-current ->
    # runs/skin5/<version>); MODEL_SOURCE is what `serve`, `predict` and `up` load: an
    # export folder or models:/<name>@<alias>. Unset (or empty), MODEL_SOURCE is MODEL_DIR.
    model_dir: Path = Path("runs/skin5-current")
    model_source: str = ""
    api_host: str = "127.0.0.1"
    api_base_url: str = "http://localhost:8000"
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    # 1 (no micro-batching): on 2 compute-bound CPU cores a batch of 4 costs more per image
    # than 4 single calls (116 ms vs 4 x 15.7 ms, benchmarks/serve_stages.py), so batching
    # lost throughput at 32 clients (-21 % and -30 % in two runs) and held more memory
    # (+75 MiB). Raise it where a batch is cheaper per image: a GPU, or many cores.
    max_batch_size: int = Field(default=1, ge=1, le=256)
    max_batch_wait_ms: float = Field(default=5.0, ge=0)
    model_poll_seconds: float = Field(default=5.0, ge=0)
    # Images admitted at once (being decoded or waiting for the model); past it /predict
    # answers 503 with Retry-After instead of queueing without bound.
    max_queued_images: int = Field(default=128, ge=1, le=100_000)
    # Bearer token of POST /admin/reload; unset or empty disables it, else >= 16 characters.
    admin_token: SecretStr | None = None
    uncertainty_threshold: float = Field(default=0.5, ge=0, le=1)
    max_batch_files: int = Field(default=16, ge=1, le=256)
    max_batch_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    preprocess_workers: int = Field(default=2, ge=1, le=64)
    ort_intra_op_threads: int = Field(default=2, ge=0, le=256)
    # ONNX Runtime's CPU memory arena: holds the largest batch's activations for good
    # (+~60 MiB at MAX_BATCH_SIZE 8, Lite0 288 px) for no latency gain measured here.
    ort_memory_arena: bool = False
    # Whether ONNX Runtime's intra-op threads busy-wait for work (see
    # skin_mlops.runtimes.ort_session_options): off, during-run (only while a model call
    # runs) or on (ONNX Runtime's default: they keep spinning between calls).
    ort_spinning: Literal["off", "during-run", "on"] = "off"
    # Which of the export's models serves: int8 (model/model.int8.onnx, present only when it
    # passed training's quality gate, on the engine that gate ran on), fp32 (model/model.onnx
    # on ONNX Runtime), or auto: int8 when the export has one.
    model_precision: Literal["auto", "int8", "fp32"] = "auto"
    # Who runs the fp32 model: ONNX Runtime, or OpenVINO (asked for float32 inference, so
    # the same predictions; faster in batches on AVX-512 CPUs, no faster for one image).
    fp32_engine: Literal["onnxruntime", "openvino"] = "onnxruntime"
    # Server-Timing header on every answer (each stage's ms: read, parse, decode, model,
    # json...; see skin_mlops.api.timing). The api_stage_seconds histogram is always on.
    server_timing: bool = True
    # Who decodes a colour JPEG: libjpeg-turbo via simplejpeg (identical pixels, faster)
    # or Pillow; for every caller of skin_mlops.preprocessing in the API process.
    jpeg_decoder: Literal["simplejpeg", "pillow"] = "simplejpeg"
    model_cache_dir: Path = Path(".cache/models")

    # --- web app (Streamlit; talks to the API over HTTP only) ------------------------
    webapp_host: str = "127.0.0.1"
    webapp_metrics_host: str = "127.0.0.1"
    webapp_top_k: int = Field(default=3, ge=1, le=100)
    # Read timeout of one API call from the page (connect timeout: 3 s).
    webapp_api_timeout_s: float = Field(default=30.0, gt=0, le=600)

    # --- `skin-mlops up` (the one-machine launcher) -----------------------------------
    logs_dir: Path = Path("logs")
    monitoring_dir: Path = Path("monitoring")
    airflow_home: Path = Path("data/airflow")
    airflow_dags_dir: Path = Path("airflow/dags")
    prometheus_data_dir: Path = Path("data/prometheus")
    # How long each service may take to answer its health URL before `up` gives up.
    up_health_timeout_s: float = Field(default=120.0, gt=0, le=3600)

    # --- service ports ---------------------------------------------------------------
    api_port: Port = 8000
    webapp_port: Port = 8501
    # Prometheus exporter of the web app (its own port; 0 = any free port, for tests).
    webapp_metrics_port: int = Field(default=9100, ge=0, le=65535)
    mlflow_port: Port = 5000
    minio_port: Port = 9000
    minio_console_port: Port = 9001
    airflow_port: Port = 8080
    prometheus_port: Port = 9090
    grafana_port: Port = 3000

    # --- service credentials (Docker stack) ----------------------------------------
    airflow_admin_user: str = "admin"
    airflow_admin_password: SecretStr = SecretStr("admin")
    grafana_admin_user: str = "admin"
    grafana_admin_password: SecretStr = SecretStr("admin")
    mlflow_db_user: str = "mlflow"
    mlflow_db_password: SecretStr = SecretStr("mlflow")
    mlflow_db_name: str = "mlflow"
    airflow_db_user: str = "airflow"
    airflow_db_password: SecretStr = SecretStr("airflow")
    airflow_db_name: str = "airflow"

    @model_validator(mode="after")
    def _admin_token_is_long_enough(self) -> Settings:
        # A model validator, not a field one: the error line must not echo the token.
        token = self.admin_token.get_secret_value() if self.admin_token else ""
        if 0 < len(token) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters "
                f"(it has {len(token)}); leave it empty to disable /admin"
            )
        return self

    @model_validator(mode="after")
    def _model_source_defaults_to_model_dir(self) -> Settings:
        if not self.model_source:
            self.model_source = str(self.model_dir)
        return self

    @model_validator(mode="after")
    def _s3_needs_credentials(self) -> Settings:
        if self.storage_backend == "s3":
            for key in ("s3_endpoint_url", "s3_access_key_id", "s3_secret_access_key"):
                value = getattr(self, key)
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                if not value:
                    raise ValueError(f"{key.upper()} is required when STORAGE_BACKEND=s3")
        return self


def _one_line(error: ValidationError) -> str:
    """Render a pydantic validation error as one line naming the offending key(s)."""
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item.get("loc", ())).upper()
        msg = item.get("msg", "invalid value").removeprefix("Value error, ")
        value = item.get("input")
        shown = f" (got {value!r})" if key and not isinstance(value, dict) else ""
        parts.append(f"{key}: {msg}{shown}" if key else msg)
    return "Invalid setting " + "; ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Build a fresh :class:`Settings`, raising :class:`ConfigError` with one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # pydantic validates them
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached). Tests call ``get_settings.cache_clear()``."""
    return load_settings()
