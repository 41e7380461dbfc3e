"""strip: turn a trained gated model into a smaller, ordinary Keras model.

`strip` reads each gate's hard mask, asks `ChannelGraph` which channels the
network can lose (a channel goes only with every weight that reads or writes
it, and only where it is zero wherever it is read), rebuilds the model
without gates at the narrower widths and copies the sliced weights in.
`summary` compares the two models layer by layer.
"""

import numbers
import warnings

import keras
import numpy as np

from keras_autopruner import registry, tracing
from keras_autopruner.gate import AutoPrunerGate, gates_of
from keras_autopruner.graph import ChannelGraph
from keras_autopruner.pruned_model import attach_report
from keras_autopruner.report import PruningReport, summary  # noqa: F401

COLLAPSE_POLICIES = ("keep_best", "raise")


class SoftCodesError(ValueError):
    """`strip` refused: some gates' codes are not yet 0 or 1.

    Train until they are (`AutoPrunerCallback` raises alpha until they
    are), or call `strip(gated, force=True)` to keep each kept channel
    scaled by its code.
    """


def strip(gated, threshold=None, *, force=False, tolerance=0.01,
          binary_target=0.99, on_collapse="keep_best", round_to=None,
          name=None, keep=None):
    """Build the pruned model: no gates, only the kept filters and neurons.

    Each gate's hard mask (`moving_code > threshold`) says which channels
    of its layer stay. A removed channel takes with it every weight that
    reads or writes it: the filter's kernel column and bias, the batch-norm
    parameters behind it, the kernel rows of the layers that read it
    (repeated at every position after `Flatten`), and the same channel of
    every branch an `Add` or `Multiply` joins it to. Branches joined by a
    merge share one set of kept channels: the union of what their gates
    keep (a branch without a gate keeps everything), so no branch loses a
    channel it still uses. Where the union keeps a channel that one
    branch's gate zeroes, that zero is folded into the branch's weights
    (its batch-norm gamma and beta, or its kernel column and bias), which
    is exact because the activations in between map 0 to 0; otherwise
    `strip` raises.

    By default the result computes exactly what the gated model computes in
    inference with hard masks (`set_hard_masks(gated, True)`), which is
    what `AutoPrunerCallback` validates; `on_collapse="keep_best"` and
    `round_to` bring back channels and so change it, and say so.

    Args:
        gated: a model with `AutoPrunerGate` layers (from `add_gates`),
            Sequential or functional; nested models are flattened.
        threshold: a channel is kept when its moving code is above this
            value. Default: each gate's own `threshold` (0.5 unless set),
            the same test the gate applies in hard-mask inference.
        force: strip although some codes are still soft (not within
            `tolerance` of 0 or 1). Each kept channel is then scaled by its
            code, folded into the weights before the gate (possible when the
            activations in between are relu, leaky relu, PReLU or linear),
            and the other channels are removed: the result computes what
            the gated model computes with soft codes, except for the
            removed channels.
            Without `force`, soft codes are an error unless they are few
            (see `binary_target`).
        tolerance: a code within this of 0 or 1 counts as binary.
        binary_target: share of binary codes (over all gates) from which
            the few soft ones left are simply rounded to the hard mask, as
            hard-mask validation already does; the report says how many.
            The default equals `AutoPrunerCallback`'s, so a run the callback
            calls done strips without `force`. 1.0 refuses any soft code.
        on_collapse: what to do when a gate keeps no channel at all, which
            would delete its layer. `"keep_best"` (default) keeps the gate's
            `min_units` best-scoring channels (at least one) and warns;
            `"raise"` raises. Training with `PruningObjective(floor=True)`
            (the default) keeps gates away from this.
        round_to: optional int k: each gated layer keeps a multiple of k
            channels (or all of them), adding back the best-scoring removed
            channels, for accelerators that favour multiples of 8 or 16.
        name: name of the new model (default: the gated model's, with
            `_gated` replaced by `_pruned`).
        keep: optional `{layer_name: bool mask}` for a model *without*
            gates: prune those layers to those channels (see
            `masks.strip_with_masks`).

    Returns:
        A `PrunedModel` (a functional `keras.Model`) made of standard Keras
        layers with the gated model's weights, sliced. Its `pruning_report`
        attribute holds the `PruningReport` comparing it with the gated
        model; it is saved inside `.keras` files and `export` writes it
        next to the SavedModel or ONNX file.

    Raises:
        SoftCodesError: (a ValueError) too many codes are still soft and
            `force` is False.
        ValueError: the model has no gates; a gate collapses and
            `on_collapse="raise"`; a layer that `strip` cannot narrow would
            lose channels (the message names it); or a scale cannot be
            folded exactly.

    Example:

        gated = add_gates(model, target_rate=0.5)
        # ... fit with AutoPrunerCallback ...
        compact = strip(gated)
        print(compact.pruning_report)
        compact.compile("adam", "sparse_categorical_crossentropy")
        compact.fit(x, y, epochs=5)
    """
    if keep is not None:
        from keras_autopruner.masks import strip_with_masks
        return strip_with_masks(gated, keep, on_collapse=on_collapse,
                                round_to=round_to, name=name)
    if on_collapse not in COLLAPSE_POLICIES:
        raise ValueError(
            f"on_collapse must be one of {COLLAPSE_POLICIES}, got "
            f"{on_collapse!r}."
        )
    if round_to is not None and (
            isinstance(round_to, bool)
            or not isinstance(round_to, numbers.Integral) or round_to < 1):
        raise ValueError(
            f"round_to must be a positive int (such as 8 or 16) or None, "
            f"got {round_to!r}."
        )
    tracing.check_traceable(gated, "strip")
    from keras_autopruner.checks import check_finite  # NaN weights: refuse
    check_finite(gated, "strip")
    if not gates_of(gated):
        raise ValueError(
            f"strip: model {gated.name!r} has no AutoPrunerGate, so there "
            "is nothing to strip. Gate it with "
            "keras_autopruner.add_gates(model, target_rate), train it, then "
            "strip the gated model."
        )
    flat = tracing.flat(gated)
    graph = ChannelGraph(flat)
    if not 0.0 <= binary_target <= 1.0:
        raise ValueError(
            f"binary_target must be in [0, 1], got {binary_target!r}.")
    scales, rounded = _scales(graph.gate_layers(), threshold, force,
                              tolerance, binary_target)
    need, notes = _settle(graph, scales, on_collapse,
                          None if round_to is None else int(round_to))
    if rounded:
        notes.append(f"{rounded}: soft codes rounded to the hard mask "
                     f"(binary share above binary_target={binary_target}).")
    folds = _folds(graph, scales, need)
    _check_widths(graph, need)

    if name is None:
        name = flat.name.removesuffix("_gated") + "_pruned"
    compact = _build(graph, need, folds, name)
    if force:
        notes.append("force=True: kept channels are scaled by their soft "
                     "codes, folded into the weights.")
    plan = getattr(gated, "pruning_plan", None)
    ungated = [f"{r.layer} ({r.reason})" for r in getattr(plan, "rows", [])
               if not r.gated and r.reason != "excluded"]
    if ungated:
        notes.append("Not gated (add_gates's plan): " + "; ".join(ungated)
                     + ".")
    return attach_report(compact, summary(flat, compact, notes=notes))


