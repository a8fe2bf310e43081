"""``recipe_options``: a command's flags become the one ``TrainingOptions`` both commands build."""

from __future__ import annotations

import pytest

from skin_mlops.core.errors import ConfigError
from skin_mlops.modeling.options import TrainingOptions
from skin_mlops.modeling.recipe_cli import recipe_options


def test_flags_named_like_fields_reach_the_recipe_and_the_rest_is_left_out() -> None:
    options = recipe_options(
        {
            "epochs": 7,
            "weight_decay": 1e-3,
            "pooling": "avg",
            "orientation": "canonical",
            "int8": True,  # a train flag that is not part of the recipe
            "config": None,
        }
    )
    assert options.epochs == 7 and options.weight_decay == 1e-3
    assert options.backbone_options == (("pooling", "avg"), ("orientation", "canonical"))
    assert options.hidden_units == TrainingOptions().hidden_units  # no flag: the default


def test_an_out_of_range_flag_is_one_line() -> None:
    with pytest.raises(ConfigError, match="--dropout must be in"):
        recipe_options({"dropout": 1.0, "pooling": "multi", "orientation": "none"})
