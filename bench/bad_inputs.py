"""Bad inputs: what each does, and whether the user's model and files survive.

Every case is run against a small gated model, its stripped copy and a
sandbox folder (the working directory and the home directory are moved
into it first, so that even a failing guard could only touch the sandbox).
For each case the table gives the input, the outcome (the exception and
the start of its message, or the warning) and whether the models' weights
and every file of the sandbox are as they were. `tests/test_bad_inputs.py`
runs the same cases and asserts each outcome.

    .venv/bin/python bench/bad_inputs.py --out /tmp/bad_inputs.md
"""

import contextlib
import hashlib
import os
import shutil
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner.gate import gates_of  # noqa: E402

L = keras.layers


def define_flags(fv=flags.FLAGS):
    """Define the script's flags in `fv`."""
    flags.DEFINE_string("out", None, "where to write the markdown table "
                        "(default: print it)", flag_values=fv)


class Sandbox:
    """The models and folders the cases act on."""

    def __init__(self, root):
        self.root = root
        self.home = os.path.join(root, "home")
        self.work = os.path.join(self.home, "work")
        os.makedirs(self.work)
        for path, text in ((os.path.join(self.home, ".bashrc"), "x"),
                           (os.path.join(self.work, "data.csv"), "1,2"),
                           (os.path.join(self.work, "a_file"), "x")):
            with open(path, "w") as f:
                f.write(text)
        mine = os.path.join(self.work, "mine")
        os.makedirs(mine)
        with open(os.path.join(mine, "notes.txt"), "w") as f:
            f.write("mine")
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((8,)), L.Dense(8, activation="relu", name="h1"),
            L.Dense(3, activation="softmax", name="out")])
        self.plain = model
        self.gated = kap.add_gates(model, 0.5)
        self.gated.compile("adam", "sparse_categorical_crossentropy")
        for g in gates_of(self.gated):
            g.set_mask(np.arange(g.units) < 4)
        self.compact = kap.strip(self.gated)
        self.nan_gated = kap.add_gates(model, 0.5)
        for g in gates_of(self.nan_gated):
            g.set_mask(np.arange(g.units) < 4)
        self.nan_gated.get_layer("h1").kernel.assign(
            np.full((8, 8), np.nan, "float32"))
        self.nan_compact = kap.strip(self.gated)
        self.nan_compact.get_layer("h1").bias.assign(
            np.full((4,), np.inf, "float32"))
        self.normed = keras.Sequential([
            keras.Input((8,)), L.Dense(8, name="h1"),
            L.BatchNormalization(name="bn"), L.ReLU(),
            L.Dense(3, activation="softmax", name="out")])
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(64, 8)).astype("float32")
        self.y = rng.integers(0, 3, 64)
        self.gated_file = os.path.join(root, "gated.keras")
        self.gated.save(self.gated_file)

    def fingerprint(self):
        """A digest of every model weight and every file under the root."""
        h = hashlib.sha256()
        for model in (self.plain, self.gated, self.compact, self.nan_gated,
                      self.nan_compact, self.normed):
            for w in model.weights:
                h.update(np.ascontiguousarray(
                    keras.ops.convert_to_numpy(w)).tobytes())
        for folder, dirs, files in sorted(os.walk(self.root)):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                h.update(path.encode())
                with open(path, "rb") as f:
                    h.update(f.read())
        return h.hexdigest()


def _fit(s, x, y, **kw):
    # A gated model whose run has not started (s.gated's masks are fixed).
    _fresh_gated(s).fit(x, y, batch_size=16, epochs=1, verbose=0,
                        callbacks=[kap.AutoPrunerCallback(**kw)])


def _fresh_gated(s):
    gated = kap.add_gates(s.plain, 0.5)
    gated.compile("adam", "sparse_categorical_crossentropy")
    return gated


def _nan_fit(s):
    gated = _fresh_gated(s)
    x = s.x.copy()
    x[20] = np.nan
    gated.fit(x, s.y, batch_size=16, epochs=2, verbose=0, shuffle=False,
              callbacks=[kap.AutoPrunerCallback(control_every=2)])


def _recalibrate_nan(s):
    x = s.x.copy()
    x[40] = np.nan  # the third batch of 16: two have been used already
    kap.recalibrate_batch_norm(s.normed, x, batch_size=16)


def _export_dir(s, name, **kw):
    kap.export(s.compact, os.path.join(s.work, name), **kw)


