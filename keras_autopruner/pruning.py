"""`prune`: one-shot pruning by an importance criterion, to an exact budget.

    gate the model -> score every channel -> exact choice -> strip

The choice is the one `AutoPrunerCallback` ends with (`budget.exact_choice`),
so the budgets mean the same: per layer `round(r * units)` channels, or a
global share of MACs / parameters / filters within `tolerance` of `r` and
never above it, never fewer than `min_units` channels in a layer.

Scores are normalised per gate (`Importance.normalise`), then per
coupled group (`coupled_scores`): gates whose channels strip couples rank
them by their mean score, so they keep the same channels.

How a global budget is split over the layers is `allocation`:

- `"uniform"` (default): every layer keeps the same share of its channels,
  the one share that meets the budget (what `exact_choice` does without an
  allocation); the criterion picks the channels within each layer, and
  the last few channels that fill the budget go to the best-scoring ones
  across layers (after `Importance.normalise` and `coupled_scores`).
- `"threshold"`: one threshold on the normalised scores across all layers
  sets each layer's share: the channels above it are as many as the budget
  affords; `exact_choice` then scales those shares together until the cost
  fits and fills the rest. This is global magnitude pruning; on vgg_small
  it cut the first convolution to 1 of 16 filters under 'l1' (its 9-weight
  filters' norms spread far more than the deeper layers'), and after
  fine-tuning it was worse than "uniform" for every criterion measured
  (BUILD_NOTES.md, issue 17).
"""

import warnings

import keras
import numpy as np

from keras_autopruner import importance as importance_lib
from keras_autopruner.budget import CostModel, exact_choice, fill_to_budget
from keras_autopruner.gate import check_rate, gates_of
from keras_autopruner.objective import PruningObjective


ALLOCATIONS = ("uniform", "threshold")


class _Spec:
    """What `exact_choice` reads of a gate, with the rate of this call."""

    def __init__(self, gate, rate):
        self.name = gate.name
        self.units = int(gate.units)
        self.min_units = int(gate.min_units)
        self.target_rate = float(rate)


def prune(model, importance="l1", target_rate=0.25, objective=None,
          data=None, *, allocation="uniform", tolerance=0.02,
          **add_gates_kwargs):
    """Prune `model` in one shot by an importance criterion.

    Gates the model (`add_gates`), scores every channel with the
    criterion, chooses the kept channels so that the budget holds exactly
    and returns the stripped model. The model passed in is not changed.

    Args:
        model: a Keras model without gates, or a gated model (from
            `add_gates`, say trained with `AutoPrunerCallback`, for
            `importance="autopruner"`); a gated model is copied, not
            changed, and takes no `add_gates_kwargs`.
        importance: a criterion name (`"autopruner"`, `"l1"`, `"l2"`,
            `"bn"`, `"taylor"`, `"random"`) or an `Importance` instance.
        target_rate: what to keep, in (0, 1]: the share of the cost for a
            global budget, the share of each layer's filters for
            `objective="layer"`.
        objective: a `PruningObjective` or `"layer"` / `"global"`. Default
            `PruningObjective("global", weighting="flops")`: keep
            `target_rate` of the MACs.
        data: batches for criteria that need data (`"taylor"`): a tuple
            `(x, y)` of arrays or an iterable of `(x, y)` batches.
        allocation: how a global budget is split over the layers:
            `"uniform"` (each keeps the same share of its channels) or
            `"threshold"` (one threshold on the normalised scores); see the
            module docstring.
        tolerance: a global budget is met within this share of the target
            (relative), never above it.
        **add_gates_kwargs: passed to `add_gates` (`include`, `exclude`,
            `min_units`, `rates` for the layer budget, ...).

    Returns:
        A `PrunedModel` (see `strip`); its `pruning_report` compares it with
        the model.

    Raises:
        ValueError: an unknown criterion or objective; a criterion that
            needs `data` has none; the budget is below what `min_units`
            alone costs.

    Example:

        compact = kap.prune(model, importance="l1", target_rate=0.25,
                            objective=kap.PruningObjective("global",
                                                           weighting="flops"))
        print(compact.pruning_report)
        compact.compile("adam", "sparse_categorical_crossentropy")
        compact.fit(x, y, epochs=2)      # fine-tune
    """
    from keras_autopruner.surgery import strip

    gated, criterion, masks = _choose(model, importance, target_rate,
                                      objective, data, allocation, tolerance,
                                      add_gates_kwargs)
    for gate in gates_of(gated):
        gate.set_mask(masks[gate.name])
    # A model pruned again (prune_iteratively) keeps one suffix.
    base = model.name.removesuffix("_gated").removesuffix("_pruned")
    compact = strip(gated, name=base + "_pruned")
    compact.pruning_report.notes.append(
        f"kap.prune: importance {criterion!r}, target_rate {target_rate}.")
    return compact


