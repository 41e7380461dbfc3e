"""Masks without gates (`strip(model, keep=...)`) and what masks cost.

`strip_with_masks` is what `strip(model, keep={layer: mask})` runs: it
gates exactly the named layers, fixes each gate's mask and strips, so the
channel graph (coupled layers, Flatten, depthwise stages, ...) is the one
every other strip uses. `cost_share` reports the share of MACs, parameters
and filters that the stripped model keeps, predicted by `CostModel`.
"""

import warnings

import keras
import numpy as np

from keras_autopruner.budget import CostModel
from keras_autopruner.gate import gates_of
from keras_autopruner.metrics import UnknownSizeError

WEIGHTINGS = ("filters", "flops", "params")


def strip_with_masks(model, keep, **strip_kwargs):
    """Strip an ungated model by given per-layer masks.

    Each named layer keeps the channels its mask marks True; everything
    that reads or writes a removed channel loses it too, as in `strip`.
    Layers coupled by a merge (the branches of an `Add`) share one set of
    channels: the union of their masks, a branch not named keeping all of
    its channels. Where the union (or a model output, whose width never
    changes) keeps a channel a mask drops, that channel is zeroed in the
    named layer's weights rather than removed, and a warning says so.

    Args:
        model: a Keras model without gates.
        keep: `{layer_name: bool mask}`, one bool per output channel of a
            prunable layer (as its name is in `model`); at least one True.
        **strip_kwargs: passed to `strip` (`round_to`, `name`, ...).

    Returns:
        A `PrunedModel`, as `strip` returns.

    Raises:
        ValueError: the model has gates; a name is not a prunable layer of
            the model; a mask is not bool, has the wrong length or keeps
            nothing. The message names the layer.

    Example:

        compact = kap.strip(model, keep={"conv1": conv1_mask,
                                         "fc1": np.arange(64) < 32})
    """
    present = gates_of(model)
    if present:
        raise ValueError(
            f"strip(keep=...) is for a model without gates; {model.name!r} "
            f"has {len(present)} (such as {present[0].name!r}). Set their "
            "masks with gate.set_mask(mask) and call strip(gated), or pass "
            "the ungated model.")
    keep = _checked_keep(model, keep)
    from keras_autopruner.instrument import add_gates

    try:
        gated = add_gates(model, 1.0, include=list(keep),
                          include_output=True, min_units=1)
    except ValueError as err:
        # add_gates speaks of its own `include`; here the user wrote `keep`.
        message = str(err).replace("include names", "keep names")
        raise ValueError(f"strip(keep=...): {message}") from None
    gates = {g.name: g for g in gates_of(gated)}
    for layer_name, mask in keep.items():
        gate = gates.get(f"{layer_name}_gate")
        if gate is None:
            raise ValueError(
                f"strip(keep=...): layer {layer_name!r} cannot be pruned on "
                "its own: its channels are those of the features it scales "
                "(a squeeze-and-excitation excitation), or inlining a "
                "nested model renamed it. Drop it from keep; name the layer "
                "whose features it scales instead.")
        if mask.size != gate.units:
            raise ValueError(
                f"strip(keep=...): layer {layer_name!r} has {gate.units} "
                f"output channels; its mask has {mask.size} entries. Pass "
                "one bool per channel.")
        gate.set_mask(mask)
    from keras_autopruner.surgery import strip

    compact = strip(gated, **strip_kwargs)
    _warn_not_removed(compact, keep)
    return compact


def _checked_keep(model, keep):
    if not isinstance(keep, dict) or not keep:
        raise ValueError(
            "strip(keep=...) takes a non-empty dict {layer_name: bool mask}; "
            f"got {type(keep).__name__} {keep!r:.80}.")
    names = _layer_names(model)
    out = {}
    for layer_name, mask in keep.items():
        if layer_name not in names:
            raise ValueError(
                f"strip(keep=...): there is no layer {layer_name!r} in "
                f"{model.name!r}. Layers: {sorted(names)}.")
        mask = np.asarray(keras.ops.convert_to_numpy(mask))
        if mask.dtype != bool or mask.ndim != 1:
            raise ValueError(
                f"strip(keep=...): the mask of layer {layer_name!r} must be "
                f"a 1-D bool array (True = keep); got dtype {mask.dtype}, "
                f"shape {mask.shape}. Convert it, e.g. mask.astype(bool) or "
                "scores > threshold.")
        if not mask.any():
            raise ValueError(
                f"strip(keep=...): the mask of layer {layer_name!r} keeps no "
                "channel, which would delete the layer. Keep at least one "
                "(its best), or remove the layer from the model.")
        out[layer_name] = mask
    return out


