"""Tests for `keras_autopruner.metrics`: parameter and MAC counting."""

import keras
import numpy as np
import pytest

from keras_autopruner import registry
from keras_autopruner.metrics import FlopCount
from keras_autopruner.metrics import count_flops
from keras_autopruner.metrics import count_params
from keras_autopruner.metrics import register_flops

L = keras.layers


def single_layer_macs(input_shape, layer):
    """MACs of `layer` alone applied to an example of `input_shape`."""
    x = keras.Input(input_shape)
    model = keras.Model(x, layer(x))
    count = count_flops(model)
    assert count.unknown == []
    return count.per_layer[layer.name]


@pytest.fixture
def restore_registry():
    saved = registry.registered()
    yield
    registry.restore(saved)


def test_vgg16_params_and_macs():
    model = keras.applications.VGG16(weights=None)
    assert count_params(model) == 138_357_544
    count = count_flops(model)
    assert count.total == pytest.approx(15.47e9, rel=0.01)
    assert count.unknown == []
    # The convolutions dominate: 13 conv layers, 3 dense layers.
    convs = [n for n, c in count.layer_classes.items() if c == "Conv2D"]
    assert len(convs) == 13
    assert count.per_layer["fc1"] == 25088 * 4096


@pytest.mark.parametrize(
    "input_shape, layer, expected",
    [
        # 3x3 kernel, 3 -> 5 channels, 8x8 output ("same").
        ((8, 8, 3), L.Conv2D(5, 3, padding="same"), 3 * 3 * 3 * 5 * 64),
        # "valid" leaves a 6x6 output.
        ((8, 8, 3), L.Conv2D(5, 3), 3 * 3 * 3 * 5 * 36),
        # Stride 2 on 8x8 with "same" gives 4x4 positions.
        ((8, 8, 3), L.Conv2D(5, 3, strides=2, padding="same"), 27 * 5 * 16),
        # Groups: each filter sees 6 / 3 = 2 input channels.
        ((8, 8, 6), L.Conv2D(9, 3, groups=3, padding="same"), 9 * 2 * 9 * 64),
        ((20, 4), L.Conv1D(8, 5), 5 * 4 * 8 * 16),
        ((6, 6, 6, 2), L.Conv3D(3, 3), 27 * 2 * 3 * 4**3),
        # Transposed: the whole kernel per input position (4x4 inputs).
        ((4, 4, 3), L.Conv2DTranspose(5, 3, strides=2), 3 * 3 * 5 * 3 * 16),
        ((6, 2), L.Conv1DTranspose(4, 3), 3 * 4 * 2 * 6),
        # Depthwise, multiplier 2, stride 2 -> 5x5 output positions.
        (
            (10, 10, 3),
            L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same"),
            9 * 3 * 2 * 25,
        ),
        ((12, 4), L.DepthwiseConv1D(3), 3 * 4 * 10),
        # Separable = depthwise (3x3x3x2) + pointwise (6 -> 8) per position.
        (
            (10, 10, 3),
            L.SeparableConv2D(8, 3, padding="same", depth_multiplier=2),
            (9 * 3 * 2 + 6 * 8) * 100,
        ),
        ((12, 4), L.SeparableConv1D(6, 3), (3 * 4 + 4 * 6) * 10),
        # Dense on a rank-3 input repeats over the 7 leading positions.
        ((7, 5), L.Dense(4), 5 * 4 * 7),
        ((2, 3, 5), L.Dense(4), 5 * 4 * 6),
        ((5,), L.Dense(4), 20),
        # One MAC per element for batch norm.
        ((5, 5, 3), L.BatchNormalization(), 75),
        # Local pooling reads window x outputs; 2x2/2 reads every input.
        ((8, 8, 3), L.MaxPooling2D(2), 8 * 8 * 3),
        ((5, 5, 2), L.AveragePooling2D(3, strides=1), 9 * 3 * 3 * 2),
        ((10, 4), L.MaxPooling1D(2), 40),
        ((4, 4, 4, 2), L.AveragePooling3D(2), 128),
        ((4, 4, 3), L.GlobalAveragePooling2D(), 48),
        ((10, 4), L.GlobalMaxPooling1D(), 40),
        ((4, 4, 3), L.ReLU(), 0),
        ((4, 4, 3), L.Activation("relu"), 0),
        ((4, 4, 3), L.Flatten(), 0),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, L.Layer) else None,
)
def test_single_layer(input_shape, layer, expected):
    assert single_layer_macs(input_shape, layer) == expected


def test_channels_first_conv():
    layer = L.Conv2D(5, 3, data_format="channels_first")
    assert single_layer_macs((3, 8, 8), layer) == 3 * 3 * 3 * 5 * 36


def test_merges_cost_nothing():
    a, b = keras.Input((4, 4, 2)), keras.Input((4, 4, 2))
    merged = [L.Add()([a, b]), L.Multiply()([a, b]), L.Concatenate()([a, b])]
    count = count_flops(keras.Model([a, b], merged))
    assert count.total == 0
    assert count.unknown == []
    assert len(count.per_layer) == 3


