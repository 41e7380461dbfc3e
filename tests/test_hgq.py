"""HGQ2's quantised layers are gated, pruned, stripped and fine-tuned.

HGQ2 (`pip install hgq2`, or `keras_autopruner[fpga]`) learns a bit-width
per input channel, per kernel entry and per bias; `strip` must cut those
with the channels, and the compact model must stay an HGQ2 model.
"""

import keras
import numpy as np
import pytest

hgq = pytest.importorskip(
    "hgq", reason="hgq2 is not installed: pip install "
    "'keras_autopruner[fpga]' to test the HGQ2 path")

from hgq.layers import (QBatchNormalization, QBatchNormDense,  # noqa: E402
                        QConv2D, QDense)
from hgq.quantizer import Quantizer  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner import registry  # noqa: E402
from keras_autopruner.gate import gates_of  # noqa: E402


def _values(layer):
    record = registry.lookup(layer)
    return {name: keras.ops.convert_to_numpy(w) for name, w in
            zip(record.weight_names(layer), layer.weights)}


def _tagger():
    inp = keras.Input((16,))
    x = Quantizer("default", "datalane", name="inq")(inp)
    x = QDense(16, activation="relu", name="d1")(x)
    x = QDense(12, activation="relu", name="d2")(x)
    return keras.Model(inp, QDense(4, name="out")(x))


def _compile(model):
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))


@pytest.fixture(scope="module")
def pruned():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16)).astype("float32")
    y = (x[:, :4].argmax(-1)).astype("int32")
    full = _tagger()
    _compile(full)
    full.fit(x, y, batch_size=64, epochs=2, verbose=0)
    gated = kap.add_gates(full, target_rate=0.5)
    _compile(gated)
    callback = kap.AutoPrunerCallback()
    gated.fit(x, y, batch_size=64, epochs=3, verbose=0,
              callbacks=[callback])
    return full, gated, kap.strip(gated), x, y


def test_hgq_layers_are_prunable_and_refusals_name_the_layer():
    assert registry.lookup(QDense(3)).width_key == "units"
    assert registry.lookup(QConv2D(3, 3)).width_key == "filters"
    # It batch-normalises its inputs inside the call: not described, so
    # refused (its channels all stay), with a reason that says how.
    refused = registry.lookup(QBatchNormDense(3)).refused
    assert "QBatchNormDense" in refused and "register" in refused


def test_stripped_hgq_model_computes_the_hard_masked_gated_one(pruned):
    full, gated, compact, x, _ = pruned
    kept = {g.name[:-len("_gate")]: g.mask() for g in gates_of(gated)}
    assert all(g.hard.numpy() == 1.0 for g in gates_of(gated))
    # The gates ended with an exact choice: every kept code is 1, so the
    # gated model is its hard-masked self.
    assert [type(layer) for layer in compact.layers[1:]] == [
        Quantizer, QDense, QDense, QDense]
    assert compact.get_layer("d1").units == kept["d1"].sum() < 16
    assert compact.get_layer("d2").units == kept["d2"].sum() < 12
    np.testing.assert_allclose(compact.predict(x, verbose=0),
                               gated.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert kap.count_flops(compact).total < kap.count_flops(full).total


def test_quantiser_bit_widths_are_cut_with_the_channels(pruned):
    _, gated, compact, _, _ = pruned
    k1 = {g.name[:-len("_gate")]: g.mask() for g in gates_of(gated)}["d1"]
    k2 = {g.name[:-len("_gate")]: g.mask() for g in gates_of(gated)}["d2"]
    old, new = _values(gated.get_layer("d2")), _values(compact.get_layer("d2"))
    # Per input channel (the input quantiser's fractional bits), per kernel
    # entry, per output channel (bias bits), each cut as its tensor is.
    np.testing.assert_array_equal(new["_iq/f"], old["_iq/f"][:, k1])
    np.testing.assert_array_equal(new["_kq/b"], old["_kq/b"][k1][:, k2])
    np.testing.assert_array_equal(new["_kq/i"], old["_kq/i"][k1][:, k2])
    np.testing.assert_array_equal(new["_bq/b"], old["_bq/b"][k2])
    np.testing.assert_array_equal(new["kernel"], old["kernel"][k1][:, k2])
    head = _values(compact.get_layer("out"))
    assert head["_iq/f"].shape == (1, int(k2.sum()))


def test_stripped_hgq_model_keeps_training_and_counts_fewer_ebops(
        pruned, tmp_path):
    full, _, compact, x, y = pruned
    _compile(compact)
    before = compact.get_layer("d2").get_weights()
    history = compact.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = compact.get_layer("d2").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
    full.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0)

    def ebops(model):  # HGQ2 counts them at every training step
        return sum(float(layer.ebops) for layer in model.layers
                   if hasattr(layer, "_ebops") and layer._ebops is not None)
    assert 0 < ebops(compact) < ebops(full)
    path = str(tmp_path / "compact.keras")
    compact.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x[:32], verbose=0),
                               compact.predict(x[:32], verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_conv_and_batch_norm_with_random_masks_strip_exactly():
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 3))
    x = QConv2D(8, 3, activation="relu", name="c1")(inp)
    x = QBatchNormalization(name="bn")(x)
    x = QConv2D(6, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, QDense(3, name="out")(x))
    data = np.random.default_rng(1).normal(size=(64, 8, 8, 3)).astype(
        "float32")
    _compile(model)
    model.fit(data, np.zeros(64, "int32"), epochs=1, verbose=0)
    gated = kap.add_gates(model, target_rate=0.5)
    rng = np.random.default_rng(2)
    for gate in gates_of(gated):
        gate.set_mask(rng.permutation(np.arange(gate.units) < 3))
    compact = kap.strip(gated)
    assert compact.get_layer("c1").filters == 3
    assert compact.get_layer("c2").filters == 3
    assert _values(compact.get_layer("bn"))["_kq/b"].shape == (3,)
    np.testing.assert_allclose(compact.predict(data, verbose=0),
                               gated.predict(data, verbose=0),
                               rtol=1e-5, atol=1e-5)


