"""The hls4ml path of `examples/fc_dnn_hls4ml.py` on a tiny stripped tagger.

hls4ml's C++ emulation is compiled with g++, which takes a while, so the
model is tiny and it is converted once.
"""

import importlib.util
import os
import shutil

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.datasets import load_tabular
from keras_autopruner.gate import gates_of

hls4ml = pytest.importorskip(
    "hls4ml", reason="hls4ml is not installed: pip install "
    "'keras_autopruner[deploy]' to test the hls4ml path")
if shutil.which("g++") is None:
    pytest.skip("g++ is not on the PATH: hls4ml compiles its emulation "
                "with it", allow_module_level=True)

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples", "fc_dnn_hls4ml.py")
WIDTHS = [16, 12, 8, 8]
CLASSES = 4


def load_example():
    spec = importlib.util.spec_from_file_location("fc_dnn_hls4ml", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stripped():
    keras.utils.set_random_seed(0)
    (x, y), (xt, yt), _ = load_tabular(None, seed=0)
    # Four letters: a tiny net learns them well enough in seconds for
    # confident outputs, as a trained tagger has (near-ties make argmax
    # agreement a matter of rounding, not of correctness).
    x, y, xt = x[y < CLASSES], y[y < CLASSES], xt[yt < CLASSES][:300]
    full = models.fc_dnn(input_dim=x.shape[1], num_classes=CLASSES,
                         widths=WIDTHS)
    full.compile(keras.optimizers.Adam(3e-3),
                 "sparse_categorical_crossentropy")
    full.fit(x, y, batch_size=64, epochs=10, verbose=0)
    gated = kap.add_gates(full, target_rate=0.5)
    rng = np.random.default_rng(0)
    for gate in gates_of(gated):
        mask = np.arange(gate.units) < gate.units // 2 + 1
        gate.moving_code.assign(rng.permutation(mask).astype("float32"))
    compact = kap.strip(gated)
    compact.compile(keras.optimizers.Adam(3e-3),
                    "sparse_categorical_crossentropy")
    compact.fit(x, y, batch_size=64, epochs=10, verbose=0)
    return compact, xt


def test_hls4ml_emulation_of_the_stripped_tagger_agrees_with_keras(
        stripped, tmp_path):
    compact, xt = stripped
    example = load_example()
    hls_model = example.convert(compact, str(tmp_path / "hls"))
    widths = models.widths_of(compact)
    assert list(widths.values()) == [w // 2 + 1 for w in WIDTHS] + [CLASSES]
    # The HLS project has the stripped widths, not the full ones.
    dense_out = [int(layer.get_attr("n_out")) for layer in
                 hls_model.get_layers() if layer.class_name == "Dense"]
    assert dense_out == list(widths.values())
    assert example.largest_activation(compact, xt) < 32  # ap_fixed<16,6>
    result = example.compare(compact, hls_model, xt)
    assert result["argmax_agreement"] >= 0.99, result
    # hls4ml's table softmax is coarse (see `compare`), so the bound is on
    # the typical row, not the worst one.
    assert result["median_row_diff"] <= 0.05 * result["output_scale"], result