def prune_iteratively(model, importance="l1", target_rate=0.25,
                      objective=None, data=None, *, rounds=3, fine_tune=None,
                      allocation="uniform", tolerance=0.02,
                      **add_gates_kwargs):
    """Prune in `rounds` steps, fine-tuning between them.

    Round k of n keeps `target_rate ** (k / n)` of the original model's
    cost (a geometric path down to the budget), cut from the previous
    round's stripped model by `prune` with the criterion scored afresh on
    the fine-tuned weights. Between rounds `fine_tune(model, k)` trains the
    round's model (compile and fit it there); after the last round the
    returned model is fine-tuned by the caller, as after `prune`. The
    final budget holds against the original model: within `tolerance` of
    `target_rate`, never above it.

    Args:
        model: a Keras model without gates.
        importance: a criterion name or `Importance` instance (see `prune`).
        target_rate: the share of the original model's MACs (or
            parameters, with `weighting="params"`) to keep, in (0, 1].
        objective: a global `PruningObjective` (default: MACs), or
            `"global"`. The per-layer budget and the filter weighting are
            refused: a share of each layer's filters is not a share of a
            model that earlier rounds already narrowed.
        data: batches for criteria that need data (see `prune`).
        rounds: number of cuts, at least 1 (1: the same as `prune`).
        fine_tune: `fine_tune(model, k)`, called after rounds 1 to
            `rounds - 1` with that round's stripped model; None trains
            nothing between rounds.
        allocation: `"uniform"` or `"threshold"` (see `prune`).
        tolerance: the budget's relative tolerance.
        **add_gates_kwargs: passed to `add_gates` at every round.

    Returns:
        The last round's `PrunedModel`; its `pruning_report` compares it
        with the previous round's model, and its notes give each round's
        share of the original cost.

    Example:

        def fine_tune(m, k):
            m.compile("adam", "sparse_categorical_crossentropy")
            m.fit(x, y, epochs=1)

        compact = kap.prune_iteratively(model, "l1", 0.25, rounds=3,
                                        fine_tune=fine_tune)
    """
    from keras_autopruner.metrics import count_flops, count_params

    objective = _objective(objective)
    check_rate(target_rate)
    if objective.budget != "global" or objective.weighting == "filters":
        raise ValueError(
            "prune_iteratively needs a global budget of MACs or parameters "
            "(PruningObjective('global', weighting='flops' or 'params')); "
            f"got {objective!r}. For a per-layer budget use kap.prune.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(
            f"rounds must be a whole number >= 1 (e.g. 3), got {rounds!r}.")
    if fine_tune is not None and not callable(fine_tune):
        raise ValueError(
            "fine_tune must be a function (model, round) -> None that "
            f"compiles and trains the round's model; got {fine_tune!r}.")
    if gates_of(model):
        raise ValueError(
            f"prune_iteratively: {model.name!r} is gated; pass the ungated "
            "model (each round gates the previous round's model itself).")

    def cost(m):
        return float(count_flops(m).total if objective.weighting == "flops"
                     else count_params(m))

    full = cost(model)
    current, here, notes = model, 1.0, []
    for k in range(1, rounds + 1):
        goal = float(target_rate) ** (k / rounds)
        # The share of the current model that leaves `goal` of the
        # original; the last round's tolerance is the original's.
        share = min(1.0, goal / here)
        current = prune(current, importance, share, objective, data,
                        allocation=allocation, tolerance=tolerance,
                        **add_gates_kwargs)
        here = cost(current) / full
        notes.append(f"round {k}/{rounds}: {here:.4f} of the original "
                     f"{objective.weighting} (goal {goal:.4f})")
        if k < rounds and fine_tune is not None:
            fine_tune(current, k)
    current.pruning_report.notes.extend(
        [f"kap.prune_iteratively: importance {importance!r}, target_rate "
         f"{target_rate}, {rounds} rounds."] + notes)
    return current


