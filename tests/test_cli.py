"""The ``skin-mlops`` console script as a newcomer runs it: the main job (``pipeline``),
one-line errors, fast start-up without TensorFlow.

Each test runs the real console script in a subprocess, in a fresh working directory that
holds only ``configs/dataset_config.yaml`` and ``data/raw`` (no ``.env``: defaults apply),
exactly the layout the README describes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ingest_fixtures import write_image

LABELS = ("acne", "lichen_planus")
REPO_ROOT = Path(__file__).resolve().parents[1]


def skin_mlops() -> list[str]:
    """The installed console script of this venv."""
    script = Path(sys.executable).with_name("skin-mlops")
    assert script.exists(), f"console script missing beside {sys.executable}"
    return [str(script)]


def make_workdir(root: Path, per_label: dict[str, int]) -> Path:
    """A project-like folder: the repo's dataset config (labels narrowed) + generated photos."""
    (root / "configs").mkdir(parents=True)
    config = (REPO_ROOT / "configs" / "dataset_config.yaml").read_text(encoding="utf-8")
    head, _, tail = config.partition("labels:")
    labels_block = "labels:\n" + "".join(f"  - {label}\n" for label in LABELS)
    tail = tail[tail.index("metadata_db:") :]
    (root / "configs" / "dataset_config.yaml").write_text(head + labels_block + tail)
    seed = 0
    for split, count in per_label.items():
        for label_index, label in enumerate(LABELS):
            for i in range(count):
                seed += 1
                write_image(
                    root / "data" / "raw" / split / label / f"{label}_{i}.jpg",
                    seed=seed * 7 + label_index,
                    size=(96, 72),
                )
    return root


def run_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "STORAGE_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", COLUMNS="160")
    return subprocess.run(
        skin_mlops() + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_stage_and_does_not_load_tensorflow(tmp_path: Path) -> None:
    probe = (
        "import sys; from skin_mlops.cli import app; "
        "assert 'tensorflow' not in sys.modules and 'mlflow' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('tensorflow', 'mlflow')))[:5]"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)
    result = run_cli(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("ingest", "train", "serve", "pipeline", "predict"):
        assert command in result.stdout


DATASET_CONFIG_COMMANDS = ("ingest", "train", "pipeline")


@pytest.mark.parametrize("command", DATASET_CONFIG_COMMANDS)
def test_every_dataset_command_takes_config_and_the_dataset_config_alias(
    command: str, tmp_path: Path
) -> None:
    """One name (``--config``/``-c``), one help line, and the spec's ``--dataset-config``."""
    shown = run_cli([command, "--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "--config,--dataset-config" in shown.stdout
    assert re.search(r"\s-c\s", shown.stdout), shown.stdout
    assert "Dataset config YAML (default: DATASET_CONFIG)." in " ".join(shown.stdout.split())
    for spelling in ("--config", "--dataset-config", "-c"):
        missing = tmp_path / f"no-such{spelling}.yaml"
        result = run_cli([command, spelling, str(missing)], tmp_path)
        assert result.returncode == 2, (spelling, result.stdout, result.stderr)
        assert f"dataset config not found: {missing}" in result.stderr, spelling
        assert "Traceback" not in result.stderr


def test_ingest_reads_the_config_named_by_the_alias(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "proj", {"train": 1, "val": 1})
    (workdir / "configs" / "dataset_config.yaml").rename(workdir / "configs" / "other.yaml")

    result = run_cli(["ingest", "--dataset-config", "configs/other.yaml"], workdir)

    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(workdir / "data/metadata/skin_metadata.db") as db:
        assert db.execute("SELECT COUNT(*) FROM lesions_data").fetchone()[0] == 4


def test_missing_dataset_config_is_one_line_not_a_trace(tmp_path: Path) -> None:
    result = run_cli(["pipeline"], tmp_path)
    assert result.returncode == 2
    assert "dataset config not found" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cv_takes_train_s_recipe_flags_and_checks_them_first(tmp_path: Path) -> None:
    """``cv --backbone ...`` measures the recipe ``train --backbone ...`` ships."""
    help_text = run_cli(["cv", "--help"], tmp_path).stdout
    for flag in ("--backbone", "--image-size", "--views", "--pooling", "--heads", "--epochs"):
        assert flag in help_text
    workdir = make_workdir(tmp_path / "w", {"train": 2})
    result = run_cli(["cv", "--backbone", "resnet50"], workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unknown backbone 'resnet50'" in result.stderr
    assert "efficientnet_lite2" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_strict_pipeline_stops_before_training_on_corrupt_photos(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "proj", {"train": 2, "val": 1})
    corrupt = workdir / "data" / "raw" / "train" / "acne" / "cut.jpg"
    corrupt.write_bytes((workdir / "data/raw/train/acne/acne_0.jpg").read_bytes()[:300])

    result = run_cli(["pipeline", "--strict"], workdir)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (workdir / "runs").exists(), "training ran although --strict was given"
    with sqlite3.connect(workdir / "data/metadata/skin_metadata.db") as db:
        rows = db.execute("SELECT COUNT(*) FROM lesions_data").fetchone()[0]
    assert rows == 6  # every whole photo ingested, the truncated one not


@pytest.mark.slow
def test_pipeline_ingests_trains_and_exports_from_a_fresh_folder(tmp_path: Path) -> None:
    """The README's main command, end to end with the real default backbone."""
    workdir = make_workdir(tmp_path / "proj", {"train": 6, "val": 3})

    result = run_cli(["pipeline", "--epochs", "2"], workdir, timeout=1500)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    current = workdir / "runs" / "skin5-current"
    assert current.is_symlink()
    signature = json.loads((current / "inference" / "signature.json").read_text())
    assert signature["labels"] == list(LABELS)
    assert signature["backbone"] == "efficientnet_lite0"
    assert (current / "model" / "model.onnx").stat().st_size > 1_000_000
    index = json.loads((current / "data" / "class_index.json").read_text())
    assert index == {"0": "acne", "1": "lichen_planus"}
    objects = list((workdir / "data" / "objects" / "skin-processed").rglob("*.jpg"))
    assert len(objects) == 18
    models = list((workdir / "data" / "objects" / "models-registry" / "skin" / "models").iterdir())
    assert [p.name for p in models] == [signature["run_id"]]
    assert (workdir / "data" / "mlflow" / "mlflow.db").is_file()
    # the newcomer's terminal: no TensorFlow native start-up noise, no trace
    assert "oneDNN" not in result.stderr and "InitializeLog" not in result.stderr
    assert "Traceback" not in result.stderr
    shutil.rmtree(workdir / ".cache", ignore_errors=True)


def test_an_mlflow_error_is_one_line_and_a_bug_keeps_its_trace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.exceptions import MlflowException

    from skin_mlops import cli

    def refuse() -> None:
        raise MlflowException("When an mlflow-artifacts URI was supplied, the tracking URI\nmust")

    monkeypatch.setattr(cli, "app", refuse)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: MLflow: When an mlflow-artifacts URI was supplied, the tracking URI"

    def bug() -> None:
        raise ZeroDivisionError("ours")

    monkeypatch.setattr(cli, "app", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main()
