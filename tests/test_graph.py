"""Tests for `keras_autopruner.graph`: which tensors share a channel index."""

import keras
import numpy as np
import pytest

from keras_autopruner.gate import AutoPrunerGate
from keras_autopruner.graph import ChannelGraph, activation_traits

L = keras.layers


def same_groups(graph, a, b):
    """Whether two tensors' channels are, position by position, one group."""
    ga = graph.groups(graph.channels[id(a)])
    gb = graph.groups(graph.channels[id(b)])
    return ga.shape == gb.shape and bool(np.all(ga == gb))


def scales_of(graph, **masks):
    """Gate name -> scale array: 1 everywhere unless given."""
    out = {}
    for gate in graph.gate_layers():
        out[gate.name] = np.ones(gate.units)
    for name, mask in masks.items():
        out[name] = np.asarray(mask, dtype=float)
    return out


def test_add_couples_branches_and_concat_offsets():
    x = keras.Input((4, 4, 2))
    a = L.Conv2D(3, 1, name="a")(x)
    b = L.Conv2D(3, 1, name="b")(x)
    c = L.Conv2D(2, 1, name="c")(x)
    s = L.Add()([a, b])
    cat = L.Concatenate()([s, c])
    y = L.Conv2D(1, 1)(cat)
    graph = ChannelGraph(keras.Model(x, y))

    assert same_groups(graph, a, b)
    assert same_groups(graph, a, s)
    assert not same_groups(graph, a, c)
    groups = graph.groups(graph.channels[id(cat)])
    np.testing.assert_array_equal(
        groups[:3], graph.groups(graph.channels[id(a)]))
    np.testing.assert_array_equal(
        groups[3:], graph.groups(graph.channels[id(c)]))


def test_flatten_repeats_channels_in_flatten_order():
    x = keras.Input((2, 3, 4))
    a = L.Conv2D(5, 1)(x)
    f = L.Flatten()(a)
    y = L.Dense(2)(f)
    graph = ChannelGraph(keras.Model(x, y))
    conv = graph.channels[id(a)]
    # Row-major: the channel index runs fastest, once per spatial position.
    np.testing.assert_array_equal(graph.channels[id(f)], np.tile(conv, 6))


def test_reshape_keeping_channel_axis_passes_channels():
    x = keras.Input((4, 4, 2))
    a = L.Conv2D(3, 1)(x)
    r = L.Reshape((16, 3))(a)
    r2 = L.Reshape((8, 6))(a)  # Two positions per row: channels repeat.
    y = L.Concatenate()([L.Flatten()(r), L.Flatten()(r2)])
    graph = ChannelGraph(keras.Model(x, y))
    conv = graph.channels[id(a)]
    np.testing.assert_array_equal(graph.channels[id(r)], conv)
    np.testing.assert_array_equal(graph.channels[id(r2)], np.tile(conv, 2))
    ops = {op.layer.name: op.kind for op in graph.ops}
    assert "unknown" not in ops.values()


def test_reshape_that_splits_channels_is_unknown():
    x = keras.Input((4, 4, 6))
    a = L.Conv2D(6, 1)(x)
    r = L.Reshape((4, 4, 2, 3))(a)
    graph = ChannelGraph(keras.Model(x, r))
    assert graph.op_of(r._keras_history[0]).kind == "unknown"


def test_depthwise_repeats_each_channel_by_the_multiplier():
    x = keras.Input((5, 5, 2))
    a = L.Conv2D(3, 1)(x)
    d = L.DepthwiseConv2D(3, depth_multiplier=2)(a)
    graph = ChannelGraph(keras.Model(x, d))
    np.testing.assert_array_equal(
        graph.channels[id(d)], np.repeat(graph.channels[id(a)], 2))


def test_shared_layer_reads_the_same_channels_at_every_call():
    x1, x2 = keras.Input((3,)), keras.Input((3,))
    a = L.Dense(4)(x1)
    b = L.Dense(4)(x2)
    shared = L.Dense(2)
    y = L.Add()([shared(a), shared(b)])
    graph = ChannelGraph(keras.Model([x1, x2], y))
    assert same_groups(graph, a, b)


def gated_chain(after_gate, units=4):
    """input -> Dense -> gate -> `after_gate` layers -> Dense output."""
    x = keras.Input((3,))
    h = L.Dense(units, activation="relu", name="producer")(x)
    h = AutoPrunerGate(name="gate")(h)
    for layer in after_gate:
        h = layer(h)
    y = L.Dense(2, name="reader")(h)
    return ChannelGraph(keras.Model(x, y))


def test_needed_removes_channels_zero_where_read():
    graph = gated_chain([L.Dropout(0.5), L.Activation("tanh")])
    need = graph.needed(scales_of(graph, gate=[1, 0, 1, 0]))
    producer = graph.op_of(graph.model.get_layer("producer"))
    kept = graph.kept(producer.node.outputs[0], need)
    np.testing.assert_array_equal(kept, [True, False, True, False])


def test_needed_keeps_a_channel_made_nonzero_after_the_gate():
    # Batch norm maps a zero channel to its shift: the reader sees it.
    graph = gated_chain([L.BatchNormalization()])
    need = graph.needed(scales_of(graph, gate=[1, 0, 1, 0]))
    producer = graph.op_of(graph.model.get_layer("producer"))
    assert graph.kept(producer.node.outputs[0], need).all()