def build_block(name, size=12):
    x = keras.Input((size, size, 3))
    y = L.Conv2D(8, 3, padding="same", name=f"{name}_conv")(x)
    y = L.BatchNormalization(name=f"{name}_bn")(y)
    y = L.MaxPooling2D(name=f"{name}_pool")(y)
    return keras.Model(x, y, name=name)


def test_nested_model_matches_flat_twin():
    block = build_block("block")
    x = keras.Input((12, 12, 3))
    y = block(x)
    y = L.GlobalAveragePooling2D()(y)
    nested = keras.Model(x, L.Dense(3)(y))

    x = keras.Input((12, 12, 3))
    y = L.Conv2D(8, 3, padding="same")(x)
    y = L.BatchNormalization()(y)
    y = L.MaxPooling2D()(y)
    y = L.GlobalAveragePooling2D()(y)
    flat = keras.Model(x, L.Dense(3)(y))

    nested_count, flat_count = count_flops(nested), count_flops(flat)
    assert nested_count.total == flat_count.total
    assert nested_count.per_layer["block/block_conv"] == 27 * 8 * 144
    assert sorted(nested_count.per_layer.values()) == sorted(
        v for v in flat_count.per_layer.values()
    )
    assert count_params(nested) == count_params(flat)


def test_nested_sequential_with_unknown_sizes_uses_call_shapes():
    inner = keras.Sequential(
        [keras.Input((None, None, 3)), L.Conv2D(4, 3)], name="inner"
    )
    x = keras.Input((10, 10, 3))
    count = count_flops(keras.Model(x, inner(x)))
    assert count.per_layer == {"inner/" + inner.layers[0].name: 27 * 4 * 64}


def test_shared_layer_counted_per_call():
    dense = L.Dense(3, name="shared")
    a, b = keras.Input((4,)), keras.Input((2, 4))
    model = keras.Model([a, b], [dense(a), dense(b)])
    count = count_flops(model)
    assert count.per_layer["shared"] == 12 + 24
    assert count_params(model) == 15


def test_nested_model_used_twice_params_once():
    block = build_block("twice", size=None)
    x = keras.Input((12, 12, 3))
    y = block(x)
    y = block(L.Conv2D(3, 1)(y))
    model = keras.Model(x, y)
    assert count_params(model) == count_params(block) + (3 * 8 + 3)
    count = count_flops(model)
    # Second call sees a 6x6 input, so both calls are summed by name.
    assert count.per_layer["twice/twice_conv"] == 27 * 8 * (144 + 36)


def test_input_shape_override_and_unknown_size_error():
    x = keras.Input((None, None, 3))
    model = keras.Model(x, L.Conv2D(2, 1, name="pw")(x))
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(model)
    count = count_flops(model, input_shape=(5, 5, 3))
    assert count.per_layer["pw"] == 3 * 2 * 25
    # Only the open sizes can be filled in: the model runs on no other.
    for shape in ((5, 5, 4), (5, 3), (5, 5, 3, 1), (None, 5, 3), (0, 5, 3)):
        with pytest.raises(ValueError, match="leaves open"):
            count_flops(model, input_shape=shape)
    dense = keras.Sequential([keras.Input((8,)), L.Dense(6)])
    with pytest.raises(ValueError, match=r"\(None, 8\)"):
        count_flops(dense, input_shape=(3,))
    assert count_flops(dense, input_shape=(8,)).total == 48


def test_what_is_not_a_model_is_refused_by_type():
    for bad in (None, "model.keras", np.zeros(3)):
        with pytest.raises(TypeError, match="expects a keras.Model"):
            count_flops(bad)
        with pytest.raises(TypeError, match="expects a Keras model"):
            count_params(bad)
    layer = L.Dense(2)  # a built layer counts as a model does
    layer.build((None, 3))
    assert count_params(layer) == 8


def test_sequential_and_errors():
    model = keras.Sequential([keras.Input((6,)), L.Dense(2, name="d")])
    assert count_flops(model).total == 12
    unbuilt = keras.Sequential([L.Dense(2)])
    with pytest.raises(ValueError, match="build"):
        count_flops(unbuilt)
    with pytest.raises(ValueError, match="build"):
        count_params(unbuilt)