def select_masks(gated, importance, objective, target_rate, data=None, *,
                 allocation="uniform", tolerance=0.02):
    """The exact choice by a criterion's scores: `{gate_name: bool mask}`.

    Args:
        gated: a flat gated model (from `add_gates`).
        importance: a criterion name or `Importance` instance.
        objective: a `PruningObjective` or `"layer"` / `"global"`.
        target_rate: the budget (see `prune`); under the layer budget every
            gate keeps `round(target_rate * units)` (None: each gate's own
            `target_rate`).
        data: batches for criteria that need data.
        allocation: `"uniform"` or `"threshold"` (see `prune`).
        tolerance: the global budget's tolerance.

    Returns:
        A dict from gate name to bool mask, ready for `gate.set_mask`.

    Example:

        gated = kap.add_gates(model, 0.5)
        masks = select_masks(gated, "l2", "global", 0.5)
        for g in kap.gate.gates_of(gated):
            g.set_mask(masks[g.name])
    """
    criterion = importance_lib.get(importance)
    objective = _objective(objective)
    if allocation not in ALLOCATIONS:
        raise ValueError(
            f"allocation must be one of {ALLOCATIONS}, got {allocation!r}.")
    if target_rate is not None or objective.budget == "global":
        check_rate(target_rate)
    gates = gates_of(gated)
    if not gates:
        raise ValueError(
            f"select_masks: model {gated.name!r} has no AutoPrunerGate; "
            "gate it with keras_autopruner.add_gates first.")
    if criterion.needs_data and data is None:
        raise ValueError(
            f"The {criterion!r} criterion needs data: pass data=(x, y) or an "
            "iterable of (x, y) batches.")
    raw = criterion.scores(gated, gates, data)
    scores = criterion.normalise(_checked_scores(criterion, raw, gates))
    cost = CostModel(gated, objective.weighting)
    scores = coupled_scores(cost, scores)
    if objective.budget == "layer":
        specs = [_Spec(g, g.target_rate if target_rate is None
                       else target_rate) for g in gates]
        masks = exact_choice(specs, [scores[g.name] for g in gates], None)
        return {g.name: m for g, m in zip(gates, masks)}
    # CostModel's gate order need not be gates_of's: pair by name.
    specs = [_Spec(g, target_rate) for g in cost.gates]
    ordered = [scores[s.name] for s in specs]
    alloc = (_threshold_allocation(specs, ordered, cost, target_rate)
             if allocation == "threshold" else None)
    masks = exact_choice(specs, ordered, target_rate, budget="global",
                         cost=cost, tolerance=tolerance, allocation=alloc)
    masks = _refine(specs, ordered, masks, cost,
                    float(target_rate) * cost.full, tolerance)
    share = cost.share(masks)
    if share < float(target_rate) * (1 - tolerance):
        warnings.warn(
            f"The chosen channels keep {share:.4f} of the "
            f"{objective.weighting}, below the budget {target_rate} less "
            f"its tolerance {tolerance}: the search found no choice of whole "
            "channels closer without going over (in a small network one "
            "channel can cost more than the tolerance).", UserWarning,
            stacklevel=3)
    return {s.name: m for s, m in zip(specs, masks)}


