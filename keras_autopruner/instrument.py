"""add_gates: put an AutoPrunerGate behind every prunable layer of a model."""


from keras_autopruner import registry, tracing
from keras_autopruner.gate import AutoPrunerGate, check_rate, gates_of

# Kept here for callers that imported them from this module.
is_prunable = registry.is_prunable
width_of = registry.width_of
register_prunable = registry.register_prunable


def add_gates(
    model,
    target_rate=0.5,
    *,
    rates=None,
    include=None,
    exclude=None,
    include_output=False,
    pooling="avg",
    min_units=1,
    name=None,
    **gate_kwargs,
):
    """Return a copy of `model` with an AutoPrunerGate after each prunable layer.

    The copy has the original weights; the user's model is not modified.
    Nested Functional/Sequential models are inlined, so the result is one flat
    functional model. A gate goes behind the layer's output activation: where
    BatchNormalization and/or activation layers follow the layer (and nothing
    else reads its output), behind the last of them. A depthwise convolution
    with depth multiplier 1 (with zero padding before it) counts as one of
    them: in an inverted residual block the expansion conv's gate goes
    behind the depthwise conv's batch norm and activation, so a channel it
    zeroes is zero where the projection conv reads it, and `strip` removes
    it from the expansion conv, the depthwise conv and their batch norms.

    Layers are prunable when they are Conv1D/2D/3D, their transposes,
    SeparableConv1D/2D or Dense (see `register_prunable` for more). A layer
    whose channels reach a model output without passing through another
    prunable layer (the output layer, a conv feeding a global pool that is
    the output, ...) is excluded unless `include_output=True`, because
    removing its channels would change what the model returns. A layer
    whose channels scale, in a `Multiply`, the features they are computed
    from (the excitation of a squeeze-and-excitation block) is not gated
    either: its channels are those features' channels, kept or removed
    with them.

    Args:
        model: a built Sequential or functional Keras model.
        target_rate: fraction of filters each gate should keep, in (0, 1].
        rates: optional dict `{layer_name: rate}` overriding `target_rate`.
        include: layer names (list) or a predicate `fn(layer) -> bool`; only
            these layers are gated. Naming a non-prunable layer is an error.
        exclude: layer names or a predicate; these layers are not gated.
        include_output: also gate layers whose channels are model outputs.
        pooling: the gates' spatial reduction, `"avg"` (default) or `"max"`;
            see `AutoPrunerGate`.
        min_units: the fewest channels any gate may keep (layer-collapse
            floor used by the objective and by `strip`).
        name: name of the new model (default: original name + "_gated").
        **gate_kwargs: other `AutoPrunerGate` arguments (alpha, momentum, ...).

    Returns:
        A new functional `keras.Model` with gates.

    Raises:
        ValueError: `model` already has gates (strip it first, or use it as
            it is); nothing is left to gate; a name in `include`,
            `exclude` or `rates` is not in the model or cannot be gated.

    Example:

    >>> import keras
    >>> model = keras.Sequential([
    ...     keras.Input((28, 28, 1)),
    ...     keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(10, activation="softmax")])
    >>> gated = add_gates(model, target_rate=0.5)
    >>> [l.name for l in gated.layers if isinstance(l, AutoPrunerGate)]
    ['conv_gate']
    """
    tracing.check_traceable(model, "add_gates")
    present = gates_of(model)
    if present:
        raise ValueError(
            f"Model {model.name!r} is already gated: it has "
            f"{len(present)} AutoPrunerGate layers (such as "
            f"{present[0].name!r}). Use it as it is (train it with "
            "AutoPrunerCallback, then strip it), or strip it first with "
            "keras_autopruner.strip(model) and gate the stripped model to "
            "prune further."
        )
    check_rate(target_rate)
    rates = dict(rates or {})
    for layer_name, rate in rates.items():
        check_rate(rate, f"rates[{layer_name!r}]")
    if int(min_units) < 0:
        raise ValueError(f"min_units must be >= 0, got {min_units}.")

    flat, layer_map = tracing.rebuild(model)
    tracing.copy_weights(layer_map)
    # Users name layers as they were in their model; inlining may rename.
    by_user_name = {}
    for old, new in layer_map.values():
        by_user_name.setdefault(old.name, []).append(new)
    _check_names(include, by_user_name, "include", must_be_prunable=True)
    _check_names(exclude, by_user_name, "exclude")
    _check_names(rates, by_user_name, "rates", must_be_prunable=True)
    user_name = {id(new): old.name for old, new in layer_map.values()}

    graph = tracing.Graph(flat)
    selected = {}  # id(gate point layer) -> (prunable layer, rate)
    for node in graph.nodes:
        layer = node.operation
        if not is_prunable(layer):
            continue
        uname = user_name[id(layer)]
        if not _wanted(layer, uname, include, exclude):
            continue
        explicit = isinstance(include, (list, tuple, set)) and uname in include
        if len(graph.nodes_of(layer)) > 1:
            if explicit:
                raise ValueError(
                    f"Layer {uname!r} is shared (called more than once); its "
                    "filters cannot be gated per call. Exclude it."
                )
            continue
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(
                f"Layer {uname!r} uses data_format='channels_first'; gates "
                "work on the last axis. Build the model channels_last."
            )
        if not include_output and _reaches_output(graph, node.outputs[0]):
            continue
        if _only_scales(graph, node):
            continue
        point = _gate_point(graph, node)
        selected[id(point)] = (layer, rates.get(uname, target_rate))

    if not selected:
        raise ValueError(
            f"Model {model.name!r} has no prunable layer to gate. Prunable "
            f"types: {registry.prunable_types()}; layers whose "
            "channels are model outputs are skipped unless "
            "include_output=True, and include/exclude may have removed the "
            "rest."
        )

    def after(layer, outputs):
        if id(layer) not in selected:
            return outputs
        pruned, rate = selected[id(layer)]
        units = width_of(pruned)
        gate = AutoPrunerGate(
            target_rate=rate,
            pooling=pooling,
            min_units=min(int(min_units), units),
            name=f"{pruned.name}_gate",
            **gate_kwargs,
        )
        return gate(outputs)

    gated, _ = tracing.rebuild(
        flat, make_layer=lambda layer, _: layer, after=after,
        name=name or f"{model.name}_gated",
    )
    return gated


