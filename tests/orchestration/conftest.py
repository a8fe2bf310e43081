"""Airflow for the orchestration tests: a temporary AIRFLOW_HOME, the repo's DAG folder.

Airflow reads its configuration when first imported, so the environment is set here, at
import time, before any test module imports it; the metadata DB (SQLite) is migrated once
per session (~9 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest_fixtures import RawDataset
from skin_mlops.core.config import get_settings

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "airflow" / "dags"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="skin-airflow-home-"))

os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES"] = "airflow.* skin_mlops.*"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB under the session's AIRFLOW_HOME."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    result = subprocess.run(
        [airflow, "db", "migrate"], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture(scope="session")
def dagbag():  # noqa: ANN201  (airflow's DagBag; imported lazily)
    """The repo's DAG folder, parsed once."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted ImageNet weights file for the session's trainings."""
    return tmp_path_factory.mktemp("weights")


@pytest.fixture
def platform_env(
    raw_dataset: RawDataset, weights_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RawDataset]:
    """Embedded defaults in the test's folder: SQLite rows, local objects, local MLflow."""
    root = raw_dataset.root
    values = {
        "STORAGE_BACKEND": "local",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'data' / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(root / "data" / "mlflow" / "artifacts"),
        "MODEL_DIR": str(root / "runs" / "skin5-current"),
        "MODEL_SOURCE": str(root / "runs" / "skin5-current"),
        "FEATURE_CACHE_DIR": str(root / ".cache" / "features"),
        "DATASET_CACHE_DIR": str(root / ".cache" / "dataset"),
        "MODEL_CACHE_DIR": str(root / ".cache" / "models"),
        "WEIGHTS_CACHE_DIR": str(weights_cache),
        "API_BASE_URL": "http://127.0.0.1:9",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    get_settings.cache_clear()
    yield raw_dataset
    get_settings.cache_clear()
