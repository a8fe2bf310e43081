"""The model's out-of-distribution guard on real photos and on images that are not skin."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from skin_mlops.api.model_runtime import LoadedModel
from skin_mlops.preprocessing import to_model_input
from utils.images import non_skin_images
from utils.model_checks import ValSet

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def guarded(served_model: LoadedModel) -> LoadedModel:
    """The served model, which must carry the guard (exports since the guard exist)."""
    if served_model.signature.ood is None:
        pytest.fail(
            f"model {served_model.version} has no out-of-distribution guard (exported before "
            "it existed): train it again",
            pytrace=False,
        )
    return served_model


def _flagged(model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
    flags = []
    for start in range(0, len(pixels), 16):
        _, scores = model.outputs(pixels[start : start + 16])
        assert scores is not None
        flags += [model.in_distribution(float(s)) is False for s in scores]
    return np.array(flags)


def test_the_guard_lets_the_val_photos_through(
    guarded: LoadedModel,
    val_set: ValSet,
    pytestconfig: pytest.Config,
    figure: Callable[[str], None],
) -> None:
    """At most ``--max-ood-flagged`` of the val photos (the training distribution) flagged."""
    bound = pytestconfig.getoption("--max-ood-flagged")
    flagged = _flagged(guarded, val_set.tensors)
    spec = guarded.signature.ood
    assert spec is not None
    figure(
        f"out-of-distribution guard ({spec.method}, threshold {spec.threshold:.2f}, "
        f"{spec.heldout_pass_rate:.1%} of {spec.heldout_photos} held-out training photos "
        f"pass): {int(flagged.sum())}/{len(flagged)} val photos flagged ({flagged.mean():.1%})"
    )
    names = [str(val_set.files[i].name) for i in np.flatnonzero(flagged)][:10]
    assert flagged.mean() <= bound, f"{flagged.mean():.1%} of val flagged (> {bound:.0%}): {names}"


def test_images_that_are_not_skin_are_all_flagged(
    guarded: LoadedModel, pytestconfig: pytest.Config, figure: Callable[[str], None]
) -> None:
    """The ``--ood-probes`` kinds (default: flat colours, noise, text pages, checkerboards,
    gradients), 3 seeds each."""
    probes = [p.strip() for p in pytestconfig.getoption("--ood-probes").split(",") if p.strip()]
    unknown = sorted(set(probes) - set(non_skin_images()))
    assert probes and not unknown, f"--ood-probes: unknown kinds {unknown}"
    names, pixels = [], []
    for seed in range(3):
        for name, image in non_skin_images(seed=seed).items():
            if name not in probes:
                continue
            names.append(f"{name} #{seed}")
            pixels.append(to_model_input(image, guarded.image_size))
    flagged = _flagged(guarded, np.stack(pixels))
    missed = [name for name, hit in zip(names, flagged, strict=True) if not hit]
    figure(f"non-skin images flagged: {int(flagged.sum())}/{len(flagged)}")
    assert not missed, f"not flagged: {', '.join(missed)}"
