"""The training DAG's run parameters: names, defaults and JSON-schema bounds in one place.

``airflow/dags/train_pipeline_dag.py`` turns :data:`TRAIN_PARAMS` into ``airflow.sdk.Param``
objects, so a bad ``--conf`` (wrong type, out of range) is refused before any task runs,
with a message naming the param; :func:`training_overrides` turns a run's params into
:class:`~skin_mlops.modeling.options.TrainingOptions` overrides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from skin_mlops.core.errors import ConfigError

log = logging.getLogger(__name__)

#: name -> (default, JSON schema, description)
TRAIN_PARAMS: dict[str, tuple[Any, dict[str, Any], str]] = {
    "epochs": (30, {"type": "integer", "minimum": 1, "maximum": 500}, "head epochs"),
    "batch_size": (32, {"type": "integer", "minimum": 1, "maximum": 1024}, "batch size"),
    "learning_rate": (
        1e-3,
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "head learning rate",
    ),
    "image_size": (
        None,
        {"type": ["null", "integer"], "minimum": 32, "maximum": 1024},
        "input size in pixels (default: the recipe's)",
    ),
    "backbone": (
        None,
        {
            "type": ["null", "string"],
            # the keys of skin_mlops.modeling.backbones.BACKBONES (a test keeps them equal;
            # not imported: the DAG file parses without numpy)
            "enum": [
                None,
                "efficientnet_lite0",
                "efficientnet_lite1",
                "efficientnet_lite2",
                "efficientnet_b0",
            ],
        },
        "frozen backbone (default: the recipe's)",
    ),
    "teacher_image_size": (
        0,
        {"type": "integer", "minimum": 0, "maximum": 1024},
        "distil: a teacher at this input size teaches the heads; 0 = off "
        "(skin_mlops.modeling.distill)",
    ),
    "keep_leaked_val": (
        False,
        {"type": "boolean"},
        "keep val photos whose bytes are also training photos (default: left out, counted)",
    ),
}


def training_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params a run gives, as ``TrainingOptions`` keyword arguments (``None`` = default).

    Raises:
        ConfigError: a key that is not a training param (Airflow lets unknown keys through).
    """
    unknown = sorted(set(params) - set(TRAIN_PARAMS))
    if unknown:
        raise ConfigError(
            f"unknown training param(s) {', '.join(unknown)}; known: {', '.join(TRAIN_PARAMS)}"
        )
    overrides = {key: value for key, value in params.items() if value is not None}
    if overrides.get("backbone") == "efficientnet_b0":
        # Keras' EfficientNetB0 has one pooling (the recipe's default pools Lite0 blocks).
        from skin_mlops.modeling.options import DEFAULT_ORIENTATION, backbone_build_options

        overrides["backbone_options"] = backbone_build_options("avg", DEFAULT_ORIENTATION)
    return overrides


def run_params(params: Mapping[str, Any], conf: Mapping[str, Any] | None) -> dict[str, Any]:
    """The training params of a DAG run; conf keys that are not params are logged, not used.

    Airflow validates each known param against its schema before the run starts, but lets
    unknown ``--conf`` keys through: a typo such as ``epoch`` would otherwise vanish.
    """
    unknown = sorted(set(conf or {}) - set(TRAIN_PARAMS))
    if unknown:
        log.warning(
            "ignored unknown conf key(s) %s; the training params are %s",
            ", ".join(unknown),
            ", ".join(TRAIN_PARAMS),
        )
    return {name: params.get(name, TRAIN_PARAMS[name][0]) for name in TRAIN_PARAMS}
