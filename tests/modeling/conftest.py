"""Fixtures for the training-stage tests (features, train, export, tracking).

* :func:`tiny_backbone` - a seeded random-init Keras backbone with the real
  :class:`~skin_mlops.modeling.backbones.Backbone` interface (32 px, 11 features: mean
  colour + 8 conv channels), so a whole training run takes seconds;
* :func:`write_colour_dataset` - generated photos whose label decides the dominant colour
  channel (learnable by the tiny backbone), plus a dataset config with absolute paths;
* :func:`mlflow_db_template` - one migrated MLflow SQLite store per session, copied for each
  test that needs a fresh store (MLflow's schema migrations take ~10 s per new file);
* :func:`training_settings` - settings that keep every path of a run under one folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_mlops.core.config import Settings, load_settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COLOUR_LABELS = ("red_lesion", "green_lesion", "blue_lesion")
TINY_IMAGE_SIZE = 32


def make_tiny_backbone(seed: int = 0, image_size: int = TINY_IMAGE_SIZE):
    """A small frozen-feature model: [N,S,S,3] in [0,255] -> 11 pooled features."""
    import keras

    from skin_mlops.modeling.backbones import Backbone

    keras.utils.set_random_seed(seed)
    image = keras.Input((image_size, image_size, 3), name="image")
    scaled = keras.layers.Rescaling(1 / 255.0, name="tiny_rescale")(image)
    conv = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="tiny_conv")(scaled)
    conv = keras.layers.Conv2D(8, 3, activation="relu", name="tiny_conv2")(conv)
    features = keras.layers.Concatenate(name="tiny_features")(
        [keras.layers.GlobalAveragePooling2D()(scaled), keras.layers.GlobalAveragePooling2D()(conv)]
    )
    model = keras.Model(image, features, name="tiny_backbone")
    digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    return Backbone("tiny_test", model, digest, image_size, int(features.shape[-1]))


@pytest.fixture(scope="session")
def tiny_backbone():
    """One tiny backbone for the session (read-only use: never fine-tune this one)."""
    return make_tiny_backbone()


def colour_image(label_index: int, seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A noisy photo whose channel ``label_index`` is boosted."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.normal(100, 35, (height, width, 3))
    pixels[..., label_index % 3] += 70
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class ColourDataset:
    """Generated photos under ``root/raw/<split>/<label>`` and their dataset config."""

    root: Path
    config_path: Path
    labels: tuple[str, ...]

    @property
    def db_path(self) -> Path:
        return self.root / "metadata" / "skin_metadata.db"


def write_colour_dataset(
    root: Path,
    labels: tuple[str, ...] = COLOUR_LABELS,
    per_label: dict[str, int] | None = None,
    config_labels: tuple[str, ...] | None = None,
    bucket: str = "skin-processed",
) -> ColourDataset:
    """Write ``per_label[split]`` JPEGs per label and split, and a config (absolute paths)."""
    per_label = per_label or {"train": 8, "val": 4}
    seed = 0
    for split, count in per_label.items():
        for index, label in enumerate(labels):
            folder = root / "raw" / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed += 1
                colour_image(index, seed).save(folder / f"{label}_{i}.jpg", quality=92)
    listed = config_labels or labels
    config = root / "dataset_config.yaml"
    config.write_text(
        "dataset: colours\n"
        f"splits:\n  train: {root / 'raw' / 'train'}\n  val: {root / 'raw' / 'val'}\n"
        "labels:\n"
        + "".join(f"  - {label}\n" for label in listed)
        + f"metadata_db: {root / 'metadata' / 'skin_metadata.db'}\n"
        f"storage:\n  bucket: {bucket}\n  prefix: skin\n",
        encoding="utf-8",
    )
    return ColourDataset(root, config, labels)


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow SQLite store (copy it; never write to it)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def training_settings(root: Path, mlflow_template: Path | None = None, **overrides) -> Settings:
    """Settings whose stores, caches and outputs all live under ``root``."""
    db = root / "mlflow" / "mlflow.db"
    if mlflow_template is not None and not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_template, db)
    values: dict[str, object] = {
        "storage_backend": "local",
        "local_object_root": root / "objects",
        "mlflow_tracking_uri": f"sqlite:///{db}",
        "mlflow_artifact_root": root / "mlflow" / "artifacts",
        "feature_cache_dir": root / "cache" / "features",
        "dataset_cache_dir": root / "cache" / "dataset",
        "weights_cache_dir": root / "cache" / "weights",
        "model_dir": root / "runs" / "skin5-current",
    }
    values.update(overrides)
    return load_settings(**values)


# --- the helpers as fixtures (test modules never import conftest) -------------------------


@pytest.fixture(scope="session")
def backbone_factory():
    """:func:`make_tiny_backbone` (a fresh model: safe to fine-tune)."""
    return make_tiny_backbone


@pytest.fixture(scope="session")
def colour_dataset_factory():
    """:func:`write_colour_dataset`."""
    return write_colour_dataset


@pytest.fixture(scope="session")
def settings_factory(mlflow_db_template: Path):
    """:func:`training_settings` with a fresh copy of the migrated MLflow store."""

    def make(root: Path, **overrides) -> Settings:
        return training_settings(root, mlflow_db_template, **overrides)

    return make
