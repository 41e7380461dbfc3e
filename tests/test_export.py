"""Tests for `keras_autopruner.deploy`: SavedModel or ONNX, plus pruning
report, and the report kept through `.keras` save and load."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import deploy
from keras_autopruner.deploy import REPORT_JSON, REPORT_MARKDOWN
from keras_autopruner.pruned_model import PrunedModel, attach_report
from keras_autopruner.gate import gates_of

L = keras.layers


def small_model():
    x = keras.Input((8, 8, 3), name="image")
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    b = L.Conv2D(8, 3, padding="same", name="c2")(a)
    b = L.BatchNormalization()(b)
    s = L.Add()([a, L.ReLU()(b)])
    h = L.Dense(12, activation="relu", name="fc")(L.Flatten()(
        L.MaxPooling2D()(s)))
    return keras.Model(x, L.Dense(3, name="out")(h), name="small")


@pytest.fixture(scope="module")
def compact():
    rng = np.random.default_rng(0)
    gated = kap.add_gates(small_model(), 0.5)
    for gate in gates_of(gated):
        mask = rng.random(gate.units) < 0.5
        mask[0] = True
        gate.moving_code.assign(mask.astype("float32"))
    kap.set_hard_masks(gated, True)
    compact = kap.strip(gated)
    # What strip is to do itself (one line in surgery.strip).
    return attach_report(compact, compact.pruning_report)


SERVE = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    path, x_file, y_file = sys.argv[1:]
    served = tf.saved_model.load(path)
    x = np.load(x_file)
    expected = np.load(y_file)
    y = served.serve(tf.constant(x)).numpy()
    assert np.max(np.abs(y - expected)) <= 1e-5 * np.max(np.abs(expected)), y
    signature = served.signatures["serving_default"]
    (y2,) = signature(image=tf.constant(x)).values()
    assert np.max(np.abs(y2.numpy() - expected)) <= 1e-5 * np.max(
        np.abs(expected))
    assert "keras_autopruner" not in sys.modules
    print("served", y.shape)
""")


