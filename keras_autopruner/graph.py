"""Channel dependencies: which tensors of a model share a channel index.

Removing a filter is only correct if every weight that reads or writes its
channel goes with it: the filter's kernel column and bias, the batch-norm
statistics behind it, the kernel rows of every layer that reads it, and the
same channel of every branch it is added to. `ChannelGraph` works this out
once per model.

Every channel of every tensor is labelled with an integer, its *atom*. A
layer that writes new channels (a convolution, `Dense`) gives its output
fresh atoms; a layer that works channel by channel (batch norm, an
activation, pooling, a gate) passes its input's atoms on; `Concatenate`
joins them; `Flatten` repeats them at every spatial position, in Flatten's
order; `Add` and the other merges declare the atoms at the same index of
their inputs to be one channel. Atoms declared to be one channel form a
*group* (a union-find set); a group is kept or removed as a whole.

Which groups can go depends on the masks, and is decided by `needed`: a
channel can be removed exactly when its value is zero wherever it is read
(by a convolution or `Dense`, whose kernel rows then contribute nothing),
and it is neither a model input or output nor read by a layer this module
does not understand.

Example:

>>> graph = ChannelGraph(gated)             # a flat model with gates
>>> scales = {g.name: g.mask().astype("float32")
...           for g in graph.gate_layers()}
>>> need = graph.needed(scales)
>>> graph.kept(some_tensor, need)           # bool per channel of the tensor
"""

import dataclasses

import keras
import numpy as np

from keras_autopruner import tracing
from keras_autopruner.gate import AutoPrunerGate
from keras_autopruner.instrument import PRUNABLE

L = keras.layers

# Layers that read every input channel and write new ones: the built-in
# prunable layers. The input channels index kernel rows, the output channels
# its columns; the value is the config key holding the output width. A copy
# taken at import: a class added later with `register_prunable` has no
# slicing rule here, so strip treats it as unknown rather than guess. Exact
# classes only: a subclass may keep its weights differently.
MIXERS = dict(PRUNABLE)

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

# Layers that are the identity in inference.
_NO_OPS = (
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.GaussianDropout, L.GaussianNoise, L.AlphaDropout,
    L.ActivityRegularization, L.Identity,
)
# Layers that act on each channel alone, map 0 to 0 and hold no per-channel
# weights, in inference.
_PASS = _NO_OPS + (
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
    L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
)

