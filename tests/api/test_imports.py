"""The serving code never imports TensorFlow/Keras, and the CLI does not import the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from utils.images import encode, two_tone

_SERVE_ONE_PREDICTION = """
import sys
from fastapi.testclient import TestClient
from skin_mlops.api.main import create_app
from skin_mlops.core.config import load_settings

settings = load_settings(model_source=sys.argv[1], model_poll_seconds=0)
with TestClient(create_app(settings)) as client:
    response = client.post("/predict", files={"file": ("x.png", open(sys.argv[2], "rb").read())})
    assert response.status_code == 200, response.text
    print(response.json()["label"])
heavy = sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules)
assert not heavy, f"serving imported {heavy}"
"""

_CLI_STARTS_LIGHT = """
import sys
import skin_mlops.cli
heavy = ("fastapi", "onnxruntime", "uvicorn", "tensorflow", "mlflow")
loaded = sorted(m for m in heavy if m in sys.modules)
assert not loaded, f"skin_mlops.cli imported {loaded} at start"
"""


def test_serving_a_prediction_imports_no_tensorflow(export_link: Path, tmp_path: Path) -> None:
    image = tmp_path / "red.png"
    image.write_bytes(encode(two_tone("red")))
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_ONE_PREDICTION, str(export_link), str(image)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "red"


def test_cli_module_does_not_import_the_server() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CLI_STARTS_LIGHT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
