"""Train a small real model on generated photos, for the ``model`` and ``data`` suites in CI.

Usage (from the checkout; ~2 min on 2 cores)::

    uv run python tests/utils/make_ci_model.py WORKDIR
    uv run pytest -m "model or data" --model-source=WORKDIR/runs/skin5-current \\
        --data-dir=WORKDIR/data/raw --dataset-config=WORKDIR/configs/dataset_config.yaml

What it does, in ``WORKDIR`` (created; must be empty or absent):

1. writes ``data/raw/<split>/<label>/*.jpg`` (:func:`write_photos`, 30 train and 12 val
   per label): one dominant colour per label, blended up to 30 % towards another label's
   (so confidence varies and calibration means something), with a smooth random texture,
   a gradient, a few off-centre blobs and noise (so orientation changes the pixels and each
   photo has its own perceptual hash), random sizes and aspect ratios, every 5th photo
   stored turned with the EXIF tag that turns it back; labels are those of
   ``configs/dataset_config.yaml``;
2. writes ``configs/dataset_config.yaml`` for that tree;
3. runs the real ``skin-mlops ingest`` then ``skin-mlops train`` (the real EfficientNet-Lite0
   backbone, small settings: :data:`TRAIN_ARGS`, incl. ``--tta-views 8``, the platform's
   way to dihedral invariance) in ``WORKDIR`` with a local object store, an MLflow SQLite
   store and caches all under ``WORKDIR``; only the converted backbone weights are cached
   in the checkout's ``.cache/weights`` (ignored by git), so a rerun skips that step.

The export is ``WORKDIR/runs/skin5-current``. Imports only the package, numpy and Pillow
(no test module), so it runs as a plain script; :func:`write_photos` is also used by the
data suite's self-test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from skin_mlops.dataset_config import load_dataset_config

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "dataset_config.yaml"
PER_LABEL = {"train": 30, "val": 12}
# One well-separated dominant colour per label (RGB), in config label order.
PALETTE = (
    (200, 40, 40),
    (40, 170, 60),
    (40, 60, 200),
    (210, 190, 40),
    (150, 50, 180),
    (40, 180, 190),
    (230, 130, 30),
    (120, 120, 120),
)
TRAIN_ARGS = (
    "--image-size",
    "96",
    "--epochs",
    "40",
    "--views",
    "12",
    "--pooling",
    "avg",
    "--batch-size",
    "16",
    "--learning-rate",
    "0.003",
    "--tta-views",
    "8",
)
# Settings the runs must not inherit from the caller's environment (they would send the
# photos or the model somewhere else); each is set to a path under WORKDIR instead.
_ISOLATED = (
    "STORAGE_BACKEND",
    "LOCAL_OBJECT_ROOT",
    "S3_ENDPOINT_URL",
    "DATASET_CONFIG",
    "DATASET_CACHE_DIR",
    "FEATURE_CACHE_DIR",
    "WEIGHTS_CACHE_DIR",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_ARTIFACT_ROOT",
    "MODEL_DIR",
    "MODEL_SOURCE",
    "MODEL_CACHE_DIR",
)


def photo(
    colour: tuple[int, int, int],
    rng: np.random.Generator,
    other: tuple[int, int, int] | None = None,
) -> Image.Image:
    """A generated "photo": ``colour`` dominates; texture, blobs and noise are nuisance.

    With ``other``, the base colour is blended towards it by up to 30 % (still nearer
    ``colour``): photos near the boundary between two labels make the model's confidence
    vary, so its calibration (ECE) measures something.

    The texture (a smooth random field at a random scale), a few off-centre blobs of random
    colours and a gradient give the backbone varied features to see (on flat images many
    of its channels are never active in training) and every photo its own perceptual hash.
    """
    width, height = int(rng.integers(80, 161)), int(rng.integers(64, 129))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cells = int(rng.integers(3, 12))
    field = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    texture = np.asarray(
        Image.fromarray(field, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    )
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * rng.uniform(10, 40)
    base = np.asarray(colour, dtype=np.float64)
    if other is not None:
        base += rng.uniform(0.0, 0.3) * (np.asarray(other, dtype=np.float64) - base)
    shade = rng.uniform(0.75, 1.15) * base
    pixels = shade + (texture * rng.uniform(10, 30) + gradient)[..., None]
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        rx, ry = rng.uniform(0.04, 0.15) * width, rng.uniform(0.04, 0.15) * height
        blob = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        pixels[blob] = 0.6 * pixels[blob] + 0.4 * rng.uniform(0, 255, 3)
    pixels += rng.normal(0, 10, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_photos(raw: Path, labels: list[str], per_label: dict[str, int], seed: int = 0) -> int:
    """Write ``per_label[split]`` JPEGs per label under ``raw/<split>/<label>/``.

    Every 5th photo is stored turned a quarter turn with the EXIF tag (6) that turns it
    back upright, as phones do. Returns the number of photos written.
    """
    if len(labels) > len(PALETTE):
        raise SystemExit(f"make_ci_model: at most {len(PALETTE)} labels (got {len(labels)})")
    rng = np.random.default_rng(seed)
    written = 0
    for split, count in per_label.items():
        palette = PALETTE[: len(labels)]
        for index, (label, colour) in enumerate(zip(labels, palette, strict=True)):
            folder = raw / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                other = palette[(index + int(rng.integers(1, len(palette)))) % len(palette)]
                img = photo(colour, rng, other)
                path = folder / f"{label}-{split}-{i:03d}.jpg"
                if i % 5 == 4:
                    exif = Image.Exif()
                    exif[0x0112] = 6  # "rotate 90 clockwise to display"
                    img.transpose(Image.Transpose.ROTATE_90).save(
                        path, "JPEG", quality=90, exif=exif.tobytes()
                    )
                else:
                    img.save(path, "JPEG", quality=90)
                written += 1
    return written


def write_config(path: Path, labels: list[str]) -> Path:
    """A dataset config for ``data/raw/{train,val}`` (relative to WORKDIR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "dataset: ci-generated\n"
        "splits:\n  train: data/raw/train\n  val: data/raw/val\n"
        "labels:\n" + "".join(f"  - {label}\n" for label in labels) + "metadata_db: "
        "data/metadata/skin_metadata.db\nstorage:\n  bucket: skin-processed\n  prefix: skin\n",
        encoding="utf-8",
    )
    return path