def _scales(gates, threshold, force, tolerance, binary_target):
    """Gate name -> channel scale in the stripped model, and a note of the
    soft codes rounded to the hard mask ("" when none were)."""
    scales, soft, n_codes, n_soft_all = {}, [], 0, 0
    for gate in gates:
        codes = gate.scores().astype(np.float64)
        cut = gate.threshold if threshold is None else float(threshold)
        kept = codes > cut
        n_soft = int(np.sum((codes > tolerance) & (codes < 1.0 - tolerance)))
        n_codes, n_soft_all = n_codes + codes.size, n_soft_all + n_soft
        if n_soft:
            soft.append(f"{gate.name} ({n_soft} of {codes.size})")
        scales[gate.name] = np.where(kept, codes if force else 1.0, 0.0)
    if not soft or force:
        return scales, ""
    share = 1.0 - n_soft_all / n_codes
    if share < binary_target:
        raise SoftCodesError(
            "strip: some gates still have soft codes (not within "
            f"{tolerance} of 0 or 1): {', '.join(soft)}; binary share "
            f"{share:.3f} < binary_target {binary_target}. The hard-mask "
            "network differs from the one they were trained as. Train until "
            "the codes are binary (AutoPrunerCallback raises alpha until "
            "they are), or pass force=True to keep each kept channel scaled "
            "by its code."
        )
    return scales, ", ".join(soft)


