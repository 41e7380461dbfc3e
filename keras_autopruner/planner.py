"""The plan: which prunable layers get a gate, and why the others do not.

`add_gates` places a gate only where `strip` can later cut exactly, so
that a run never trains for minutes and then fails. The plan is worked out
on the model itself, before any training, with the same channel graph that
`strip` uses:

1. Every prunable layer (Conv, Dense, `TimeDistributed(Dense)`, ... see
   the registry) is a candidate unless it is excluded, its channels are a
   model output, it is the excitation of a squeeze-and-excitation block,
   or it is channels_first.
2. A trial gate goes behind each candidate, and every trial gate removes
   all of its channels at once: the most any run could remove. A layer
   that `strip` cannot narrow (a `LayerNormalization`, a `Lambda`,
   attention, a mean over the channels) that would then lose channels
   names the gates whose channels reach it; they are dropped, and the
   test repeats until nothing is lost.
3. A gate none of whose channels could go even then (they are added to
   channels no gate removes, say) is dropped: it could only cost time.
4. A gate whose zeros may have to be kept, because another branch still
   uses the channel, needs a place to fold the zero into (a batch norm or
   the layer's kernel, behind activations that map 0 to 0); without one it
   is dropped.

Whatever survives, `strip` cuts exactly for any masks the gates choose
(`tests/test_plan.py` checks this over generated graphs and the model
zoo).

Example:

>>> import keras
>>> x = keras.Input((16,))
>>> h = keras.layers.Dense(32, activation="relu", name="hidden")(x)
>>> n = keras.layers.LayerNormalization(name="norm")(
...     keras.layers.Dense(8, name="proj")(h))
>>> y = keras.layers.Dense(3, name="head")(n)
>>> p = plan(keras.Model(x, y))
>>> [row.layer for row in p.rows if row.gated]
['hidden']
>>> p.row("proj").reason.startswith("its channels reach 'norm'")
True
"""

import dataclasses

import numpy as np

from keras_autopruner import registry, tracing
from keras_autopruner.gate import AutoPrunerGate, check_rate
from keras_autopruner.metrics import UnknownSizeError


@dataclasses.dataclass
class PlanRow:
    """One prunable layer of the plan.

    Attributes:
        layer: the layer's name in the user's model.
        type: its class name.
        width: its number of filters or units.
        gated: whether `add_gates` gates it.
        reason: why not, when it is not gated.
        macs_share: the share of the model's MACs that would go if every
            channel of this layer went (the most pruning it can save),
            for the layers that were gate candidates; None for the rest.
    """

    layer: str
    type: str
    width: int
    gated: bool
    reason: str = ""
    macs_share: object = None


@dataclasses.dataclass
class Plan:
    """Where `add_gates` puts gates, one row per prunable layer.

    Attributes:
        model: the name of the planned model.
        rows: `PlanRow`s in graph order.
    """

    model: str
    rows: list

    @property
    def gated(self):
        """Names of the layers that get a gate, in graph order."""
        return [r.layer for r in self.rows if r.gated]

    def row(self, layer):
        """The row of the layer named `layer`."""
        for r in self.rows:
            if r.layer == layer:
                return r
        raise ValueError(
            f"The plan of {self.model!r} has no prunable layer {layer!r}; "
            f"its prunable layers: {[r.layer for r in self.rows]}.")

    def table(self):
        """The plan as a plain-text table."""
        head = ("layer", "type", "width", "gated", "MACs", "why not")
        body = [(r.layer, r.type, str(r.width), "yes" if r.gated else "no",
                 "-" if r.macs_share is None else f"{r.macs_share:.1%}",
                 r.reason) for r in self.rows]
        widths = [max(len(x[i]) for x in [head] + body) for i in range(5)]
        lines = []
        for cells in [head] + body:
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths))
                         + "  " + cells[5])
        n = sum(r.gated for r in self.rows)
        lines.append(f"{n} of {len(self.rows)} prunable layers gated")
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self):
        return self.table()


