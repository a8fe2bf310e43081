# syntax=docker/dockerfile:1
# MLflow tracking server for the Docker stack: backend store on Postgres (psycopg2),
# artifacts proxied to MinIO/S3 (boto3). Same MLflow version as uv.lock, so the server
# and the training/serving clients agree on the REST API.
# Build from the repo root: docker build -f docker/mlflow.Dockerfile .
FROM python:3.12-slim
ARG MLFLOW_VERSION=3.17.2
RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" "psycopg2-binary>=2.9" "boto3>=1.34" \
    && useradd --create-home --uid 10001 --user-group mlflow
ENV PYTHONUNBUFFERED=1
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
# /health is exempt from MLflow's Host-header check, so localhost works here.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "1"]
