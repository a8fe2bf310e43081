"""Near-duplicate photos: the same picture with other bytes (re-encoded, resized, turned).

SHA-256 (ingestion's identity) only catches byte-identical copies. A val photo that is a
re-saved copy of a training photo still leaks the answer into evaluation, so training
leaves those out of val too, and cross-validation keeps each group of near-duplicates in
one fold. Both use the perceptual hash here:

* :func:`photo_phashes` - the 256-bit pHash (``imagehash.phash(hash_size=16)``: 64x64 grey
  DCT, the 16x16 lowest frequencies against their median) of the upright photo in each of
  its 8 dihedral orientations (decoded at a reduced DCT scale: pHash looks at 64x64
  pixels), packed ``uint8[8, 32]``;
* :func:`distance_matrix` - the fewest differing bits between two photos, any orientation;
* :func:`near_duplicates_of` / :func:`duplicate_groups` - what training and CV use, at
  :data:`DEFAULT_MAX_DISTANCE` bits.

Measured on dermnet5 (816 photos): a re-encoded copy (JPEG quality 70, resized to 90 %)
lands within 0-4 bits of its original, the two same-scene pairs across its splits at 8 and
16 bits, and the nearest unrelated photos 64+ bits apart; hence 32 bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from skin_mlops import preprocessing
from skin_mlops.modeling.photo_cache import PhotoCache

HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE
DEFAULT_MAX_DISTANCE = 32  # of 256 bits
# The 8 elements of the dihedral group D4 as Pillow transposes (None = as stored).
DIHEDRAL: tuple[Image.Transpose | None, ...] = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)
HASH_DECODE_SIDE = 128  # decode at a reduced DCT scale: pHash looks at 64x64 pixels
_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


def phash_bits(img: Image.Image) -> np.ndarray:
    """``bool[8, 256]``: the pHash of ``img`` in each of its 8 dihedral orientations."""
    import imagehash

    return np.stack(
        [
            imagehash.phash(img if op is None else img.transpose(op), HASH_SIZE).hash.reshape(-1)
            for op in DIHEDRAL
        ]
    )


def photo_phashes(data: bytes) -> np.ndarray:
    """``uint8[8, 32]``: the packed pHashes of an image file's upright photo.

    Raises:
        preprocessing.ImageError: the bytes are not a decodable image.
    """
    upright = preprocessing.load_rgb(data, min_side=HASH_DECODE_SIDE)
    return np.packbits(phash_bits(upright), axis=-1)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``int[A, B]`` differing bits between packed hashes ``uint8[A, W]`` and ``uint8[B, W]``."""
    return _POPCOUNT[a[:, None, :] ^ b[None, :, :]].sum(axis=-1, dtype=np.int32)


def distance_matrix(hashes_a: np.ndarray, hashes_b: np.ndarray) -> np.ndarray:
    """``int[A, B]``: fewest differing bits between photo ``a`` as stored and ``b`` in any
    of its 8 orientations, or ``b`` as stored and ``a`` in any (pHash does not commute
    exactly with turns and mirrors, so both ways are taken).

    Args:
        hashes_a (np.ndarray): ``uint8[A, 8, 32]`` from :func:`photo_phashes`.
        hashes_b (np.ndarray): ``uint8[B, 8, 32]``.
    """
    distance = np.full((len(hashes_a), len(hashes_b)), HASH_BITS, dtype=np.int32)
    if not len(hashes_a) or not len(hashes_b):
        return distance
    for k in range(len(DIHEDRAL)):
        np.minimum(distance, _hamming(hashes_a[:, 0], hashes_b[:, k]), out=distance)
        np.minimum(distance, _hamming(hashes_a[:, k], hashes_b[:, 0]), out=distance)
    return distance


def near_duplicates_of(
    candidates: np.ndarray, reference: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE
) -> np.ndarray:
    """``bool[len(candidates)]``: which candidates are within ``max_distance`` bits of a
    reference photo (e.g. which val photos are copies of training photos)."""
    if not len(candidates) or not len(reference):
        return np.zeros(len(candidates), bool)
    return distance_matrix(candidates, reference).min(axis=1) <= max_distance


def duplicate_groups(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> np.ndarray:
    """``int[N]`` group id per photo: photos linked by a chain of near-duplicates share one
    (connected components), for :class:`sklearn.model_selection.StratifiedGroupKFold`."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    linked = distance_matrix(hashes, hashes) <= max_distance
    _, groups = connected_components(csr_matrix(linked), directed=False)
    return groups.astype(np.int64)


class PhashCache:
    """``sha256 -> uint8[8, 32]`` in a small SQLite file (``<feature cache>/phash.sqlite``)."""

    def __init__(self, cache_dir: Path) -> None:
        self._cache = PhotoCache(cache_dir, "phash", lambda data: photo_phashes(data).tobytes())
        self.path = self._cache.path

    def hashes(self, images: Sequence[tuple[str, Callable[[], bytes]]]) -> np.ndarray:
        """``uint8[N, 8, 32]`` of ``(sha256, load bytes)`` pairs; computes only missing ones.

        Raises:
            preprocessing.ImageError: a photo that is not decodable (ingestion refuses
                those, so this means the bytes changed under it).
        """
        shape = (len(DIHEDRAL), HASH_BITS // 8)
        if not images:
            return np.zeros((0, *shape), np.uint8)
        return np.stack(
            [np.frombuffer(bits, np.uint8).reshape(shape) for bits in self._cache.values(images)]
        )
