"""Fixtures for the training-stage tests (features, train, export, tracking).

* :func:`tiny_backbone` - a seeded random-init Keras backbone with the real
  :class:`~skin_mlops.modeling.backbones.Backbone` interface (32 px, 11 features: mean
  colour + 8 conv channels), so a whole training run takes seconds;
* :func:`write_colour_dataset` - generated photos whose label decides the dominant colour
  channel (learnable by the tiny backbone), plus a dataset config with absolute paths;
* :func:`mlflow_db_template` - one migrated MLflow SQLite store per session, copied for each
  test that needs a fresh store (MLflow's schema migrations take ~10 s per new file);
* :func:`training_settings` - settings that keep every path of a run under one folder.
* :class:`ChampionKit` (fixture ``champion_kit``) - tiny ONNX models honouring the model
  contract (mean colour -> a 3x3 matrix: ``PERFECT`` reads the colour datasets' labels,
  ``WRONG`` never does), logged and registered in a real MLflow store as training does
  (``signature.json``/``class_index.json`` as the ONNX flavour's extra files), and a val
  set of colour photos, for the promotion gate's tests.
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


def make_tiny_backbone(
    seed: int = 0, image_size: int = TINY_IMAGE_SIZE, *, canonical: bool = False
):
    """A small frozen-feature model: [N,S,S,3] in [0,255] -> 11 pooled features
    (``canonical``: turned to the canonical orientation first, as ``--orientation canonical``
    builds the real backbones)."""
    import keras

    from skin_mlops.modeling.backbones import Backbone
    from skin_mlops.modeling.orientation import canonical_orientation_layer

    keras.utils.set_random_seed(seed)
    image = keras.Input((image_size, image_size, 3), name="image")
    x = canonical_orientation_layer()(name="canonical_orientation")(image) if canonical else image
    scaled = keras.layers.Rescaling(1 / 255.0, name="tiny_rescale")(x)
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
        "model_cache_dir": root / "cache" / "models",
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


# --- registered models for the promotion gate ---------------------------------------------

PERFECT = np.eye(3, dtype=np.float32)  # logit k = mean of channel k: the label's colour
WRONG = np.roll(np.eye(3, dtype=np.float32), 1, axis=1)  # always the next label


def colour_onnx(weights: np.ndarray, image_size: int) -> bytes:
    """``image`` float32[N,S,S,3] -> mean colour [N,3] -> ``@ weights`` -> ``logits``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["colour"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["colour", "weights"], ["logits"]),
        ],
        "colour_model",
        [
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, ["N", image_size, image_size, 3]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_colour_export(
    folder: Path,
    weights: np.ndarray,
    version: str,
    *,
    image_size: int = 16,
    labels: tuple[str, ...] = COLOUR_LABELS,
    run_id: str | None = None,
    **signature: object,
) -> Path:
    """An export folder (``model/model.onnx`` + metadata) of a colour model."""
    from skin_mlops import export_format, preprocessing

    (folder / export_format.ONNX_MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
    (folder / export_format.ONNX_MODEL_FILE).write_bytes(colour_onnx(weights, image_size))
    fields: dict[str, object] = {
        "model_version": version,
        "run_id": run_id,
        "backbone": "colour_mean",
        "image_size": image_size,
        "preprocessing_id": preprocessing.PREPROCESSING_ID,
        "labels": list(labels),
        "input": {"name": "image", "shape": [None, image_size, image_size, 3]},
        "output": {"name": "logits", "shape": [None, len(labels)]},
    }
    fields.update(signature)
    export_format.write_metadata(folder, export_format.ModelSignature.model_validate(fields))
    return folder


@dataclass(frozen=True)
class ValPhotos:
    """Colour photos as a :class:`~skin_mlops.modeling.promotion.ValSet` with their bytes."""

    val_set: object  # ValSet (imported lazily)
    data: dict[str, bytes]
    files: dict[str, Path]

    def load(self, photo) -> bytes:  # noqa: ANN001
        return self.data[photo.sha256]


class ChampionKit:
    """Register colour models in a real MLflow store and score them on colour photos."""

    perfect = PERFECT
    wrong = WRONG

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings

    def export(self, folder: Path, weights: np.ndarray, version: str, **export: object) -> Path:
        """:func:`write_colour_export`."""
        return write_colour_export(folder, weights, version, **export)

    def val_photos(self, per_label: int = 3, seed: int = 500) -> ValPhotos:
        """``per_label`` JPEGs per colour label, written under ``root/val-photos``."""
        import io

        from skin_mlops.modeling.promotion import ValPhoto, ValSet

        photos, data, files = [], {}, {}
        for index, label in enumerate(COLOUR_LABELS):
            for i in range(per_label):
                buffer = io.BytesIO()
                colour_image(index, seed + 10 * index + i).save(buffer, "JPEG", quality=92)
                blob = buffer.getvalue()
                sha = hashlib.sha256(blob).hexdigest()
                path = self.root / "val-photos" / label / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(blob)
                data[sha], files[sha] = blob, path
                photos.append(ValPhoto(sha, label, f"skin/val/{label}/{i}.jpg", str(path)))
        val_set = ValSet("colours", "skin-processed", COLOUR_LABELS, tuple(photos))
        return ValPhotos(val_set, data, files)

    def register(
        self,
        experiment_id: str,
        weights: np.ndarray,
        score: float,
        *,
        model_name: str = "skin-classifier",
        val_set=None,  # noqa: ANN001 - logged as the run's val set when given
        store=None,  # noqa: ANN001 - the export is uploaded to the models bucket when given
        **export: object,
    ) -> tuple[str, str]:
        """Log a run with a colour model as training does, register it; ``(run_id, version)``."""
        import mlflow
        import mlflow.onnx
        import onnx

        from skin_mlops import export_format
        from skin_mlops.modeling import registry
        from skin_mlops.modeling.export import upload_export
        from skin_mlops.modeling.promotion import VAL_SET_ARTIFACT

        with mlflow.start_run(experiment_id=experiment_id) as run:
            run_id = run.info.run_id
            folder = write_colour_export(
                self.root / "exports" / run_id,
                weights,
                f"exp-{run_id[:8]}",
                run_id=run_id,
                **export,
            )
            mlflow.log_metric("val_macro_f1", score)
            if val_set is not None:
                mlflow.log_dict(val_set.as_dict(), VAL_SET_ARTIFACT)
            info = mlflow.onnx.log_model(
                onnx.load(str(folder / export_format.ONNX_MODEL_FILE)),
                name="onnx-model",
                pip_requirements=["onnx"],
                save_as_external_data=False,
                extra_files=[
                    str(folder / export_format.SIGNATURE_FILE),
                    str(folder / export_format.CLASS_INDEX_FILE),
                ],
            )
            if store is not None:
                upload_export(store, self.settings.s3_models_bucket, run_id, folder)
            version = registry.register_version(
                info.model_uri,
                model_name,
                score,
                run_id=run_id,
                tags={"export_version": f"exp-{run_id[:8]}"},
            )
        return run_id, version


@pytest.fixture
def champion_kit(tmp_path: Path, settings_factory) -> ChampionKit:
    """A :class:`ChampionKit` on a fresh MLflow SQLite store under ``tmp_path``."""
    return ChampionKit(tmp_path, settings_factory(tmp_path))
