"""Orientation: EXIF tags 1-8 give the same input; dihedral transforms keep the top-1."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from skin_mlops.api.model_runtime import LoadedModel
from skin_mlops.modeling.features import dihedral
from skin_mlops.preprocessing import load_rgb, preprocess_bytes
from utils.model_checks import (
    STORED_FOR_ORIENTATION,
    ValSet,
    agreement_per_variant,
    with_orientation,
)

pytestmark = pytest.mark.model

ORIENTATIONS = sorted(STORED_FOR_ORIENTATION)
DIHEDRAL_NAMES = {
    1: "rot90",
    2: "rot180",
    3: "rot270",
    4: "flip",
    5: "rot90+flip",
    6: "rot180+flip",
    7: "rot270+flip",
}


def _summary(agreement: dict[int, float], names: Callable[[int], str]) -> str:
    return ", ".join(f"{names(k)} {100 * v:.1f} %" for k, v in agreement.items())


def test_exif_orientations_give_the_identical_model_input(
    served_model: LoadedModel, val_set: ValSet, figure: Callable[[str], None]
) -> None:
    """Each val photo, stored as a camera would for tags 1-8 (lossless PNG), decodes to the
    same ``float32[S, S, 3]`` for every tag: the preprocessing applies EXIF orientation."""
    size = served_model.image_size
    differing: dict[int, list[str]] = {tag: [] for tag in ORIENTATIONS}
    for path in val_set.files:
        upright = load_rgb(path.read_bytes())
        reference = preprocess_bytes(with_orientation(upright, 1, "PNG", compress_level=0), size)
        for tag in ORIENTATIONS[1:]:
            copy = with_orientation(upright, tag, "PNG", compress_level=0)
            if not np.array_equal(preprocess_bytes(copy, size), reference):
                differing[tag].append(path.name)
    bad = {tag: names for tag, names in differing.items() if names}
    figure(
        f"EXIF tags 2-8 (lossless copies): identical model input for "
        f"{len(val_set.files) - max(map(len, differing.values()))}/{len(val_set.files)} photos"
    )
    assert not bad, f"EXIF orientation not applied exactly: {bad}"


def test_exif_orientation_keeps_the_top1_of_jpeg_copies(
    served_model: LoadedModel,
    val_set: ValSet,
    pytestconfig: pytest.Config,
    figure: Callable[[str], None],
) -> None:
    """A JPEG copy (quality 95) with each EXIF tag keeps the photo's top-1 on >= the floor."""
    floor = pytestconfig.getoption("--min-invariance")
    size = served_model.image_size
    uprights = [load_rgb(path.read_bytes()) for path in val_set.files]

    def copies(tag: int) -> np.ndarray:
        return np.stack(
            [
                preprocess_bytes(with_orientation(img, tag, "JPEG", quality=95), size)
                for img in uprights
            ]
        )

    agreement = agreement_per_variant(served_model, val_set, ORIENTATIONS, copies)
    figure(f"EXIF JPEG q95 copies, top-1 unchanged: {_summary(agreement, 'tag {}'.format)}")
    worst = min(agreement, key=agreement.__getitem__)
    assert agreement[worst] >= floor, (
        f"tag {worst}: top-1 unchanged on {100 * agreement[worst]:.1f} % of val photos "
        f"(< {100 * floor:.0f} %)"
    )


def test_dihedral_transforms_keep_the_top1(
    served_model: LoadedModel,
    val_set: ValSet,
    pytestconfig: pytest.Config,
    figure: Callable[[str], None],
) -> None:
    """Each of the 7 other quarter turns / mirror images of the model input keeps the top-1
    of >= the floor of val photos (a skin photo has no "up": training augments with these
    transforms, and ``--tta-views`` averages them inside the model)."""
    floor = pytestconfig.getoption("--min-invariance")

    def transformed(k: int) -> np.ndarray:
        return np.stack([dihedral(x, k) for x in val_set.tensors])

    agreement = agreement_per_variant(served_model, val_set, DIHEDRAL_NAMES, transformed)
    figure(f"dihedral, top-1 unchanged: {_summary(agreement, DIHEDRAL_NAMES.__getitem__)}")
    worst = min(agreement, key=agreement.__getitem__)
    assert agreement[worst] >= floor, (
        f"{DIHEDRAL_NAMES[worst]}: top-1 unchanged on {100 * agreement[worst]:.1f} % of val "
        f"photos (< {100 * floor:.0f} %)"
    )
