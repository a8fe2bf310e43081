"""The MLflow pyfunc a user would write to serve this model with ``mlflow models serve``.

It wraps the **same** exported ONNX model, with the same ONNX Runtime session options as
the API (:func:`skin_mlops.api.model_runtime.session_options`), and the **same**
preprocessing (:func:`skin_mlops.preprocessing.preprocess_bytes`) and calibrated softmax
(:func:`skin_mlops.export_format.softmax`). Its input is what such a user sends: a JSON
``dataframe_split`` with one column ``image`` of base64-encoded JPEG bytes, one row per
photo; its output is one row of class probabilities per photo.

Used by ``benchmarks/serve_benchmark.py`` (server ``mlflow-pyfunc``); logged with
``code_paths`` so that ``mlflow models serve`` imports this file.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd


class OnnxSkinClassifier(mlflow.pyfunc.PythonModel):
    """``dataframe_split{columns: [image], data: [[<base64 JPEG>], ...]}`` -> probabilities."""

    def load_context(self, context: Any) -> None:
        import onnxruntime as ort

        from skin_mlops.api.model_runtime import session_options
        from skin_mlops.export_format import ONNX_MODEL_FILE, read_signature

        export = Path(context.artifacts["export"])
        self.signature = read_signature(export)
        self.session = ort.InferenceSession(
            str(export / ONNX_MODEL_FILE),
            sess_options=session_options(2),
            providers=["CPUExecutionProvider"],
        )
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        from skin_mlops.export_format import softmax
        from skin_mlops.preprocessing import preprocess_bytes

        size = self.signature.image_size
        batch = np.stack(
            [preprocess_bytes(base64.b64decode(text), size) for text in model_input["image"]]
        ).astype(np.float32)
        # every output, as the API runs it (the logits and the guard's score: the same work)
        names = [output.name for output in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, {self.input_name: batch}), strict=True))
        probabilities = softmax(outputs[self.signature.output.name], self.signature.temperature)
        frame = pd.DataFrame(probabilities, columns=self.signature.labels)
        if self.signature.ood is not None:
            score = outputs[self.signature.ood.output.name]
            frame["in_distribution"] = score <= self.signature.ood.threshold
        return frame


def log_pyfunc(export: Path, tracking_uri: str, artifact_root: Path) -> str:
    """Log :class:`OnnxSkinClassifier` with the export folder as its artifact; its model URI."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    name = "serve-benchmark-pyfunc"
    experiment = mlflow.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment(name, artifact_location=artifact_root.as_uri())
    )
    with mlflow.start_run(experiment_id=experiment_id):
        logged = mlflow.pyfunc.log_model(
            name="model",
            python_model=OnnxSkinClassifier(),
            artifacts={"export": str(export.resolve())},
            code_paths=[__file__],
            pip_requirements=[],
        )
    return str(logged.model_uri)