# (input as shown, function of the sandbox, expected outcome: an exception
# class, "warns" or "ok"; whether the models and files stay untouched[,
# a note for the table]).
CASES = [
    ('add_gates(model, "0.5")', lambda s: kap.add_gates(s.plain, "0.5"),
     ValueError, True),
    ("add_gates(model, True)", lambda s: kap.add_gates(s.plain, True),
     ValueError, True),
    ("add_gates(model, 0)", lambda s: kap.add_gates(s.plain, 0),
     ValueError, True),
    ("add_gates(model, 1.5)", lambda s: kap.add_gates(s.plain, 1.5),
     ValueError, True),
    ("add_gates(model, None)", lambda s: kap.add_gates(s.plain, None),
     ValueError, True),
    ('add_gates(model, float("nan"))',
     lambda s: kap.add_gates(s.plain, float("nan")), ValueError, True),
    ('add_gates(model, 0.5, fold="yes")',
     lambda s: kap.add_gates(s.plain, 0.5, fold="yes"), ValueError, True),
    ('add_gates("model.keras", 0.5)',
     lambda s: kap.add_gates("model.keras", 0.5), TypeError, True),
    ("AutoPrunerCallback(binary_tolerance=-0.01)",
     lambda s: kap.AutoPrunerCallback(binary_tolerance=-0.01), ValueError,
     True),
    ("AutoPrunerCallback(binary_tolerance=0.5)",
     lambda s: kap.AutoPrunerCallback(binary_tolerance=0.5), ValueError,
     True),
    ('AutoPrunerCallback(binary_tolerance="0.01")',
     lambda s: kap.AutoPrunerCallback(binary_tolerance="0.01"), ValueError,
     True),
    ("AutoPrunerCallback(tolerance=0)",
     lambda s: kap.AutoPrunerCallback(tolerance=0), ValueError, True),
    ("AutoPrunerCallback(tolerance=True)",
     lambda s: kap.AutoPrunerCallback(tolerance=True), ValueError, True),
    ("AutoPrunerCallback(binary_target=1.5)",
     lambda s: kap.AutoPrunerCallback(binary_target=1.5), ValueError, True),
    ("AutoPrunerCallback(control_every=0)",
     lambda s: kap.AutoPrunerCallback(control_every=0), ValueError, True),
    ("AutoPrunerCallback(control_every=True)",
     lambda s: kap.AutoPrunerCallback(control_every=True), ValueError, True),
    ('AutoPrunerCallback(control_every="10")',
     lambda s: kap.AutoPrunerCallback(control_every="10"), ValueError, True),
    ("AutoPrunerCallback(warmup_steps=-1)",
     lambda s: kap.AutoPrunerCallback(warmup_steps=-1), ValueError, True),
    ("AutoPrunerCallback(prune_steps=2.5)",
     lambda s: kap.AutoPrunerCallback(prune_steps=2.5), ValueError, True),
    ("AutoPrunerCallback(objective=3)",
     lambda s: kap.AutoPrunerCallback(objective=3), TypeError, True),
    ('AutoPrunerCallback(objective="flops")',
     lambda s: kap.AutoPrunerCallback(objective="flops"), ValueError, True),
    ('AutoPrunerCallback(schedule="fast")',
     lambda s: kap.AutoPrunerCallback(schedule="fast"), ValueError, True),
    ("AutoPrunerCallback(alpha=StepLambda())",
     lambda s: kap.AutoPrunerCallback(alpha=kap.StepLambda()), TypeError,
     True),
    ("fit(ungated model, callbacks=[AutoPrunerCallback()])",
     lambda s: s.plain.compile("adam", "mse") or s.plain.fit(
         s.x, s.y, verbose=0, callbacks=[kap.AutoPrunerCallback()]),
     ValueError, True),
    ("fit(gated, empty arrays)", lambda s: _fit(s, s.x[:0], s.y[:0]),
     "warns", True),
    ("fit(gated, one batch)", lambda s: _fit(s, s.x[:16], s.y[:16]),
     "warns", True, "a fresh gated model trains the one step, as asked; "
     "no choice is made"),
    ("fit(gated, data with a NaN row)", _nan_fit, kap.NonFiniteError, True,
     "the fitted model's gates are put back to their last finite state; "
     "its other weights are NaN (restore a checkpoint)"),
    ("strip(gated with a NaN kernel)", lambda s: kap.strip(s.nan_gated),
     kap.NonFiniteError, True),
    ("strip(ungated model)", lambda s: kap.strip(s.plain), ValueError, True),
    ('strip("gated.keras")', lambda s: kap.strip("gated.keras"), TypeError,
     True),
    ("export(compact, None)", lambda s: kap.export(s.compact, None),
     TypeError, True),
    ('export(compact, "")', lambda s: kap.export(s.compact, ""), ValueError,
     True),
    ('export(compact, ".", overwrite=True)',
     lambda s: kap.export(s.compact, ".", overwrite=True), ValueError, True),
    ('export(compact, "..", overwrite=True)',
     lambda s: kap.export(s.compact, "..", overwrite=True), ValueError, True),
    ('export(compact, "~", overwrite=True)',
     lambda s: kap.export(s.compact, "~", overwrite=True), ValueError, True),
    ('export(compact, "/", overwrite=True)',
     lambda s: kap.export(s.compact, "/", overwrite=True), ValueError, True),
    ('export(compact, "/proc/x")', lambda s: kap.export(s.compact, "/proc/x"),
     ValueError, True),
    ('export(compact, "a_file/sub/pruned")',
     lambda s: _export_dir(s, "a_file/sub/pruned"), ValueError, True),
    ('export(compact, "mine", overwrite=True) (a folder with a user file)',
     lambda s: _export_dir(s, "mine", overwrite=True), FileExistsError, True),
    ('export(compact, "data.csv", overwrite=True) (a user file)',
     lambda s: _export_dir(s, "data.csv", overwrite=True), FileExistsError,
     True),
    ('export(compact, "data.csv", format="onnx", overwrite=True)',
     lambda s: kap.export(s.compact, os.path.join(s.work, "data.csv"),
                          format="onnx", overwrite=True),
     FileExistsError, True),
    ('export(gated, "out")', lambda s: kap.export(s.gated, "out"),
     ValueError, True),
    ('export(compact, "out", format="tflite")',
     lambda s: kap.export(s.compact, "out", format="tflite"), ValueError,
     True),
    ('export(compact with an Inf bias, "out")',
     lambda s: kap.export(s.nan_compact, "out"), kap.NonFiniteError, True),
    ('export(compact, "out", report="text")',
     lambda s: kap.export(s.compact, "out", report="text"), TypeError, True),
    ('kap.load_model("missing.keras")',
     lambda s: kap.load_model("missing.keras"), ValueError, True),
    ('count_flops("gated.keras")', lambda s: kap.count_flops("gated.keras"),
     TypeError, True),
    ("count_params(None)", lambda s: kap.count_params(None), TypeError, True),
    ("count_flops(model, input_shape=(3,)) (the model takes 8 features)",
     lambda s: kap.count_flops(s.plain, input_shape=(3,)), ValueError, True),
    ("summary(gated, None)", lambda s: kap.summary(s.gated, None), TypeError,
     True),
    ("recalibrate_batch_norm(model, None)",
     lambda s: kap.recalibrate_batch_norm(s.normed, None), ValueError, True),
    ("recalibrate_batch_norm(model, data with a NaN row)", _recalibrate_nan,
     kap.NonFiniteError, True),
]


