"""``skin-mlops train``: the command line of :func:`skin_mlops.modeling.train.run_training`.

Options map one to one onto :class:`~skin_mlops.modeling.options.TrainingOptions`; the run
prints its progress, then a summary table and the registry decision.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from skin_mlops.core.cli_options import DatasetConfigOption
from skin_mlops.core.config import get_settings
from skin_mlops.dataset_config import load_dataset_config
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
from skin_mlops.modeling.train import TrainingResult, run_training

# --- CLI ------------------------------------------------------------------------------------


def _print_summary(result: TrainingResult, labels: list[str], console: Console) -> None:
    m = result.metrics
    table = Table(title=f"run {result.run_id}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "val_accuracy",
        "val_balanced_accuracy",
        "val_macro_f1",
        "val_ece_before_scaling",
        "val_ece_after_scaling",
        "val_ece_floor_calibrated",
        "temperature",
    ):
        table.add_row(key, f"{m[key]:.4f}")
    for label in labels:
        table.add_row(f"f1 {label}", f"{m[f'val_f1_{label}']:.3f}")
    table.add_row(
        "features extracted / reused", f"{result.features_extracted} / {result.features_reused}"
    )
    table.add_row("ONNX vs Keras max |dp|", f"{result.parity_max_abs_prob_diff:.1e}")
    table.add_row("time (s)", f"{result.timings.get('total', 0):.1f}")
    console.print(table)
    console.print(result.decision, highlight=False)
    if result.published_dir is not None:
        console.print(f"published: {result.published_dir}", highlight=False)
    console.print(f"uploaded: {result.export_uri}", highlight=False)


def train_command(
    dataset_config: DatasetConfigOption = None,
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
    keep_leaked_val: Annotated[
        bool,
        typer.Option(
            "--keep-leaked-val",
            help="Keep val photos whose bytes are also training photos (default: left out "
            "of val for training and evaluation, and counted).",
        ),
    ] = False,
    ood_pass_rate: OodPassRateOption = DEFAULT_OOD_PASS_RATE,
    teacher_image_size: TeacherImageSizeOption = DEFAULT_TEACHER_IMAGE_SIZE,
    teacher_backbone: TeacherBackboneOption = "",
    distillation_weight: DistillationWeightOption = DEFAULT_DISTILLATION_WEIGHT,
    distillation_temperature: DistillationTemperatureOption = DEFAULT_DISTILLATION_TEMPERATURE,
    mixup_alpha: MixupAlphaOption = DEFAULT_MIXUP_ALPHA,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8/--no-int8",
            help="Also quantize the export to int8 (ONNX Runtime static QDQ, calibrated on 300 "
            "train photos); shipped beside fp32 only when its val macro-F1 drops by at "
            "most 0.005 and its top-1 agrees with fp32 on 99 % of val (+~1 min).",
        ),
    ] = False,
    int8_method: Annotated[
        str,
        typer.Option(
            help="With --int8: ort-minmax (full-range int8 weights: fastest, but exact only on "
            "CPUs with VNNI), ort-minmax-7bit (exact on every CPU), ort-minmax-u8u8, "
            "ort-percentile or nncf.",
        ),
    ] = "ort-minmax",
    promotion_min_delta: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Val macro-F1 improvement over the champion (re-scored on this run's val "
            "photos) needed to take @champion (default: PROMOTION_MIN_DELTA, 0.01).",
        ),
    ] = None,
) -> None:
    """Train the classifier on the ingested images; log to MLflow; export and publish."""
    options = recipe_options(locals())  # first: only the flags are local yet
    from skin_mlops.core.native_logs import filter_native_stderr

    filter_native_stderr()  # TensorFlow's unconditional C++ start-up lines (see module)
    if int8:
        from skin_mlops.modeling.quantize import check_method

        check_method(int8_method)
    settings = get_settings()
    console = Console()
    config_path = dataset_config or settings.dataset_config
    result = run_training(
        config_path,
        settings=settings,
        options=options,
        console=console,
        min_delta=promotion_min_delta,
        int8=int8,
        int8_method=int8_method,
    )
    _print_summary(result, load_dataset_config(config_path).labels, console)
