# syntax=docker/dockerfile:1
# Web app image: the Streamlit front end that calls the prediction API (API_BASE_URL).
# Installs the `webapp` dependency group only (no TensorFlow, no ONNX Runtime): it talks to
# the model through the API alone. Build from the repo root: docker build -f docker/Dockerfile.app .
ARG PYTHON_IMAGE=python:3.12-slim

# --- builder: resolve the locked `webapp` environment into /app/.venv ---------------------
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
RUN uv sync --frozen --no-default-groups --group webapp --no-install-project
COPY src ./src
RUN uv sync --frozen --no-default-groups --group webapp --no-editable
# Guard: the web app image must never carry TensorFlow, Keras or ONNX Runtime.
RUN /app/.venv/bin/python -c "import importlib.util as u, sys; bad = [m for m in ('tensorflow', 'keras', 'onnxruntime') if u.find_spec(m)]; sys.exit(f'forbidden in the web app image: {bad}' if bad else 0)"

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --user-group app
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WEBAPP_PORT=8501 \
    WEBAPP_METRICS_HOST=0.0.0.0 \
    WEBAPP_METRICS_PORT=9100 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false
USER app
# 8501: the page; 9100: its Prometheus exporter (/metrics).
EXPOSE 8501 9100
# Streamlit's own liveness endpoint.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_stcore/health' % os.environ.get('WEBAPP_PORT', '8501'), timeout=4)"
CMD ["skin-mlops", "webapp", "--host", "0.0.0.0", "--port", "8501"]
