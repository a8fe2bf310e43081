"""URIs and error text as unauthenticated endpoints and logs show them: no secrets."""

from __future__ import annotations

import pytest

from skin_mlops.api.redact import redact_text, redact_uri


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://user:pass@mlflow:5000", "http://***@mlflow:5000"),
        ("https://token@mlflow.example.org/base/", "https://***@mlflow.example.org/base/"),
        ("postgresql://mlflow:s3cret@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        (
            "https://bucket.s3.amazonaws.com/m.onnx?X-Amz-Signature=abc&X-Amz-Credential=AKIA"
            "&X-Amz-Security-Token=zzz&versionId=3",
            "https://bucket.s3.amazonaws.com/m.onnx?X-Amz-Signature=***&X-Amz-Credential=***"
            "&X-Amz-Security-Token=***&versionId=3",
        ),
        ("http://mlflow:5000/api?token=abc&page=2#frag", "http://mlflow:5000/api?token=***&page=2"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:///data/mlflow/mlflow.db", "sqlite:///data/mlflow/mlflow.db"),
        ("models:/skin-classifier@champion", "models:/skin-classifier@champion"),
        ("runs/skin5-current", "runs/skin5-current"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_redact_text_masks_every_uri_in_a_message() -> None:
    message = (
        "API request to http://u:hunter2@mlflow:5000/api/2.0/mlflow/registered-models/alias "
        "failed with exception HTTPConnectionPool(host='mlflow', port=5000): Max retries; "
        "see s3://key:secret@bucket/x?sig=abc."
    )
    shown = redact_text(message)
    assert "hunter2" not in shown and "secret@" not in shown and "sig=abc" not in shown
    assert "http://***@mlflow:5000/api/2.0/mlflow/registered-models/alias" in shown
    assert "s3://***@bucket/x?sig=***" in shown
    assert redact_text("no uri here") == "no uri here"
