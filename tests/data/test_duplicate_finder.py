"""The duplicate finder of the data suite, proven on generated photos (runs by default).

Ingestion catches an exact copy of a val photo in train (same SHA-256); a copy that was
re-encoded or resized has other bytes and is caught only by the perceptual hash.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from skin_mlops.preprocessing import load_rgb
from utils.make_ci_model import write_photos
from utils.perceptual import exact_duplicates, perceptual_duplicates, scan_photos
from utils.suite_options import DEFAULT_PHASH_DISTANCE

LABELS = ["acne", "lichen_planus", "atopic_dermatitis"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``raw/{train,val}/<label>/`` of generated photos (6 train, 3 val per label)."""
    write_photos(tmp_path / "raw", LABELS, {"train": 6, "val": 3}, seed=7)
    return tmp_path / "raw"


def _reencoded(path: Path, *, mirror: bool = False) -> bytes:
    """``path`` decoded upright, resized to 90 %, maybe mirrored, saved as JPEG quality 70."""
    img = load_rgb(path.read_bytes())
    img = img.resize((round(img.width * 0.9), round(img.height * 0.9)), Image.Resampling.BICUBIC)
    if mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def test_distinct_generated_photos_are_not_duplicates(tree: Path) -> None:
    photos = scan_photos(tree, ["train", "val"])
    assert len(photos) == 27 and all(p.error is None for p in photos)
    assert exact_duplicates(photos) == []
    assert perceptual_duplicates(photos, DEFAULT_PHASH_DISTANCE) == []


def test_a_reencoded_resized_copy_of_a_val_photo_in_train_is_caught(tree: Path) -> None:
    originals = sorted((tree / "val" / "acne").iterdir())
    copy = tree / "train" / "acne" / "innocent-name.jpg"
    copy.write_bytes(_reencoded(originals[0]))
    mirrored = tree / "train" / "lichen_planus" / "other-label.jpg"
    mirrored.write_bytes(_reencoded(originals[1], mirror=True))
    photos = scan_photos(tree, ["train", "val"])

    assert exact_duplicates(photos) == []  # other bytes: a SHA-256 check misses both
    found = {
        (d.first.path, d.second.path): d.distance
        for d in perceptual_duplicates(photos, DEFAULT_PHASH_DISTANCE)
    }
    assert set(found) == {(copy, originals[0]), (mirrored, originals[1])}
    assert all(0 < distance <= DEFAULT_PHASH_DISTANCE for distance in found.values()), found


def test_an_exact_copy_is_reported_once_as_exact(tree: Path) -> None:
    original = sorted((tree / "val" / "atopic_dermatitis").iterdir())[0]
    shutil.copyfile(original, tree / "train" / "acne" / "same-bytes.jpg")
    photos = scan_photos(tree, ["train", "val"])

    exact = exact_duplicates(photos)
    assert [(d.first.name, d.second.name) for d in exact] == [
        ("train/acne/same-bytes.jpg", f"val/atopic_dermatitis/{original.name}")
    ]
    assert perceptual_duplicates(photos, DEFAULT_PHASH_DISTANCE) == []


def test_a_file_that_does_not_decode_is_reported_not_hashed(tree: Path) -> None:
    broken = tree / "val" / "acne" / "truncated.jpg"
    broken.write_bytes(sorted((tree / "val" / "acne").iterdir())[0].read_bytes()[:300])
    (tree / "val" / "acne" / "notes.txt").write_text("not a photo")
    photos = {p.path.name: p for p in scan_photos(tree, ["train", "val"])}

    assert photos["truncated.jpg"].error and photos["notes.txt"].error
    assert "not a supported image" in photos["notes.txt"].error
    assert len(photos["truncated.jpg"].phashes) == 0
