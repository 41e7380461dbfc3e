"""Issue 16: no choice from no data, NaN stops the run, inputs are checked,
gated files load with `kap.load_model`, chunked fitting says how."""

import subprocess
import sys
import os
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_autopruner as kap
from keras_autopruner.gate import check_rate, gates_of

L = keras.layers


def data(n=160, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    return x, (x[:, :4] @ rng.normal(size=(4, 4))).argmax(1)


def gated_net(seed=1):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((12,)),
        L.Dense(16, activation="relu", name="h1"),
        L.Dense(16, activation="relu", name="h2"),
        L.Dense(4, activation="softmax", name="out")])
    gated = kap.add_gates(model, target_rate=0.5)
    gated.compile(keras.optimizers.Adam(1e-2),
                  "sparse_categorical_crossentropy")
    return gated


def gate_state(model):
    return [[np.array(v.numpy()) for v in g.weights] for g in gates_of(model)]


def assert_same_state(a, b):
    for ga, gb in zip(a, b):
        for va, vb in zip(ga, gb):
            np.testing.assert_array_equal(va, vb)


@pytest.mark.parametrize("kind", ["numpy", "dataset", "no_epoch"])
def test_empty_fit_leaves_the_gates_and_a_later_fit_prunes(kind):
    gated = gated_net()
    before = gate_state(gated)
    x, y = data()
    empty, extra = (x[:0], y[:0]), {}
    if kind == "dataset":
        empty = (tf.data.Dataset.from_tensor_slices(empty).batch(16),)
    if kind == "no_epoch":  # initial_epoch == epochs: no batch at all
        empty, extra = (x, y), dict(initial_epoch=2)
    cb = kap.AutoPrunerCallback(objective="layer", control_every=3)
    with pytest.warns(UserWarning, match="trained no step"):
        gated.fit(*empty, epochs=2, verbose=0, callbacks=[cb], **extra)
    assert not cb.done
    assert_same_state(before, gate_state(gated))
    # A real fit afterwards prunes to the exact per-layer choice.
    cb = kap.AutoPrunerCallback(objective="layer", control_every=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # soft codes at the end
        gated.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    assert cb.done
    assert cb.result["kept"] == {"h1_gate": 8, "h2_gate": 8}


def test_one_step_fit_makes_no_choice_and_the_run_goes_on():
    gated = gated_net()
    x, y = data()
    cb = kap.AutoPrunerCallback(objective="layer")
    with pytest.warns(UserWarning, match="no choice was made"):
        gated.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0,
                  callbacks=[cb])
    # The first step measured mu and started pushing; nothing is fixed.
    assert not cb.done and cb.state.phase == 1
    assert all(g.mask().all() for g in gates_of(gated))


class Inject(keras.callbacks.Callback):
    """Writes NaN into layer `h2`'s kernel at optimizer step `at`, before
    the pruning callback's own `on_train_batch_end` (listed after it)."""

    def __init__(self, at):
        super().__init__()
        self.at, self.steps = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.at:
            kernel = self.model.get_layer("h2").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


class Record(keras.callbacks.Callback):
    """The gates' variables after optimizer step `at`."""

    def __init__(self, at):
        super().__init__()
        self.at, self.steps, self.state = at, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.at:
            self.state = gate_state(self.model)


def test_nan_kernel_with_a_finite_loss_stops_the_run_naming_the_layer():
    gated = gated_net()
    x, y = data()
    # control_every=3 and the first step sets mu: control steps are 4, 7.
    # The loss logged at step 7 is still finite: only the kernel check
    # can see the NaN.
    cb = kap.AutoPrunerCallback(objective="layer", control_every=3)
    record = Record(4)
    with pytest.raises(kap.NonFiniteError,
                       match=r"step 7 .*'h2' \(kernel\).*last finite"):
        gated.fit(x, y, batch_size=16, epochs=3, verbose=0,
                  callbacks=[Inject(7), cb, record])
    assert not cb.done
    # The gates hold their state of the last finite control step.
    assert_same_state(record.state, gate_state(gated))
    with pytest.raises(kap.NonFiniteError, match="strip: .*'h2' \\(kernel\\)"):
        kap.strip(gated)


def test_nan_batch_stops_the_run_and_the_gates_stay_finite():
    gated = gated_net()
    x, y = data()
    x = x.copy()
    x[5 * 16] = np.nan  # one NaN row in the sixth batch
    cb = kap.AutoPrunerCallback(objective="layer", control_every=3)
    with pytest.raises(kap.NonFiniteError, match="step 7"):
        gated.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
                  callbacks=[cb])
    for g in gates_of(gated):
        for v in g.weights:
            assert np.isfinite(v.numpy()).all(), v.name
    assert float(gates_of(gated)[0].phase.numpy()) == 1.0  # not "done"


