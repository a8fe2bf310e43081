"""The training recipe's command-line options, declared once for ``train`` and ``cv``.

``skin-mlops cv`` takes the same recipe flags as ``skin-mlops train`` so that every recipe
decision (backbone, input size, views, pooling, heads) can be measured by cross-validation
before it is trained: ``skin-mlops cv --backbone efficientnet_lite2`` scores exactly what
``skin-mlops train --backbone efficientnet_lite2`` would ship.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Annotated, Any

import typer

from skin_mlops.modeling.options import TrainingOptions, backbone_build_options

EpochsOption = Annotated[int, typer.Option(help="Head training epochs.")]
BatchSizeOption = Annotated[int, typer.Option(help="Batch size.")]
LearningRateOption = Annotated[float, typer.Option(help="Head learning rate.")]
BackboneOption = Annotated[
    str,
    typer.Option(
        help="Backbone: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 or "
        "efficientnet_b0."
    ),
]
HiddenUnitsOption = Annotated[
    int, typer.Option(help="Units of the head's hidden layer (0 = a linear head).")
]
InputDropoutOption = Annotated[
    float, typer.Option(help="Dropout on the head's input features, in [0, 1).")
]
DropoutOption = Annotated[float, typer.Option(help="Dropout after the head's hidden layer.")]
LabelSmoothingOption = Annotated[float, typer.Option(help="Label smoothing, in [0, 1).")]
WeightDecayOption = Annotated[float, typer.Option(help="AdamW weight decay of the head, >= 0.")]
FineTuneLayersOption = Annotated[
    int,
    typer.Option(
        help="Fine-tune the top N backbone layers (weight layers, BatchNorm counted but "
        "kept frozen) on cached activation maps after the head (0 = off; 8 = Lite0's "
        "block 7a and head conv)."
    ),
]
FineTuneEpochsOption = Annotated[
    int, typer.Option(help="Fine-tuning epochs (with --fine-tune-layers).")
]
FineTuneLrFactorOption = Annotated[
    float,
    typer.Option(help="Fine-tuning learning rate as a multiple of --learning-rate, in (0, 10]."),
]
ImageSizeOption = Annotated[int, typer.Option(help="Input side S in pixels.")]
ViewsOption = Annotated[
    int, typer.Option(help="Cached views per training photo (1 = no augmentation).")
]
DihedralViewsOption = Annotated[
    bool,
    typer.Option(
        "--dihedral-views/--no-dihedral-views",
        help="Also train on the 7 quarter-turned and mirrored copies of each photo's "
        "centre view (on top of --views), so that a turned photo keeps its label.",
    ),
]
PoolingOption = Annotated[
    str,
    typer.Option(
        help="Backbone pooling: avg, avg+mid (+ stage-6 average) or multi "
        "(+ stages 6/5/4; Lite backbones)."
    ),
]
OrientationOption = Annotated[
    str,
    typer.Option(
        help="none, or canonical: the backbone first turns each photo to one canonical "
        "orientation, so quarter turns and mirror images cannot change a prediction "
        "(Lite backbones)."
    ),
]
HeadsOption = Annotated[
    int, typer.Option(help="Heads trained with different seeds, averaged in the model.")
]
TtaViewsOption = Annotated[
    int, typer.Option(help="Dihedral views averaged inside the exported model (1, 2, 4, 8).")
]
SeedOption = Annotated[int, typer.Option(help="Random seed.")]
OodPassRateOption = Annotated[
    float,
    typer.Option(
        min=0.5,
        max=0.999,
        help="Share of held-out training photos the out-of-distribution guard lets "
        "through (its threshold).",
    ),
]
TeacherImageSizeOption = Annotated[
    int,
    typer.Option(
        help="Distil: a teacher at this input size (e.g. 288) trains first on the same "
        "photos and views, and the heads learn from its soft targets; only the student "
        "(--backbone at --image-size) is exported. 0 = off."
    ),
]
TeacherBackboneOption = Annotated[
    str, typer.Option(help="The teacher's backbone (default: the student's --backbone).")
]
DistillationWeightOption = Annotated[
    float, typer.Option(help="Share of the teacher's distribution in each soft target.")
]
DistillationTemperatureOption = Annotated[
    float, typer.Option(help="Temperature that softens the teacher's distribution.")
]
MixupAlphaOption = Annotated[
    float,
    typer.Option(
        help="Mixup on the cached features: each training feature vector is blended with "
        "another of its batch (and their labels alike) by a weight drawn from "
        "Beta(alpha, alpha), the own photo's share kept >= 1/2. 0 = off."
    ),
]


def recipe_options(flags: Mapping[str, Any]) -> TrainingOptions:
    """The :class:`TrainingOptions` of a command's recipe flags (its ``locals()``): every
    flag named like a field, and ``pooling`` / ``orientation`` as ``backbone_options``;
    a field the command has no flag for keeps its default.

    Raises:
        ConfigError: a value out of range (one line, from ``TrainingOptions``).
    """
    names = {item.name for item in fields(TrainingOptions)}
    given = {name: value for name, value in flags.items() if name in names}
    return TrainingOptions(
        **given,
        backbone_options=backbone_build_options(flags["pooling"], flags["orientation"]),
    )