# Merges that combine the same channel of each input. A "sum" output is zero
# where every input is; a "product" output where any input is.
_SUMS = (L.Add, L.Subtract, L.Average, L.Maximum, L.Minimum)
_PRODUCTS = (L.Multiply,)


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
    """

    node: object
    kind: str
    zero_preserving: bool = True
    homogeneous: bool = True
    repeat: int = 1
    frozen_out: bool = False
    reason: str = ""

    @property
    def layer(self):
        return self.node.operation


@dataclasses.dataclass
class ScaleSite:
    """Where a gate's per-channel scale can be folded into weights.

    Attributes:
        layer: the batch norm (scale gamma and beta) or the mixer (scale the
            kernel's output columns and the bias) that writes the channel;
            None when there is no such place.
        zero_preserving: a scale of 0 survives the activations between
            `layer` and the gate (they map 0 to 0).
        homogeneous: a scale in (0, 1) survives them.
        error: why there is no such place, when `layer` is None.
    """

    layer: object = None
    zero_preserving: bool = True
    homogeneous: bool = True
    error: str = ""


class ChannelGraph:
    """The channel dependencies of a flat functional model.

    Args:
        model: a functional or Sequential model without nested models
            (use `tracing.flatten` or `tracing.rebuild` first).

    Attributes:
        ops: one `Op` per call node, producers first.
        channels: `id(tensor)` -> int array, the atom of each channel of
            the tensor's last axis (empty for tensors without a known
            channel axis).
        gates: gate name -> the gate's `Op`.

    Example:

    >>> graph = ChannelGraph(gated)
    >>> [op.layer.name for op in graph.ops if op.kind == "unknown"]
    []
    """

    def __init__(self, model):
        self.model = model
        self.graph = tracing.Graph(model)
        self._parent = []
        self.channels = {}
        self.ops = []
        self.gates = {}
        self._op_of_node = {}
        self._first_call = {}
        self._layer_atoms = {}
        self._pinned = []
        self._frozen = []  # (layer, atoms) that must stay as they are

        functional = tracing.check_traceable(model, "ChannelGraph")
        for x in functional.inputs:
            self.channels[id(x)] = atoms = self._fresh(_width(x))
            self._pinned.append(atoms)
        for node in self.graph.nodes:
            if isinstance(node.operation, keras.Model):
                raise ValueError(
                    f"ChannelGraph needs a flat model, but {model.name!r} "
                    f"nests the model {node.operation.name!r}. Flatten it "
                    "first with keras_autopruner.tracing.flatten(model)."
                )
            self._link(node)
        for y in functional.outputs:
            self._pinned.append(self.channels[id(y)])

    # Union-find over atoms.

    def _fresh(self, n):
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def _find(self, a):
        parent = self._parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def _union(self, a, b):
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self._find(x), self._find(y)
            if rx != ry:
                self._parent[max(rx, ry)] = min(rx, ry)

    def groups(self, atoms):
        """The group (a representative atom) of each atom in `atoms`."""
        return np.array([self._find(a) for a in np.asarray(atoms).tolist()],
                        dtype=np.int64)

    # Building.

    def _link(self, node):
        layer = node.operation
        ins = [self.channels[id(t)] for t in node.input_tensors]
        op = _classify(node)
        # A shared layer has one set of weights for all its calls, so the
        # channels it reads are the same channels at every call.
        first_op, first_ins = self._first_call.setdefault(
            id(layer), (op, ins))
        if first_op is not op:
            if [len(a) for a in first_ins] == [len(b) for b in ins]:
                for a, b in zip(first_ins, ins):
                    self._union(a, b)
            else:
                op = _unknown(node, "it is called on inputs of different "
                                    "widths")
                # Its first call is then no safer to narrow.
                first_op.kind, first_op.reason = op.kind, op.reason
                first_outs = [self.channels[id(t)]
                              for t in first_op.node.outputs]
                self._frozen.extend(
                    (layer, a) for a in first_ins + first_outs)
        outs = self._outputs(op, ins)
        widths = [_width(t) for t in node.outputs]
        if outs is None or [len(o) for o in outs] != widths:
            if op.kind != "unknown":
                op = _unknown(node, "its output shape does not follow the "
                                    "channel rule for its type")
            outs = [self._fresh(w) for w in widths]
        if op.kind == "unknown":
            self._frozen.extend((layer, a) for a in ins + outs)
        elif op.frozen_out:
            self._frozen.extend((layer, a) for a in outs)
        if op.kind == "gate":
            self.gates[layer.name] = op
        for t, atoms in zip(node.outputs, outs):
            self.channels[id(t)] = atoms
        self.ops.append(op)
        self._op_of_node[id(node)] = op

    def _outputs(self, op, ins):
        """The atoms of the op's outputs, or None if the rule does not fit."""
        kind = op.kind
        if kind == "unknown":
            return None
        if len(op.node.outputs) != 1 or not ins:
            return None
        if kind in ("gate", "channelwise"):
            return [np.repeat(ins[0], op.repeat)]
        if kind == "mix":
            # Fresh per layer, not per call: a shared layer's filters are
            # the same filters at every call.
            width = _width(op.node.outputs[0])
            if id(op.layer) not in self._layer_atoms:
                self._layer_atoms[id(op.layer)] = self._fresh(width)
            return [self._layer_atoms[id(op.layer)]]
        if kind in ("sum", "product"):
            if any(len(a) != len(ins[0]) for a in ins):
                return None
            for a in ins[1:]:
                self._union(ins[0], a)
            return [ins[0]]
        if kind == "concat":
            return [np.concatenate(ins)]
        if kind == "tile":
            return [np.tile(ins[0], op.repeat)]
        raise AssertionError(kind)

    # Queries.

    def op_of(self, layer):
        """The `Op` of the first call of `layer`."""
        for op in self.ops:
            if op.layer is layer:
                return op
        raise KeyError(layer.name)

    def gate_layers(self):
        return [op.layer for op in self.gates.values()]

    def gate_channels(self, gate_name):
        """The atoms of the channels a gate multiplies."""
        return self.channels[id(self.gates[gate_name].node.input_tensors[0])]

    def kept(self, tensor, need):
        """Bool per channel of `tensor`: kept under `need` (see `needed`)."""
        atoms = self.channels[id(tensor)]
        return need[self.groups(atoms)] if len(atoms) else np.zeros(0, bool)

    def needed(self, scales):
        """Which groups the model needs, given what the gates multiply by.

        A group can go when each of its channels is zero wherever it is
        read: where a gate multiplies it by 0 (or a `Multiply` by a zero
        channel), and after that only layers that keep zeros at zero
        (pooling, relu-like activations, dropout, merges of zeros, Flatten).

        Args:
            scales: gate name -> float array, each channel's multiplier; 0
                means the gate removes the channel.

        Returns:
            A bool array indexed by group (see `groups`): True to keep.

        Raises:
            ValueError: a layer that `strip` cannot narrow reads or writes a
                channel that would go; the message names the layer.
        """
        need = np.zeros(len(self._parent), dtype=bool)
        zero = {id(x): np.zeros(len(self.channels[id(x)]), bool)
                for x in tracing.check_traceable(self.model).inputs}
        for op in self.ops:
            node = op.node
            z_in = [zero[id(t)] for t in node.input_tensors]
            a_in = [self.channels[id(t)] for t in node.input_tensors]
            if op.kind in ("mix", "unknown"):
                # Reading a channel that is not zero needs it.
                for z, a in zip(z_in, a_in):
                    need[self.groups(a[~z])] = True
            z_out = _zeros_out(op, z_in, scales)
            for t, z in zip(node.outputs, z_out):
                zero[id(t)] = z
        for atoms in self._pinned:
            need[self.groups(atoms)] = True
        for layer, atoms in self._frozen:
            lost = ~need[self.groups(atoms)] if len(atoms) else []
            if np.any(lost):
                raise ValueError(
                    f"strip cannot narrow layer {layer.name!r} "
                    f"({type(layer).__name__}): {int(np.sum(lost))} of its "
                    f"{len(atoms)} channels would be removed, and "
                    f"{_reason(self, layer)}. Keep those channels: pass "
                    "exclude=[...] to add_gates for the layers feeding it, "
                    "or set their gates' codes to 1."
                )
        return need

    def scale_site(self, gate_name):
        """Where the scale of gate `gate_name` can be folded (`ScaleSite`).

        The walk goes back from the gate through activations and dropout to
        the batch norm or the mixer that writes the channel. Every tensor on
        the way must be read by the next layer only, or the fold would
        change what the other readers see.
        """
        tensor = self.gates[gate_name].node.input_tensors[0]
        zero_ok = homog_ok = True
        while True:
            producer = self.graph.producer.get(id(tensor))
            if producer is None:
                return ScaleSite(error="the gate reads a model input")
            layer = producer.operation
            readers = self.graph.consumers[id(tensor)]
            if len(readers) != 1 or id(tensor) in self.graph.output_ids:
                return ScaleSite(
                    error=f"the output of {layer.name!r} is also read by "
                          "other layers than the gate's")
            if len(self.graph.nodes_of(layer)) > 1:
                return ScaleSite(error=f"{layer.name!r} is a shared layer")
            op = self._op_of_node[id(producer)]
            if op.kind == "mix" and not op.frozen_out:
                return ScaleSite(layer, zero_ok and op.zero_preserving,
                                 homog_ok and op.homogeneous)
            if type(layer) is L.BatchNormalization and op.kind != "unknown":
                if not layer.scale:
                    return ScaleSite(
                        error=f"batch norm {layer.name!r} has no gamma "
                              "(scale=False) to scale")
                return ScaleSite(layer, zero_ok, homog_ok)
            if op.kind == "channelwise" and op.repeat == 1 and (
                    _is_activation(layer)
                    or isinstance(layer, _NO_OPS)):
                zero_ok = zero_ok and op.zero_preserving
                homog_ok = homog_ok and op.homogeneous
                tensor = producer.input_tensors[0]
                continue
            return ScaleSite(
                error=f"{layer.name!r} ({type(layer).__name__}) stands "
                      "between the gate and the layer that writes its "
                      "channels")