def _example():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "examples", "fc_dnn_hgq.py")
    spec = importlib.util.spec_from_file_location("fc_dnn_hgq", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_da4ml_estimates_the_stripped_hgq2_model_bit_exact(pruned):
    # The qat flow hands da4ml the stripped model itself, a PrunedModel.
    pytest.importorskip("da4ml")
    full, _, compact, x, _ = pruned
    from keras_autopruner.pruned_model import PrunedModel

    assert isinstance(compact, PrunedModel)
    example = _example()
    small = example.da4ml_figures(compact, x[:200])
    large = example.da4ml_figures(full, x[:200])
    assert small["bit_exact"] == small["rows"] == 200
    assert large["bit_exact"] == 200
    assert 0 < small["luts"] < large["luts"]


def test_example_prunes_quantises_and_converts_bit_exact(tmp_path):
    # examples/fc_dnn_hgq.py in smoke form: tiny epochs, a few rows, and
    # both quantised models through hls4ml's C++ emulation.
    import shutil

    pytest.importorskip("hls4ml")
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on the PATH: hls4ml compiles with it")
    example = _example()
    # The float flow: it also covers to_hgq (the qat flow's steps are the
    # tests above).
    result = example.run(out=str(tmp_path), widths=(16, 8), flow="float",
                         full_epochs=1,
                         prune_epochs=1, finetune_epochs=0, qat_epochs=1,
                         train_examples=1500, test_examples=300, verbose=0)
    full, pruned = result["full_hgq"], result["pruned_hgq"]
    assert sum(pruned["widths"]) < sum(full["widths"])
    assert pruned["widths"] == result["pruned_float"]["widths"]
    assert pruned["ebops"] < full["ebops"]
    assert pruned["weight_bits"] < full["weight_bits"]
    # The count before calibration is HGQ2's own, from the trained bits.
    assert 0 < pruned["ebops_training"] < full["ebops_training"]
    for row in (full, pruned):
        # HGQ2 + hls4ml's promise: the emulation is Keras, to the bit.
        assert row["hls4ml"]["rows"] == 300
        assert row["hls4ml"]["bit_exact"] == 300, row["hls4ml"]
        # da4ml's adder graph computes the same, and has a positive cost
        # and depth.
        assert row["da4ml"]["bit_exact"] == row["da4ml"]["rows"] == 300
        assert row["da4ml"]["luts"] > 0
        assert 0 < row["da4ml"]["latency"][0] <= row["da4ml"]["latency"][1]
    # Fewer neurons and fewer weight bits: less logic.
    assert pruned["da4ml"]["luts"] < full["da4ml"]["luts"]
    assert "ours + HGQ2" in example.format_table(result)
