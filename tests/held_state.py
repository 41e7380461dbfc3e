"""Gates put in a fixed pruning state, for tests that compare two ways of
computing the same training steps (XLA or not, folded or not).

Such tests run without `AutoPrunerCallback`: its decisions are discrete
functions of the hard choice, so a near-tie that reordered float sums
break the other way changes lambda, and the two runs then train on
different losses. CI's machine did that where this one agrees to 1e-7.
"""

import numpy as np

from keras_autopruner.gate import gates_of

PHASES = ("pushing", "done")


def hold_state(model, phase):
    """Give every gate of `model` what the callback would have written:
    `"pushing"` (a pruning term on, alpha sharpened, the codes learning)
    or `"done"` (a final random mask, kept in training)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}.")
    rng = np.random.default_rng(0)
    for g in gates_of(model):
        if phase == "done":
            g.set_mask(rng.random(g.units) < 0.5)
        else:
            g.phase.assign(1.0)
            g.alpha.assign(3.0)
            g.coef.assign(5.0)
            g.center.assign(0.3)