def coupled_scores(cost, scores):
    """Scores made comparable within and across coupled groups.

    Gates whose channels `strip` couples (the branches of an `Add`, a
    channel read by two gated layers) score one channel several times: it
    is kept if any of them keeps it. Each coupled channel's score becomes
    the mean of its gates' (normalised) scores, so the coupled gates rank
    their channels alike and keep the same ones instead of a union wider
    than either. Every set of gates linked by shared channels is then
    divided by its largest score, as `Importance.normalise` does for one
    gate, before any comparison across groups. An uncoupled gate's scores
    are left as they are.

    Args:
        cost: the gated model's `CostModel` (its `channel_groups`).
        scores: `{gate_name: array}`, normalised per gate.

    Returns:
        A new `{gate_name: float64 array}`.
    """
    groups = cost.channel_groups()
    names = [g.name for g in cost.gates]
    values = [np.asarray(scores[n], np.float64) for n in names]
    total, count = {}, {}
    owner = {}  # channel group -> the first gate holding it
    parent = list(range(len(names)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (g, v) in enumerate(zip(groups, values)):
        for root, x in zip(g.tolist(), v.tolist()):
            total[root] = total.get(root, 0.0) + x
            count[root] = count.get(root, 0) + 1
            if root in owner:
                parent[find(i)] = find(owner[root])
            else:
                owner[root] = i
    if all(c == 1 for c in count.values()):
        return {n: v.copy() for n, v in zip(names, values)}
    mean = [np.array([total[r] / count[r] for r in g.tolist()])
            for g in groups]
    top = {}
    for i, m in enumerate(mean):
        if m.size:
            top[find(i)] = max(top.get(find(i), 0.0), float(m.max()))
    out = {}
    for i, (n, m) in enumerate(zip(names, mean)):
        t = top.get(find(i), 0.0)
        out[n] = m / t if t > 0 else m
    return out


def _choose(model, importance, target_rate, objective, data, allocation,
            tolerance, add_gates_kwargs):
    from keras_autopruner.instrument import add_gates

    criterion = importance_lib.get(importance)
    objective = _objective(objective)
    check_rate(target_rate)
    if gates_of(model):
        if add_gates_kwargs:
            raise ValueError(
                f"prune: {model.name!r} is already gated, so add_gates "
                f"arguments ({', '.join(sorted(add_gates_kwargs))}) do not "
                "apply. Drop them, or pass the ungated model.")
        gated = _copy(model)
    else:
        if objective.budget == "global" and add_gates_kwargs.get("rates"):
            raise ValueError(
                "prune: rates= sets per-layer rates, but a global budget has "
                "one rate (target_rate). Use objective='layer', or drop "
                "rates.")
        gated = add_gates(model, target_rate, **add_gates_kwargs)
        if getattr(model, "loss", None) is not None:
            # For criteria that need the model's loss (Taylor).
            gated.compile(loss=model.loss)
    # An ungated model's gates carry target_rate (and any `rates`); a
    # gated one is pruned to the target_rate asked for now.
    rate = (None if objective.budget == "layer" and not gates_of(model)
            else target_rate)
    masks = select_masks(gated, criterion, objective, rate, data,
                         allocation=allocation, tolerance=tolerance)
    return gated, criterion, masks


def _objective(objective):
    if objective is None:
        return PruningObjective("global", weighting="flops")
    if isinstance(objective, str):
        return PruningObjective(objective)
    if isinstance(objective, PruningObjective):
        return objective
    raise ValueError(
        "objective must be a PruningObjective, 'layer' or 'global'; got "
        f"{objective!r}.")


def _checked_scores(criterion, raw, gates):
    if not isinstance(raw, dict):
        raise ValueError(
            f"{criterion!r}.scores must return a dict {{gate_name: array}}; "
            f"got {type(raw).__name__}.")
    out = {}
    for g in gates:
        if g.name not in raw:
            raise ValueError(
                f"{criterion!r}.scores returned no scores for gate "
                f"{g.name!r}; it must score every gate it is given.")
        s = np.asarray(raw[g.name], np.float64).reshape(-1)
        if s.shape != (g.units,) or not np.all(np.isfinite(s)):
            raise ValueError(
                f"{criterion!r}.scores for gate {g.name!r} must be "
                f"{g.units} finite numbers; got shape "
                f"{np.shape(raw[g.name])}"
                f"{'' if np.all(np.isfinite(s)) else ' with NaN or inf'}.")
        out[g.name] = s
    return out


def _threshold_allocation(specs, scores, cost, rate):
    """Per-gate kept fractions at the one score threshold that fits the
    budget: the most channels, best normalised score first across all
    gates, each gate keeping at least its floor."""
    flat = np.concatenate(scores)
    order = np.argsort(-flat, kind="stable")
    starts = np.concatenate([[0], np.cumsum([s.units for s in specs])])
    floors = [min(max(s.min_units, 1), s.units) for s in specs]
    best = [starts[i] + np.argsort(-sc, kind="stable")[:f]
            for i, (sc, f) in enumerate(zip(scores, floors))]
    limit = float(rate) * cost.full

    def masks_for(k):
        keep = np.zeros(flat.size, bool)
        keep[order[:k]] = True
        for b in best:
            keep[b] = True
        return [keep[starts[i]:starts[i + 1]] for i in range(len(specs))]

    lo, hi = 0, flat.size  # cost grows with k: the largest k that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost.cost(masks_for(mid)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return np.array([m.mean() for m in masks_for(lo)])


def _refine(specs, scores, masks, cost, limit, tolerance, reach=4,
            rounds=4):
    """Close a gap to the budget that single channels cannot close.

    `exact_choice` adds one channel at a time while it fits; in a small
    network one channel can cost more than the tolerance, and the choice
    stops short (a 5,000-parameter net: 0.293 for a budget of 0.3, each
    channel 0.8% of the parameters). Trading up to `reach` of one gate's
    weakest channels for the best channels of the others that fit then
    meets it. Each gate still keeps its best-scoring channels.
    """
    spent = cost.cost(masks)
    if spent >= limit * (1 - tolerance):
        return masks
    units = [s.units for s in specs]
    floors = [min(max(s.min_units, 1), s.units) for s in specs]
    order = [np.argsort(-sc, kind="stable") for sc in scores]

    def masks_of(ks):
        out = []
        for o, k, n in zip(order, ks, units):
            m = np.zeros(n, bool)
            m[o[:k]] = True
            out.append(m)
        return out

    def fill(ks, frozen):
        return fill_to_budget(ks, scores, lambda ks: cost.cost(masks_of(ks)),
                              limit, frozen=frozen)

    best = [int(m.sum()) for m in masks]
    for _ in range(rounds):
        start = spent
        for a in range(len(best)):
            for d in range(1, reach + 1):
                if best[a] - d < floors[a]:
                    break
                trial = list(best)
                trial[a] -= d
                trial, value = fill(trial, a)
                if spent < value <= limit:
                    best, spent = trial, value
        if spent >= limit * (1 - tolerance) or spent == start:
            break
    return masks_of(best)


def _copy(gated):
    copy = keras.models.clone_model(gated)
    copy.set_weights(gated.get_weights())
    return copy
