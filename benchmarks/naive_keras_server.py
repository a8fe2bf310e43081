"""The naive baseline for ``serve_benchmark.py``: Keras ``model.predict`` inside a FastAPI handler.

What a first version of a prediction API typically looks like: one process, the Keras model
loaded with TensorFlow, and per request ``await file.read()`` -> the same
``preprocess_bytes`` -> ``model.predict(x[None])`` -> softmax, all inside an ``async``
handler (so the event loop blocks during decode and inference). Benchmarks only.

Run: ``python benchmarks/naive_keras_server.py --export runs/skin5-current --port 8100``
"""

import os
from pathlib import Path
from typing import Annotated

import typer
from fastapi import FastAPI, File, UploadFile

from skin_mlops.modeling.export import load_keras_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_app(export: Path) -> FastAPI:
    """The naive app for the export at ``export`` (loads the Keras model)."""

    from skin_mlops.export_format import KERAS_MODEL_FILE, read_signature, softmax
    from skin_mlops.preprocessing import preprocess_bytes

    folder = export.resolve()
    signature = read_signature(folder)
    model = load_keras_model(folder / KERAS_MODEL_FILE, logits_only=True)
    app = FastAPI(title="naive keras baseline")

    @app.get("/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)) -> dict:  # noqa: B008
        data = await file.read()
        x = preprocess_bytes(data, signature.image_size)
        probs = softmax(model.predict(x[None], verbose=0)[0], signature.temperature)
        top = int(probs.argmax())
        return {"label": signature.labels[top], "confidence": float(probs[top])}

    return app


def main(
    export: Annotated[Path, typer.Option(help="Export folder whose Keras model to serve.")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Loopback port.")] = 8100,
) -> None:
    """Serve the naive baseline: Keras model.predict inside a FastAPI handler."""
    import uvicorn

    uvicorn.run(build_app(export), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    typer.run(main)
