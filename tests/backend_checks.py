"""The library's core path on whichever Keras backend is active.

`run_checks()` prunes small real models with every schedule, strips them,
counts their cost, saves and reloads them and tries `export`, and returns
what it saw as plain Python values, so that runs on different backends can
be compared. All weights come from NumPy (not from the backend's random
generator) and nothing is shuffled, so two backends start from the same
numbers and see the same batches.

`tests/test_backends.py` runs it in-process on TensorFlow and in a
subprocess, with `KERAS_BACKEND` set, on JAX and PyTorch (the backend is
fixed when Keras is first imported). Run by hand:

    KERAS_BACKEND=jax python tests/backend_checks.py --out /tmp/jax.json
"""

import json
import os
import tempfile
import warnings

import keras
import numpy as np

import keras_autopruner as kap
from keras_autopruner.datasets import load_fashion_mnist, load_tabular
from keras_autopruner.gate import gates_of

L = keras.layers


def numpy_weights(model, seed):
    """Overwrite every trainable kernel with seeded NumPy values."""
    rng = np.random.default_rng(seed)
    for w in model.trainable_weights:
        shape = tuple(w.shape)
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1]))
            w.assign(rng.normal(0, 1 / np.sqrt(fan_in), shape)
                     .astype("float32"))


def letters(n_train=1280, n_test=256):
    (x, y), (xt, yt), _ = load_tabular()
    return (x[:n_train].astype("float32"), y[:n_train],
            xt[:n_test].astype("float32"), yt[:n_test])


def fc_net():
    return keras.Sequential([
        keras.Input((16,)),
        L.Dense(48, activation="relu", name="h1"),
        L.Dense(48, activation="relu", name="h2"),
        L.Dense(26, activation="softmax", name="out"),
    ])


