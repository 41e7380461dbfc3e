"""Tests for `keras_autopruner.deploy`: SavedModel or ONNX, plus pruning
report, and the report kept through `.keras` save and load."""

import json
import os
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


def test_an_earlier_export_is_replaced_only_with_overwrite(compact, tmp_path):
    path = tmp_path / "pruned"
    kap.export(compact, path)
    (path / "pruning_report.md").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        kap.export(compact, path)
    assert (path / "pruning_report.md").read_text() == "old"
    kap.export(compact, path, overwrite=True)
    assert (path / "pruning_report.md").read_text().startswith("# Pruning")
    assert (path / "saved_model.pb").exists()
    # Nothing left behind from staging.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_with_a_user_file_is_never_replaced(compact, tmp_path,
                                                    overwrite):
    path = tmp_path / "pruned"
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="keep.txt.*left alone"):
        kap.export(compact, path, overwrite=overwrite)
    assert (path / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in path.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def test_a_user_file_at_the_path_is_never_replaced(compact, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(FileExistsError, match="a file of 4 bytes"):
        kap.export(compact, path, overwrite=True)
    assert path.read_text() == "mine"


def test_an_empty_folder_is_used(compact, tmp_path):
    (tmp_path / "pruned").mkdir()
    kap.export(compact, tmp_path / "pruned")
    assert (tmp_path / "pruned" / "saved_model.pb").exists()


@pytest.mark.parametrize("where", [".", "..", "~", "/", "cwd_abs",
                                   "dot_slash"])
def test_working_dir_parents_home_and_root_are_refused(
        compact, tmp_path, monkeypatch, where):
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (work / "data.csv").write_text("1,2")
    (tmp_path / "home" / ".bashrc").write_text("x")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = {"cwd_abs": str(work), "dot_slash": "./"}.get(where, where)
    with pytest.raises(ValueError, match="refusing to write.*working "
                       "directory"):
        kap.export(compact, path, overwrite=True)
    assert (work / "data.csv").read_text() == "1,2"
    assert sorted(p.name for p in work.iterdir()) == ["data.csv"]
    assert (tmp_path / "home" / ".bashrc").exists()


def test_bad_paths_get_clear_errors(compact, tmp_path):
    with pytest.raises(TypeError, match="path must be a str"):
        kap.export(compact, None)
    with pytest.raises(TypeError, match="path must be a str"):
        kap.export(compact, 3)
    with pytest.raises(ValueError, match="path is empty"):
        kap.export(compact, "")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        kap.export(compact, tmp_path / "a_file" / "sub" / "pruned")
    with pytest.raises(ValueError, match="cannot write"):
        kap.export(compact, "/proc/x")
    assert (tmp_path / "a_file").read_text() == "x"


def test_stale_staging_of_a_killed_export_is_removed(compact, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    # A staging folder a killed export left, with an earlier export that it
    # had moved aside: the earlier export goes back to its place.
    stale = tmp_path / f".export-{dead}-abc"
    (stale / "previous").mkdir(parents=True)
    (stale / "previous" / REPORT_JSON).write_text("{}")
    (stale / deploy.STAGING_MARKER).write_text(json.dumps(
        {"pid": int(dead), "process": "x", "target": str(tmp_path / "old")}))
    # Folders this package did not mark, or whose process lives, stay.
    (tmp_path / ".export-mine").mkdir()
    (tmp_path / ".export-mine" / "notes").write_text("mine")
    live = tmp_path / ".export-live"
    live.mkdir()
    (live / deploy.STAGING_MARKER).write_text(json.dumps(
        {"pid": os.getppid(), "process": "y", "target": "z"}))
    kap.export(compact, tmp_path / "pruned")
    assert not stale.exists()
    assert (tmp_path / "old" / REPORT_JSON).exists()
    assert (tmp_path / ".export-mine" / "notes").read_text() == "mine"
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".export-live", ".export-mine", "old", "pruned"]


KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    import keras
    import keras_autopruner as kap
    from keras_autopruner import deploy

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)
    deploy._move_into_place = die   # killed with the export complete
    kap.export(model, sys.argv[1])
""")


def test_a_kill_mid_export_leaves_nothing_after_the_next_export(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT, str(tmp_path / "pruned")],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == -9, result.stderr[-2000:]
    assert [p.name[:8] for p in tmp_path.iterdir()] == [".export-"]
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    kap.export(model, tmp_path / "pruned")
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
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not an export")
    with pytest.raises(FileExistsError, match="left alone"):
        kap.export(compact, other, format="onnx", overwrite=True)
    assert other.read_bytes() == b"not an export"


@pytest.mark.parametrize("source", ["strip", "load_model"])
def test_onnx_of_a_model_never_called(source, tmp_path):
    ort = _onnx_or_skip()
    gated = kap.add_gates(small_model(), 0.5)
    for gate in gates_of(gated):
        gate.set_mask(np.arange(gate.units) < 5)
    model = kap.strip(gated)
    if source == "load_model":
        model.save(tmp_path / "m.keras")
        model = kap.load_model(tmp_path / "m.keras")
    assert not model._called  # what Keras's ONNX export refuses
    kap.export(model, tmp_path / "m.onnx", format="onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 3)).astype("float32")
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(y, keras.ops.convert_to_numpy(model(x)),
                               atol=1e-5)


def test_onnx_without_its_packages_says_what_to_install(
        compact, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # As if not installed.
    with pytest.raises(ImportError, match=r"keras_autopruner\[deploy\]"):
        kap.export(compact, tmp_path / "x.onnx", format="onnx")
    assert not (tmp_path / "x.onnx").exists()