def _layer_names(model):
    found = set()
    for layer in getattr(model, "layers", []):
        found.add(layer.name)
        if isinstance(layer, keras.Model):
            found |= _layer_names(layer)
    return found


def _warn_not_removed(compact, keep):
    widths = {}
    for layer_name in keep:
        try:
            widths[layer_name] = int(
                compact.get_layer(layer_name).output.shape[-1])
        except (ValueError, AttributeError, TypeError):
            pass  # renamed or called twice: nothing to compare with
    kept_more = []
    for layer_name, width in widths.items():
        mask = keep[layer_name]
        if width <= int(mask.sum()):
            continue
        # Named layers coupled to each other keep the union of their masks,
        # as asked; only a wider layer than that union is worth a warning.
        peers = [keep[n] for n, w in widths.items()
                 if w == width and keep[n].size == mask.size]
        if int(np.logical_or.reduce(peers).sum()) == width:
            continue
        kept_more.append(f"{layer_name} ({width} kept, mask "
                         f"{int(mask.sum())})")
    if kept_more:
        warnings.warn(
            "strip(keep=...): these layers keep more channels than their "
            "masks: " + ", ".join(kept_more) + ". Their channels are also "
            "those of a coupled layer not named in keep, which keeps them "
            "(name every branch of the Add), or a model output, whose width "
            "does not change; the masked channels are zeroed in the layer's "
            "weights, not removed.",
            UserWarning, stacklevel=3)


def cost_share(gated, weighting=None, *, masks=None):
    """The share of the full model's MACs, parameters and filters that the
    stripped model keeps.

    Predicted by `CostModel` for the gates' hard masks (or `masks`), so it
    equals `count_flops(strip(gated)) / count_flops(model)` (and likewise
    for `count_params`) without stripping. `"filters"` counts the gated
    layers' channels that strip keeps (coupled branches keep the union).

    Args:
        gated: a flat gated model (from `add_gates`).
        weighting: None (all three), or one of `"filters"`, `"flops"`,
            `"params"`.
        masks: optional `{gate_name: bool mask}`; default each gate's
            `mask()`. Gates not named use their own mask.

    Returns:
        A dict `{"filters": float, "flops": float, "params": float}`, or
        the one float when `weighting` is given. For a model with sizes
        unknown until it runs (`keras.Input((None, 4))`) the dict's
        `"flops"` is None, and `weighting="flops"` raises
        `UnknownSizeError` (a ValueError).

    Example:

        gated = kap.add_gates(model, target_rate=0.25)
        # ... fit with AutoPrunerCallback ...
        kap.cost_share(gated)          # {"filters": ..., "flops": ..., ...}
        kap.cost_share(gated, "flops")  # one float
    """
    if weighting is not None and weighting not in WEIGHTINGS:
        raise ValueError(
            f"weighting must be None or one of {WEIGHTINGS}, got "
            f"{weighting!r}.")
    gates = gates_of(gated)
    if not gates:
        raise ValueError(
            f"cost_share: model {gated.name!r} has no AutoPrunerGate; call "
            "keras_autopruner.add_gates(model, target_rate) first.")
    if any(isinstance(layer, keras.Model) for layer in gated.layers):
        raise ValueError(
            f"cost_share needs the flat gated model that add_gates returns; "
            f"{gated.name!r} nests models.")
    chosen = {g.name: g.mask() for g in gates}
    for name, mask in (masks or {}).items():
        if name not in chosen:
            raise ValueError(
                f"cost_share: masks names {name!r}, which is not a gate of "
                f"{gated.name!r}. Gates: {sorted(chosen)}.")
        mask = np.asarray(mask, bool)
        if mask.shape != chosen[name].shape:
            raise ValueError(
                f"cost_share: gate {name!r} has {chosen[name].size} "
                f"channels; its mask has shape {mask.shape}.")
        chosen[name] = mask
    shares = {}
    for w in ([weighting] if weighting else WEIGHTINGS):
        try:
            cost = CostModel(gated, w)
        except UnknownSizeError:
            if weighting:
                raise
            shares[w] = None  # sizes known only when the model runs
            continue
        shares[w] = float(cost.share([chosen[g.name] for g in cost.gates]))
    return shares[weighting] if weighting else shares
