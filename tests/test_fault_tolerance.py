"""A pruning run survives a SIGKILL under `keras.callbacks.BackupAndRestore`.

A child process prunes a small Dense net on NumPy data and kills itself
with SIGKILL at a chosen optimizer step; a second child restarts the same
script, which `BackupAndRestore` resumes from its last epoch-end backup,
and then runs the same fit uninterrupted in the same process. The two
must end with the same masks, lambda, alpha, mu, step count and weights,
whichever of the two callbacks is listed first.

The epoch (7 steps) is not a multiple of `control_every` (3) and the
kill comes mid-epoch after two backups: a callback that read its state
before Keras restored the weights, or whose step count in the gates was
older than the optimizer's, fails here.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    import keras
    import keras_autopruner as kap
    from keras_autopruner.gate import gates_of

    order, backup, kill_at, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7 * 16, 12)).astype("float32")
    y = (x[:, :4] @ rng.normal(size=(4, 4))).argmax(1)

    def run(backup_dir, kill_at):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([
            keras.Input((12,)),
            keras.layers.Dense(16, activation="relu", name="h1"),
            keras.layers.Dense(16, activation="relu", name="h2"),
            keras.layers.Dense(4, activation="softmax", name="out")])
        gated = kap.add_gates(model, target_rate=0.4)
        gated.compile(keras.optimizers.Adam(1e-2),
                      "sparse_categorical_crossentropy")
        pruner = kap.AutoPrunerCallback(control_every=3)

        class Kill(keras.callbacks.Callback):
            steps = 0
            def on_train_batch_end(self, batch, logs=None):
                Kill.steps += 1
                if Kill.steps == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        callbacks = [pruner]
        if backup_dir:
            restore = keras.callbacks.BackupAndRestore(backup_dir)
            callbacks = ([pruner, restore] if order == "pruner_first"
                         else [restore, pruner])
        gated.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
                  callbacks=callbacks + [Kill()])
        g = gates_of(gated)[0]
        state = {k: float(getattr(g, k).numpy())
                 for k in ("lam", "alpha", "mu", "step", "phase")}
        state["cb_steps"] = pruner._steps
        state["masks"] = [gate.mask().astype(int).tolist()
                          for gate in gates_of(gated)]
        state["kept"] = pruner.result["kept"]
        return state, gated.get_weights()

    resumed, w1 = run(backup, kill_at)
    # Only reached when not killed: the same fit, never interrupted.
    straight, w2 = run(None, -1)
    np.savez(out + ".npz", *[a - b for a, b in zip(w1, w2)])
    with open(out + ".json", "w") as f:
        json.dump({"resumed": resumed, "straight": straight}, f)
""")

KILL_AT = 17  # epoch 3 of 5, batch 3 of 7: after the epoch 1 and 2 backups


def _child(tmp_path, order, kill_at):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run(
        [sys.executable, "-c", CHILD, order, str(tmp_path / "backup"),
         str(kill_at), str(tmp_path / "result")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


@pytest.mark.parametrize("order", ["pruner_first", "backup_first"])
def test_sigkill_under_backup_and_restore_resumes_exactly(order, tmp_path):
    killed = _child(tmp_path, order, KILL_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "backup").is_dir()  # there is something to resume
    assert not (tmp_path / "result.json").exists()

    resumed = _child(tmp_path, order, -1)  # BackupAndRestore resumes it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    a, b = result["resumed"], result["straight"]
    assert a["cb_steps"] == b["cb_steps"] == 5 * 7
    assert a["masks"] == b["masks"]
    assert a["kept"] == b["kept"]
    for key in ("lam", "alpha", "mu", "step", "phase"):
        assert a[key] == b[key], (key, a, b)
    # The schedule moved during the run: a run that started over would
    # not end with the same lambda and alpha.
    assert b["lam"] > 1.0 or b["alpha"] > 1.0, b
    diffs = np.load(tmp_path / "result.npz")
    assert max(np.abs(diffs[k]).max() for k in diffs.files) <= 1e-6
    assert not (tmp_path / "backup").exists()  # fit ended, Keras cleaned up
