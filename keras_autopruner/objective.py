"""The pruning term L_pru and the kept fraction it drives."""

import numpy as np

from keras_autopruner import budget as budget_lib
from keras_autopruner.gate import gates_of

BUDGETS = ("layer", "global")
WEIGHTINGS = budget_lib.WEIGHTINGS


class PruningObjective:
    """How far the gates' choice is from the budget, and how to push.

    `budget="layer"` (the original method): every gate's mean code is pulled
    towards its own rate, `L_pru = mean_i (m_i - r_i)**2`, and the final
    choice keeps `round(r_i * units_i)` channels of each layer.

    `budget="global"`: one budget for the whole model,
    `L_pru = (K - r)**2`, where `K` is the share of the full model's cost
    that the stripped model keeps and `r` the target rate. The cost is
    `weighting`: `"flops"` (multiply-accumulates, as `count_flops` counts
    them on the stripped model), `"params"` (as `count_params`) or
    `"filters"` (gated channels). So with `weighting="flops"`,
    `add_gates(model, target_rate=0.25)` means "keep 25% of the MACs", and
    layers keep different fractions: the ones whose loss costs the task
    least go first. `K` comes from a `budget.CostModel` of the gated model
    (bound by the callback), which is exact for 0/1 masks.

    Each gate adds `coef * (m - center)**2` to the model's loss. For the
    layer budget that is its own term. For the global budget the term is
    linearised around the current codes: `coef = w * a_i`,
    `center = m_i - (K - r)`, with `a_i` the normalised gradient of `K`
    with respect to gate i's mean code, give every gate the gradient of
    `w * (K - r)**2`; the coupling lives here and the gate stays a plain
    layer.

    Args:
        budget: `"layer"` or `"global"`.
        weighting: `"filters"`, `"flops"` or `"params"` (global budget).
        floor: keep each gate's centre at or above `min_units / units`, so
            that the pruning term never asks a layer to vanish.
    """

    def __init__(self, budget="layer", weighting="flops", floor=True):
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}.")
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {WEIGHTINGS}, got {weighting!r}."
            )
        self.budget = budget
        self.weighting = weighting
        self.floor = bool(floor)
        self.cost = None

    def bind(self, model):
        """Build the cost model of a gated model (global budget only)."""
        if self.budget == "global":
            self.cost = budget_lib.cost_model(model, self.weighting)
        return self

    def _cost(self, gates):
        if self.cost is None or [g.name for g in self.cost.gates] != [
                g.name for g in gates]:
            raise ValueError(
                "The global budget needs the gated model: call "
                "objective.bind(gated) first (AutoPrunerCallback does).")
        return self.cost

    def target(self, gates):
        """The global budget's rate: the gates' rates weighted by cost."""
        rates = np.array([g.target_rate for g in gates])
        if np.all(rates == rates[0]):
            return float(rates[0])
        a = self._cost(gates).gradient([np.ones(g.units) for g in gates])
        return float(np.dot(a, rates) / max(a.sum(), 1e-12))

    def share(self, gates, codes=None):
        """Kept share of the cost: soft for `codes`, hard for the masks."""
        values = codes if codes is not None else [g.mask() for g in gates]
        return self._cost(gates).share(values)

    def value(self, gates, codes=None):
        """L_pru for the gates' moving codes (or `codes`)."""
        codes = _codes(gates, codes)
        if self.budget == "layer":
            means = np.array([np.mean(c) for c in codes])
            rates = np.array([g.target_rate for g in gates])
            return float(np.mean((means - rates) ** 2))
        return float((self.share(gates, codes) - self.target(gates)) ** 2)

    def allocated(self, gates):
        """The per-gate rates the global budget settled on, or None."""
        if self.budget != "global":
            return None
        # `Variable.numpy()`: half the cost of `ops.convert_to_numpy`, and
        # this runs several times per control step.
        rates = np.array([float(g.alloc.numpy()) for g in gates])
        return rates if np.all(rates >= 0) else None

    def allocate(self, gates, codes=None):
        """Fix each gate's share of the global budget from its mean code.

        The global term has decided how much each layer keeps (its mean
        code); from here each gate settles on its own rate, as under the
        per-layer budget, while alpha makes the codes binary. Without this
        step the sharpening codes move the cost share away from a target
        that only the soft means had met. The rates are scaled together so
        that they meet the budget.
        """
        codes = _codes(gates, codes)
        means = np.array([np.mean(c) for c in codes])
        floors = np.array([max(g.min_units, 1) / g.units for g in gates])
        cost, target = self._cost(gates), self.target(gates)

        def rates(scale):
            return np.clip(scale * means, floors, 1.0)

        lo, hi = 0.0, 1.0 / max(means.min(), 1e-6)
        for _ in range(50):
            mid = (lo + hi) / 2
            share = cost.share([np.full(g.units, r)
                                for g, r in zip(gates, rates(mid))])
            lo, hi = (mid, hi) if share <= target else (lo, mid)
        for g, r in zip(gates, rates(lo)):
            g.alloc.assign(float(r))

    def rates(self, gates):
        """Each gate's rate: its own (layer budget) or its allotted share."""
        alloc = self.allocated(gates)
        if alloc is not None:
            return alloc
        return np.array([g.target_rate for g in gates])

    def terms(self, gates, weight, codes=None):
        """Per-gate `(coef, center)` for a total pruning weight `weight`."""
        codes = _codes(gates, codes)
        means = np.array([np.mean(c) for c in codes])
        if self.budget == "layer" or self.allocated(gates) is not None:
            coefs = np.full(len(gates), weight / len(gates))
            centers = self.rates(gates)
        else:
            grad = self._cost(gates).gradient(codes)
            coefs = weight * grad / max(grad.sum(), 1e-12)
            centers = means - (self.share(gates, codes) - self.target(gates))
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
        """How far the soft codes are from the target.

        This is what lambda can act on; the hard miss only follows once
        alpha has made the codes binary. Global budget: relative to the
        target, `|K_soft - r| / r`, so that "within 2%" means the same at
        a budget of 50% or 12%.
        """
        codes = _codes(gates, codes)
        if self.budget == "global" and self.allocated(gates) is None:
            r = self.target(gates)
            return abs(self.share(gates, codes) - r) / r
        means = np.array([np.mean(c) for c in codes])
        return float(np.max(np.abs(means - self.rates(gates))))

    def miss(self, gates):
        """How far the hard (0/1) masks are from the target.

        Global budget: `|K_hard - r| / r`. Layer budget, and the global
        budget once allocated: the worst gate's `|kept_i - r_i|`, less half
        a unit (a gate of 10 units cannot keep 55%).
        """
        if self.budget == "global" and self.allocated(gates) is None:
            r = self.target(gates)
            return abs(self.share(gates) - r) / r
        excess = [max(0.0, abs(g.mask().mean() - r) - 0.5 / g.units)
                  for g, r in zip(gates, self.rates(gates))]
        return float(max(excess))

    def choose(self, gates, tolerance=0.02):
        """The exact final choice, by each channel's moving logit.

        Returns a bool mask per gate that meets the budget: per layer
        `round(r_i * units_i)` channels, or the global cost share within
        `tolerance` (relative) of the target and never above it, the layers
        keeping counts in proportion to their allotted rates (or, before
        allocation, their mean codes); each layer keeps at least its gate's
        `min_units` (and at least 1).
        """
        scores = [g.ranking() for g in gates]
        if self.budget == "layer":
            return budget_lib.exact_choice(gates, scores, None)
        alloc = self.allocated(gates)
        if alloc is None:
            alloc = np.array([np.mean(c) for c in _codes(gates, None)])
        return budget_lib.exact_choice(
            gates, scores, self.target(gates), budget="global",
            cost=self._cost(gates), tolerance=tolerance, allocation=alloc)

    def get_config(self):
        return {"budget": self.budget, "weighting": self.weighting,
                "floor": self.floor}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _codes(gates, codes):
    if codes is None:
        codes = [g.scores() for g in gates]
    return [np.asarray(c, dtype=np.float64) for c in codes]


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
        (gate name -> kept fraction) and `"kept"`/`"total"` filter counts;
        given a flat gated model, also `"flops"` and `"params"`: the share
        of the full model's MACs and parameters the stripped model keeps
        (see `cost_share`).

    Example:

        gated = add_gates(model, target_rate=0.5)
        # ... fit with AutoPrunerCallback ...
        share = kept_fraction(gated)["overall"]   # kept / gated filters
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
    out = {
        "overall": kept / total,
        "per_gate": {g.name: float(m.mean()) for g, m in zip(gates, masks)},
        "kept": kept,
        "total": total,
    }
    if not isinstance(model_or_gates, (list, tuple)):
        # The filter share alone misleads under a MAC budget (0.575 of the
        # filters kept 0.248 of the MACs); a model gives the costs too.
        from keras_autopruner.masks import cost_share
        try:
            shares = cost_share(model_or_gates, masks={
                g.name: m for g, m in zip(gates, masks)})
        except ValueError:  # nested gated models: no cost model
            shares = {}
        out.update({k: shares[k] for k in ("flops", "params") if k in shares})
    return out