def test_saved_model_serves_without_keras_autopruner(compact, tmp_path):
    path = tmp_path / "pruned"
    kap.export(compact, path)
    x = np.random.default_rng(1).normal(size=(5, 8, 8, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", keras.ops.convert_to_numpy(compact(x)))
    result = subprocess.run(
        [sys.executable, "-c", SERVE, str(path), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        capture_output=True, text=True, timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,  # Not the repository: nothing to import from there.
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "served (5, 3)" in result.stdout


def test_report_is_written_inside_the_export(compact, tmp_path):
    path = tmp_path / "pruned"
    report = kap.export(compact, path)
    data = json.loads((path / REPORT_JSON).read_text())
    assert data["totals"]["params_after"] == kap.count_params(compact)
    assert data["totals"]["params_before"] == kap.count_params(small_model())
    assert data["totals"]["macs_after"] == kap.count_flops(compact).total
    rows = {r["layer"]: r for r in data["rows"]}
    assert rows["c1"]["filters_before"] == 8
    assert rows["c1"]["filters_after"] == compact.get_layer("c1").filters
    assert rows["fc"]["filters_after"] == compact.get_layer("fc").units
    markdown = (path / REPORT_MARKDOWN).read_text()
    assert markdown.startswith("# Pruning report")
    assert "| c1 | Conv2D |" in markdown
    assert report.to_dict() == data
    assert (path / "saved_model.pb").exists()


def test_existing_path_is_not_overwritten_silently(compact, tmp_path):
    path = tmp_path / "pruned"
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        kap.export(compact, path)
    assert (path / "keep.txt").read_text() == "mine"
    kap.export(compact, path, overwrite=True)
    assert not (path / "keep.txt").exists()
    assert (path / "saved_model.pb").exists()
    # Nothing left behind from staging.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def test_gated_model_is_refused(tmp_path):
    gated = kap.add_gates(small_model(), 0.5)
    with pytest.raises(ValueError, match="still has AutoPrunerGate.*strip"):
        kap.export(gated, tmp_path / "gated")
    assert not (tmp_path / "gated").exists()


def test_model_without_a_strip_record_gets_an_after_only_report(tmp_path):
    model = small_model()
    kap.export(model, tmp_path / "plain")
    data = json.loads((tmp_path / "plain" / REPORT_JSON).read_text())
    assert data["totals"]["params_before"] is None
    assert data["totals"]["params_after"] == kap.count_params(model)
    assert "No record of the model before pruning" in data["notes"][0]


def test_deploy_module_is_importable_by_name():
    import importlib

    module = importlib.import_module("keras_autopruner.deploy")
    assert module is deploy
    assert module.export is kap.export
    assert "onnx" in module.FORMATS and "tf_saved_model" in module.FORMATS


def test_unknown_format_names_the_formats(compact, tmp_path):
    with pytest.raises(ValueError, match="'tf_saved_model', 'onnx'"):
        kap.export(compact, tmp_path / "x", format="tflite")
    assert not (tmp_path / "x").exists()


def test_report_survives_keras_save_and_load(compact, tmp_path):
    compact.save(tmp_path / "pruned.keras")
    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    assert isinstance(loaded, PrunedModel)
    assert loaded.pruning_report == compact.pruning_report
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(compact(x)),
                               atol=1e-6)
    # A reloaded model exports the full before/after report.
    kap.export(loaded, tmp_path / "again")
    data = json.loads((tmp_path / "again" / REPORT_JSON).read_text())
    assert data["totals"]["params_before"] == kap.count_params(small_model())
    assert data == compact.pruning_report.to_dict()


def test_report_survives_fine_tuning_and_a_second_save(compact, tmp_path):
    model = attach_report(keras.models.clone_model(compact),
                          compact.pruning_report)
    model.compile("adam", "mse")
    x = np.random.default_rng(3).normal(size=(8, 8, 8, 3)).astype("float32")
    model.fit(x, np.zeros((8, 3), "float32"), epochs=1, verbose=0)
    model.save(tmp_path / "a.keras")
    first = keras.models.load_model(tmp_path / "a.keras")
    first.save(tmp_path / "b.keras")
    second = keras.models.load_model(tmp_path / "b.keras")
    assert second.pruning_report.to_dict() == compact.pruning_report.to_dict()


def test_attach_report_shares_weights_and_rejects_junk(compact):
    plain = keras.Model(compact.inputs, compact.outputs)
    carried = attach_report(plain, compact.pruning_report)
    assert carried.get_layer("c1") is plain.get_layer("c1")
    assert carried.name == plain.name
    with pytest.raises(TypeError, match="PruningReport"):
        attach_report(plain, "a report")



def _onnx_or_skip():
    for name in ("onnx", "tf2onnx", "onnxruntime"):
        pytest.importorskip(
            name, reason=f"{name} is not installed: pip install "
            "'keras_autopruner[deploy]' to test the ONNX export")
    import onnxruntime as ort

    return ort


def test_onnx_runs_in_onnxruntime_with_keras_outputs(compact, tmp_path):
    ort = _onnx_or_skip()
    path = tmp_path / "pruned.onnx"
    report = kap.export(compact, path, format="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.onnx"]
    session = ort.InferenceSession(str(path),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).normal(size=(7, 8, 8, 3)).astype("float32")
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    expected = keras.ops.convert_to_numpy(compact(x))
    assert y.shape == expected.shape
    assert np.max(np.abs(y - expected)) <= 1e-5 * np.max(np.abs(expected))
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta[deploy.ONNX_REPORT_KEY]) == report.to_dict()
    assert deploy.onnx_report(path) == compact.pruning_report
    with pytest.raises(FileExistsError, match="overwrite=True"):
        kap.export(compact, path, format="onnx")
    kap.export(compact, path, format="onnx", overwrite=True)


def test_onnx_without_its_packages_says_what_to_install(
        compact, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # As if not installed.
    with pytest.raises(ImportError, match=r"keras_autopruner\[deploy\]"):
        kap.export(compact, tmp_path / "x.onnx", format="onnx")
    assert not (tmp_path / "x.onnx").exists()
