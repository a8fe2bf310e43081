"""The served ONNX graph and the Keras model it was converted from agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from skin_mlops import export_format
from skin_mlops.api.model_runtime import LoadedModel
from utils.model_checks import ValSet

pytestmark = pytest.mark.model


def test_onnx_and_keras_agree_on_the_val_photos(
    served_model: LoadedModel,
    model_folder: Path,
    val_set: ValSet,
    pytestconfig: pytest.Config,
    figure: Callable[[str], None],
) -> None:
    """max |p_onnx - p_keras| <= ``--max-prob-delta`` and identical top-1 on every photo."""
    keras_file = model_folder / export_format.KERAS_MODEL_FILE
    if not keras_file.is_file():  # the registry's copy holds the ONNX model only
        pytest.skip(f"no {export_format.KERAS_MODEL_FILE} in {model_folder} (models:/ source)")
    pytest.importorskip("keras", reason="the Keras model needs TensorFlow (train group)")
    from skin_mlops.modeling import export

    keras_model = export.load_keras_model(keras_file)
    keras_logits, keras_ood = export.keras_outputs(keras_model, val_set.tensors)
    p_onnx = served_model.probabilities(val_set.logits)
    p_keras = served_model.probabilities(keras_logits)
    delta = float(np.abs(p_onnx - p_keras).max())
    same_top1 = int((p_onnx.argmax(1) == p_keras.argmax(1)).sum())
    figure(
        f"ONNX vs Keras: max |dp| {delta:.2e}, same top-1 {same_top1}/{len(p_onnx)}, "
        f"max |d logit| {float(np.abs(val_set.logits - keras_logits).max()):.2e}"
    )
    assert delta <= pytestconfig.getoption("--max-prob-delta")
    assert same_top1 == len(p_onnx)
    if served_model.signature.ood is not None:  # the guard's score: the same in both
        _, onnx_ood = served_model.outputs(val_set.tensors)
        assert keras_ood is not None and onnx_ood is not None
        relative = float(np.max(np.abs(onnx_ood - keras_ood) / np.abs(keras_ood)))
        figure(f"ONNX vs Keras ood_score: max relative difference {relative:.1e}")
        assert relative <= export.OOD_PARITY_RTOL