def plan(model, target_rate=0.5, *, include=None, exclude=None,
         include_output=False, min_units=1, rates=None):
    """The plan `add_gates` follows for `model` with these arguments.

    Args:
        model: a built Sequential or functional Keras model.
        target_rate, include, exclude, include_output, min_units, rates:
            as for `add_gates`.

    Returns:
        A `Plan`: print it for a table of every prunable layer, its width,
        whether it is gated, why not, and the share of MACs it controls.

    Raises:
        ValueError, TypeError: the arguments `add_gates` would refuse.
    """
    flat, layer_map = tracing.rebuild(model)
    return make_plan(model, flat, layer_map, target_rate, include=include,
                     exclude=exclude, include_output=include_output,
                     min_units=min_units, rates=rates)[0]


def make_plan(model, flat, layer_map, target_rate, *, include, exclude,
              include_output, min_units, rates):
    """The plan of `model`, worked out on its flat copy `flat`.

    Returns:
        `(plan, selected)`: the `Plan`, and `id(layer) -> (prunable layer
        of flat, rate)` for each layer of `flat` behind which a gate goes.
    """
    check_rate(target_rate)
    rates = dict(rates or {})
    for layer_name, rate in rates.items():
        check_rate(rate, f"rates[{layer_name!r}]")
    min_units = _check_min_units(min_units)
    by_user_name = {}
    for old, new in layer_map.values():
        by_user_name.setdefault(old.name, []).append(new)
    _check_names(include, by_user_name, "include", must_be_prunable=True)
    _check_names(exclude, by_user_name, "exclude")
    _check_names(rates, by_user_name, "rates", must_be_prunable=True)
    user_name = {id(new): old.name for old, new in layer_map.values()}
    explicit = set(include) if isinstance(include, (list, tuple, set)) \
        else set()

    graph = tracing.trace(flat)
    rows, candidates = [], {}  # candidates: id(layer) -> (row, point)
    for layer in graph.operations():
        if not registry.is_prunable(layer):
            continue
        uname = user_name[id(layer)]
        width = registry.width_of(layer)
        row = PlanRow(uname, type(layer).__name__, width, False)
        rows.append(row)
        row.reason = _not_a_candidate(graph, layer, uname, include, exclude,
                                      include_output)
        if not row.reason and min_units > width:
            raise ValueError(
                f"min_units={min_units} is more than the {width} channels "
                f"of layer {uname!r}, so its gate could prune nothing. "
                f"Lower min_units, or pass exclude=[{uname!r}].")
        if not row.reason and min_units == width:
            row.reason = f"min_units={min_units} keeps all of its channels"
        if not row.reason:
            candidates[id(layer)] = (row, layer, _gate_point(graph, layer))
    if candidates:
        _trial(flat, candidates, include_output)
    selected = {}
    for row, layer, point in candidates.values():
        if row.gated:
            selected[id(point)] = (layer, rates.get(row.layer, target_rate))
    for row in rows:
        if row.layer in explicit and not row.gated:
            raise ValueError(
                f"include names layer {row.layer!r}, which add_gates cannot "
                f"gate: {row.reason}.")
    return Plan(model.name, rows), selected


def _not_a_candidate(graph, layer, uname, include, exclude, include_output):
    """Why `layer` gets no trial gate, or ''."""
    if not _wanted(layer, uname, include, exclude):
        return "excluded"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return ("it is channels_first (gates work on the last axis; build "
                "the model channels_last)")
    calls = graph.nodes_of(layer)
    if not include_output and any(_reaches_output(graph, c.outputs[0])
                                  for c in calls):
        return ("its channels are a model output (include_output=True "
                "gates it)")
    if any(_only_scales(graph, c) for c in calls):
        return ("it is a squeeze-and-excitation excitation: its channels "
                "go with the features it scales")
    return ""


