"""The prediction service: FastAPI on ONNX Runtime (``skin-mlops serve``).

Modules, read in this order:

* :mod:`~skin_mlops.api.model_runtime` - load an export (folder or MLflow registry), validate,
  warm up, hot-swap;
* :mod:`~skin_mlops.api.batching` - the micro-batcher in front of the ONNX session;
* :mod:`~skin_mlops.api.metrics` and :mod:`~skin_mlops.api.middleware` - Prometheus metrics,
  request body limits;
* :mod:`~skin_mlops.api.schemas` and :mod:`~skin_mlops.api.routes` - the HTTP surface;
* :mod:`~skin_mlops.api.main` - ``create_app(settings)``; :mod:`~skin_mlops.api.cli` - the command.

Nothing here imports TensorFlow or Keras; this package is empty on import so that
``skin_mlops.cli`` can register the command without importing FastAPI or ONNX Runtime.
"""
