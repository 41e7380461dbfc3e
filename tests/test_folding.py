"""Folded gates (`add_gates(..., fold=True)`) compute the unfolded model.

The folded model gives the same outputs, losses and gradients as the
gated model with the same weights; the trace reads it as that model, so
`strip`, `count_flops`, `CostModel` and the criteria give the same
answers; it saves and loads; and a gate whose path does not allow
folding keeps its product and says why.
"""

import re

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import folding
from keras_autopruner.budget import CostModel
from keras_autopruner.gate import gates_of

import user_graphs
from held_state import PHASES, assert_phase_trained, hold_state

L = keras.layers


def conv_net(seed=0):
    """conv-relu-pool-conv-relu-flatten-dense-dense: every gate folds, one
    of them through a Flatten."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((10, 10, 3)),
        L.Conv2D(8, 3, padding="same", name="c1"),
        L.ReLU(name="r1"),
        L.MaxPooling2D(name="p1"),
        L.Conv2D(6, 3, activation="relu", name="c2"),
        L.Dropout(0.0, name="drop"),
        L.Flatten(name="flat"),
        L.Dense(12, activation="relu", name="d1"),
        L.Dense(4, activation="softmax", name="out"),
    ], name="conv_net")


def pair(seed=0, **kwargs):
    """An unfolded and a folded gated model holding the same weights."""
    gated = kap.add_gates(conv_net(seed), 0.5, **kwargs)
    folded = kap.add_gates(conv_net(seed), 0.5, fold=True, **kwargs)
    folded.set_weights(gated.get_weights())
    return gated, folded


def data(n=24, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10, 10, 3)).astype("float32")
    return x, rng.integers(0, 4, n)


def numpy(t):
    return keras.ops.convert_to_numpy(t)


def spread_gates(model, seed=2):
    """Gate weights far from their start, so that codes differ by channel
    and a wrong fold cannot hide behind codes that are all alike."""
    rng = np.random.default_rng(seed)
    for g in gates_of(model):
        g.moving_code.assign(rng.uniform(0.05, 1.0, g.units)
                             .astype("float32"))
        for w in g.trainable_weights:
            w.assign(rng.normal(0, 1, w.shape).astype("float32"))


def test_every_gate_of_the_conv_net_folds():
    gated, folded = pair()
    assert set(folding.foldable(gated).values()) == {""}
    assert folding.is_folded(folded) and not folding.is_folded(gated)
    wrapped = [layer for layer in folded.layers
               if isinstance(layer, folding.ScaledInputs)]
    # c2 reads c1's gate, d1 c2's (6 channels x 3 x 3 positions), out d1's.
    assert {w.layer.name: w.repeat for w in wrapped} == {
        "c2": 1, "d1": 9, "out": 1}
    assert kap.tracing.trace(folded).folded
    assert not kap.tracing.trace(gated).folded


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="reads gradients with tf.GradientTape")
@pytest.mark.parametrize("training", [False, True])
def test_outputs_losses_and_gradients_match(training):
    import tensorflow as tf

    gated, folded = pair()
    spread_gates(gated)
    folded.set_weights(gated.get_weights())
    x, y = data()
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    results = []
    for model in (gated, folded):
        with tf.GradientTape() as tape:
            pred = model(x, training=training)
            loss = loss_fn(y, pred) + sum(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((numpy(pred), float(loss),
                        [None if g is None else numpy(g) for g in grads],
                        [numpy(g.moving_code) for g in gates_of(model)]))
    (p0, l0, g0, c0), (p1, l1, g1, c1) = results
    np.testing.assert_allclose(p1, p0, rtol=1e-5, atol=1e-6)
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert len(g0) == len(g1)
    for a, b, v in zip(g0, g1, gated.trainable_variables):
        assert (a is None) == (b is None), v.path
        if a is None:  # a gate's weights in inference
            continue
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=v.path)
    # The gates' state moved (training) or stayed (inference) alike.
    for a, b in zip(c0, c1):
        np.testing.assert_allclose(b, a, rtol=1e-6)
    # The gate weights' gradients are not zero: the code's gradient reaches
    # them through the folded kernel.
    gate_vars = [i for i, v in enumerate(gated.trainable_variables)
                 if "_gate" in v.path]
    if training:
        assert all(np.abs(g1[i]).max() > 0 for i in gate_vars)


def named_values(model):
    # A wrapped layer's weights sit under the wrapper: 'c2_folded/c2/..'.
    return {re.sub(r"^\w+_folded/", "", v.path): numpy(v)
            for v in model.weights}


@pytest.mark.parametrize("phase", PHASES)
def test_fit_matches(phase):
    """A few optimizer steps, pushing or done: the same weights after."""
    x, y = data(64)
    runs = []
    for fold in (False, True):
        gated = kap.add_gates(conv_net(3), 0.5, fold=fold)
        gated.compile(keras.optimizers.Adam(3e-3),
                      "sparse_categorical_crossentropy")
        hold_state(gated, phase)
        runs.append(named_values(gated))
        gated.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        runs.append(named_values(gated))
    start, plain, _, folded = runs
    assert set(plain) == set(folded)
    for path, value in plain.items():
        np.testing.assert_allclose(folded[path], value, rtol=1e-4,
                                   atol=1e-5, err_msg=path)
    moved = [p for p in plain
             if not np.allclose(start[p], plain[p], rtol=1e-3, atol=1e-3)]
    assert_phase_trained(phase, moved, network=4, gates=6)


def test_dropout_draws_the_same_masks():
    """The folded copy's dropout continues the original's random stream."""
    keras.utils.set_random_seed(6)
    model = keras.Sequential([
        keras.Input((10, 10, 3)),
        L.Conv2D(6, 3, activation="relu", name="c1"),
        # A seed of its own: without one PyTorch's dropout draws from
        # torch's global generator, which no copy can continue.
        L.Dropout(0.5, seed=3, name="drop"),
        L.Flatten(),
        L.Dense(4, name="out"),
    ])
    gated = kap.add_gates(model, 0.5)
    gated(data()[0], training=True)  # move the stream off its start
    folded = folding.fold(gated)
    assert folding.is_folded(folded)
    x, _ = data()
    for _ in range(2):
        np.testing.assert_allclose(numpy(folded(x, training=True)),
                                   numpy(gated(x, training=True)),
                                   rtol=1e-5, atol=1e-6)


def test_strip_counts_and_criteria_see_the_unfolded_model():
    gated, folded = pair()
    spread_gates(gated)
    folded.set_weights(gated.get_weights())
    for model in (gated, folded):
        for g in gates_of(model):
            g.set_mask(np.arange(g.units) % 3 != 1)
    assert int(kap.count_flops(folded)) == int(kap.count_flops(gated))
    assert int(kap.count_params(folded)) == int(kap.count_params(gated))
    for weighting in ("flops", "params"):
        masks = {g.name: g.mask() for g in gates_of(gated)}
        assert CostModel(folded, weighting).cost(masks) == pytest.approx(
            CostModel(gated, weighting).cost(masks))
    a, b = kap.strip(gated), kap.strip(folded)
    assert not folding.is_folded(b) and not gates_of(b)
    assert [layer.name for layer in b.layers[1:]] == [
        layer.name for layer in a.layers[1:]]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wb, wa)
    x, _ = data()
    kap.set_hard_masks(folded, True)
    np.testing.assert_allclose(numpy(b(x)), numpy(folded(x)), rtol=1e-5,
                               atol=1e-6)
    x, y = data(32)
    for criterion in ("l1", kap.Taylor(
            loss="sparse_categorical_crossentropy", batches=1)):
        criterion = kap.importance.get(criterion)
        sa = criterion.scores(gated, gates_of(gated), (x, y))
        sb = criterion.scores(folded, gates_of(folded), (x, y))
        assert set(sa) == set(sb)
        for name in sa:
            np.testing.assert_allclose(sb[name], sa[name], rtol=1e-4,
                                       atol=1e-7, err_msg=name)


def test_batch_norm_criterion_reads_through_a_folded_model():
    """BN scale finds the batch norm behind a layer that a fold wrapped."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(6, 3, name="c1"),
        L.BatchNormalization(name="bn1"),
        L.ReLU(),
        L.Conv2D(5, 3, name="c2"),
        L.BatchNormalization(name="bn2"),
        L.ReLU(),
        L.GlobalAveragePooling2D(),
        L.Dense(3, name="out"),
    ])
    folded = kap.add_gates(model, 0.5, fold=True)
    wrapped = [layer.layer.name for layer in folded.layers
               if isinstance(layer, folding.ScaledInputs)]
    assert wrapped == ["c2", "out"]
    for layer, bn in (("c1", "bn1"), ("c2", "bn2")):
        folded.get_layer(bn).gamma.assign(np.linspace(
            0.1, 1.0, folded.get_layer(bn).gamma.shape[0]))
    scores = kap.BatchNormScale().scores(folded, gates_of(folded))
    np.testing.assert_allclose(scores["c2_gate"], np.linspace(0.1, 1.0, 5))


