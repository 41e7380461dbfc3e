"""Models shaped like the ones users write, for the user-graph tests.

Each builder returns `(model, inputs, labels)`: a small model and a few
examples of random data for it (classification labels).
"""

import keras
import numpy as np
from keras import ops

L = keras.layers


def _labels(rng, n, classes):
    return rng.integers(0, classes, size=n)


def dl1r(rng, n=64):
    """A DL1r-style flavour tagger: Dense 256-128-60-48-36-24-12-6 with
    batch norm and ReLU, 36 features, 6 classes."""
    x = keras.Input((36,), name="features")
    h = x
    for i, units in enumerate([256, 128, 60, 48, 36, 24, 12, 6]):
        h = L.Dense(units, name=f"dense_{i}")(h)
        h = L.BatchNormalization(name=f"bn_{i}")(h)
        h = L.ReLU(name=f"relu_{i}")(h)
    y = L.Dense(6, activation="softmax", name="out")(h)
    data = rng.normal(size=(n, 36)).astype("float32")
    return keras.Model(x, y, name="dl1r"), data, _labels(rng, n, 6)


def _tracks(rng, n, steps=10, features=5):
    """Zero-padded track sets: each example has 2..steps real tracks."""
    data = rng.normal(size=(n, steps, features)).astype("float32")
    counts = rng.integers(2, steps + 1, size=n)
    for i, c in enumerate(counts):
        data[i, c:] = 0.0
    return data


def deep_sets(rng, n=64, time_distributed=False):
    """A Deep Sets tagger (the DIPS shape): Masking, a per-track network,
    masked sum and masked mean pooling over tracks, a Dense head."""
    x = keras.Input((10, 5), name="tracks")
    h = L.Masking(name="masking")(x)
    for i, units in enumerate([32, 24]):
        dense = L.Dense(units, activation="relu", name=f"phi_{i}")
        h = L.TimeDistributed(dense, name=f"td_{i}")(h) \
            if time_distributed else dense(h)
    # The sum a user writes with keras.ops, weighted by the mask, and
    # the mean Keras's pooling layer takes with the mask.
    valid = ops.any(ops.not_equal(x, 0.0), axis=-1)
    weight = ops.expand_dims(ops.cast(valid, "float32"), -1)
    pooled_sum = ops.sum(h * weight, axis=1)
    pooled_mean = L.GlobalAveragePooling1D(name="mean_pool")(h)
    h = L.Concatenate(name="pooled")([pooled_sum, pooled_mean])
    h = L.Dense(16, activation="relu", name="rho")(h)
    y = L.Dense(3, activation="softmax", name="out")(h)
    name = "deep_sets_td" if time_distributed else "deep_sets"
    return keras.Model(x, y, name=name), _tracks(rng, n), _labels(rng, n, 3)


def jets_and_tracks(rng, n=64):
    """Two inputs, jet features and a track set, joined by Concatenate."""
    jets = keras.Input((8,), name="jets")
    tracks = keras.Input((10, 5), name="tracks")
    j = L.Dense(24, activation="relu", name="jet_dense")(jets)
    t = L.Dense(16, activation="relu", name="track_dense")(tracks)
    t = L.GlobalAveragePooling1D(name="track_pool")(t)
    h = L.Concatenate(name="joined")([j, t])
    h = L.Dense(20, activation="relu", name="head")(h)
    y = L.Dense(2, activation="softmax", name="out")(h)
    data = [rng.normal(size=(n, 8)).astype("float32"), _tracks(rng, n)]
    return keras.Model([jets, tracks], y, name="jets_tracks"), data, \
        _labels(rng, n, 2)


def shared_layer(rng, n=64):
    """One Dense called on two inputs (a siamese pair)."""
    a = keras.Input((6,), name="left")
    b = keras.Input((6,), name="right")
    shared = L.Dense(16, activation="relu", name="shared")
    h = L.Concatenate(name="pair")([shared(a), shared(b)])
    h = L.Dense(12, activation="relu", name="head")(h)
    y = L.Dense(2, activation="softmax", name="out")(h)
    data = [rng.normal(size=(n, 6)).astype("float32") for _ in range(2)]
    return keras.Model([a, b], y, name="siamese"), data, _labels(rng, n, 2)


def with_lambda(rng, n=64):
    """A `Lambda` between two Dense layers: opaque to the channel graph."""
    x = keras.Input((10,), name="x")
    h = L.Dense(16, activation="relu", name="before")(x)
    h = L.Lambda(lambda t: t * 2.0 + 1.0, name="affine")(h)
    h = L.Dense(12, activation="relu", name="after")(h)
    y = L.Dense(3, activation="softmax", name="out")(h)
    data = rng.normal(size=(n, 10)).astype("float32")
    return keras.Model(x, y, name="with_lambda"), data, _labels(rng, n, 3)


def transformer_block(rng, n=32):
    """A transformer encoder block: attention, layer norm, MLP."""
    x = keras.Input((6, 16), name="tokens")
    a = L.MultiHeadAttention(2, 8, name="attention")(x, x)
    h = L.LayerNormalization(name="ln1")(L.Add(name="res1")([x, a]))
    m = L.Dense(48, activation="gelu", name="mlp_in")(h)
    m = L.Dense(16, name="mlp_out")(m)
    h = L.LayerNormalization(name="ln2")(L.Add(name="res2")([h, m]))
    h = L.GlobalAveragePooling1D(name="pool")(h)
    y = L.Dense(3, activation="softmax", name="out")(h)
    data = rng.normal(size=(n, 6, 16)).astype("float32")
    return keras.Model(x, y, name="transformer"), data, _labels(rng, n, 3)


def convnext_block(rng, n=16):
    """A ConvNeXt block with Keras's own LayerScale."""
    from keras.src.applications.convnext import LayerScale

    x = keras.Input((8, 8, 3), name="image")
    h = L.Conv2D(16, 2, strides=2, name="stem")(x)
    h = L.LayerNormalization(epsilon=1e-6, name="stem_ln")(h)
    r = L.DepthwiseConv2D(7, padding="same", name="dw")(h)
    r = L.LayerNormalization(epsilon=1e-6, name="ln")(r)
    r = L.Dense(64, name="pw1")(r)
    r = L.Activation("gelu", name="gelu")(r)
    r = L.Dense(16, name="pw2")(r)
    r = LayerScale(0.5, 16, name="layer_scale")(r)
    h = L.Add(name="residual")([h, r])
    h = L.GlobalAveragePooling2D(name="pool")(h)
    y = L.Dense(4, activation="softmax", name="out")(h)
    data = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    return keras.Model(x, y, name="convnext_block"), data, _labels(rng, n, 4)


def mobilenet_v3_small(rng, n=8):
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=5,
        include_preprocessing=False)
    data = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    return model, data, _labels(rng, n, 5)


BUILDERS = [dl1r, deep_sets, lambda rng: deep_sets(rng, time_distributed=True),
            jets_and_tracks, shared_layer, with_lambda, transformer_block,
            convnext_block, mobilenet_v3_small]
