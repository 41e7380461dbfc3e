"""What a choice of kept channels costs, and the exact choice for a budget.

`CostModel` predicts the multiply-accumulates, parameters or filter count
of the model that `strip` would build from a gated model, for any per-gate
keep values: 0/1 masks (then the prediction is what `count_flops` /
`count_params` report on the stripped model) or soft codes (a smooth
surrogate that the global budget's pruning term follows during training).

It rests on the channel graph (`graph.ChannelGraph`): every layer's cost
is split into a part that scales with the share of its input channels
kept, a part that scales with the share of its output channels kept, a
part that scales with both (a kernel) and a fixed part. A channel group is
kept when any of its channels is kept (branches joined by `Add` keep the
union, as `strip` does) or when strip needs it whatever the gates keep.

`exact_choice` turns gate scores into masks that meet a budget exactly:
per layer `round(rate * units)` channels, or a global cost within a
tolerance of `rate * full cost`, never fewer than `min_units` in a layer.
"""

import keras
import numpy as np

from keras_autopruner import registry
from keras_autopruner.gate import AutoPrunerGate
from keras_autopruner.graph import ChannelGraph

WEIGHTINGS = ("filters", "flops", "params")


class CostModel:
    """The stripped model's cost as a function of what each gate keeps.

    Args:
        gated: a flat gated model (as returned by `add_gates`).
        weighting: `"flops"` (multiply-accumulates, as `count_flops`),
            `"params"` (stored weights, as `count_params`) or `"filters"`
            (gated channels, each counting 1).

    Keep values are given one array per gate in the order of `gates`
    (which is `gates_of(gated)`'s), or as a dict by gate name.

    Attributes:
        gates: the gates, in graph order.
        full: the cost with every channel kept (the model without gates).

    Example:

        cost = CostModel(gated, "flops")
        masks = [g.mask() for g in cost.gates]
        share = cost.share(masks)   # stripped MACs / full MACs
    """

    def __init__(self, gated, weighting="flops"):
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
        self.weighting = weighting
        graph = ChannelGraph(gated)
        self.gates = graph.gate_layers()
        if not self.gates:
            raise ValueError(
                f"CostModel: model {gated.name!r} has no AutoPrunerGate.")
        n_atoms = len(graph._parent)
        self._root = graph.groups(np.arange(n_atoms))
        # Which gate channel each atom is, if any.
        self._gate_atoms = [graph.gate_channels(g.name) for g in self.gates]
        # Always kept: the groups strip needs even when every gate drops
        # every channel (read without a gate, or after a layer that turns
        # a zero channel into a non-zero one: a biased depthwise conv, a
        # batch norm behind the gate), and the channels of layers strip
        # cannot narrow. A channel no gate multiplies but a gate's zero
        # reaches (an excitation multiplied by gated features) goes with
        # its group.
        zeros = {g.name: np.zeros(g.units) for g in self.gates}
        self._free = graph.needed(zeros, check=False)[self._root]
        for _, atoms in graph._frozen:
            self._free[atoms] = True

        rows = []  # (in atoms or None, out atoms or None, io, i, o, const)
        if weighting == "filters":
            for atoms in self._gate_atoms:
                rows.append((None, atoms, 0.0, 0.0, float(len(atoms)), 0.0))
        else:
            per_layer = _flop_counts(gated) if weighting == "flops" else None
            seen = set()
            for op in graph.ops:
                layer = op.layer
                if isinstance(layer, AutoPrunerGate) or id(layer) in seen:
                    continue
                seen.add(id(layer))
                node = op.node
                a_in = (graph.channels.get(id(node.input_tensors[0]))
                        if node.input_tensors else None)
                a_out = graph.channels.get(id(node.outputs[0]))
                a_in = a_in if a_in is not None and len(a_in) else None
                a_out = a_out if a_out is not None and len(a_out) else None
                record = registry.lookup(layer) or registry.LayerType()
                if weighting == "flops":
                    parts = record.flop_parts(
                        layer, op.kind, per_layer.get(layer.name, 0))
                else:
                    parts = record.param_parts(layer, op.kind)
                if any(parts):
                    rows.append((a_in, a_out) + _place(parts, a_in, a_out))
        self._index_in = _Means([r[0] for r in rows])
        self._index_out = _Means([r[1] for r in rows])
        coef = np.array([r[2:] for r in rows], dtype=np.float64)
        self._io, self._i, self._o, self._c = coef.T if len(rows) else (
            np.zeros(0),) * 4
        self.full = self.cost([np.ones(g.units) for g in self.gates])

    def _by_gate(self, values):
        """`values` as a list in `gates` order; a dict is read by gate name."""
        if isinstance(values, dict):
            missing = [g.name for g in self.gates if g.name not in values]
            extra = sorted(set(values) - {g.name for g in self.gates})
            if missing or extra:
                raise ValueError(
                    f"CostModel: values are given by gate name, but gates "
                    f"{missing} are missing and {extra} are not gates of "
                    f"this model. Its gates: {[g.name for g in self.gates]}.")
            return [values[g.name] for g in self.gates]
        values = list(values)
        if len(values) != len(self.gates) or any(
                np.size(v) != g.units for v, g in zip(values, self.gates)):
            raise ValueError(
                "CostModel: give one array per gate, in the order of "
                "CostModel.gates (that of gates_of(model)), each as long as "
                "its gate has channels, or a dict by gate name.")
        return values

    def keep_of_atoms(self, values):
        """Per-atom keep value for per-gate keep values (lists of arrays).

        A group keeps the largest value of its channels; channels kept
        whatever the gates do count as 1, other channels no gate
        multiplies as 0.
        """
        keep = np.zeros(len(self._free))
        for atoms, v in zip(self._gate_atoms, self._by_gate(values)):
            keep[atoms] = np.asarray(v, dtype=np.float64)
        keep[self._free] = 1.0
        group = np.zeros(len(keep))
        np.maximum.at(group, self._root, keep)
        return group[self._root]

    def cost(self, values):
        """Predicted cost for per-gate keep values (0/1 masks or codes)."""
        p = self.keep_of_atoms(values)
        f_in, f_out = self._index_in(p), self._index_out(p)
        return float(np.sum(self._io * f_in * f_out + self._i * f_in
                            + self._o * f_out + self._c))

    def channel_groups(self):
        """Per gate (in `gates` order), the coupled group of each channel.

        Two channels with the same group id are one channel to `strip`
        (the branches of an `Add`, say): kept if either gate keeps it.
        """
        return [self._root[a] for a in self._gate_atoms]

    def share(self, values):
        """`cost(values) / full`: the kept share of the full model's cost."""
        return self.cost(values) / self.full

    def gradient(self, values, eps=1e-3):
        """d share / d (mean keep value of gate g), one entry per gate.

        Taken by moving all of a gate's values down by `eps` together, so
        it is what lowering that gate's mean code saves.
        """
        values = self._by_gate(values)
        base = self.share(values)
        grad = np.zeros(len(self.gates))
        for g, v in enumerate(values):
            moved = list(values)
            moved[g] = np.asarray(v, dtype=np.float64) - eps
            grad[g] = (base - self.share(moved)) / eps
        return grad