def test_save_load_round_trip(tmp_path):
    _, folded = pair()
    spread_gates(folded)
    path = str(tmp_path / "folded.keras")
    folded.save(path)
    loaded = kap.load_model(path)
    assert folding.is_folded(loaded)
    x, _ = data()
    for training in (False, True):
        np.testing.assert_allclose(numpy(loaded(x, training=training)),
                                   numpy(folded(x, training=training)),
                                   rtol=1e-6, atol=1e-7)
    wrapped = folding.ScaledInputs.from_config(
        loaded.get_layer("d1_folded").get_config())
    assert wrapped.repeat == 9


def test_refolding_a_folded_model_changes_nothing():
    _, folded = pair()
    spread_gates(folded)
    again = folding.fold(folded)
    x, _ = data()
    assert sum(isinstance(layer, folding.ScaledInputs)
               for layer in again.layers) == 3
    np.testing.assert_allclose(numpy(again(x, training=False)),
                               numpy(folded(x, training=False)), rtol=1e-6)


def residual(rng):
    x = inp = keras.Input((12,))
    h = L.Dense(8, activation="relu", name="a")(x)
    skip = L.Dense(8, name="skip")(x)
    s = L.Add(name="add")([h, skip])
    t = L.Dense(6, activation="relu6", name="b")(s)
    u = L.ReLU(max_value=6.0, name="capped")(
        L.Dropout(0.0, name="c_drop")(L.Dense(6, name="c")(t)))
    v = L.Dense(5, activation="relu", name="d")(u)
    w1 = L.Dense(3, name="w1")(v)
    w2 = L.Dense(3, name="w2")(v)
    out = L.Dense(2, name="out")(L.Concatenate()([w1, w2]))
    return keras.Model(inp, out)


