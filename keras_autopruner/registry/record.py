"""The record of one layer type, and the table that matches layers to them.

A `LayerType` holds everything the package knows about a layer class: how
one call moves channels (its `flow`, an `Op`), how wide it is, how its
weights are cut when channels go, and what it costs. `add_gates`, the
channel graph, `strip`, `count_flops` and `CostModel` all ask `lookup`.

Matching walks the class's MRO: the class's own record first, then the
nearest registered base. A subclass that overrides `call` may compute
something else than its base, so it gets a refusing record (unknown
channel flow, not prunable, no counting rule) whose reason says how to
describe it; everything then treats it the same way.
"""

import dataclasses
import math
from typing import Callable, Mapping, Optional, Tuple

import numpy as np

IN, OUT = "in", "out"

# Activations f applied channel by channel, with f(0) = 0: a zero channel
# stays zero through them.
_HOMOGENEOUS = {"linear", "relu", "leaky_relu"}  # also f(s x) = s f(x), s > 0
_ZERO_PRESERVING = _HOMOGENEOUS | {
    "elu", "selu", "celu", "gelu", "silu", "swish", "tanh", "relu6",
    "hard_silu", "hard_swish", "mish", "softsign", "hard_tanh",
    "soft_shrink", "hard_shrink", "tanh_shrink",
}
# Channel by channel, but f(0) != 0.
_CHANNELWISE = _ZERO_PRESERVING | {
    "sigmoid", "hard_sigmoid", "softplus", "exponential", "log_sigmoid",
    "squareplus", "sparse_plus",
}


def activation_traits(activation):
    """How an activation treats channels.

    Args:
        activation: an activation function, or its name.

    Returns:
        `(zero_preserving, homogeneous)`: whether f(0) = 0, and whether
        f(s x) = s f(x) for s > 0. `None` when the activation mixes channels
        (softmax) or is not known.

    Example:

    >>> activation_traits("relu")
    (True, True)
    >>> activation_traits("sigmoid")
    (False, False)
    """
    name = activation if isinstance(activation, str) else getattr(
        activation, "__name__", None)
    if name not in _CHANNELWISE:
        return None
    return name in _ZERO_PRESERVING, name in _HOMOGENEOUS


@dataclasses.dataclass
class Op:
    """How one call of a layer moves channels.

    Attributes:
        node: the Keras call node.
        kind: `"gate"`, `"mix"` (reads channels, writes new ones),
            `"channelwise"` (channel c out comes from channel c in),
            `"sum"`/`"product"` (merges of the same channel), `"concat"`,
            `"tile"` (Flatten/Reshape: the channels repeat `repeat` times)
            or `"unknown"`.
        zero_preserving: a zero channel in gives a zero channel out
            (channelwise layers), or f(0) = 0 for the layer's own activation
            (mixers).
        homogeneous: the layer commutes with a positive per-channel scale.
        repeat: how many output channels each input channel gives
            (`DepthwiseConv` depth multiplier) or how many times the channel
            list repeats (`"tile"`).
        frozen_out: the output channels cannot be removed (a mixer whose
            activation mixes channels, such as softmax).
        reason: why the layer is `"unknown"`.
        inputs: the indices of the data inputs that carry the channels
            (None: all). The others are broadcast along the channel axis
            (a `(batch, steps, 1)` mask times `(batch, steps, C)`
            features); they are read whole and couple no channel.
    """

    node: object
    kind: str
    zero_preserving: bool = True
    homogeneous: bool = True
    repeat: int = 1
    frozen_out: bool = False
    reason: str = ""
    inputs: Optional[Tuple[int, ...]] = None

    @property
    def layer(self):
        return self.node.operation


def unknown(node, reason):
    """The `Op` of a call whose channels must all stay as they are."""
    return Op(node, "unknown", zero_preserving=False, homogeneous=False,
              reason=reason)


def unknown_flow(node):
    return unknown(node, f"strip does not know how "
                         f"{type(node.operation).__name__} uses channels")


