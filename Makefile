# Tasks of the project; every one runs through uv. `make` or `make help` lists them.
.DEFAULT_GOAL := help
.PHONY: help install lint format typecheck check test test-slow test-model up ci bench-serve bench-train bench-webapp bench-dags

help: ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-13s %s\n", $$1, $$2}'

install: ## create .venv from uv.lock (all default groups)
	uv sync --frozen

lint: ## ruff lint
	uv run ruff check .

format: ## ruff format (rewrites files)
	uv run ruff format .

typecheck: ## mypy on src/
	uv run mypy

check: ## lint + format check + types, as CI runs them
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy

test: ## the fast suite (the README's test command)
	uv run pytest

test-slow: ## crash loops, real servers, Airflow standalone, PyTorch parity (SKIN_TORCH_PYTHON)
	uv run pytest -m slow

test-model: ## model + data suites on runs/skin5-current and data/raw
	uv run pytest -m "model or data" --model-source=runs/skin5-current --data-dir=data/raw

up: ## the whole platform on this machine (MLflow, API, web app, Prometheus)
	uv run skin-mlops up

ci: ## what CI runs: tools, checks, both suites
	bash .ci/run

bench-serve: ## serving: this API vs mlflow serve vs a naive Keras handler
	uv run python benchmarks/serve_benchmark.py

bench-train: ## training: cached ONNX features vs plain Keras fit
	uv run python benchmarks/train_benchmark.py compare

bench-webapp: ## the web page in chromium vs the API call alone
	uv run python benchmarks/webapp_latency.py

bench-dags: ## DAG file import time
	uv run python benchmarks/dag_import_time.py
