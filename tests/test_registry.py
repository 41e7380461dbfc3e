"""The layer-type registry: one record per class, user layers end to end."""

import pathlib
import re

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import registry
from keras_autopruner.budget import CostModel
from keras_autopruner.gate import gates_of
from keras_autopruner.graph import ChannelGraph

L = keras.layers


@pytest.fixture
def saved_registry():
    saved = registry.registered()
    yield
    registry.restore(saved)


class Linear(keras.layers.Layer):
    """A user layer with weights of its own names, not a Keras subclass."""

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], self.units), name="w",
                                 initializer="glorot_uniform")
        self.b = self.add_weight(shape=(self.units,), name="b",
                                 initializer="random_normal")

    def call(self, x):
        return self.activation(keras.ops.matmul(x, self.w) + self.b)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": keras.activations.serialize(self.activation)}


def linear_model():
    x = keras.Input((6,))
    h = Linear(12, name="lin1")(x)
    h = L.Activation("relu", name="act1")(h)
    h = Linear(8, activation="relu", name="lin2")(h)
    h = L.Dense(5, activation="relu", name="dense")(h)
    return keras.Model(x, Linear(3, name="head")(h))


def random_masks(gated, seed):
    rng = np.random.default_rng(seed)
    for gate in gates_of(gated):
        mask = rng.random(gate.units) < 0.5
        mask[rng.integers(gate.units)] = True
        gate.moving_code.assign(mask.astype("float32"))
    kap.set_hard_masks(gated, True)


def assert_same(gated, compact, x):
    want = keras.ops.convert_to_numpy(gated(x, training=False))
    got = keras.ops.convert_to_numpy(compact(x))
    assert np.max(np.abs(want)) > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_registered_user_layer_is_gated_stripped_and_counted(
        saved_registry):
    model = linear_model()
    # Unregistered, it is unknown: not gated (and dense then feeds the
    # output through it), not counted.
    with pytest.raises(ValueError, match="no prunable layer"):
        kap.add_gates(model, 0.5)
    assert kap.count_flops(model).unknown == ["lin1", "lin2", "head"]

    kap.register_prunable(Linear, "units",
                          weights={"w": ("in", "out"), "b": ("out",)})
    gated = kap.add_gates(model, 0.5)
    # The gate goes behind the activation that follows lin1.
    assert [g.name for g in gates_of(gated)] == [
        "lin1_gate", "lin2_gate", "dense_gate"]
    assert gated.get_layer("lin1_gate").input._keras_history[0].name == "act1"
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    gated.compile("adam", "mse")
    gated.fit(x, np.zeros((16, 3)), epochs=1, batch_size=8, verbose=0)
    random_masks(gated, 1)
    compact = kap.strip(gated)

    assert_same(gated, compact, x)
    kept = {g.name[:-len("_gate")]: int(g.mask().sum())
            for g in gates_of(gated)}
    for name, n in kept.items():
        assert compact.get_layer(name).get_config().get(
            "units") == n
    assert isinstance(compact.get_layer("lin2"), Linear)
    count = kap.count_flops(compact)
    assert count.unknown == []
    # Default rule: one MAC per kernel entry (6x12 for lin1, ...).
    assert kap.count_flops(model).per_layer["lin1"] == 6 * 12
    masks = [g.mask() for g in gates_of(gated)]
    assert CostModel(gated, "flops").cost(masks) == count.total
    assert CostModel(gated, "params").cost(masks) == kap.count_params(compact)
    assert kap.count_params(compact) < kap.count_params(model)


def test_register_prunable_needs_weights_for_a_new_layer(saved_registry):
    with pytest.raises(TypeError, match="weights="):
        kap.register_prunable(Linear, "units")
    with pytest.raises(ValueError, match="'in', 'out' or None"):
        kap.register_prunable(Linear, "units", weights={"w": "io"})
    with pytest.raises(TypeError, match="flops"):
        kap.register_prunable(Linear, "units", weights={"w": ("in", "out")},
                              flops=3)


class PlainConv(L.Conv2D):
    """A subclass that changes defaults only: Conv2D's rules hold."""

    def __init__(self, filters, **kwargs):
        kwargs.setdefault("padding", "same")
        super().__init__(filters, 3, **kwargs)

    def get_config(self):
        config = super().get_config()
        for key in ("kernel_size", "padding"):
            config.pop(key)
        return config


class DoubledDense(L.Dense):
    """A subclass that computes something else than Dense."""

    def call(self, x):
        return 2.0 * super().call(x)


def subclass_model():
    x = keras.Input((6, 6, 3))
    h = PlainConv(8, activation="relu", name="plain")(x)
    h = L.GlobalAveragePooling2D()(h)
    h = DoubledDense(6, activation="relu", name="doubled")(h)
    h = L.Dense(5, activation="relu", name="dense")(h)
    return keras.Model(x, L.Dense(2, name="out")(h))