def _trial(flat, candidates, include_output):
    """Gate every candidate, find the gates strip could not honour, and
    mark the rows of the others gated (see the module docstring)."""
    # Imported here: graph and budget import the registry, which imports
    # this package's gate module.
    from keras_autopruner.budget import CostModel
    from keras_autopruner.graph import ChannelGraph

    by_point = {id(point): (row, layer) for row, layer, point
                in candidates.values()}
    trial_gates = {}

    def after(layer, outputs):
        if id(layer) not in by_point:
            return outputs
        if id(layer) not in trial_gates:
            trial_gates[id(layer)] = _TrialGate(
                name=f"{by_point[id(layer)][1].name}_gate")
        return trial_gates[id(layer)](outputs)

    trial, _ = tracing.rebuild(flat, make_layer=lambda layer, _: layer,
                               after=after)
    graph = ChannelGraph(trial)
    row_of = {trial_gates[p].name: by_point[p][0] for p in trial_gates}
    gates = graph.gate_layers()
    active = {g.name for g in gates}
    groups = {g.name: set(graph.groups(graph.gate_channels(g.name)).tolist())
              for g in gates}

    def scales(zero):
        return {g.name: np.zeros(g.units) if g.name in zero
                else np.ones(g.units) for g in gates}

    def drop(name, reason):
        active.discard(name)
        row_of[name].reason = reason

    def fold_problems():
        """Gates whose zeros may need folding where nothing can take them."""
        found = []
        for name in sorted(active):
            site = graph.scale_site(name)
            if site.layer is not None and site.zero_preserving:
                continue
            need = graph.needed(scales({name}), check=False)
            if need[list(groups[name])].any():
                found.append((name, site.error or (
                    "an activation between it and the gate does not map 0 "
                    "to 0")))
        return found

    while True:
        blame = {}
        need = graph.needed(scales(active), check=False, blame=blame)
        lost = {}
        for layer, atoms in graph.frozen:
            for group in set(graph.groups(atoms)[~need[graph.groups(atoms)]]
                             .tolist()):
                lost.setdefault(group, layer)
        culprits = [(name, lost[next(iter(groups[name] & lost.keys()))])
                    for name in active if groups[name] & lost.keys()]
        for name, layer in culprits:
            drop(name, f"its channels reach {layer.name!r} "
                       f"({type(layer).__name__}), which strip cannot "
                       f"narrow: {graph.reason(layer)}")
        # With include_output, a gate on output channels stays: strip
        # folds its zeros into the weights, as the user asked.
        useless = [name for name in active if need[list(groups[name])].all()
                   and (not include_output or any(
                       blame.get(g) is not None for g in groups[name]))]
        for name in useless:
            drop(name, "none of its channels could go: "
                       + _blame(blame, groups[name]))
        if culprits or useless:
            continue
        problems = fold_problems()
        for name, why in problems:
            drop(name, "another branch keeps channels it would zero, and "
                       f"there is no place to fold the zeros into: {why}")
        if not problems:
            break
    for name in active:
        row_of[name].gated = True
        row_of[name].reason = ""
    # What a gate controls: what goes when it and the gates its channels
    # are coupled with (by Add, Multiply, ...) all zero every channel.
    try:
        cost = CostModel(trial, "flops")
    except UnknownSizeError:
        return  # Sizes known only when the model runs: no MAC shares.
    for g in cost.gates:
        together = {h.name for h in cost.gates
                    if groups[h.name] & groups[g.name]}
        row_of[g.name].macs_share = 1.0 - cost.share(
            [np.zeros(h.units) if h.name in together else np.ones(h.units)
             for h in cost.gates])


class _TrialGate(AutoPrunerGate):
    """A gate with no weights: the plan needs only its place and width.

    Building none keeps the plan cheap on wide layers and leaves Keras's
    random state alone, so planning does not change the weights that
    `add_gates` then draws for the real gates.
    """

    def build(self, input_shape):
        self.units = int(input_shape[-1])


def _blame(blame, groups):
    """Why channels of `groups` are needed although every gate zeroes them."""
    def name(op):
        return f"{op.layer.name!r} ({type(op.layer).__name__})"
    reader = next((blame[g] for g in groups if g in blame), None)
    spoiler = next((blame[("spoiled", g)] for g in groups
                    if ("spoiled", g) in blame), None)
    if reader is None:
        return "they are a model input or output"
    if spoiler is not None:
        return (f"{name(spoiler)} turns their zeros into non-zero values, "
                f"which {name(reader)} reads")
    return (f"{name(reader)} reads them, or channels a merge joins them "
            "to, where no gate zeroes them")


def _check_min_units(min_units):
    if isinstance(min_units, bool) or int(min_units) != min_units:
        raise ValueError(f"min_units must be a whole number, got "
                         f"{min_units!r}.")
    if min_units < 1:
        raise ValueError(
            f"min_units must be at least 1, got {min_units}: a layer that "
            "keeps no unit makes everything behind it constant, whatever "
            "the input.")
    return int(min_units)