def _gate_point(graph, node):
    """The layer behind which the gate of prunable `node` goes.

    The last layer of the chain that follows `node` one channel to one
    channel (its records say `follows`, or `crosses` on the way to one that
    follows), each tensor read by the next layer alone: batch norm and
    activations, and a depthwise stage with depth multiplier 1. The gate
    then multiplies the channels as the next mixing layer reads them.
    """
    point, tensor = node.operation, node.outputs[0]
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
            if not is_prunable(consumer.operation):
                todo.extend(consumer.outputs)
    return False


def _only_scales(graph, node):
    """Whether the layer's channels scale, in a Multiply, a tensor they are
    computed from.

    That is the excitation of a squeeze-and-excitation block: its channels
    are the channels of the features it multiplies and go with them, and
    a gate of its own could only zero channels that the squeeze still
    reads, which strip cannot remove. So its layer gets no gate. The
    channels are followed through layers that keep them.
    """
    upstream = None
    seen, todo = set(), [node.outputs[0]]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for consumer in graph.consumers[id(t)]:
            record = registry.lookup(consumer.operation)
            if record is None or record.refused or record.width_key:
                continue
            if len(consumer.input_tensors) == 1:
                if record.flow(consumer).kind in ("channelwise", "tile"):
                    todo.extend(consumer.outputs)
            elif record.merges and record.flow(consumer).kind == "product":
                if upstream is None:
                    upstream = _upstream(graph, node)
                if any(id(x) in upstream for x in consumer.input_tensors
                       if x is not t):
                    return True
    return False


def _upstream(graph, node):
    """The ids of the tensors `node` is computed from."""
    found, todo = set(), list(node.input_tensors)
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
                if not is_prunable(layer):
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
