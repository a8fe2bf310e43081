# syntax=docker/dockerfile:1
# Prediction API image: FastAPI on ONNX Runtime. Installs ONLY the `serve` dependency group,
# so there is no TensorFlow/Keras in it (the build fails if one slips in).
# Build from the repo root: docker build -f docker/api.Dockerfile .
ARG PYTHON_IMAGE=python:3.12-slim

# --- builder: resolve the locked `serve` environment into /app/.venv ----------------------
FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
# UV_PYTHON: use the image's 3.12 (the repo's .python-version is for the dev machine).
ENV UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_PROGRESS=1
WORKDIR /app
# Dependencies first (cached layer), then the project itself, installed non-editable.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-default-groups --group serve --no-install-project
COPY src ./src
RUN uv sync --frozen --no-default-groups --group serve --no-editable
# Guard: the API image must never carry TensorFlow or Keras.
RUN /app/.venv/bin/python -c "import importlib.util as u, sys; bad = [m for m in ('tensorflow', 'keras') if u.find_spec(m)]; sys.exit(f'forbidden in the API image: {bad}' if bad else 0)"

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --user-group app
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY configs ./configs
RUN mkdir -p /app/runs /app/data && chown -R app:app /app/runs /app/data
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    API_HOST=0.0.0.0 \
    API_PORT=8000
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('API_PORT', '8000'), timeout=4)"
CMD ["skin-mlops", "serve"]
