"""The real photo folders: decodable, labelled as configured, no leakage across splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from skin_mlops.dataset_config import DatasetConfig
from utils.perceptual import (
    Photo,
    duplicates_within_splits,
    exact_duplicates,
    nearest_distances,
    perceptual_duplicates,
)

pytestmark = pytest.mark.data


def test_every_photo_decodes_with_the_preprocessing(
    photos: list[Photo], figure: Callable[[str], None]
) -> None:
    """Every file under ``<split>/<label>/`` becomes a model input via ``preprocess_bytes``."""
    failed = [f"{p.name}: {p.error}" for p in photos if p.error is not None]
    figure(f"decode: {len(photos) - len(failed)}/{len(photos)} files decode")
    assert photos, "no files under --data-dir/<split>/<label>/"
    assert not failed, f"{len(failed)} file(s) do not decode:\n" + "\n".join(failed)


def test_label_folders_are_the_configured_labels(
    data_dir: Path, dataset_config: DatasetConfig, photos: list[Photo]
) -> None:
    """Each configured split has exactly the configured label folders, none of them empty."""
    at_data_dir = dataset_config.model_copy(
        update={"splits": {split: data_dir / split for split in dataset_config.splits}}
    )
    problems = []
    for split in dataset_config.splits:
        if not (data_dir / split).is_dir():
            problems.append(f"{split}: no folder {data_dir / split}")
            continue
        if unknown := at_data_dir.unknown_label_folders(split):
            problems.append(f"{split}: folders not in the config's labels: {unknown}")
        if missing := at_data_dir.missing_label_folders(split):
            problems.append(f"{split}: configured labels without a folder: {missing}")
        empty = [
            label
            for label in dataset_config.labels
            if label not in missing
            and not any(p.split == split and p.label == label for p in photos)
        ]
        if empty:
            problems.append(f"{split}: label folders without photos: {empty}")
    assert not problems, "; ".join(problems)


def test_no_exact_duplicates_across_splits_or_labels(
    photos: list[Photo], figure: Callable[[str], None]
) -> None:
    """No two files with the same bytes (SHA-256) in two splits, or under two labels."""
    found = exact_duplicates(photos)
    figure(f"exact duplicates (SHA-256) across splits/labels: {len(found)}")
    assert not found, f"{len(found)} exact duplicate(s):\n" + "\n".join(map(str, found))


def test_no_perceptual_duplicates_across_splits(
    photos: list[Photo],
    dataset_config: DatasetConfig,
    pytestconfig: pytest.Config,
    figure: Callable[[str], None],
) -> None:
    """No photo of one split within ``--phash-distance`` bits of a photo of another split
    (in any of the 8 orientations): a re-encoded or resized copy leaks val into train.

    Pairs listed in the config's ``accepted_near_duplicates`` (reviewed, with a reason) are
    reported but allowed; a listed pair that is no longer found fails too, so the list
    stays true."""
    max_distance = pytestconfig.getoption("--phash-distance")
    accepted = {
        frozenset(entry.photos): entry.reason for entry in dataset_config.accepted_near_duplicates
    }
    everything = perceptual_duplicates(photos, max_distance)
    found = [d for d in everything if frozenset((d.first.name, d.second.name)) not in accepted]
    seen = {frozenset((d.first.name, d.second.name)) for d in everything}
    stale = [sorted(pair) for pair in accepted if pair not in seen]
    splits = sorted({p.split for p in photos})
    for i, first in enumerate(splits):
        for second in splits[i + 1 :]:
            nearest = nearest_distances(photos, second, first)
            if len(nearest):
                lowest = ", ".join(str(int(d)) for d in np.sort(nearest)[:5])
                figure(
                    f"pHash {second} -> nearest {first}: lowest {lowest} bits, "
                    f"median {float(np.median(nearest)):.0f} bits"
                )
    figure(
        f"perceptual duplicates (<= {max_distance} bits) across splits: {len(found)} new, "
        f"{len(everything) - len(found)} accepted in the config"
    )
    for duplicate in everything:
        reason = accepted.get(frozenset((duplicate.first.name, duplicate.second.name)))
        figure(f"  {duplicate}" + (f" - accepted: {reason}" if reason else ""))
    within = duplicates_within_splits(photos, max_distance)
    figure(f"(not asserted) near-duplicates within one split: {len(within)}")
    for duplicate in within:
        figure(f"  {duplicate}")
    assert not found, (
        f"{len(found)} perceptual duplicate(s) across splits (<= {max_distance} bits):\n"
        + "\n".join(map(str, found))
        + "\n(review them; a pair that is truly the same picture can be listed under "
        "accepted_near_duplicates in the dataset config, with a reason)"
    )
    assert not stale, f"accepted_near_duplicates lists pairs no longer found: {stale}"