def _gate_point(graph, layer):
    """The layer behind which the gate of prunable `layer` goes.

    The last layer of the chain that follows `layer` one channel to one
    channel (its records say `follows`, or `crosses` on the way to one that
    follows), each tensor read by the next layer alone: batch norm and
    activations, and a depthwise stage with depth multiplier 1. The gate
    then multiplies the channels as the next mixing layer reads them. A
    shared layer's gate goes right behind it, at each of its calls.
    """
    calls = graph.nodes_of(layer)
    if len(calls) != 1:
        return layer
    point, tensor = layer, calls[0].outputs[0]
    while id(tensor) not in graph.output_ids:
        consumers = graph.consumers[id(tensor)]
        if len(consumers) != 1:
            break
        nxt = consumers[0]
        if (len(nxt.input_tensors) != 1
                or len(graph.nodes_of(nxt.operation)) > 1):
            break
        record = registry.lookup(nxt.operation)
        if record is None or record.refused or not (
                record.follows or record.crosses):
            break
        op = record.flow(nxt)
        if op.kind != "channelwise" or op.repeat != 1:
            break
        if record.follows:
            point = nxt.operation
        tensor = nxt.outputs[0]
    return point


def _reaches_output(graph, tensor):
    """Whether `tensor`'s channels reach a model output unmixed."""
    seen, todo = set(), [tensor]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) in graph.output_ids:
            return True
        for consumer in graph.consumers[id(t)]:
            # A prunable layer mixes channels: a pruned one's trace ends there.
            if not registry.is_prunable(consumer.operation):
                todo.extend(consumer.outputs)
    return False


def _only_scales(graph, call):
    """Whether the call's channels scale, in a product, a tensor they are
    computed from.

    That is the excitation of a squeeze-and-excitation block: its channels
    are the channels of the features it multiplies and go with them, and
    a gate of its own could only zero channels that the squeeze still
    reads, which strip cannot remove. The channels are followed through
    layers and `keras.ops` calls that keep them (the hard sigmoid
    `relu6(x + 3) / 6` included).
    """
    upstream = None
    seen, todo = set(), [call.outputs[0]]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for consumer in graph.consumers[id(t)]:
            record = registry.lookup(consumer.operation)
            if record is None or record.refused or record.width_key:
                continue
            kind = record.flow(consumer).kind
            if len(consumer.input_tensors) == 1:
                if kind in ("channelwise", "tile"):
                    todo.extend(consumer.outputs)
            elif record.merges and kind == "product":
                if upstream is None:
                    upstream = _upstream(graph, call)
                if any(id(x) in upstream for x in consumer.input_tensors
                       if x is not t):
                    return True
    return False


def _upstream(graph, call):
    """The ids of the tensors `call` is computed from."""
    found, todo = set(), list(call.input_tensors)
    while todo:
        t = todo.pop()
        if id(t) in found:
            continue
        found.add(id(t))
        producer = graph.producer.get(id(t))
        if producer is not None:
            todo.extend(producer.input_tensors)
    return found


def _wanted(layer, uname, include, exclude):
    def hit(sel):
        if callable(sel):
            return bool(sel(layer))
        return uname in sel
    if include is not None and not hit(include):
        return False
    if exclude is not None and hit(exclude):
        return False
    return True


def _check_names(selection, by_user_name, what, must_be_prunable=False):
    if selection is None or callable(selection):
        return
    if isinstance(selection, str):
        raise TypeError(
            f"{what} takes a list of layer names or a predicate; got the "
            f"string {selection!r}. Write [{selection!r}]."
        )
    for layer_name in selection:
        if layer_name not in by_user_name:
            raise ValueError(
                f"{what} names layer {layer_name!r}, which is not in the "
                f"model. Layers: {sorted(by_user_name)}."
            )
        if must_be_prunable:
            for layer in by_user_name[layer_name]:
                if not registry.is_prunable(layer):
                    raise ValueError(
                        f"{what} names layer {layer_name!r} of type "
                        f"{type(layer).__name__}, which cannot be gated. "
                        "Prunable types: "
                        f"{registry.prunable_types()}.{_why_not(layer)}"
                    )


def _why_not(layer):
    record = registry.lookup(layer)
    return f" ({record.refused})" if record is not None and record.refused \
        else ""
