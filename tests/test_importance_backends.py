"""Taylor importance gives the same scores on TensorFlow, JAX and PyTorch.

Each other backend runs `tests/importance_checks.py` in a subprocess
(Keras fixes its backend at import); both start at once so they overlap.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np

import importance_checks

HERE = os.path.dirname(os.path.abspath(__file__))


def test_taylor_scores_agree_across_backends(tmp_path):
    others = [b for b in ("tensorflow", "jax", "torch")
              if b != keras.backend.backend()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    runs = {}
    for backend in others:
        log = open(tmp_path / f"{backend}.log", "w")
        runs[backend] = (subprocess.Popen(
            [sys.executable, os.path.join(HERE, "importance_checks.py")],
            env=dict(env, KERAS_BACKEND=backend), stdout=subprocess.PIPE,
            stderr=log, text=True), log)
    reference = importance_checks.run()
    for backend, (proc, log) in runs.items():
        stdout, _ = proc.communicate(timeout=300)
        log.close()
        assert proc.returncode == 0, (tmp_path / f"{backend}.log").read_text()
        got = json.loads(stdout.strip().splitlines()[-1])
        assert got["backend"] == backend
        for name, expected in reference["scores"].items():
            np.testing.assert_allclose(got["scores"][name], expected,
                                       rtol=1e-4, atol=1e-6 * max(expected))
        assert got["widths"] == reference["widths"] == {"c1": 3, "fc": 5}