def run_case(sandbox, fn):
    """(outcome kind, text, untouched) for one case."""
    before = sandbox.fingerprint()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn(sandbox)
            ours = [w for w in caught if "AutoPruner" in str(w.message)
                    or "export" in str(w.message)]
            kind, text = (("warns", str(ours[0].message)) if ours
                          else ("ok", ""))
        except Exception as e:  # noqa: BLE001 (recorded, not hidden)
            kind, text = type(e), str(e)
    return kind, text, sandbox.fingerprint() == before


@contextlib.contextmanager
def sandboxed():
    """A Sandbox, with the working and home directories inside it."""
    root = tempfile.mkdtemp(prefix="bad_inputs_")
    cwd, home = os.getcwd(), os.environ.get("HOME")
    try:
        sandbox = Sandbox(root)
        os.chdir(sandbox.work)
        os.environ["HOME"] = sandbox.home
        yield sandbox
    finally:
        os.chdir(cwd)
        if home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = home
        shutil.rmtree(root, ignore_errors=True)


def table(rows):
    lines = ["| # | input | outcome | model and files untouched |",
             "|---|---|---|---|"]
    for i, (shown, kind, text, untouched, note) in enumerate(rows, 1):
        name = kind if isinstance(kind, str) else kind.__name__
        text = text.replace("|", "\\|").replace("\n", " ")
        if len(text) > 110:
            text = text[:107] + "..."
        lines.append(f"| {i} | `{shown}` | {name}: {text} | "
                     f"{'yes' if untouched else 'no'}"
                     f"{': ' + note if note else ''} |")
    return "\n".join(lines) + "\n"


def run_all():
    rows = []
    with sandboxed() as sandbox:
        for shown, fn, _, _, *note in CASES:
            rows.append((shown, *run_case(sandbox, fn), "".join(note)))
    return rows


def main(argv):
    del argv
    text = table(run_all())
    if flags.FLAGS.out:
        with open(flags.FLAGS.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