def _settle(graph, scales, on_collapse, round_to):
    """Apply the collapse policy and `round_to`; returns `(need, notes)`.

    Both bring back removed channels with a scale of 1, best score first.
    Bringing one back can widen a coupled layer, so the kept set is worked
    out again until nothing changes; each channel comes back at most once.
    """
    notes, collapsed = [], []
    while True:
        need = graph.needed(scales)
        changed = False
        for gate in graph.gate_layers():
            scale = scales[gate.name]
            kept = need[graph.groups(graph.gate_channels(gate.name))]
            n, units = int(kept.sum()), kept.size
            want = n
            if n == 0:
                if on_collapse == "raise":
                    raise ValueError(
                        f"strip: gate {gate.name!r} keeps none of its "
                        f"{units} channels, so its layer would vanish "
                        "(layer collapse). Pass on_collapse='keep_best' to "
                        "keep its min_units best-scoring channels, or "
                        "retrain with PruningObjective(floor=True) and "
                        "add_gates(..., min_units=k) so that every layer "
                        "keeps at least k."
                    )
                want = min(units, max(1, gate.min_units))
                collapsed.append(f"{gate.name} (kept {want})")
            elif round_to and n % round_to and n < units:
                want = min(units, -(-n // round_to) * round_to)
            if want > n:
                candidates = np.flatnonzero(~kept & (scale == 0))
                best = candidates[np.argsort(-gate.scores()[candidates],
                                             kind="stable")][:want - n]
                if best.size:
                    scale[best] = 1.0
                    changed = True
        if not changed:
            break
    if collapsed:
        message = (
            "strip: layer collapse: these gates kept no channel, so their "
            "best-scoring channels were kept instead (on_collapse="
            f"'keep_best'): {', '.join(collapsed)}. The stripped model "
            "differs there from the gated one; fine-tune it, or retrain with "
            "PruningObjective(floor=True) and add_gates(..., min_units=k)."
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        notes.append(message)
    if round_to:
        notes.append(f"round_to={round_to}: gated layers keep multiples of "
                     f"{round_to} channels (or all), best score first.")
    return need, notes


def _folds(graph, scales, need):
    """Per-channel multipliers to fold into the weights before each gate.

    A kept channel whose gate multiplies it by s != 1 must still come out
    multiplied by s once the gate is gone. Returns `id(layer) -> array`.
    """
    folds, problems = {}, []
    for gate in graph.gate_layers():
        scale = scales[gate.name]
        kept = need[graph.groups(graph.gate_channels(gate.name))]
        todo = kept & (scale != 1.0)
        if not todo.any():
            continue
        site = graph.scale_site(gate.name)
        if site.layer is None:
            problems.append(f"{gate.name}: {site.error}")
            continue
        zeros, parts = todo & (scale == 0), todo & (scale > 0)
        where = f"between {site.layer.name!r} and the gate"
        if zeros.any() and not site.zero_preserving:
            problems.append(
                f"{gate.name}: {int(zeros.sum())} channel(s) are zeroed by "
                "the gate but kept (another branch or a model output uses "
                f"them), and an activation {where} does not map 0 to 0")
            continue
        if parts.any() and not site.homogeneous:
            problems.append(
                f"{gate.name}: kept codes cannot be folded, because an "
                f"activation {where} is not relu, leaky relu, PReLU or "
                "linear (only those commute with a positive scale)")
            continue
        multiplier = folds.setdefault(id(site.layer), np.ones(scale.size))
        multiplier[todo] *= scale[todo]
    if problems:
        raise ValueError(
            "strip cannot carry the gates' scales into the weights exactly: "
            + "; ".join(problems) + ". Make those codes exactly 0 or 1 (and "
            "strip without force), or exclude these layers from add_gates."
        )
    return folds


def _check_widths(graph, need):
    for op in graph.ops:
        if op.kind != "mix":
            continue
        kept = graph.kept(op.node.outputs[0], need)
        # No channels tracked (a mask whose last axis is a length unknown
        # until the model runs): nothing of it can be cut.
        if len(kept) and not kept.any():
            raise ValueError(
                f"strip: layer {op.layer.name!r} would keep no filter: every "
                "channel it writes is zero wherever it is read. Keep some "
                "of them (set a gate's codes to 1) or remove the layer."
            )


def _build(graph, need, folds, name):
    def make_layer(layer, new_name):
        op = graph.op_of(layer)
        record = registry.lookup(layer)
        config = layer.get_config()
        if record is not None and op.kind != "unknown":
            kept = int(graph.kept(op.node.outputs[0], need).sum())
            if op.kind == "mix" and record.width_key:
                record.width_config(config)[record.width_key] = kept
            elif record.resize is not None:
                config = record.resize(config, op.node, kept)
        return tracing.clone_layer(layer, new_name, config)

    compact, layer_map = tracing.rebuild(
        graph.model, make_layer,
        skip=lambda layer: isinstance(layer, AutoPrunerGate), name=name)
    for old, new in layer_map.values():
        if not getattr(old, "weights", None) or new is old:
            continue
        record = registry.lookup(new) or registry.LayerType()
        if graph.op_of(old).kind == "unknown" or record.weights is None:
            # Channels all stay (ChannelGraph made sure), or the weights
            # are not per channel: copied as they are, in order (attention
            # holds several weights of one name).
            new.set_weights(old.get_weights())
            continue
        values = _sliced(graph, old, need, folds.get(id(old)))
        for variable_name, variable in zip(record.weight_names(new),
                                           new.weights):
            value = values[variable_name]
            if tuple(value.shape) != tuple(variable.shape):
                raise AssertionError(  # A bug here, never the user's input.
                    f"strip: sliced {old.name}/{variable_name} has shape "
                    f"{value.shape}, the new layer wants {variable.shape}."
                )
            variable.assign(value.astype(variable.dtype))
    return compact


def _sliced(graph, layer, need, fold):
    """The layer's weights by name, cut to the kept channels.

    `fold` (or None) multiplies each output channel before cutting.
    """
    op = graph.op_of(layer)
    node = op.node
    record = registry.lookup(layer) or registry.LayerType()
    values = {name: keras.ops.convert_to_numpy(v) for name, v in
              zip(record.weight_names(layer), layer.weights)}
    source = node.input_tensors[op.inputs[0] if op.inputs else 0] \
        if node.input_tensors else None
    keep_in = (graph.kept(source, need) if source is not None
               else np.zeros(0, bool))
    return record.cut(layer, values, keep_in,
                      graph.kept(node.outputs[0], need), fold)
