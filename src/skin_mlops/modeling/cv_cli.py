"""``skin-mlops cv``: the command line of
:func:`skin_mlops.modeling.cross_validate.cross_validate`.

It takes the recipe flags of ``skin-mlops train`` (:mod:`skin_mlops.modeling.recipe_cli`),
so ``cv <flags>`` scores exactly what ``train <flags>`` would ship; it prints a summary
table of the folds.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from skin_mlops.core.cli_options import DatasetConfigOption
from skin_mlops.core.config import get_settings
from skin_mlops.modeling.cross_validate import (
    DEFAULT_FOLDS,
    SUMMARISED,
    CrossValidationResult,
    cross_validate,
)
from skin_mlops.modeling.options import (
    DEFAULT_BACKBONE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DIHEDRAL_VIEWS,
    DEFAULT_DISTILLATION_TEMPERATURE,
    DEFAULT_DISTILLATION_WEIGHT,
    DEFAULT_DROPOUT,
    DEFAULT_EPOCHS,
    DEFAULT_FINE_TUNE_EPOCHS,
    DEFAULT_FINE_TUNE_LAYERS,
    DEFAULT_FINE_TUNE_LR_FACTOR,
    DEFAULT_HEADS,
    DEFAULT_HIDDEN_UNITS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_INPUT_DROPOUT,
    DEFAULT_LABEL_SMOOTHING,
    DEFAULT_LEARNING_RATE,
    DEFAULT_MIXUP_ALPHA,
    DEFAULT_OOD_PASS_RATE,
    DEFAULT_ORIENTATION,
    DEFAULT_POOLING,
    DEFAULT_SEED,
    DEFAULT_TEACHER_IMAGE_SIZE,
    DEFAULT_TTA_VIEWS,
    DEFAULT_VIEWS,
    DEFAULT_WEIGHT_DECAY,
)
from skin_mlops.modeling.recipe_cli import (
    BackboneOption,
    BatchSizeOption,
    DihedralViewsOption,
    DistillationTemperatureOption,
    DistillationWeightOption,
    DropoutOption,
    EpochsOption,
    FineTuneEpochsOption,
    FineTuneLayersOption,
    FineTuneLrFactorOption,
    HeadsOption,
    HiddenUnitsOption,
    ImageSizeOption,
    InputDropoutOption,
    LabelSmoothingOption,
    LearningRateOption,
    MixupAlphaOption,
    OodPassRateOption,
    OrientationOption,
    PoolingOption,
    SeedOption,
    TeacherBackboneOption,
    TeacherImageSizeOption,
    TtaViewsOption,
    ViewsOption,
    WeightDecayOption,
    recipe_options,
)


def _print_summary(result: CrossValidationResult, console: Console) -> None:
    s = result.summary
    table = Table(
        title=f"{len(result.folds)}-fold CV over {result.n_photos} photos "
        f"({result.n_groups} near-duplicate groups) - run {result.run_id}"
    )
    table.add_column("metric")
    table.add_column("mean +- std over folds", justify="right")
    for name in SUMMARISED:
        table.add_row(name, f"{s[f'cv_{name}_mean']:.4f} +- {s[f'cv_{name}_std']:.4f}")
    for label in result.labels:
        table.add_row(
            f"F1 {label}", f"{s[f'cv_f1_{label}_mean']:.3f} +- {s[f'cv_f1_{label}_std']:.3f}"
        )
    table.add_row(
        "out-of-fold, all photos",
        f"macro-F1 {s['oof_macro_f1']:.4f}, ECE {s['oof_ece_before_scaling']:.4f} -> "
        f"{s['oof_ece_after_scaling']:.4f}",
    )
    table.add_row(
        "out-of-fold, top-1 kept by a turn or mirror",
        f"worst of 7 transforms {100 * s['oof_dihedral_agreement_min']:.1f} %",
    )
    table.add_row("time (s)", f"{result.timings.get('total', 0):.1f}")
    console.print(table)


def cv_command(
    config: DatasetConfigOption = None,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Number of folds.")] = DEFAULT_FOLDS,
    epochs: EpochsOption = DEFAULT_EPOCHS,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
    learning_rate: LearningRateOption = DEFAULT_LEARNING_RATE,
    backbone: BackboneOption = DEFAULT_BACKBONE,
    image_size: ImageSizeOption = DEFAULT_IMAGE_SIZE,
    views: ViewsOption = DEFAULT_VIEWS,
    dihedral_views: DihedralViewsOption = DEFAULT_DIHEDRAL_VIEWS,
    pooling: PoolingOption = DEFAULT_POOLING,
    orientation: OrientationOption = DEFAULT_ORIENTATION,
    hidden_units: HiddenUnitsOption = DEFAULT_HIDDEN_UNITS,
    input_dropout: InputDropoutOption = DEFAULT_INPUT_DROPOUT,
    dropout: DropoutOption = DEFAULT_DROPOUT,
    label_smoothing: LabelSmoothingOption = DEFAULT_LABEL_SMOOTHING,
    weight_decay: WeightDecayOption = DEFAULT_WEIGHT_DECAY,
    heads: HeadsOption = DEFAULT_HEADS,
    tta_views: TtaViewsOption = DEFAULT_TTA_VIEWS,
    fine_tune_layers: FineTuneLayersOption = DEFAULT_FINE_TUNE_LAYERS,
    fine_tune_epochs: FineTuneEpochsOption = DEFAULT_FINE_TUNE_EPOCHS,
    fine_tune_lr_factor: FineTuneLrFactorOption = DEFAULT_FINE_TUNE_LR_FACTOR,
    seed: SeedOption = DEFAULT_SEED,
    ood_pass_rate: OodPassRateOption = DEFAULT_OOD_PASS_RATE,
    teacher_image_size: TeacherImageSizeOption = DEFAULT_TEACHER_IMAGE_SIZE,
    teacher_backbone: TeacherBackboneOption = "",
    distillation_weight: DistillationWeightOption = DEFAULT_DISTILLATION_WEIGHT,
    distillation_temperature: DistillationTemperatureOption = DEFAULT_DISTILLATION_TEMPERATURE,
    mixup_alpha: MixupAlphaOption = DEFAULT_MIXUP_ALPHA,
) -> None:
    """Cross-validate a training recipe (default: train's) over train + val, logged to MLflow."""
    options = recipe_options(locals())  # first: only the flags are local yet
    from skin_mlops.core.native_logs import filter_native_stderr

    filter_native_stderr()
    settings = get_settings()
    console = Console()
    result = cross_validate(
        config or settings.dataset_config, settings=settings, options=options, folds=folds
    )
    _print_summary(result, console)