class Scale(keras.layers.Layer):
    """A layer with weights that the counter has no rule for."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=input_shape[-1:], initializer="ones")

    def call(self, x):
        return x * self.scale


def test_unknown_layer_is_reported_then_registered(restore_registry):
    x = keras.Input((3, 4))
    model = keras.Model(x, Scale(name="scale")(L.Dense(4, name="d")(x)))
    count = count_flops(model)
    assert count.unknown == ["scale"]
    assert count.total == 4 * 4 * 3
    assert "no counting rule" in str(count)

    register_flops(Scale, lambda layer, ins, outs: ins[0][1] * ins[0][2])
    count = count_flops(model)
    assert count.unknown == []
    assert count.per_layer["scale"] == 12
    assert count.total == 48 + 12


def test_register_flops_as_decorator_and_validation(restore_registry):
    @register_flops(Scale)
    def scale_macs(layer, ins, outs):
        assert ins[0][0] == 1  # batch entry is normalised to one example
        return 7

    x = keras.Input((2,))
    assert count_flops(keras.Model(x, Scale()(x))).total == 7
    with pytest.raises(TypeError):
        register_flops("Scale", scale_macs)
    with pytest.raises(TypeError):
        register_flops(Scale, 3)


def test_flop_count_table():
    count = FlopCount(
        total=30, per_layer={"a": 30, "b": 0}, layer_classes={"a": "Dense"}
    )
    text = count.table(skip_zero=True)
    assert "a" in text and "Dense" in text and "30" in text
    assert "\nb " not in text
    assert count.flops == 60


def test_flop_count_is_usable_as_a_number():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d")])
    count = count_flops(model)
    assert (int(count), float(count), count.total) == (12, 12.0, 12)
    assert count == 12 and count != 13 and 11 < count <= 12 and count > 1e-3
    assert count + 1 == 13 and 1 + count == 13 and 24 - count == 12
    assert count * 2 == 24 and count / 4 == 3.0 and 36 / count == 3.0
    assert count // 5 == 2 and round(count / 5) == 2
    assert sum([count, count]) == 24 and max(count, 5) is count
    assert f"{count:,}" == "12" and f"{count / 1e3:.3f}" == "0.012"
    wide = keras.Sequential([keras.Input((2000,)), L.Dense(1000)])
    assert f"{count_flops(wide):,}" == "2,000,000"
    assert count == count_flops(model) and count.per_layer == {"d": 12}
    assert "total" in str(count)  # printing still gives the table
    assert count == pytest.approx(12.000001) and np.float64(count) == 12.0
    assert (count == "12") is False
    with pytest.raises(TypeError):
        count + "1"


# Wrapped layers, sequences and ops, each against a count by hand.

def test_rank3_dense_counts_every_step():
    model = keras.Sequential([keras.Input((7, 5)), L.Dense(4, name="d")])
    assert count_flops(model).per_layer == {"d": 7 * 5 * 4}


def test_time_distributed_counts_the_wrapped_layer_at_every_step():
    x = keras.Input((6, 8, 8, 3))
    conv = L.TimeDistributed(L.Conv2D(4, 3), name="td_conv")(x)
    dense = L.TimeDistributed(L.Dense(5), name="td_dense")(
        keras.layers.Reshape((6, -1))(conv))
    count = count_flops(keras.Model(x, dense))
    assert count.per_layer["td_conv"] == 6 * (3 * 3 * 3 * 4) * (6 * 6)
    assert count.per_layer["td_dense"] == 6 * (6 * 6 * 4) * 5
    assert count.unknown == []


def test_recurrent_and_bidirectional_layers_count_both_kernels_per_step():
    steps, features, units = 9, 5, 4
    x = keras.Input((steps, features))
    lstm = L.LSTM(units, return_sequences=True, name="lstm")(x)
    bi = L.Bidirectional(L.GRU(units), name="bi")(lstm)
    count = count_flops(keras.Model(x, bi))
    assert count.per_layer["lstm"] == steps * 4 * (features + units) * units
    assert count.per_layer["bi"] == 2 * steps * 3 * (units + units) * units


def test_attention_counts_projections_scores_and_output():
    tq, d, heads, kd = 6, 16, 2, 8
    x = keras.Input((tq, d))
    y = L.MultiHeadAttention(heads, kd, name="mha")(x, x)
    count = count_flops(keras.Model(x, y))
    projections = 3 * tq * d * heads * kd
    scores_and_sum = heads * tq * tq * (kd + kd)
    output = tq * heads * kd * d
    assert count.per_layer["mha"] == projections + scores_and_sum + output


def test_ops_are_counted_or_named_as_uncounted():
    x = keras.Input((4, 3))
    scores = keras.ops.matmul(x, keras.ops.transpose(x, (0, 2, 1)))
    mixed = keras.ops.einsum("bij,bjk->bik", scores, x)
    count = count_flops(keras.Model(x, [scores, mixed + 1.0]))
    matmul = next(k for k in count.per_layer if "matmul" in k)
    assert count.per_layer[matmul] == 4 * 4 * 3
    assert [k for k in count.unknown if "einsum" in k]
    assert not [k for k in count.unknown if "add" in k]
    assert "uncounted" in count.table()


def test_lambda_and_custom_layers_with_weights_are_listed_uncounted():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=shape[-1:])

        def call(self, x):
            return x * self.w

    x = keras.Input((3,))
    h = L.Lambda(lambda t: t * 2.0, name="double")(x)
    y = Scale(name="scale")(h)
    count = count_flops(keras.Model(x, y))
    assert count.unknown == ["double", "scale"]
