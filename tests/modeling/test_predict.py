"""``skin-mlops predict``: offline scoring of files and folders, as the API would score them.

The model is the tiny exported model of the API tests (its top-1 label is the photo's
dominant colour), published into ``runs/skin5-current`` under a fresh working directory.
The real command runs through ``typer.testing.CliRunner`` on ``skin_mlops.cli.app`` (and as
a subprocess for the exit codes that ``skin_mlops.cli.main`` gives user errors); parity is
checked against ``POST /predict`` of the real API serving the same model (``live_api``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from ingest_fixtures import image_bytes, write_image
from skin_mlops.cli import app
from skin_mlops.core.config import get_settings
from skin_mlops.modeling.predict import predict_paths
from utils.images import encode, two_tone, with_exif_orientation
from utils.model_factory import LABELS, TinyModels, publish_tiny_export

# settings the CLI reads here = what ``live_api`` serves with (utils.servers.make_settings)
_ENV = {
    "UNCERTAINTY_THRESHOLD": "0.5",
    "MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
    "MAX_IMAGE_PIXELS": "40000000",
    "ORT_INTRA_OP_THREADS": "1",
}


@pytest.fixture
def workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models: TinyModels
) -> Iterator[Path]:
    """A fresh working directory (no ``.env``) whose ``runs/skin5-current`` is tiny ``v1``."""
    monkeypatch.chdir(tmp_path)
    for key in ("MODEL_SOURCE", "MLFLOW_TRACKING_URI", "PREPROCESS_WORKERS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in _ENV.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    publish_tiny_export(tmp_path / "runs" / "skin5-current", tiny_models.v1, "v1")
    yield tmp_path
    get_settings.cache_clear()


def predict(*args: str) -> Result:
    """``skin-mlops predict ARGS`` in-process (wide terminal, so table cells do not wrap)."""
    return CliRunner(env={"COLUMNS": "220"}).invoke(app, ["predict", *args])


def json_lines(result: Result) -> list[dict]:
    lines = result.stdout.splitlines()
    assert lines, result.output
    return [json.loads(line) for line in lines]


def photo(path: Path, label: str, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(two_tone(label), fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    return path


def test_a_folder_is_walked_sorted_for_photos_and_scored(workdir: Path) -> None:
    photo(workdir / "photos" / "b_green.jpg", "green", "JPEG")
    photo(workdir / "photos" / "a_red.png", "red")
    photo(workdir / "photos" / "nested" / "c_blue.JPEG", "blue", "JPEG")
    (workdir / "photos" / "notes.txt").write_text("not a photo, and not .jpg: skipped")

    table = predict("photos")
    as_json = predict("photos", "--json")

    assert table.exit_code == 0, table.output
    rows = [line.split() for line in table.stdout.splitlines() if "photos/" in line]
    assert [(row[0], row[1]) for row in rows] == [
        ("photos/a_red.png", "red"),
        ("photos/b_green.jpg", "green"),
        ("photos/nested/c_blue.JPEG", "blue"),
    ]
    assert "3 of 3 files scored" in table.stderr
    assert as_json.exit_code == 0, as_json.output
    assert [(o["path"], o["label"]) for o in json_lines(as_json)] == [
        ("photos/a_red.png", "red"),
        ("photos/b_green.jpg", "green"),
        ("photos/nested/c_blue.JPEG", "blue"),
    ]


def test_single_files_are_scored_in_the_order_given(workdir: Path) -> None:
    white = photo(workdir / "white.png", "white")
    black = photo(workdir / "black.jpg", "black", "JPEG")

    result = predict(str(white), "black.jpg", "--json")

    assert result.exit_code == 0, result.output
    lines = json_lines(result)
    assert [(o["path"], o["label"]) for o in lines] == [
        (str(white), "white"),
        (black.name, "black"),
    ]
    assert result.stderr == ""  # --json: nothing but the lines (no summary, no progress bar)


def test_bad_files_get_one_line_each_the_others_are_scored_exit_1(
    workdir: Path, live_api: str
) -> None:
    photos = workdir / "photos"
    photo(photos / "1_red.png", "red")
    good_jpeg = photo(photos / "3_blue.jpg", "blue", "JPEG").read_bytes()
    (photos / "2_cut.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])  # truncated
    (photos / "4_notes.png").write_text("a text file named like a photo")
    (photos / "5_empty.jpg").write_bytes(b"")
    readme = workdir / "readme.txt"
    readme.write_text("a text file given explicitly")

    result = predict("photos", "readme.txt", "missing.jpg")

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    scored = [line.split()[:2] for line in result.stdout.splitlines() if "photos/" in line]
    assert scored == [["photos/1_red.png", "red"], ["photos/3_blue.jpg", "blue"]]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert [line.split()[1] for line in errors] == [
        "photos/2_cut.jpg:",
        "photos/4_notes.png:",
        "photos/5_empty.jpg:",
        "readme.txt:",
        "missing.jpg:",
    ]
    assert "2 of 7 files scored, 5 failed" in result.stderr
    # each message is the API's `detail` for the same bytes (its 415/422 answers)
    for line in errors[:4]:
        name = line.split()[1].rstrip(":")
        answer = httpx.post(
            f"{live_api}/predict", files={"file": (Path(name).name, (workdir / name).read_bytes())}
        )
        assert answer.status_code in (415, 422), answer.text
        assert line == f"error: {name}: {answer.json()['detail']}"
    assert errors[4] == "error: missing.jpg: no such file or folder"

    as_json = predict("photos", "readme.txt", "--json")
    assert as_json.exit_code == 1
    objects = json_lines(as_json)
    assert [sorted(o) for o in objects if "error" in o] == [["error", "path"]] * 4
    assert [o["label"] for o in objects if "error" not in o] == ["red", "blue"]


def test_json_lines_carry_the_apis_fields(workdir: Path) -> None:
    photo(workdir / "p" / "red.png", "red")
    photo(workdir / "p" / "white.png", "white")

    result = predict("p", "--json")

    assert result.exit_code == 0, result.output
    for line in result.stdout.splitlines():
        obj = json.loads(line)  # each line is one complete JSON object
        assert set(obj) == {
            "path",
            "label",
            "confidence",
            "top_k",
            "uncertain",
            "in_distribution",
            "ood_score",
            "model_version",
        }
        assert obj["in_distribution"] is None and obj["ood_score"] is None  # no guard in v1
        assert obj["model_version"] == "v1"
        assert obj["top_k"][0] == {"label": obj["label"], "probability": obj["confidence"]}
        assert isinstance(obj["uncertain"], bool)
        assert obj["uncertain"] == (obj["confidence"] < 0.5)


def test_top_k_ranks_that_many_labels_capped_at_the_label_count(workdir: Path) -> None:
    photo(workdir / "green.png", "green")

    two = json_lines(predict("green.png", "--top-k", "2", "--json"))[0]
    every = json_lines(predict("green.png", "--top-k", "50", "--json"))[0]
    table = predict("green.png", "--top-k", "4")
    refused = predict("green.png", "--top-k", "0")

    assert [p["label"] for p in two["top_k"]] == [p["label"] for p in every["top_k"]][:2]
    assert sorted(p["label"] for p in every["top_k"]) == sorted(LABELS)
    probabilities = [p["probability"] for p in every["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-9)
    assert "top-4" in table.stdout
    assert table.stdout.count(" 0.") >= 4  # confidence + 4 ranked probabilities on the row
    assert refused.exit_code == 2


def test_labels_and_probabilities_equal_the_apis(workdir: Path, live_api: str) -> None:
    """Same preprocessing, same model, same softmax(logits / T) as POST /predict.

    Probabilities agree to 5e-5, not bit for bit: ONNX Runtime's float32 kernels round
    differently for different batch sizes (~2e-6 on this model), and the CLI runs batches
    of 16 where the API's micro-batcher ran this photo alone (the API itself refuses a
    model whose batch dependence exceeds 1e-4).
    """
    photos = workdir / "photos"
    for label in LABELS:
        photo(photos / f"{label}.png", label)
    photo(photos / "blue.jpg", "blue", "JPEG")
    (photos / "rotated.jpg").write_bytes(with_exif_orientation(two_tone("red"), "JPEG"))
    write_image(photos / "noise.jpg", seed=3, size=(300, 200))
    (photos / "grey.png").write_bytes(image_bytes(seed=5, size=(40, 90), fmt="PNG"))

    result = predict("photos", "--top-k", "5", "--json")

    assert result.exit_code == 0, result.output
    lines = json_lines(result)
    assert len(lines) == len(LABELS) + 4
    for line in lines:
        path = Path(line["path"])
        answer = httpx.post(
            f"{live_api}/predict",
            params={"top_k": 5},
            files={"file": (path.name, path.read_bytes())},
        )
        assert answer.status_code == 200, answer.text
        served = answer.json()
        assert (line["label"], line["uncertain"], line["model_version"]) == (
            served["label"],
            served["uncertain"],
            served["model_version"],
        ), path.name
        assert line["confidence"] == pytest.approx(served["confidence"], abs=5e-5)
        assert [p["label"] for p in line["top_k"]] == [p["label"] for p in served["top_k"]]
        for mine, theirs in zip(line["top_k"], served["top_k"], strict=True):
            assert mine["probability"] == pytest.approx(theirs["probability"], abs=5e-5)


def test_more_files_than_a_batch_keep_their_order(workdir: Path) -> None:
    colours = [LABELS[i % len(LABELS)] for i in range(37)]  # 16 + 16 + 5
    for i, label in enumerate(colours):
        photo(workdir / "many" / f"{i:02d}.png", label)
    (workdir / "many" / "17.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    results = predict_paths(["many"], top_k=1)

    assert [r.path.name for r in results] == [f"{i:02d}.png" for i in range(37)]
    assert [r.label for r in results if r.ok] == [c for i, c in enumerate(colours) if i != 17]
    assert [r.path.name for r in results if not r.ok] == ["17.png"]


def test_the_upload_limit_applies_with_the_apis_wording(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1000")
    get_settings.cache_clear()
    big = workdir / "big.png"
    big.write_bytes(image_bytes(seed=1, size=(200, 200), fmt="PNG"))

    result = predict("big.png")

    assert result.exit_code == 1
    size = big.stat().st_size
    assert f"error: big.png: file of {size:,} bytes is over the limit of 1,000 bytes" in (
        result.stderr
    )


def test_predict_paths_returns_the_results_as_data(workdir: Path) -> None:
    photo(workdir / "red.png", "red")

    (result,) = predict_paths([workdir / "red.png"], model_source="runs/skin5-current", top_k=2)

    assert result.ok and result.label == "red" and result.model_version == "v1"
    assert [label for label, _ in result.top_k][0] == "red" and len(result.top_k) == 2
    assert result.as_json()["top_k"][0]["label"] == "red"


def _console(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("skin-mlops")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "MLFLOW_"))}
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_no_model_or_no_photos_is_one_line_and_exit_2(workdir: Path) -> None:
    photo(workdir / "red.png", "red")
    (workdir / "empty").mkdir()

    no_model = _console(["predict", "red.png", "--model-source", "nowhere/skin5-current"], workdir)
    no_photos = _console(["predict", "empty"], workdir)
    scored = _console(["predict", "red.png"], workdir)  # the default MODEL_SOURCE

    assert no_model.returncode == 2, no_model.stderr
    assert no_model.stderr.startswith("error: cannot load a model from nowhere/skin5-current")
    assert len(no_model.stderr.strip().splitlines()) == 1
    assert no_photos.returncode == 2, no_photos.stderr
    assert "no .jpeg/.jpg/.png files under empty" in no_photos.stderr
    assert "Traceback" not in no_model.stderr + no_photos.stderr
    assert scored.returncode == 0, scored.stderr
    assert "red.png" in scored.stdout and "red" in scored.stdout.split("red.png", 1)[1]


def test_a_registry_alias_is_scored_like_the_api_loads_it(
    workdir: Path,
    tiny_models: TinyModels,
    mlflow_db_template: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--model-source models:/skin-classifier@champion``: resolved through MLflow."""
    import shutil

    import mlflow
    import onnx

    from skin_mlops.export_format import write_metadata
    from utils.model_factory import signature_for

    db = workdir / "mlflow.db"
    shutil.copyfile(mlflow_db_template, db)
    tracking_uri = f"sqlite:///{db}"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("skin", artifact_location=(workdir / "art").as_uri())
    export = workdir / "export-reg"
    write_metadata(export, signature_for(tiny_models.v2, "reg-v2"))
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_artifacts(str(export), artifact_path="export")
        logged = mlflow.onnx.log_model(
            onnx.load_from_string(tiny_models.v2.onnx_bytes),
            name="onnx-model",
            pip_requirements=[],
            # as training registers it: the export's metadata as the flavour's extra files
            extra_files=[
                str(export / "inference" / "signature.json"),
                str(export / "data" / "class_index.json"),
            ],
        )
    version = mlflow.register_model(logged.model_uri, "skin-classifier").version
    client.set_registered_model_alias("skin-classifier", "champion", version)
    photo(workdir / "blue.png", "blue")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MODEL_CACHE_DIR", str(workdir / "model-cache"))
    get_settings.cache_clear()

    result = predict("blue.png", "--model-source", "models:/skin-classifier@champion", "--json")

    assert result.exit_code == 0, result.output
    (line,) = json_lines(result)
    assert (line["label"], line["model_version"]) == ("blue", "reg-v2")