def mixer_flow(node, layer=None):
    """Reads every input channel, writes new ones through an activation.

    A layer without an `activation` attribute is taken to be linear in
    each output channel. `layer` is the layer whose activation counts
    (default: the node's own; a wrapper passes the layer it wraps).
    """
    layer = node.operation if layer is None else layer
    if getattr(layer, "groups", 1) != 1:
        return unknown(node, "it is a grouped convolution")
    activation = getattr(layer, "activation", None)
    traits = (True, True) if activation is None else activation_traits(
        activation)
    if traits is None:
        return Op(node, "mix", False, False, frozen_out=True,
                  reason="its activation mixes channels")
    return Op(node, "mix", *traits)


def check_roles(weights):
    """`weights` (name -> axis roles) checked, with tuples for roles."""
    for name, roles in weights.items():
        if isinstance(roles, str) or not all(r in (IN, OUT, None)
                                             for r in roles):
            raise ValueError(
                f"weights[{name!r}] must be a tuple of 'in', 'out' or None, "
                "one per trailing axis of the weight, e.g. ('in', 'out') "
                f"for a Dense kernel; got {roles!r}.")
    return {name: tuple(roles) for name, roles in weights.items()}


@dataclasses.dataclass(frozen=True)
class LayerType:
    """What the package knows about one layer class.

    Attributes:
        flow: `fn(node) -> Op`, how one call moves channels (see `Op`).
        width_key: for layers whose output channels are filters that
            `add_gates` gates and `strip` narrows: the config key of their
            count (`"filters"`, `"units"`). None otherwise.
        weights: weight name -> the role of each of its trailing axes:
            `"in"` (indexed by input channel), `"out"` (by output channel)
            or None. `strip` cuts the weight along these axes, and the cost
            model splits its size by them. An axis k times as long as the
            channel list holds k entries per channel, one after the other
            (a depth multiplier); an axis of length 1 is broadcast and left
            alone. None: the layer holds no per-channel weight.
        fold_into: the weights a per-channel scale is folded into when a
            gate's scale must survive `strip` (batch norm: gamma and beta;
            the first must exist). None for a mixer means every weight
            with an `"out"` axis; empty means no folding here. A folded
            weight without an `"out"` axis is scaled along its `"in"` axis
            (a depthwise kernel: in a channelwise call with one output per
            input channel, channel c in is channel c out).
        flops: `fn(layer, input_shapes, output_shapes) -> int`, the MACs of
            one call for one example (see `metrics.register_flops`); None
            when there is no counting rule.
        follows: `add_gates` may move the gate of the layer before it
            behind this one, since it acts on each channel alone (batch
            norm, activations, a depthwise convolution whose call has a
            depth multiplier of 1). Moving the gate behind a layer that
            turns a zero channel into a non-zero one (a batch norm's shift)
            is what lets `strip` remove the channels the gate zeroes.
        crosses: `add_gates` may move a gate across this layer (it keeps
            channel c in channel c, zero in, zero out: zero padding), but
            only on the way to a `follows` layer behind it; a gate never
            stops right behind it.
        passes_scale: a scale folded in before this layer still reaches its
            output (activations, dropout), given its `Op` traits.
        merges: the layer takes several inputs and combines the same
            channels of each (Add, Multiply, Concatenate).
        resize: `fn(config, node, channels) -> config` for a layer whose
            config holds its channel count under another name than
            `width_key` (Reshape's target shape).
        refused: why the layer is not handled (a subclass that overrides
            `call`); its channels then all stay, and it is not gated or
            counted.
        inner: for a wrapper (`TimeDistributed`): `fn(layer) -> layer`,
            the layer it wraps; `lookup` then describes each wrapper by
            the wrapped layer's record (see `specialise`).
        config_of: `fn(config) -> dict`, the part of the layer's config
            that holds `width_key` (the wrapped layer's config for a
            wrapper). None: the config itself.
    """

    flow: Callable = unknown_flow
    width_key: Optional[str] = None
    weights: Optional[Mapping[str, Tuple]] = None
    fold_into: Optional[Tuple[str, ...]] = None
    flops: Optional[Callable] = None
    follows: bool = False
    crosses: bool = False
    passes_scale: bool = False
    merges: bool = False
    resize: Optional[Callable] = None
    refused: str = ""
    inner: Optional[Callable] = None
    config_of: Optional[Callable] = None
    # Set on the records `specialise` derives: the wrapper's own record.
    wrapper: Optional["LayerType"] = None

    def width(self, layer):
        """The layer's number of filters (output channels)."""
        if self.width_key is None:
            raise TypeError(f"{type(layer).__name__} is not a prunable layer.")
        return int(self.width_config(layer.get_config())[self.width_key])

    def width_config(self, config):
        """The dict inside `config` that holds `width_key`."""
        return config if self.config_of is None else self.config_of(config)

    def _folded(self, values):
        if self.fold_into is not None:
            return [n for n in self.fold_into if n in values]
        return [n for n in values if OUT in (self.weights or {}).get(n, ())]

    def can_fold(self, layer):
        """'' if a scale can be folded into `layer`, else why not."""
        if self.fold_into is not None and self.fold_into and not any(
                w.name == self.fold_into[0] for w in weights_of(layer)):
            return (f"{layer.name!r} has no {self.fold_into[0]!r} weight to "
                    "scale")
        return ""

    def cut(self, layer, values, keep_in, keep_out, fold=None):
        """The weights `values` (name -> array) cut to the kept channels.

        Args:
            layer: the layer the weights belong to (for messages).
            values: weight name -> NumPy array.
            keep_in, keep_out: bool per input / output channel.
            fold: optional multiplier per output channel, applied to the
                `fold_into` weights before cutting.
        """
        spec = self.weights or {}
        folded = set(self._folded(values)) if fold is not None else set()
        out = {}
        for name, value in values.items():
            if name not in spec:
                raise ValueError(
                    f"strip: layer {layer.name!r} ({type(layer).__name__}) "
                    f"holds the weight {name!r}, which its layer type does "
                    "not describe. Describe it with "
                    "keras_autopruner.register_prunable(cls, width_key, "
                    "weights={name: ('in', 'out'), ...}).")
            roles = spec[name]
            axes = range(value.ndim - len(roles), value.ndim)
            for axis, role in zip(axes, roles):
                if role is None:
                    continue
                keep = keep_in if role == IN else keep_out
                index = _index(value.shape[axis], keep, layer, name)
                scaled = OUT if OUT in roles else IN
                if name in folded and role == scaled:
                    shape = [1] * value.ndim
                    shape[axis] = -1
                    value = value * np.reshape(np.repeat(
                        fold, value.shape[axis] // fold.size), shape)
                if index is not None:
                    value = np.compress(index, value, axis=axis)
            out[name] = value
        return out

    def param_parts(self, layer, kind):
        """Weights split into (both, input only, output only, fixed)."""
        parts = [0.0, 0.0, 0.0, 0.0]
        for name, w in zip(self.weight_names(layer), weights_of(layer)):
            parts[self._part(name, kind)] += float(math.prod(w.shape))
        return tuple(parts)

    def weight_names(self, layer):
        """The name each of `layer.weights` goes by in `weights`.

        A variable's own name, or, where that is not described (a weight
        made without `name=`, such as ConvNeXt's LayerScale), the attribute
        of the layer that holds it (`self.gamma = self.add_weight(...)`),
        or, for a variable of a sub-layer that several sub-layers share
        (HGQ2's quantisers all hold a `b` and an `i`), `"attr/name"`: the
        attribute holding the sub-layer, and the variable's own name.
        """
        spec = self.weights or {}
        attrs = {id(v): k for k, v in vars(layer).items()
                 if k in spec and hasattr(v, "shape")}
        if any("/" in k for k in spec):
            for k, sub in vars(layer).items():
                if hasattr(sub, "shape") or not isinstance(
                        getattr(sub, "weights", None), list):
                    continue
                for v in sub.weights:
                    if f"{k}/{v.name}" in spec:
                        attrs.setdefault(id(v), f"{k}/{v.name}")
        return [w.name if w.name in spec or id(w) not in attrs
                else attrs[id(w)] for w in weights_of(layer)]

    def flop_parts(self, layer, kind, macs):
        """MACs split into (both, input only, output only, fixed).

        A mixer's MACs are shared between its weights with both channel
        axes and those with the input one alone, by their sizes (the
        separable convolution's pointwise and depthwise kernels).
        """
        if not macs:
            return (0.0, 0.0, 0.0, 0.0)
        if kind == "mix":
            sizes = [0.0, 0.0]
            for name, w in zip(self.weight_names(layer), weights_of(layer)):
                part = self._part(name, kind)
                if part < 2:
                    sizes[part] += float(math.prod(w.shape))
            total = sum(sizes) or 1.0
            if not sizes[1]:
                return (float(macs), 0.0, 0.0, 0.0)
            return (macs * sizes[0] / total, macs * sizes[1] / total,
                    0.0, 0.0)
        if kind in ("channelwise", "gate"):
            return (0.0, float(macs), 0.0, 0.0)
        return (0.0, 0.0, 0.0, float(macs))

    def _part(self, name, kind):
        """0: both channel axes, 1: input, 2: output, 3: fixed."""
        if kind == "channelwise":
            return 1
        roles = (self.weights or {}).get(name, ()) if kind == "mix" else ()
        has_in, has_out = IN in roles, OUT in roles
        if has_in and has_out:
            return 0
        return 1 if has_in else 2 if has_out else 3


def weights_of(layer):
    """The layer's weights; none for a `keras.ops` call."""
    return list(getattr(layer, "weights", None) or [])


def _index(length, keep, layer, name):
    """A bool index for an axis of `length` entries, or None to keep all."""
    if length == keep.size:
        return keep
    if length == 1:
        return None
    if keep.size and length % keep.size == 0:
        return np.repeat(keep, length // keep.size)
    raise ValueError(
        f"strip: weight {name!r} of layer {layer.name!r} has an axis of "
        f"{length} entries for {keep.size} channels; its layer type "
        "describes its axes wrongly.")


_TYPES = {}


def register(layer_class, record):
    """Make `record` the `LayerType` of `layer_class` and its subclasses."""
    if not isinstance(layer_class, type):
        raise TypeError(f"Expected a layer class, got {layer_class!r}.")
    if not isinstance(record, LayerType):
        raise TypeError(f"Expected a LayerType, got {record!r}.")
    _TYPES[layer_class] = record
    return record


def registered():
    """A copy of the table, class -> `LayerType` (to save and restore it)."""
    return dict(_TYPES)


def restore(table):
    """Replace the table by `table`, as returned by `registered`."""
    _TYPES.clear()
    _TYPES.update(table)


def nearest(layer_class):
    """The record of `layer_class` or of its nearest registered base, or
    None, whether or not a class in between overrides `call`."""
    return next((_TYPES[k] for k in layer_class.__mro__ if k in _TYPES), None)


def lookup(layer):
    """The `LayerType` of a layer (or layer class), or None.

    The class's own record, else the nearest registered base's, unless a
    class in between overrides `call`: then a record that refuses it.
    """
    cls = layer if isinstance(layer, type) else type(layer)
    mro = cls.__mro__
    for i, base in enumerate(mro):
        record = _TYPES.get(base)
        if record is None:
            continue
        override = next((k for k in mro[:i] if "call" in vars(k)), None)
        if override is None:
            if record.inner is not None and not isinstance(layer, type):
                return specialise(record, layer)
            return record
        reason = (f"{cls.__name__} subclasses {base.__name__} but overrides "
                  "call(), so the rules for its base may not hold. Describe "
                  "it with keras_autopruner.register_prunable (or "
                  "keras_autopruner.registry.register)")
        return LayerType(refused=reason)
    return None



class _WrappedCall:
    """A call node as the wrapped layer sees it (its own flow rules read
    the layer from `operation`)."""

    def __init__(self, node, layer):
        self._node, self.operation = node, layer

    def __getattr__(self, name):
        return getattr(self._node, name)


def specialise(wrapper, layer):
    """The record of one wrapper layer, from the record of what it wraps.

    The wrapped layer's channel flow, width, weights and cost hold for the
    wrapper, which applies it at every step of an extra axis; the
    wrapper's own `flops`, if any, counts the whole call.
    """
    inner = wrapper.inner(layer)
    base = lookup(inner)
    name = type(layer).__name__
    if base is None or base.refused:
        why = base.refused if base is not None else (
            f"no record describes {type(inner).__name__}")
        return LayerType(flops=wrapper.flops, wrapper=wrapper,
                         refused=f"{name} wraps {inner.name!r}: {why}")

    def flow(node):
        return dataclasses.replace(base.flow(_WrappedCall(node, inner)),
                                   node=node)

    def config_of(config):
        return base.width_config(wrapper.config_of(config))

    return dataclasses.replace(
        base, flow=flow, config_of=config_of, inner=None, wrapper=wrapper,
        flops=wrapper.flops, follows=base.follows and wrapper.follows,
        crosses=False)