def _width(tensor):
    shape = tensor.shape
    if len(shape) < 2 or shape[-1] is None:
        return 0
    return int(shape[-1])


def _unknown(node, reason):
    return Op(node, "unknown", zero_preserving=False, homogeneous=False,
              reason=reason)


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _is_activation(layer):
    return type(layer) in (L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.PReLU)


def _classify(node):
    """The `Op` of one call node."""
    layer = node.operation
    if not _channels_last(layer):
        return _unknown(node, "it uses data_format='channels_first'")
    if len(node.input_tensors) != 1 and not isinstance(
            layer, _SUMS + _PRODUCTS + (L.Concatenate,)):
        return _unknown(node, "it takes several inputs")
    if isinstance(layer, AutoPrunerGate):
        return Op(node, "gate")
    if type(layer) in MIXERS:
        if getattr(layer, "groups", 1) != 1:
            return _unknown(node, "it is a grouped convolution")
        traits = activation_traits(layer.activation)
        if traits is None:
            return Op(node, "mix", False, False, frozen_out=True,
                      reason="its activation mixes channels")
        return Op(node, "mix", *traits)
    if type(layer) in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        traits = activation_traits(layer.activation)
        if traits is None:
            return _unknown(node, "its activation mixes channels")
        zero = traits[0] and not layer.use_bias
        return Op(node, "channelwise", zero, False,
                  repeat=int(layer.depth_multiplier))
    if type(layer) is L.BatchNormalization:
        axis = layer.axis
        rank = len(node.input_tensors[0].shape)
        if isinstance(axis, (list, tuple)):
            axis = axis[0] if len(axis) == 1 else None
        if axis is None or axis % rank != rank - 1:
            return _unknown(node, "it normalises along an axis other than "
                                  "the channel axis")
        return Op(node, "channelwise", False, False)
    if _is_activation(layer):
        traits = _layer_traits(layer)
        if traits is None:
            return _unknown(node, "its activation mixes channels or is not "
                                  "known")
        return Op(node, "channelwise", *traits)
    if isinstance(layer, _PASS):
        return Op(node, "channelwise")
    if isinstance(layer, _SUMS):
        return Op(node, "sum")
    if isinstance(layer, _PRODUCTS):
        return Op(node, "product")
    if isinstance(layer, L.Concatenate):
        rank = len(node.outputs[0].shape)
        if layer.axis % rank == rank - 1:
            return Op(node, "concat")
        # Joined along another axis, channel c of the output holds channel
        # c of every input: the inputs' channels are one channel, as in Add.
        return Op(node, "sum")
    if type(layer) in (L.Flatten, L.Reshape):
        return _tile(node)
    return _unknown(node, f"strip does not know how {type(layer).__name__} "
                          "uses channels")


