"""Scan a photo tree once, then find exact and perceptual duplicates across its splits.

Used by the data suite (``tests/data``) on real folders and by its self-test on generated
ones. :func:`scan_photos` reads every file of ``<root>/<split>/<label>/`` once, on threads:

* ``sha256`` of the bytes (exact duplicates: the ingestion's identity of an image);
* ``error``: the one-line :class:`skin_mlops.preprocessing.ImageError` message when
  :func:`skin_mlops.preprocessing.preprocess_bytes` (the training/serving path) fails;
* ``phashes``: the 256-bit perceptual hash (``imagehash.phash(hash_size=16)``: 64x64 grey
  DCT, the 16x16 lowest frequencies against their median) of the upright photo in each of
  its 8 dihedral orientations, so a copy that was re-encoded, resized, flipped or turned
  is still near.

:func:`perceptual_duplicates` compares every photo of one split with every photo of the
others: a pair is a duplicate when the Hamming distance between one photo's as-stored
hash and any of the other's 8 orientation hashes is at most ``max_distance``.
Measured on dermnet5 (816 photos): a re-encoded copy (JPEG quality 70, resized to 90 %)
lands within 0-4 bits of its original, the two same-scene pairs found across its splits
at 8 and 16 bits, and the nearest unrelated photos 64+ bits apart (the 64-bit hash cannot
tell those apart: real duplicates at 4-6 bits, unrelated photos from 6). The default
threshold is 32 bits (:data:`utils.suite_options.DEFAULT_PHASH_DISTANCE`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from skin_mlops import preprocessing
from skin_mlops.modeling import near_duplicates

HASH_BITS = near_duplicates.HASH_BITS
DIHEDRAL = near_duplicates.DIHEDRAL
phash_bits = near_duplicates.phash_bits
_HASH_SIDE = near_duplicates.HASH_DECODE_SIDE


@dataclass(frozen=True)
class Photo:
    """One file of the tree, as read by :func:`scan_photos`."""

    split: str
    label: str
    path: Path
    sha256: str
    error: str | None = None
    phashes: np.ndarray = field(default_factory=lambda: np.zeros((0, HASH_BITS), bool), repr=False)

    @property
    def name(self) -> str:
        """``split/label/file`` (for messages)."""
        return f"{self.split}/{self.label}/{self.path.name}"


@dataclass(frozen=True)
class Duplicate:
    """Two photos of different splits (or labels) that are the same image."""

    first: Photo
    second: Photo
    distance: int  # 0 for exact duplicates

    def __str__(self) -> str:
        kind = "same bytes" if self.first.sha256 == self.second.sha256 else f"{self.distance} bits"
        return f"{self.first.name} ~ {self.second.name} ({kind})"


def read_photo(split: str, label: str, path: Path, decode_size: int) -> Photo:
    """Hash and decode one file (never raises for a bad image: ``error`` says why)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        tensor = preprocessing.preprocess_bytes(data, decode_size)
        if tensor.shape != (decode_size, decode_size, 3) or not np.isfinite(tensor).all():
            return Photo(split, label, path, digest, f"bad model input {tensor.shape}")
        upright = preprocessing.load_rgb(data, min_side=_HASH_SIDE)
    except preprocessing.ImageError as exc:
        return Photo(split, label, path, digest, str(exc))
    return Photo(split, label, path, digest, None, phash_bits(upright))


def photo_files(root: Path, splits: Iterable[str]) -> list[tuple[str, str, Path]]:
    """``(split, label, path)`` of every regular file under ``root/<split>/<label>/``."""
    found = []
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            found.extend(
                (split, label_dir.name, path)
                for path in sorted(label_dir.iterdir())
                if path.is_file()
            )
    return found


def scan_photos(
    root: Path, splits: Iterable[str], decode_size: int = preprocessing.DEFAULT_IMAGE_SIZE
) -> list[Photo]:
    """:func:`read_photo` for every file of :func:`photo_files` (threads: Pillow drops the GIL)."""
    files = photo_files(root, splits)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda item: read_photo(*item, decode_size), files))


def exact_duplicates(photos: Sequence[Photo]) -> list[Duplicate]:
    """Pairs with the same bytes in different splits, or under two labels of one split."""
    by_digest: dict[str, list[Photo]] = {}
    for photo in photos:
        by_digest.setdefault(photo.sha256, []).append(photo)
    return [
        Duplicate(a, b, 0)
        for group in by_digest.values()
        for a, b in combinations(group, 2)
        if a.split != b.split or a.label != b.label
    ]


def distance_matrix(group_a: Sequence[Photo], group_b: Sequence[Photo]) -> np.ndarray:
    """``int[A, B]``: :func:`skin_mlops.modeling.near_duplicates.distance_matrix` of the
    photos' hashes (the same measure training and cross-validation use)."""
    return near_duplicates.distance_matrix(
        np.packbits(np.stack([p.phashes for p in group_a]), axis=-1),
        np.packbits(np.stack([p.phashes for p in group_b]), axis=-1),
    )


def _hashed(photos: Sequence[Photo], split: str) -> list[Photo]:
    return [p for p in photos if p.split == split and p.error is None and len(p.phashes)]


def perceptual_duplicates(photos: Sequence[Photo], max_distance: int) -> list[Duplicate]:
    """Pairs in different splits whose pHashes are within ``max_distance`` bits
    (:func:`distance_matrix`).

    Exact duplicates (same SHA-256) are left to :func:`exact_duplicates`; photos that did
    not decode have no hash and are skipped. Sorted by distance, then name.
    """
    splits = sorted({p.split for p in photos})
    found: list[Duplicate] = []
    for split_a, split_b in combinations(splits, 2):
        group_a, group_b = _hashed(photos, split_a), _hashed(photos, split_b)
        if not group_a or not group_b:
            continue
        distance = distance_matrix(group_a, group_b)
        for i, j in zip(*np.nonzero(distance <= max_distance), strict=True):
            a, b = group_a[int(i)], group_b[int(j)]
            if a.sha256 != b.sha256:
                found.append(Duplicate(a, b, int(distance[i, j])))
    return sorted(found, key=lambda d: (d.distance, d.first.name, d.second.name))


def duplicates_within_splits(photos: Sequence[Photo], max_distance: int) -> list[Duplicate]:
    """Pairs of one split (any labels) within ``max_distance`` bits, other bytes included.

    Not leakage (the same split), but a photo counted twice in training or in the metrics.
    """
    found: list[Duplicate] = []
    for split in sorted({p.split for p in photos}):
        group = _hashed(photos, split)
        if len(group) < 2:
            continue
        distance = distance_matrix(group, group)
        for i, j in zip(*np.nonzero(np.triu(distance <= max_distance, 1)), strict=True):
            found.append(Duplicate(group[int(i)], group[int(j)], int(distance[i, j])))
    return sorted(found, key=lambda d: (d.distance, d.first.name, d.second.name))


def nearest_distances(photos: Sequence[Photo], split_a: str, split_b: str) -> np.ndarray:
    """For each photo of ``split_a``, the distance to its nearest photo of ``split_b`` (bits)."""
    group_a, group_b = _hashed(photos, split_a), _hashed(photos, split_b)
    if not group_a or not group_b:
        return np.zeros(0, dtype=np.int64)
    return distance_matrix(group_a, group_b).min(axis=1)