def test_add_keeps_the_union_and_multiply_the_intersection():
    x = keras.Input((3,))
    a = AutoPrunerGate(name="ga")(L.Dense(4, name="a")(x))
    b = AutoPrunerGate(name="gb")(L.Dense(4, name="b")(x))
    s = L.Add()([a, b])
    m = L.Multiply()([a, b])
    y = L.Concatenate()([L.Dense(1)(s), L.Dense(1)(m)])
    graph = ChannelGraph(keras.Model(x, y))
    need = graph.needed(scales_of(graph, ga=[1, 1, 0, 0], gb=[1, 0, 1, 0]))
    # a, b, s and m are one group per position: s needs the union, and m is
    # zero wherever either branch is; the union wins as s still reads them.
    np.testing.assert_array_equal(graph.kept(s, need), [1, 1, 1, 0])

    x = keras.Input((3,))
    a = AutoPrunerGate(name="ga")(L.Dense(4, name="a")(x))
    b = L.Dense(4, name="b")(x)  # Ungated: keeps everything...
    m = L.Multiply()([a, b])  # ...but only its product is read.
    graph = ChannelGraph(keras.Model(x, L.Dense(1)(m)))
    need = graph.needed(scales_of(graph, ga=[1, 1, 0, 0]))
    np.testing.assert_array_equal(graph.kept(b, need), [1, 1, 0, 0])


def test_ungated_branch_keeps_every_channel():
    x = keras.Input((3,))
    a = AutoPrunerGate(name="ga")(L.Dense(4)(x))
    b = L.Dense(4)(x)
    s = L.Add()([a, b])
    graph = ChannelGraph(keras.Model(x, L.Dense(1)(s)))
    need = graph.needed(scales_of(graph, ga=[0, 0, 1, 0]))
    assert graph.kept(a, need).all()


def test_model_outputs_are_never_narrowed():
    x = keras.Input((3,))
    y = AutoPrunerGate(name="g")(L.Dense(4)(x))
    graph = ChannelGraph(keras.Model(x, y))
    need = graph.needed(scales_of(graph, g=[0, 1, 0, 1]))
    assert graph.kept(y, need).all()


def test_unknown_layer_reading_a_removed_channel_is_named():
    x = keras.Input((3,))
    h = AutoPrunerGate(name="g")(L.Dense(4)(x))
    h = L.LayerNormalization(name="norm")(h)
    graph = ChannelGraph(keras.Model(x, L.Dense(2)(h)))
    assert graph.op_of(graph.model.get_layer("norm")).kind == "unknown"
    # Keeping everything is fine...
    graph.needed(scales_of(graph))
    # ...removing a channel it reads is not.
    with pytest.raises(ValueError, match="'norm'.*LayerNormalization"):
        graph.needed(scales_of(graph, g=[1, 0, 1, 1]))


def test_softmax_output_of_a_mixer_cannot_lose_units():
    x = keras.Input((3,))
    h = L.Dense(4, activation="softmax", name="soft")(x)
    h = AutoPrunerGate(name="g")(h)
    graph = ChannelGraph(keras.Model(x, L.Dense(2)(h)))
    with pytest.raises(ValueError, match="'soft'.*mixes channels"):
        graph.needed(scales_of(graph, g=[1, 0, 1, 1]))


def test_channels_first_layer_is_unknown():
    x = keras.Input((2, 4, 4))
    p = L.MaxPooling2D(data_format="channels_first")(x)
    graph = ChannelGraph(keras.Model(x, p))
    assert graph.op_of(p._keras_history[0]).kind == "unknown"


def test_nested_model_must_be_flattened_first():
    inner = keras.Sequential([keras.Input((3,)), L.Dense(2)])
    x = keras.Input((3,))
    with pytest.raises(ValueError, match="flat model"):
        ChannelGraph(keras.Model(x, inner(x)))


def test_scale_site_walks_back_to_batch_norm_or_mixer():
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, name="conv")(x)
    h = L.BatchNormalization(name="bn")(h)
    h = L.Activation("elu")(h)
    h = AutoPrunerGate(name="g1")(h)
    h = L.Conv2D(4, 3, activation="relu", name="conv2")(h)
    h = AutoPrunerGate(name="g2")(h)
    graph = ChannelGraph(keras.Model(x, L.Flatten()(h)))
    site = graph.scale_site("g1")
    assert site.layer.name == "bn"
    assert (site.zero_preserving, site.homogeneous) == (True, False)
    site = graph.scale_site("g2")
    assert site.layer.name == "conv2"
    assert (site.zero_preserving, site.homogeneous) == (True, True)


def test_scale_site_refuses_a_branch_before_the_gate():
    x = keras.Input((3,))
    h = L.Dense(4, name="d")(x)
    g = AutoPrunerGate(name="g")(h)
    y = L.Add()([g, h])  # h is read by the gate and by Add.
    graph = ChannelGraph(keras.Model(x, L.Dense(1)(y)))
    site = graph.scale_site("g")
    assert site.layer is None and "other layers" in site.error


@pytest.mark.parametrize("name, traits", [
    ("relu", (True, True)),
    ("linear", (True, True)),
    ("leaky_relu", (True, True)),
    ("elu", (True, False)),
    ("gelu", (True, False)),
    ("tanh", (True, False)),
    ("sigmoid", (False, False)),
    ("softmax", None),
])
def test_activation_traits(name, traits):
    assert activation_traits(name) == traits
    assert activation_traits(keras.activations.get(name)) == traits


def test_layer_shared_across_widths_is_unknown_at_every_call():
    x1, x2 = keras.Input((4, 4, 3)), keras.Input((4, 4, 5))
    pool = L.MaxPooling2D(name="pool")
    y = L.Concatenate()([L.Flatten()(pool(x1)), L.Flatten()(pool(x2))])
    graph = ChannelGraph(keras.Model([x1, x2], y))
    kinds = [op.kind for op in graph.ops if op.layer.name == "pool"]
    assert kinds == ["unknown", "unknown"]
