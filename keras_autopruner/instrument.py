"""add_gates: put an AutoPrunerGate behind every prunable layer of a model."""


import numbers

from keras_autopruner import folding, registry, tracing
from keras_autopruner.gate import MAPS, AutoPrunerGate, gates_of
from keras_autopruner.planner import make_plan, plan  # noqa: F401

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
    gate_map="auto",
    wide_units=1024,
    fold=False,
    fold_batch_size=32,
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

    Gates go only where `strip` can cut exactly whatever the gates choose:
    `plan(model, ...)` (`keras_autopruner.plan`) is the table of every
    prunable layer, gated or not, and why not; `add_gates` follows it.
    A layer called more than once (shared) gets one gate, called behind
    each of its calls.

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
            floor used by the objective and by `strip`); at least 1, and
            not more than any gated layer's width.
        gate_map: the gates' map from pooled activation to logits (see
            `AutoPrunerGate`): `"auto"` (default) is the published `"full"`
            C x C map up to `wide_units` channels and `"low_rank"` above
            (on VGG16 the two 4096-unit Dense gates then hold 1 M weights,
            not 33.6 M); or `"full"`, `"low_rank"`, `"diagonal"` for every
            gate. The rank is the gates' `rank` argument (default 64).
        wide_units: with `gate_map="auto"`, layers wider than this get the
            low-rank map.
        fold: fold each gate into the layer that reads it where the path
            allows (see `keras_autopruner.folding`): that layer scales its
            kernel's input rows by the code, and the gate makes no pass
            over the activation for the product. The same function, a
            cheaper training step; gates on other paths keep the product.
            `folding.foldable(gated)` says which gate folded, and why not.
            A layer that takes a code is wrapped as `<name>_folded`
            (`folding.ScaledInputs`; its `.layer` is the layer); `strip`
            gives the same model, with the original names, either way.
        fold_batch_size: with `fold=True`, a gate folds only where, at this
            many examples a batch, its activation holds at least as many
            values as the kernel that would take its code (elsewhere the
            product is cheaper); None folds wherever the path allows. Use
            your training batch size.
        name: name of the new model (default: original name + "_gated").
        **gate_kwargs: other `AutoPrunerGate` arguments (alpha, momentum, ...).

    Returns:
        A new functional `keras.Model` with gates. Its `pruning_plan`
        attribute is the `Plan` it followed (not kept in `.keras` files).

    Raises:
        ValueError: `model` already has gates (strip it first, or use it as
            it is); nothing is left to gate; a name in `include`,
            `exclude` or `rates` is not in the model or cannot be gated;
            `min_units` is below 1 or wider than a layer.

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
    if gate_map != "auto" and gate_map not in MAPS:
        raise ValueError(
            f"gate_map must be 'auto' or one of {MAPS}, got {gate_map!r}.")
    if "map" in gate_kwargs:
        raise ValueError("add_gates: pass the gates' map as gate_map=..., "
                         "not map=....")
    if (isinstance(wide_units, bool)
            or not isinstance(wide_units, numbers.Integral)
            or wide_units < 1):
        raise ValueError(
            f"wide_units must be a whole number >= 1, got {wide_units!r}.")
    if not isinstance(fold, bool):
        raise ValueError(f"fold must be True or False, got {fold!r}.")
    folding._check_batch_size(fold_batch_size)
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
    flat, layer_map = tracing.rebuild(model)
    the_plan, selected = make_plan(
        model, flat, layer_map, target_rate, include=include,
        exclude=exclude, include_output=include_output, min_units=min_units,
        rates=rates)
    if not selected:
        raise ValueError(
            f"Model {model.name!r} has no prunable layer to gate. "
            f"Prunable types: {registry.prunable_types()}. The plan "
            f"(keras_autopruner.plan(model)):\n{the_plan.table()}"
        )
    tracing.copy_weights(layer_map)
    gates = {}

    def after(layer, outputs):
        if id(layer) not in selected:
            return outputs
        if id(layer) not in gates:  # one gate for every call of a layer
            pruned, rate = selected[id(layer)]
            units = getattr(outputs, "shape", (None,))[-1]
            kind = gate_map
            if kind == "auto":
                kind = ("low_rank" if units is not None
                        and units > wide_units else "full")
            gates[id(layer)] = AutoPrunerGate(
                target_rate=rate,
                pooling=pooling,
                map=kind,
                min_units=int(min_units),
                name=f"{pruned.name}_gate",
                **gate_kwargs,
            )
        return gates[id(layer)](outputs)

    gated, _ = tracing.rebuild(
        flat, make_layer=lambda layer, _: layer, after=after,
        name=name or f"{model.name}_gated",
    )
    if fold:
        gated = folding.fold(gated, batch_size=fold_batch_size)
    # strip's report names the layers left ungated, and why. (Not saved in
    # .keras files: `plan(model)` makes it again.)
    gated.pruning_plan = the_plan
    return gated


