"""The naive baseline for ``serve_benchmark.py``: Keras ``model.predict`` inside a FastAPI handler.

What a first version of a prediction API typically looks like: one process, the Keras model
loaded with TensorFlow, and per request ``await file.read()`` -> the same
``preprocess_bytes`` -> ``model.predict(x[None])`` -> softmax, all inside an ``async``
handler (so the event loop blocks during decode and inference). Benchmarks only.

Run: ``python benchmarks/naive_keras_server.py --export runs/skin5-current --port 8100``
"""

import argparse
import os
from pathlib import Path

from fastapi import FastAPI, File, UploadFile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_app(export: Path) -> FastAPI:
    """The naive app for the export at ``export`` (loads the Keras model)."""
    import keras
    import numpy as np

    from skin_mlops.export_format import KERAS_MODEL_FILE, read_signature
    from skin_mlops.preprocessing import preprocess_bytes

    folder = export.resolve()
    signature = read_signature(folder)
    model = keras.models.load_model(folder / KERAS_MODEL_FILE, compile=False)
    app = FastAPI(title="naive keras baseline")

    @app.get("/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)) -> dict:  # noqa: B008
        data = await file.read()
        x = preprocess_bytes(data, signature.image_size)
        logits = model.predict(x[None], verbose=0)[0] / signature.temperature
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = int(probs.argmax())
        return {"label": signature.labels[top], "confidence": float(probs[top])}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(build_app(args.export), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
