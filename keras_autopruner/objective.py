"""The pruning term L_pru and the kept fraction it drives."""

import keras
import numpy as np

from keras_autopruner.gate import gates_of

BUDGETS = ("layer", "global")
WEIGHTINGS = ("filters", "flops")


class PruningObjective:
    """How far the gates' kept fraction is from the target, and how to push.

    `budget="layer"` (the original method): every gate's mean code is pulled
    towards its own rate, `L_pru = mean_i (m_i - r_i)**2`.

    `budget="global"`: one budget over all gates, `L_pru = (K - r)**2` with
    `K = sum_i a_i m_i`, the kept share weighted by filter count
    (`weighting="filters"`) or by each filter's multiply-accumulates
    (`weighting="flops"`), and `r` the same weighted mean of the gates' rates.
    Layers then keep different fractions: the cheap-to-lose ones go first.

    Each gate adds `coef * (m - center)**2` to the model's loss. For the
    layer budget that is its own term. For the global budget the term is
    linearised around the last codes: `coef = w * a_i`, `center = m_i - (K - r)`
    give every gate the gradient of `w * (K - r)**2`, so the coupling lives
    here and the gate stays a plain layer.

    Args:
        budget: `"layer"` or `"global"`.
        weighting: `"filters"` or `"flops"` (global budget only).
        floor: keep each gate's centre at or above `min_units / units`, so
            that the pruning term never asks a layer to vanish.
    """

    def __init__(self, budget="layer", weighting="filters", floor=True):
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}.")
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {WEIGHTINGS}, got {weighting!r}."
            )
        self.budget = budget
        self.weighting = weighting
        self.floor = bool(floor)

    def shares(self, gates):
        """Normalised weight a_i of each gate in the global budget."""
        w = np.array([g.units * (g.unit_cost if self.weighting == "flops"
                                 else 1.0) for g in gates], dtype=np.float64)
        return w / w.sum()

    def target(self, gates):
        return float(np.dot(self.shares(gates), [g.target_rate for g in gates]))

    def value(self, gates, codes=None):
        """L_pru from the gates' last training codes (or `codes`)."""
        means = _means(gates, codes)
        if self.budget == "layer":
            rates = np.array([g.target_rate for g in gates])
            return float(np.mean((means - rates) ** 2))
        return float((np.dot(self.shares(gates), means) - self.target(gates)) ** 2)

    def terms(self, gates, weight, codes=None):
        """Per-gate `(coef, center)` for a total pruning weight `weight`."""
        means = _means(gates, codes)
        if self.budget == "layer":
            coefs = np.full(len(gates), weight / len(gates))
            centers = np.array([g.target_rate for g in gates])
        else:
            shares = self.shares(gates)
            miss = float(np.dot(shares, means)) - self.target(gates)
            coefs = weight * shares
            centers = means - miss
        if self.floor:
            floors = np.array([g.min_units / g.units for g in gates])
            centers = np.maximum(centers, floors)
        return coefs, np.clip(centers, 0.0, 1.0)

    def assign(self, gates, weight, codes=None):
        """Write the per-gate terms for total weight `weight` into the gates."""
        coefs, centers = self.terms(gates, weight, codes)
        for gate, c, z in zip(gates, coefs, centers):
            gate.coef.assign(float(c))
            gate.center.assign(float(z))

    def soft_miss(self, gates, codes=None):
        """How far the soft codes' means are from the target.

        This is what lambda can act on; the hard miss only follows once
        alpha has made the codes binary.
        """
        means = _means(gates, codes)
        if self.budget == "global":
            return abs(float(np.dot(self.shares(gates), means)) - self.target(gates))
        return float(np.max(np.abs(means - [g.target_rate for g in gates])))

    def miss(self, gates):
        """How far the hard (0/1) kept fraction is from the target.

        Global budget: `|K_hard - r|`. Layer budget: the worst gate's
        `|kept_i - r_i|`, less half a unit (a gate of 10 units cannot keep
        55%).
        """
        kept = np.array([g.mask().mean() for g in gates])
        if self.budget == "global":
            return abs(float(np.dot(self.shares(gates), kept)) - self.target(gates))
        excess = [max(0.0, abs(k - g.target_rate) - 0.5 / g.units)
                  for k, g in zip(kept, gates)]
        return float(max(excess))

    def get_config(self):
        return {"budget": self.budget, "weighting": self.weighting,
                "floor": self.floor}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _means(gates, codes):
    if codes is None:
        codes = [keras.ops.convert_to_numpy(g.code) for g in gates]
    return np.array([float(np.mean(c)) for c in codes])


def binary_share(gates, tolerance=0.01):
    """Share of all channels whose moving code is within `tolerance` of 0 or 1."""
    codes = np.concatenate([g.scores() for g in gates])
    return float(np.mean(np.minimum(codes, 1.0 - codes) <= tolerance))


def kept_fraction(model_or_gates, threshold=None):
    """Fraction of filters kept by the gates' hard masks.

    Args:
        model_or_gates: a gated model or a list of gates.
        threshold: keep threshold (default: each gate's own).

    Returns:
        A dict: `"overall"` (kept filters / gated filters), `"per_gate"`
        (gate name -> kept fraction) and `"kept"`/`"total"` filter counts.

    Example:

    >>> kept_fraction(gated)["overall"]
    0.6
    """
    gates = (list(model_or_gates) if isinstance(model_or_gates, (list, tuple))
             else gates_of(model_or_gates))
    if not gates:
        raise ValueError(
            "kept_fraction: the model has no AutoPrunerGate; call "
            "keras_autopruner.add_gates(model, target_rate) first."
        )
    masks = [g.mask(threshold) for g in gates]
    kept = int(sum(m.sum() for m in masks))
    total = int(sum(m.size for m in masks))
    return {
        "overall": kept / total,
        "per_gate": {g.name: float(m.mean()) for g, m in zip(gates, masks)},
        "kept": kept,
        "total": total,
    }