def run_environment(workdir: Path) -> dict[str, str]:
    """The caller's environment with every storage/tracking/cache path under ``workdir``."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATED}
    env.update(
        STORAGE_BACKEND="local",
        LOCAL_OBJECT_ROOT=str(workdir / "data" / "objects"),
        DATASET_CONFIG=str(workdir / "configs" / "dataset_config.yaml"),
        DATASET_CACHE_DIR=str(workdir / ".cache" / "dataset"),
        FEATURE_CACHE_DIR=str(workdir / ".cache" / "features"),
        WEIGHTS_CACHE_DIR=str(REPO / ".cache" / "weights"),
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'data' / 'mlflow' / 'mlflow.db'}",
        MLFLOW_ARTIFACT_ROOT=str(workdir / "data" / "mlflow" / "artifacts"),
        MODEL_DIR=str(workdir / "runs" / "skin5-current"),
        MODEL_CACHE_DIR=str(workdir / ".cache" / "models"),
        TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    )
    return env


def make_ci_model(workdir: Path, labels_config: Path = DEFAULT_CONFIG) -> Path:
    """Generate the photos, ingest, train; return the export folder (``runs/skin5-current``)."""
    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"make_ci_model: {workdir} is not empty")
    labels = load_dataset_config(labels_config).labels
    count = write_photos(workdir / "data" / "raw", labels, PER_LABEL)
    config = write_config(workdir / "configs" / "dataset_config.yaml", labels)
    (workdir / "data" / "mlflow").mkdir(parents=True, exist_ok=True)
    print(f"make_ci_model: {count} generated photos, {len(labels)} labels, in {workdir}")
    env = run_environment(workdir)
    cli = [sys.executable, "-m", "skin_mlops.cli"]
    for step in (["ingest", "--config", str(config)], ["train", "-c", str(config), *TRAIN_ARGS]):
        started = time.monotonic()
        subprocess.run([*cli, *step], cwd=workdir, env=env, check=True)
        print(f"make_ci_model: skin-mlops {step[0]} took {time.monotonic() - started:.0f} s")
    export = workdir / "runs" / "skin5-current"
    if not (export / "inference" / "signature.json").is_file():
        raise SystemExit(f"make_ci_model: training published no model at {export}")
    return export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("workdir", type=Path, help="empty or absent folder to work in")
    parser.add_argument(
        "--labels-from", type=Path, default=DEFAULT_CONFIG, help="dataset config to take labels"
    )
    args = parser.parse_args(argv)
    try:
        export = make_ci_model(args.workdir, args.labels_from)
    except subprocess.CalledProcessError as exc:
        print(f"make_ci_model: {' '.join(exc.cmd[2:4])} failed (exit {exc.returncode})")
        return 1
    print(f"make_ci_model: model at {export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