def test_gates_that_cannot_fold_say_why_and_keep_their_product():
    model = residual(np.random.default_rng(0))
    gated = kap.add_gates(model, 0.5)
    reasons = folding.foldable(gated)
    assert "'add' (Add) reads more" in reasons["a_gate"]
    assert reasons["b_gate"] == ""  # 'c' reads it directly
    assert "'capped' (ReLU) does not commute" in reasons["c_gate"]
    assert "2 layers read" in reasons["d_gate"]
    assert "'concatenate" in reasons["w1_gate"]
    folded = kap.add_gates(model, 0.5, fold=True)
    assert [layer.layer.name for layer in folded.layers
            if isinstance(layer, folding.ScaledInputs)] == ["c"]
    folded.set_weights(gated.get_weights())
    x = np.random.default_rng(1).normal(size=(8, 12)).astype("float32")
    np.testing.assert_allclose(numpy(folded(x)), numpy(gated(x)), rtol=1e-5)


def test_only_plain_kernels_take_a_code():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 4)),
        L.Conv2D(8, 3, name="c1"),
        L.Conv2DTranspose(5, 3, name="up"),
        L.GlobalAveragePooling2D(),
        L.Dense(3, name="out"),
    ])
    reasons = folding.foldable(kap.add_gates(model, 0.5))
    assert reasons["c1_gate"] == ("'up' (Conv2DTranspose): it is a "
                                  "Conv2DTranspose, not a Dense or "
                                  "Conv1D/2D/3D")
    assert not folding._commutes(L.ReLU(max_value=6.0))
    assert not folding._commutes(L.ReLU(threshold=0.5))
    assert not folding._commutes(L.Activation("tanh"))
    assert not folding._commutes(L.MaxPooling2D(data_format="channels_first"))
    assert folding._commutes(L.Activation("relu"))
    with pytest.raises(ValueError, match="grouped"):
        folding.ScaledInputs(L.Conv2D(4, 3, groups=2))
    with pytest.raises(ValueError, match="channels_first"):
        folding.ScaledInputs(L.Conv2D(4, 3, data_format="channels_first"))
    with pytest.raises(ValueError, match="not a Dense"):
        folding.ScaledInputs(L.DepthwiseConv2D(3))
    with pytest.raises(ValueError, match="repeat"):
        folding.ScaledInputs(L.Dense(3), repeat=0)