def conv_net():
    inputs = keras.Input((28, 28, 1))
    x = L.Conv2D(12, 3, padding="same", use_bias=False, name="c1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10, activation="softmax")(x))


def gated_model(builder, rate, seed=0):
    gated = kap.add_gates(builder(), target_rate=rate)
    numpy_weights(gated, seed)
    gated.compile(keras.optimizers.Adam(3e-3),
                  "sparse_categorical_crossentropy")
    return gated


SCHEDULES = {
    "controller": lambda: dict(schedule="controller"),
    "step": lambda: dict(schedule=kap.StepLambda(every=8)),
    "alpha_clock": lambda: dict(schedule="controller",
                                alpha=kap.AlphaSchedule(release=None)),
    "global_flops": lambda: dict(objective="global"),
}


def prune(gated, x, y, epochs, **kwargs):
    kwargs.setdefault("objective", "layer")
    cb = kap.AutoPrunerCallback(control_every=4, **kwargs)
    history = gated.fit(x, y, batch_size=64, epochs=epochs, shuffle=False,
                        verbose=0, callbacks=[cb])
    return cb, history.history


def masks_of(model):
    return {g.name: g.mask().astype(int).tolist() for g in gates_of(model)}


def check_schedules(out):
    x, y, xt, yt = letters()
    for name, kwargs in SCHEDULES.items():
        gated = gated_model(fc_net, 0.5)
        cb, history = prune(gated, x, y, 6, **kwargs())
        compact = kap.strip(gated)
        gated_out = gated.predict(xt, verbose=0)
        compact_out = compact.predict(xt, verbose=0)
        out["schedules"][name] = {
            "masks": masks_of(gated),
            "lambda": [float(v) for v in history["lambda"]],
            "alpha": [float(v) for v in history["alpha"]],
            "reason": cb.result["reason"],
            "kept_units": [int(l.units) for l in compact.layers
                           if isinstance(l, L.Dense)],
            "strip_max_diff": float(np.max(np.abs(gated_out - compact_out))),
            "outputs": compact_out[:8].tolist(),
        }


def check_conv_strip_count_save(out, workdir):
    (x, y), (xt, _) = load_fashion_mnist()
    x, y, xt = x[:512, ..., None] / 255.0, y[:512], xt[:64, ..., None] / 255.0
    x, xt = x.astype("float32"), xt.astype("float32")
    model_flops = kap.count_flops(conv_net()).total
    gated = gated_model(conv_net, 0.5)
    cb, _ = prune(gated, x, y, 2, prune_steps=12)
    compact = kap.strip(gated)
    path = os.path.join(workdir, "gated.keras")
    gated.save(path)
    loaded = keras.models.load_model(path)
    compact_path = os.path.join(workdir, "compact.keras")
    compact.save(compact_path)
    compact_loaded = keras.models.load_model(compact_path)
    ref = compact.predict(xt, verbose=0)
    out["conv"] = {
        "masks": masks_of(gated),
        "loaded_masks_equal": masks_of(loaded) == masks_of(gated),
        "strip_max_diff": float(np.max(np.abs(
            gated.predict(xt, verbose=0) - ref))),
        "loaded_max_diff": float(np.max(np.abs(
            loaded.predict(xt, verbose=0) - ref))),
        "compact_loaded_max_diff": float(np.max(np.abs(
            compact_loaded.predict(xt, verbose=0) - ref))),
        "flops_share": kap.count_flops(compact).total / model_flops,
        "params": int(kap.count_params(compact)),
        "outputs": ref[:8].tolist(),
    }
    try:
        kap.export(compact, os.path.join(workdir, "saved"))
        out["export"] = "ok"
    except Exception as e:  # what export does off TensorFlow is reported
        out["export"] = f"{type(e).__name__}: {e}"
    try:
        import onnxruntime

        onnx_path = os.path.join(workdir, "compact.onnx")
        kap.export(compact, onnx_path, format="onnx")
        session = onnxruntime.InferenceSession(onnx_path)
        got = session.run(None, {session.get_inputs()[0].name: xt})[0]
        out["onnx"] = float(np.max(np.abs(got - ref)))
    except Exception as e:
        out["onnx"] = f"{type(e).__name__}: {e}"


def check_folded(out):
    """Folded gates train as the unfolded ones (four steps from the same
    weights) and the folded model strips exactly."""
    (x, y), (xt, _) = load_fashion_mnist()
    x, y = (x[:256, ..., None] / 255.0).astype("float32"), y[:256]
    xt = (xt[:64, ..., None] / 255.0).astype("float32")
    gated = gated_model(conv_net, 0.5)
    folded = kap.add_gates(conv_net(), target_rate=0.5, fold=True)
    folded.set_weights(gated.get_weights())
    folded.compile(keras.optimizers.Adam(3e-3),
                   "sparse_categorical_crossentropy")
    for model in (gated, folded):
        prune(model, x, y, 1, prune_steps=12, finish_on_train_end=False)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
        gated.get_weights(), folded.get_weights()))
    for gate in gates_of(folded):  # four steps leave the codes soft
        gate.set_mask(gate.mask())
    compact = kap.strip(folded)
    out["folded"] = {
        "wrapped": sorted(l.layer.name for l in folded.layers
                          if isinstance(l, kap.folding.ScaledInputs)),
        "weights_max_diff": diff,
        "strip_max_diff": float(np.max(np.abs(
            folded.predict(xt, verbose=0) - compact.predict(xt, verbose=0)))),
    }


def run_checks():
    out = {"backend": keras.backend.backend(), "schedules": {}}
    with tempfile.TemporaryDirectory() as workdir, warnings.catch_warnings():
        # Short runs end with soft codes on purpose; that warning is tested
        # elsewhere.
        warnings.filterwarnings("ignore", "AutoPrunerCallback")
        check_schedules(out)
        check_conv_strip_count_save(out, workdir)
        check_folded(out)
    return out


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("out", None, "Where to write the JSON result.")
    FLAGS = flags.FLAGS

    def main(argv):
        del argv
        result = json.dumps(run_checks())
        if FLAGS.out:
            with open(FLAGS.out, "w") as f:
                f.write(result)
        else:
            print(result)

    app.run(main)