def _layer_traits(layer):
    if type(layer) is L.Activation:
        return activation_traits(layer.activation)
    if type(layer) is L.ReLU:
        t, slope = float(layer.threshold), float(layer.negative_slope)
        return (t <= 0 or slope == 0,
                t == 0 and layer.max_value is None)
    if type(layer) is L.ELU:
        return True, False
    return True, True  # LeakyReLU, PReLU


def _tile(node):
    """Flatten/Reshape: fine when the output's last axis repeats the channels.

    In row-major order an element's channel is its flat index modulo C. If
    the output's last axis has k*C entries, its entry j holds channel
    j mod C: the channel list repeated k times. (Flatten is the case where
    the output's last axis holds everything.)
    """
    shape_in, shape_out = node.input_tensors[0].shape, node.outputs[0].shape
    if any(d is None for d in tuple(shape_in[1:]) + tuple(shape_out[1:])):
        return _unknown(node, "its shapes are not static")
    c, last = int(shape_in[-1]), int(shape_out[-1])
    if len(shape_in) < 2 or c == 0 or last % c:
        return _unknown(node, "it moves the channel axis")
    return Op(node, "tile", repeat=last // c)


def _zeros_out(op, z_in, scales):
    """Which output channels of `op` are exactly zero, given the inputs'."""
    kind = op.kind
    n_out = [_width(t) for t in op.node.outputs]
    if kind == "gate":
        scale = np.asarray(scales[op.layer.name])
        return [z_in[0] | (scale == 0)]
    if kind == "channelwise":
        if op.zero_preserving:
            return [np.repeat(z_in[0], op.repeat)]
        return [np.zeros(n_out[0], bool)]
    if kind == "sum":
        return [np.logical_and.reduce(z_in)]
    if kind == "product":
        return [np.logical_or.reduce(z_in)]
    if kind == "concat":
        return [np.concatenate(z_in)]
    if kind == "tile":
        return [np.tile(z_in[0], op.repeat)]
    return [np.zeros(n, bool) for n in n_out]  # mix, unknown


def _reason(graph, layer):
    op = graph.op_of(layer)
    return op.reason or "strip does not know how it uses channels"