def test_export_refuses_non_finite_weights(tmp_path):
    gated = gated_net()
    for g in gates_of(gated):
        g.set_mask(np.arange(g.units) < 8)
    compact = kap.strip(gated)
    compact.get_layer("h1").bias.assign(
        np.full((8,), np.inf, "float32"))
    with pytest.raises(kap.NonFiniteError, match="export: .*'h1' \\(bias\\)"):
        kap.export(compact, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_fit_end_warning_says_how_to_continue():
    gated = gated_net()
    x, y = data()
    cb = kap.AutoPrunerCallback(objective="layer", control_every=3)
    with pytest.warns(UserWarning, match=r"finish_on_train_end=False"):
        gated.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0,
                  callbacks=[cb])
    assert cb.done and cb.result["reason"] == "fit ended"


def test_chunked_fitting_continues_the_run():
    x, y = data()
    gated = gated_net()
    steps = []
    for _ in range(2):
        cb = kap.AutoPrunerCallback(objective="layer", control_every=3,
                                    finish_on_train_end=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no early choice
            gated.fit(x, y, batch_size=16, epochs=1, verbose=0,
                      callbacks=[cb])
        assert not cb.done
        steps.append(cb._steps)
    assert steps == [10, 20]


@pytest.mark.parametrize("rate", ["0.5", True, False, None, 0, 1.5, [0.5],
                                  float("nan")])
def test_bad_rates_are_refused(rate):
    with pytest.raises(ValueError, match="target_rate"):
        check_rate(rate)
    model = keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(2)])
    with pytest.raises(ValueError, match="target_rate"):
        kap.add_gates(model, rate)


def test_good_rates_are_accepted():
    for rate in (0.5, 1, np.float32(0.25), np.float64(1.0)):
        check_rate(rate)


@pytest.mark.parametrize("kwargs", [
    dict(binary_tolerance=-0.01), dict(binary_tolerance=0.5),
    dict(binary_tolerance=0), dict(binary_tolerance="0.01"),
    dict(tolerance=True), dict(tolerance=-1), dict(binary_target=0),
    dict(binary_target=1.5), dict(control_every=True),
    dict(control_every="3"), dict(warmup_steps=-1), dict(prune_steps=0),
    dict(prune_steps="100"),
], ids=lambda k: ",".join(f"{a}={b!r}" for a, b in k.items()))
def test_bad_callback_numbers_are_refused(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        kap.AutoPrunerCallback(**kwargs)


def test_default_objective_is_the_global_mac_budget():
    cb = kap.AutoPrunerCallback()
    assert cb.objective.budget == "global"
    assert cb.objective.weighting == "flops"
    assert kap.AutoPrunerCallback(objective="layer").objective.budget == (
        "layer")


LOAD = textwrap.dedent("""
    import sys
    import keras
    path = sys.argv[1]
    try:
        keras.models.load_model(path)
        print("plain load worked")
    except Exception as e:
        print("plain load failed:", type(e).__name__)
    import keras_autopruner as kap
    from keras_autopruner.gate import gates_of
    model = kap.load_model(path)
    print("kap.load_model:", len(gates_of(model)), "gates")
""")


def test_load_model_loads_a_gated_file(tmp_path):
    gated = gated_net()
    path = tmp_path / "gated.keras"
    gated.save(path)
    loaded = kap.load_model(path)
    assert [g.name for g in gates_of(loaded)] == ["h1_gate", "h2_gate"]
    # Even with the gate missing from Keras's registry (as in a process
    # that never imported the package), the wrapper passes it itself.
    registry = keras.saving.get_custom_objects()
    saved = registry.pop("keras_autopruner>AutoPrunerGate")
    try:
        with pytest.raises(Exception, match="AutoPrunerGate"):
            keras.models.load_model(path)
        assert len(gates_of(kap.load_model(path))) == 2
    finally:
        registry["keras_autopruner>AutoPrunerGate"] = saved
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", LOAD, str(path)],
                            capture_output=True, text=True, timeout=300,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # Without the import Keras cannot read the gates; the wrapper can.
    assert "plain load failed" in result.stdout, result.stdout
    assert "kap.load_model: 2 gates" in result.stdout