def test_subclasses_are_handled_or_refused_the_same_everywhere():
    model = subclass_model()
    gated = kap.add_gates(model, 0.5)
    # PlainConv inherits Conv2D's record; DoubledDense overrides call and
    # is refused: not gated, unknown to the graph, not counted. So PlainConv,
    # whose channels it reads, is not gated either: strip could not cut it.
    assert [g.name for g in gates_of(gated)] == ["dense_gate"]
    assert "reach 'doubled'" in kap.plan(model).row("plain").reason
    assert kap.plan(model, exclude=["dense"]).gated == []
    with pytest.raises(ValueError, match="DoubledDense subclasses Dense but "
                                         "overrides call"):
        kap.add_gates(model, 0.5, include=["doubled"])
    op = ChannelGraph(gated).op_of(gated.get_layer("doubled"))
    assert op.kind == "unknown" and "overrides call()" in op.reason
    count = kap.count_flops(model)
    assert count.unknown == ["doubled"]
    assert count.per_layer["plain"] == 3 * 3 * 3 * 8 * 36

    random_masks(gated, 2)
    gate = gated.get_layer("dense_gate")
    gate.moving_code.assign(np.array([1, 0, 1, 0, 1], "float32"))
    compact = kap.strip(gated)
    x = np.random.default_rng(3).normal(size=(4, 6, 6, 3)).astype("float32")
    assert_same(gated, compact, x)
    assert compact.get_layer("dense").units == 3


def test_a_refused_subclass_can_be_registered_with_its_base_weights(
        saved_registry):
    kap.register_prunable(DoubledDense, "units")  # Dense's weights
    keras.utils.set_random_seed(6)
    model = subclass_model()
    # A non-zero output bias, so that the comparison below never compares
    # two zero outputs (relu units the masks leave dead).
    model.get_layer("out").bias.assign(np.array([0.3, -0.2], "float32"))
    gated = kap.add_gates(model, 0.5)
    assert "doubled_gate" in [g.name for g in gates_of(gated)]
    random_masks(gated, 6)
    compact = kap.strip(gated)
    x = np.random.default_rng(6).normal(size=(4, 6, 6, 3)).astype("float32")
    assert_same(gated, compact, x)
    assert compact.get_layer("doubled").units == int(
        gated.get_layer("doubled_gate").mask().sum())
    assert kap.count_flops(model).unknown == []


def test_lookup_walks_the_mro():
    assert registry.lookup(PlainConv(4)) is registry.lookup(L.Conv2D)
    assert registry.lookup(DoubledDense(3)).refused
    assert registry.lookup(Linear) is None
    assert registry.width_of(PlainConv(7)) == 7
    with pytest.raises(TypeError, match="not a prunable layer"):
        registry.width_of(L.ReLU())


# The rule modules name no Keras layer class: only the registry does.
RULE_MODULES = ["instrument.py", "graph.py", "surgery.py", "report.py",
                "metrics.py", "budget.py", "tracing.py", "planner.py",
                "registry/ops.py"]


@pytest.mark.parametrize("module", RULE_MODULES)
def test_only_the_registry_names_builtin_layer_types(module):
    builtin = {name for name in dir(L) if isinstance(getattr(L, name), type)
               and issubclass(getattr(L, name), L.Layer) and name != "Layer"}
    path = pathlib.Path(kap.__file__).parent / module
    code = [line for line in path.read_text().splitlines()
            if not line.lstrip().startswith((">>>", "..."))]
    named = {m for line in code
             for m in re.findall(r"\b(?:L|layers)\.([A-Z]\w+)", line)}
    assert not named & builtin, f"{module} names {sorted(named & builtin)}"



class ChannelScale(keras.layers.Layer):
    """A learned scale per channel: channel c out is s_c times channel c in."""

    def build(self, shape):
        self.s = self.add_weight(shape=shape[-1:], name="s",
                                 initializer="random_uniform")

    def call(self, x):
        return x * self.s


def test_a_channelwise_user_layer_is_described_with_register(
        saved_registry):
    x = keras.Input((5,))
    h = L.Dense(8, activation="relu", name="d1")(x)
    h = ChannelScale(name="scale")(h)
    model = keras.Model(x, L.Dense(3, name="out")(h))
    # Unregistered, the layer is opaque: add_gates refuses before training
    # (strip could not cut d1), and the plan says why.
    with pytest.raises(ValueError, match="'scale'.*does not know"):
        kap.add_gates(model, 0.5)
    assert not kap.plan(model).row("d1").gated

    registry.register(ChannelScale, registry.LayerType(
        flow=lambda node: registry.Op(node, "channelwise"),
        weights={"s": ("out",)}, follows=True,
        flops=lambda layer, ins, outs: int(np.prod(outs[0]))))
    gated = kap.add_gates(model, 0.5)
    # The gate now goes behind the scale, which works channel by channel.
    assert gated.get_layer("d1_gate").input._keras_history[0].name == "scale"
    random_masks(gated, 4)
    compact = kap.strip(gated)
    x = np.random.default_rng(5).normal(size=(6, 5)).astype("float32")
    assert_same(gated, compact, x)
    kept = int(gated.get_layer("d1_gate").mask().sum())
    assert compact.get_layer("scale").get_weights()[0].shape == (kept,)
    assert kap.count_flops(compact).per_layer["scale"] == kept
