# syntax=docker/dockerfile:1
# Trainer image: ingestion + training (TensorFlow CPU, MLflow, tf2onnx). Installs the `train`
# dependency group. Run one-shot: docker compose run --rm trainer skin-mlops train ...
# A later issue builds the Airflow workers on this image.
# Build from the repo root: docker build -f docker/trainer.Dockerfile .
ARG PYTHON_IMAGE=python:3.12-slim

# --- builder: resolve the locked `train` environment into /app/.venv ----------------------
FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_PROGRESS=1
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-default-groups --group train --no-install-project
COPY src ./src
RUN uv sync --frozen --no-default-groups --group train --no-editable

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --user-group app
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY configs ./configs
RUN mkdir -p /app/data /app/runs /app/.cache && chown -R app:app /app/data /app/runs /app/.cache
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2
USER app
# One-shot jobs have no port to probe: healthy = the package and its CLI import.
HEALTHCHECK --interval=60s --timeout=30s --start-period=10s --retries=3 \
    CMD python -c "import skin_mlops.cli"
CMD ["skin-mlops", "--help"]