class _Means:
    """Mean of a per-atom vector over each row's atoms (1 where no atoms)."""

    def __init__(self, atom_lists):
        self.rows = len(atom_lists)
        self.has = np.array([a is not None for a in atom_lists], bool)
        lists = [np.asarray(a, np.int64) for a in atom_lists if a is not None]
        self.index = (np.concatenate(lists) if lists
                      else np.zeros(0, np.int64))
        self.lengths = np.array([len(a) for a in lists], np.float64)
        self.starts = np.concatenate(
            [[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64) \
            if lists else np.zeros(0, np.int64)

    def __call__(self, p):
        out = np.ones(self.rows)
        if len(self.lengths):
            sums = np.add.reduceat(p[self.index], self.starts)
            out[self.has] = sums / self.lengths
        return out


def _flop_counts(model):
    from keras_autopruner.metrics import UnknownSizeError, count_flops

    try:
        return dict(count_flops(model).per_layer)
    except UnknownSizeError as error:
        raise UnknownSizeError(error.where, error.shape, fix=(
            "A MAC budget is a share of a count that depends on those "
            "sizes. Budget parameters instead (PruningObjective('global', "
            "weighting='params')) or channels (weighting='filters', or "
            "objective='layer'), which do not depend on them; or build the "
            "model with a fixed example shape, e.g. keras.Input((100, 4)), "
            "and load the trained weights into it (a Dense or convolution's "
            "weights fit any length).")) from None


def _place(parts, a_in, a_out):
    """Move the parts whose channel axis is missing into the fixed part."""
    both, ins, outs, fixed = parts
    if a_in is None and a_out is None:
        return (0.0, 0.0, 0.0, both + ins + outs + fixed)
    if a_in is None:
        return (0.0, 0.0, both + outs, ins + fixed)
    if a_out is None:
        return (0.0, both + ins, 0.0, outs + fixed)
    return (both, ins, outs, fixed)


def exact_choice(gates, scores, rate, *, budget="layer", cost=None,
                 tolerance=0.02, allocation=None):
    """Masks that meet the budget exactly, chosen by score.

    Args:
        gates: the gates (their `units`, `target_rate`, `min_units`).
        scores: per gate, an array of channel scores; higher is kept first.
        rate: the global budget as a share of the full cost (ignored for the
            layer budget, where each gate's own `target_rate` counts).
        budget: `"layer"`: each gate keeps `round(target_rate * units)`
            channels, at least `min_units`. `"global"`: gate g keeps its
            `round(s * allocation[g] * units)` best channels, with the one
            scale `s` that makes the predicted cost (`cost`, a `CostModel`)
            as large as fits in `rate * cost.full`; then the next-best
            channels of any gate are added while they fit, until the cost is
            within `tolerance` (relative) of the budget.
        cost: the `CostModel` of the global budget.
        tolerance: relative distance to the global budget that is good
            enough.
        allocation: per-gate kept fractions to scale (global budget;
            default: all equal).

    Returns:
        A list of bool arrays, one per gate.

    Raises:
        ValueError: the global budget is below what `min_units` alone costs.
    """
    scores = [np.asarray(s, dtype=np.float64) for s in scores]
    floors = [min(max(int(g.min_units), 1 if g.units else 0), g.units)
              for g in gates]
    if budget == "layer":
        return [_top(s, min(g.units, max(f, int(round(g.target_rate
                                                        * g.units)))))
                for g, s, f in zip(gates, scores, floors)]
    if cost is None:
        raise ValueError("The global budget needs a CostModel.")
    limit = float(rate) * cost.full
    units = np.array([g.units for g in gates])
    alloc = (np.ones(len(gates)) if allocation is None
             else np.clip(np.asarray(allocation, np.float64), 1e-6, 1.0))

    def counts(scale):
        return np.clip(np.round(scale * alloc * units), floors, units)

    def masks_for(ks):
        return [_top(s, int(k)) for s, k in zip(scores, ks)]

    if cost.cost(masks_for(counts(0.0))) > limit * (1 + 1e-9):
        raise ValueError(
            f"The budget ({rate:.3f} of the full cost) is below what the "
            f"layers' min_units alone cost "
            f"({cost.cost(masks_for(counts(0.0))) / cost.full:.3f}): the "
            "gated layers hold too small a share of the cost. Raise "
            "target_rate, lower min_units in add_gates, or see which layers "
            "are gated and why the others are not with "
            "keras_autopruner.plan(model).")
    lo, hi = 0.0, 1.0 / alloc.min()
    for _ in range(40):  # the largest common scale that fits
        mid = (lo + hi) / 2
        if cost.cost(masks_for(counts(mid))) <= limit:
            lo = mid
        else:
            hi = mid
    ks, _ = fill_to_budget(
        [int(k) for k in counts(lo)], scores,
        lambda ks: cost.cost(masks_for(ks)), limit,
        enough=limit * (1 - tolerance / 2))
    return masks_for(ks)


def fill_to_budget(ks, scores, cost_of, limit, enough=None, frozen=None):
    """Add channels one at a time, the best next one that fits first.

    Gate g keeps its `ks[g]` best-scoring channels; each round adds the
    channel with the highest score among the gates' next-best ones whose
    addition keeps `cost_of(ks)` within `limit`.

    Args:
        ks: channels kept per gate.
        scores: per gate, an array of channel scores.
        cost_of: kept counts -> cost.
        limit: the most cost allowed.
        enough: stop once the cost reaches this (default `limit`: go on
            while anything fits).
        frozen: a gate index that gets no channel.

    Returns:
        The new counts and their cost.
    """
    ks = list(ks)
    units = [len(s) for s in scores]
    best_first = [np.sort(s)[::-1] for s in scores]
    enough = limit if enough is None else enough
    spent = cost_of(ks)
    while spent < enough:
        options = sorted((g for g in range(len(ks))
                          if g != frozen and ks[g] < units[g]),
                         key=lambda g: -best_first[g][ks[g]])
        for g in options:
            ks[g] += 1
            trial = cost_of(ks)
            if trial <= limit:
                spent = trial
                break
            ks[g] -= 1
        else:
            break  # nothing fits any more
    return ks, spent


def _top(scores, k):
    mask = np.zeros(len(scores), bool)
    if k > 0:
        # A stable sort keeps the lower index first among equal scores.
        mask[np.argsort(-scores, kind="stable")[:k]] = True
    return mask


def cost_model(gated, weighting):
    """A `CostModel`, refusing models whose gates are nested."""
    if any(isinstance(layer, keras.Model) for layer in gated.layers):
        raise ValueError(
            "A global budget needs the flat gated model that add_gates "
            f"returns; {gated.name!r} nests models. Gate the inner model "
            "with add_gates (it flattens) and train that, or use the "
            "per-layer budget: AutoPrunerCallback(objective='layer').")
    return CostModel(gated, weighting)
