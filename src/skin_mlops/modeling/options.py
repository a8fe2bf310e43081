"""The training recipe: :class:`TrainingOptions` and its defaults (every field an MLflow param).

``train``, ``cv`` and the Airflow task build the same options, so cross-validation measures
exactly the recipe ``train`` ships.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from skin_mlops.core.errors import ConfigError

if TYPE_CHECKING:
    pass


# The default recipe, measured on dermnet5 (687 train / 129 val photos, 2-core CPU):
# Lite0 at 288 px, GAP of the head + blocks 6/5/4 ("multi", 1664 features), 12 cached views
# per training photo, MLP-512 head, no fine-tuning: val accuracy 0.822, macro-F1 0.807 in
# 3.9 min cold. The 224 px / avg+mid / fine-tuned block7a variant reached 0.783 / 0.773.
# See benchmarks/quality_study.py and benchmarks/train_benchmark.py.
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_IMAGE_SIZE = 288
DEFAULT_VIEWS = 12
DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_HIDDEN_UNITS = 512
DEFAULT_INPUT_DROPOUT = 0.2
DEFAULT_DROPOUT = 0.5
DEFAULT_LABEL_SMOOTHING = 0.1
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_SEED = 42
DEFAULT_TTA_VIEWS = 1
DEFAULT_HEADS = 1
DEFAULT_POOLING = "multi"
DEFAULT_ORIENTATION = "none"
DEFAULT_DIHEDRAL_VIEWS = False
DEFAULT_FINE_TUNE_LAYERS = 0  # off by default; e.g. 8 = Lite0 block7a + top conv
DEFAULT_FINE_TUNE_EPOCHS = 5
DEFAULT_OOD_PASS_RATE = 0.95
DEFAULT_TEACHER_IMAGE_SIZE = 0  # 0 = no distillation
DEFAULT_DISTILLATION_WEIGHT = 0.5
DEFAULT_DISTILLATION_TEMPERATURE = 2.0
DEFAULT_MIXUP_ALPHA = 0.0  # 0 = off; e.g. 0.4 mixes pairs of cached feature vectors
MAX_MIXUP_ALPHA = 4.0
DEFAULT_FINE_TUNE_LR_FACTOR = 0.1  # fine-tuning runs at a tenth of --learning-rate


def backbone_build_options(
    pooling: str = DEFAULT_POOLING, orientation: str = DEFAULT_ORIENTATION
) -> tuple[tuple[str, str], ...]:
    """The ``backbone_options`` of the ``--pooling`` and ``--orientation`` flags.

    ``orientation`` appears only when it is not ``none``, so the feature-cache keys (and
    params) of runs without it stay what they were.

    Raises:
        ConfigError: an unknown orientation.
    """
    from skin_mlops.modeling.orientation import check_orientation

    options: tuple[tuple[str, str], ...] = (("pooling", pooling),)
    if check_orientation(orientation) != "none":
        options += (("orientation", orientation),)
    return options


@dataclass(frozen=True)
class TrainingOptions:
    """Hyper-parameters of one run (all logged as MLflow params)."""

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = DEFAULT_LEARNING_RATE
    backbone: str = DEFAULT_BACKBONE
    backbone_options: tuple[tuple[str, str], ...] = (("pooling", DEFAULT_POOLING),)
    image_size: int = DEFAULT_IMAGE_SIZE
    views: int = DEFAULT_VIEWS
    # also train on the 7 dihedral transforms of each photo's centre view (on top of views)
    dihedral_views: bool = DEFAULT_DIHEDRAL_VIEWS
    hidden_units: int = DEFAULT_HIDDEN_UNITS
    input_dropout: float = DEFAULT_INPUT_DROPOUT
    dropout: float = DEFAULT_DROPOUT
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    heads: int = DEFAULT_HEADS
    tta_views: int = DEFAULT_TTA_VIEWS
    fine_tune_layers: int = DEFAULT_FINE_TUNE_LAYERS
    fine_tune_epochs: int = DEFAULT_FINE_TUNE_EPOCHS
    fine_tune_lr_factor: float = DEFAULT_FINE_TUNE_LR_FACTOR
    seed: int = DEFAULT_SEED
    # keep val photos whose bytes are also training photos (default: excluded, counted)
    keep_leaked_val: bool = False
    # share of held-out in-distribution photos the out-of-distribution guard lets pass
    ood_pass_rate: float = DEFAULT_OOD_PASS_RATE
    # knowledge distillation (skin_mlops.modeling.distill): a teacher at this input size
    # (and backbone; "" = the student's) teaches the heads; 0 = off
    teacher_image_size: int = DEFAULT_TEACHER_IMAGE_SIZE
    teacher_backbone: str = ""
    distillation_weight: float = DEFAULT_DISTILLATION_WEIGHT
    distillation_temperature: float = DEFAULT_DISTILLATION_TEMPERATURE
    # mixup on the cached features (heads.feature_dataset): Beta(alpha, alpha); 0 = off
    mixup_alpha: float = DEFAULT_MIXUP_ALPHA

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.learning_rate > 0, f"--learning-rate must be > 0 (got {self.learning_rate})"),
            (1 <= self.views <= 64, f"--views must be between 1 and 64 (got {self.views})"),
            (1 <= self.heads <= 16, f"--heads must be between 1 and 16 (got {self.heads})"),
            (
                self.tta_views in (1, 2, 4, 8),
                f"--tta-views must be 1, 2, 4 or 8 (got {self.tta_views})",
            ),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1) (got {self.dropout})"),
            (
                0 <= self.input_dropout < 1,
                f"--input-dropout must be in [0, 1) (got {self.input_dropout})",
            ),
            (self.hidden_units >= 0, f"--hidden-units must be >= 0 (got {self.hidden_units})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (
                0 <= self.label_smoothing < 1,
                f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})",
            ),
            (
                self.fine_tune_layers >= 0,
                f"--fine-tune-layers must be >= 0 (got {self.fine_tune_layers})",
            ),
            (
                self.fine_tune_epochs >= 1,
                f"--fine-tune-epochs must be >= 1 (got {self.fine_tune_epochs})",
            ),
            (
                0 < self.fine_tune_lr_factor <= 10,
                f"--fine-tune-lr-factor must be in (0, 10] (got {self.fine_tune_lr_factor})",
            ),
            (
                0.5 <= self.ood_pass_rate < 1,
                f"--ood-pass-rate must be in [0.5, 1) (got {self.ood_pass_rate})",
            ),
            (
                self.teacher_image_size == 0 or self.teacher_image_size >= 32,
                f"--teacher-image-size must be 0 (off) or >= 32 (got {self.teacher_image_size})",
            ),
            (
                0 < self.distillation_weight <= 1,
                f"--distillation-weight must be in (0, 1] (got {self.distillation_weight})",
            ),
            (
                self.distillation_temperature > 0,
                f"--distillation-temperature must be > 0 (got {self.distillation_temperature})",
            ),
            (
                0 <= self.mixup_alpha <= MAX_MIXUP_ALPHA,
                f"--mixup-alpha must be in [0, {MAX_MIXUP_ALPHA:g}] (0 = off; got "
                f"{self.mixup_alpha})",
            ),
            (
                not (self.distils and self.fine_tune_layers),
                "distillation trains the heads on frozen features: use it with "
                "--fine-tune-layers 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        from skin_mlops.modeling.backbones import BACKBONES  # numpy only, no Keras

        if self.orientation == "canonical" and self.tta_views > 1:
            raise ConfigError(
                "--tta-views > 1 averages the dihedral transforms that --orientation "
                "canonical already maps to one input: use one of them"
            )
        for backbone in (self.backbone, self.teacher_backbone or self.backbone):
            if backbone not in BACKBONES:
                raise ConfigError(
                    f"unknown backbone {backbone!r} (choose one of {', '.join(BACKBONES)})"
                )
        if self.distils and self.teacher_spec == (self.backbone, self.image_size):
            raise ConfigError(
                "the teacher is the student itself: give --teacher-image-size a size other "
                "than --image-size, or another --teacher-backbone"
            )

    @property
    def distils(self) -> bool:
        """Whether a teacher teaches the heads (``teacher_image_size`` > 0)."""
        return self.teacher_image_size > 0

    @property
    def teacher_spec(self) -> tuple[str, int]:
        """The teacher's backbone and input size."""
        return self.teacher_backbone or self.backbone, self.teacher_image_size

    @property
    def fine_tune_learning_rate(self) -> float:
        """The fine-tuning stage's (lower) learning rate."""
        return self.learning_rate * self.fine_tune_lr_factor

    def train_view_ids(self) -> list[str]:
        """The cached views of each training photo: the centre view and ``views - 1``
        augmentations, then (with ``dihedral_views``) the centre view's 7 other dihedral
        transforms - exactly the inputs a turned or mirrored photo gives the backbone."""
        from skin_mlops.modeling.features import dihedral_view_ids, view_ids

        ids = view_ids(self.views)
        return ids + dihedral_view_ids()[1:] if self.dihedral_views else ids

    @property
    def orientation(self) -> str:
        """The backbone's orientation mode (``none`` unless the options say otherwise)."""
        return dict(self.backbone_options).get("orientation", DEFAULT_ORIENTATION)

    @property
    def backbone_options_key(self) -> str:
        """``k=v,...`` of the backbone build options (part of the feature-cache key)."""
        return ",".join(f"{k}={v}" for k, v in self.backbone_options)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TrainingOptions:
        """Options back from a run's MLflow params (strings), to reproduce it."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            if item.name not in params:
                continue
            raw = params[item.name]
            if item.name == "backbone_options":
                values[item.name] = tuple(
                    tuple(pair.split("=", 1)) for pair in raw.split(",") if "=" in pair
                )
            elif item.type in ("bool", bool):
                values[item.name] = raw.strip().lower() in ("true", "1")
            elif item.type in ("int", int):
                values[item.name] = int(raw)
            elif item.type in ("float", float):
                values[item.name] = float(raw)
            else:
                values[item.name] = raw
        return cls(**values)

    def params(self) -> dict[str, Any]:
        """Flat MLflow params."""
        params = asdict(self)
        params["backbone_options"] = self.backbone_options_key or "default"
        params["fine_tune_learning_rate"] = (
            self.fine_tune_learning_rate if self.fine_tune_layers else None
        )
        if not self.fine_tune_layers:
            params.pop("fine_tune_epochs")
            params.pop("fine_tune_lr_factor")
        if self.distils:
            params["teacher_backbone"] = self.teacher_spec[0]
        else:
            for name in (
                "teacher_image_size",
                "teacher_backbone",
                "distillation_weight",
                "distillation_temperature",
            ):
                params.pop(name)
        if not self.mixup_alpha:  # off: the params of runs before the lever stay as they were
            params.pop("mixup_alpha")
        return params