def test_fold_must_be_a_bool():
    with pytest.raises(ValueError, match="fold must be True or False"):
        kap.add_gates(conv_net(), 0.5, fold="yes")
    for bad in (0, 2.5, True, "32"):
        with pytest.raises(ValueError, match="fold batch size"):
            kap.add_gates(conv_net(), 0.5, fold=True, fold_batch_size=bad)


def test_a_kernel_larger_than_the_activation_keeps_the_product():
    """Before a wide Dense the kernel (12 x 64) outweighs the activation at
    batch 32 (32 x 12): that gate keeps its product, unless the batch is
    larger or the cost is not asked."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)),
        L.Dense(12, activation="relu", name="h"),
        L.Dense(64, activation="relu", name="wide"),
        L.Dense(3, name="out"),
    ])
    gated = kap.add_gates(model, 0.5)
    reasons = folding.foldable(gated)
    assert reasons["h_gate"] == (
        "scaling the kernel of 'wide' (768 values) costs more than the "
        "product over the activation at batch 32 (384 values)")
    assert reasons["wide_gate"] == ""
    assert set(folding.foldable(gated, batch_size=64).values()) == {""}
    assert set(folding.foldable(gated, batch_size=None).values()) == {""}
    folded = kap.add_gates(model, 0.5, fold=True)
    assert [l.layer.name for l in folded.layers
            if isinstance(l, folding.ScaledInputs)] == ["out"]
    folded = kap.add_gates(model, 0.5, fold=True, fold_batch_size=None)
    assert [l.layer.name for l in folded.layers
            if isinstance(l, folding.ScaledInputs)] == ["wide", "out"]


@pytest.mark.parametrize("case", ["deep_sets", "jets_tracks", "shared",
                                  "lambda", "convnext_block",
                                  "mobilenet_v3_small"])
def test_user_graphs_fold_to_the_same_function_and_strip(case):
    """Whatever folds (or not) on a user's graph, the folded model computes
    the gated one, and strip cuts both to the same model."""
    build = {
        "deep_sets": user_graphs.deep_sets,
        "jets_tracks": user_graphs.jets_and_tracks,
        "shared": user_graphs.shared_layer,
        "lambda": user_graphs.with_lambda,
        "convnext_block": user_graphs.convnext_block,
        "mobilenet_v3_small": user_graphs.mobilenet_v3_small,
    }[case]
    kwargs = {"exclude": ["track_dense"]} if case == "jets_tracks" else {}
    model, x, _ = build(np.random.default_rng(0))
    gated = kap.add_gates(model, 0.5, **kwargs)
    folded = kap.add_gates(model, 0.5, fold=True, **kwargs)
    folded.set_weights(gated.get_weights())
    reasons = folding.foldable(gated)
    assert set(reasons) == {g.name for g in gates_of(gated)}
    assert folding.is_folded(folded) == (
        "" in reasons.values()), reasons
    for m in (gated, folded):
        spread_gates(m)
    folded.set_weights(gated.get_weights())
    np.testing.assert_allclose(numpy(folded(x, training=False)),
                               numpy(gated(x, training=False)),
                               rtol=1e-4, atol=1e-5)
    for m in (gated, folded):
        for g in gates_of(m):
            g.set_mask(np.arange(g.units) % 2 == 0)
    a, b = kap.strip(gated), kap.strip(folded)
    np.testing.assert_allclose(numpy(b(x)), numpy(a(x)), rtol=1e-4,
                               atol=1e-5)
    assert int(kap.count_flops(b)) == int(kap.count_flops(a))
