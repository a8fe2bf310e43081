"""The feature cache: deterministic views, SQLite store, reuse on a second run."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from skin_mlops import preprocessing
from skin_mlops.core.errors import DataError
from skin_mlops.modeling.features import (
    CENTER_VIEW,
    FeatureSpace,
    FeatureStore,
    ImageRef,
    extract_features,
    render_views,
    view_ids,
)


def _jpeg(seed: int, size: tuple[int, int] = (60, 44)) -> bytes:
    rng = np.random.default_rng(seed)
    from PIL import Image

    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _refs(n: int, loads: list[str] | None = None) -> list[ImageRef]:
    refs = []
    for i in range(n):
        data = _jpeg(i)
        sha = f"{i:02d}" + "ab" * 31

        def load(data: bytes = data, i: int = i) -> bytes:
            if loads is not None:
                loads.append(f"img{i}")
            return data

        refs.append(ImageRef(sha, load, f"img{i}"))
    return refs


def test_view_ids() -> None:
    assert view_ids(1) == [CENTER_VIEW]
    assert view_ids(3)[0] == CENTER_VIEW and len(set(view_ids(3))) == 3
    with pytest.raises(DataError):
        view_ids(0)


def test_center_view_is_exactly_the_serving_preprocessing() -> None:
    data = _jpeg(1)
    (center,) = render_views(data, "ab" * 32, [CENTER_VIEW], 32)
    np.testing.assert_array_equal(center, preprocessing.preprocess_bytes(data, 32))


def test_augmented_views_are_deterministic_and_distinct() -> None:
    data, sha = _jpeg(2), "cd" * 32
    first = render_views(data, sha, view_ids(4), 32)
    again = render_views(data, sha, view_ids(4), 32)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.shape == (32, 32, 3) and a.dtype == np.float32
        assert 0 <= a.min() and a.max() <= 255
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(first[i], first[j])
    other_image = render_views(data, "ef" * 32, view_ids(4), 32)  # same bytes, other hash
    assert not np.array_equal(first[1], other_image[1])


def test_store_round_trip(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    space = FeatureSpace("bb", "", "0" * 64, 3, "prep", 32)
    store.put(space, [("a" * 64, CENTER_VIEW, np.array([1.0, 2.0, 3.0], np.float32))])
    assert store.count(space) == 1
    loaded = FeatureStore(tmp_path).load(space)
    np.testing.assert_array_equal(loaded[("a" * 64, CENTER_VIEW)], [1.0, 2.0, 3.0])
    assert FeatureStore(tmp_path).load(replace(space, image_size=64)) == {}


def test_fill_copies_only_the_wanted_vectors_of_the_right_width(tmp_path: Path) -> None:
    """What extraction reads from the cache: the asked photos x views, into one array."""
    store = FeatureStore(tmp_path)
    space = FeatureSpace("bb", "", "0" * 64, 3, "prep", 32)
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    store.put(
        space,
        [
            (a, CENTER_VIEW, np.array([1, 2, 3], np.float32)),
            (a, "aug1.1", np.array([4, 5, 6], np.float32)),
            (b, CENTER_VIEW, np.array([7, 8, 9], np.float32)),
            (c, CENTER_VIEW, np.array([0, 0, 0], np.float32)),  # not asked for
            (b, "aug1.1", np.array([1, 1], np.float32)),  # another width: missing
        ],
    )
    out = np.full((3, 2, 3), -1, np.float32)

    found = store.fill(space, [b, a, b], [CENTER_VIEW, "aug1.1"], out)

    np.testing.assert_array_equal(found, [[True, False], [True, True], [True, False]])
    np.testing.assert_array_equal(out[1], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(out[0, 0], [7, 8, 9])
    np.testing.assert_array_equal(out[2, 0], [7, 8, 9])  # a photo listed twice: both rows
    np.testing.assert_array_equal(out[0, 1], [-1, -1, -1])  # untouched where not found
    assert not store.fill(replace(space, image_size=64), [a], [CENTER_VIEW], out[:1]).any()


def test_second_extraction_reuses_everything(tmp_path: Path, tiny_backbone) -> None:
    loads: list[str] = []
    refs = _refs(5, loads)
    store = FeatureStore(tmp_path)
    first = extract_features(tiny_backbone, refs, 3, store, batch_size=4)
    assert (first.extracted, first.reused) == (15, 0)
    assert first.features.shape == (5, 3, tiny_backbone.feature_dim)
    assert len(loads) == 5  # each photo read once, all its views rendered from it

    loads.clear()
    second = extract_features(tiny_backbone, refs, 3, FeatureStore(tmp_path), batch_size=4)
    assert (second.extracted, second.reused) == (0, 15)
    assert loads == []  # nothing decoded at all
    np.testing.assert_array_equal(first.features, second.features)

    # one more view: only the new view is computed
    third = extract_features(tiny_backbone, refs, 4, store, batch_size=4)
    assert (third.extracted, third.reused) == (5, 15)
    np.testing.assert_array_equal(third.features[:, :3], first.features)


def test_cached_features_equal_the_backbone_on_serving_pixels(
    tmp_path: Path, tiny_backbone
) -> None:
    refs = _refs(3)
    table = extract_features(tiny_backbone, refs, 1, FeatureStore(tmp_path), batch_size=2)
    pixels = np.stack([preprocessing.preprocess_bytes(r.load(), 32) for r in refs])
    direct = np.asarray(tiny_backbone.model(pixels, training=False))
    np.testing.assert_allclose(table.features[:, 0], direct, rtol=1e-5, atol=1e-6)


def test_other_weights_are_another_cache_key(tmp_path: Path, tiny_backbone) -> None:
    refs = _refs(2)
    store = FeatureStore(tmp_path)
    extract_features(tiny_backbone, refs, 1, store)
    retrained = replace(tiny_backbone, weights_sha256="f" * 64)
    assert extract_features(retrained, refs, 1, store).extracted == 2
    assert (
        extract_features(tiny_backbone, refs, 1, store, backbone_options="pooling=x").extracted == 2
    )


def test_undecodable_image_is_one_clear_error(tmp_path: Path, tiny_backbone) -> None:
    bad = ImageRef("12" * 32, lambda: b"not an image at all", "raw/train/acne/broken.jpg")
    with pytest.raises(DataError, match="broken.jpg"):
        extract_features(tiny_backbone, [bad], 1, FeatureStore(tmp_path))


def test_composing_dihedral_transforms_is_the_group_product() -> None:
    from skin_mlops.modeling.features import compose_dihedral, dihedral

    x = np.random.default_rng(2).uniform(0, 1, (5, 5, 3))
    for first in range(8):
        for then in range(8):
            np.testing.assert_array_equal(
                dihedral(dihedral(x, first), then), dihedral(x, compose_dihedral(first, then))
            )
