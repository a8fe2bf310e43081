"""Where the backbone is cut for cached fine-tuning: above pooled side taps, below any
skip connection that crosses, and the two halves compute the whole backbone."""

from __future__ import annotations

import hashlib

import numpy as np

from skin_mlops.modeling.fine_tune import split_backbone


def _backbone(model):
    from skin_mlops.modeling.backbones import Backbone

    digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    return Backbone("test", model, digest, 16, int(model.output.shape[-1]))


def _halves_match(split, model, seed: int = 0) -> None:
    size = int(model.input.shape[1])
    pixels = np.random.default_rng(seed).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    whole = np.asarray(model(pixels))
    cached = np.asarray(split.bottom.model(pixels))
    assert cached.shape == (3, *split.map_shape)
    np.testing.assert_allclose(np.asarray(split.top(cached)), whole, atol=1e-5)


def test_a_pooled_side_tap_travels_beside_the_cut(backbone_factory) -> None:
    """The tiny backbone concatenates an average of its input with one of its last conv:
    the cut sits right under that conv, and the tap's 3 values ride along."""
    backbone = backbone_factory(seed=1)
    split = split_backbone(backbone, 1)
    assert split.cut == "tiny_conv" and [size for _, size in split.taps] == [3]
    assert split.cache_key == "tiny_conv+tap3"
    conv = backbone.model.get_layer("tiny_conv").output
    assert split.map_shape == (int(np.prod(conv.shape[1:])) + 3,)
    top_layers = {layer.name for layer in split.top.layers[-1].layers}
    assert "tiny_conv2" in top_layers and "tiny_conv" not in top_layers
    _halves_match(split, backbone.model)


def test_a_skip_connection_across_the_cut_moves_it_down() -> None:
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(image)
    b = keras.layers.Conv2D(4, 3, padding="same", name="conv_b")(a)
    c = keras.layers.Conv2D(4, 3, padding="same", name="conv_c")(b)
    joined = keras.layers.Add(name="skip")([c, a])  # a 16x16 map from below conv_b
    model = keras.Model(image, keras.layers.GlobalAveragePooling2D()(joined))
    split = split_backbone(_backbone(model), 1)  # conv_c only: conv_a's map must be cached
    assert split.cut == "conv_a" and split.taps == () and split.cache_key == "conv_a"
    assert split.map_shape == (16 * 16 * 4,)
    _halves_match(split, model)
