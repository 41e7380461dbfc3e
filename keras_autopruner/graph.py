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

How one call of a layer moves channels (its `Op`) comes from the layer's
record in `registry`; this module only combines them.

Example:

    graph = ChannelGraph(gated)             # a flat model with gates
    scales = {g.name: g.mask().astype("float32")
              for g in graph.gate_layers()}
    need = graph.needed(scales)
    graph.kept(some_tensor, need)           # bool per channel of the tensor
"""

import dataclasses

import keras
import numpy as np

from keras_autopruner import registry, tracing
from keras_autopruner.registry import Op, activation_traits  # noqa: F401


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

        graph = ChannelGraph(gated)
        frozen = [op.layer.name for op in graph.ops if op.kind == "unknown"]
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
        for call in self.graph.nodes:
            # A mask is read whole by the layer it is handed to, and a
            # tensor nothing reads (a layer's unused second output) is
            # left as it is.
            for t in call.mask_tensors:
                self._pinned.append(self.channels[id(t)])
            for t in call.outputs:
                if (not self.graph.consumers[id(t)]
                        and id(t) not in self.graph.output_ids):
                    self._pinned.append(self.channels[id(t)])

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
                op = registry.unknown(
                    node, "it is called on inputs of different widths")
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
                op = registry.unknown(
                    node, "its output shape does not follow the channel "
                          "rule for its type")
            outs = [self._fresh(w) for w in widths]
        if op.kind == "unknown":
            self._frozen.extend((layer, a) for a in ins + outs)
        elif op.frozen_out:
            self._frozen.extend((layer, a) for a in outs)
        if op.kind == "gate":
            self.gates.setdefault(layer.name, op)
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
            return [np.repeat(ins[_source(op)], op.repeat)]
        if kind == "mix":
            # Fresh per layer, not per call: a shared layer's filters are
            # the same filters at every call.
            width = _width(op.node.outputs[0])
            if id(op.layer) not in self._layer_atoms:
                self._layer_atoms[id(op.layer)] = self._fresh(width)
            return [self._layer_atoms[id(op.layer)]]
        if kind in ("sum", "product"):
            ins = _carrying(op, ins)
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
        """The gates, in graph order (the order `gates_of` gives)."""
        return [op.layer for op in self.gates.values()]

    def gate_channels(self, gate_name):
        """The atoms of the channels a gate multiplies."""
        return self.channels[id(self.gates[gate_name].node.input_tensors[0])]

    def kept(self, tensor, need):
        """Bool per channel of `tensor`: kept under `need` (see `needed`)."""
        atoms = self.channels[id(tensor)]
        return need[self.groups(atoms)] if len(atoms) else np.zeros(0, bool)

    def needed(self, scales, check=True, blame=None):
        """Which groups the model needs, given what the gates multiply by.

        A group can go when each of its channels is zero wherever it is
        read: where a gate multiplies it by 0 (or a `Multiply` by a zero
        channel), and after that only layers that keep zeros at zero
        (pooling, relu-like activations, dropout, merges of zeros, Flatten).

        Args:
            scales: gate name -> float array, each channel's multiplier; 0
                means the gate removes the channel.
            check: raise when a layer strip cannot narrow would lose
                channels; False returns the groups all the same.
            blame: optional dict, filled with group -> the first `Op`
                that needs it (pinned groups have none), and
                `("spoiled", group)` -> the first channelwise `Op` that
                turns the group's zeros into non-zero values.

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
            carrying = (range(len(a_in)) if op.kind in ("mix", "unknown")
                        else _broadcast_inputs(op, len(a_in)))
            for i in carrying:
                # Reading a channel that is not zero needs it (a broadcast
                # operand is read whole).
                read = self.groups(a_in[i][~z_in[i]])
                if blame is not None:
                    for g in read[~need[read]].tolist():
                        blame.setdefault(g, op)
                need[read] = True
            z_out = _zeros_out(op, z_in, scales)
            if blame is not None and op.kind == "channelwise" and not \
                    op.zero_preserving:
                src = _source(op)
                for g in self.groups(a_in[src][z_in[src]]).tolist():
                    blame.setdefault(("spoiled", g), op)
            for t, z in zip(node.outputs, z_out):
                zero[id(t)] = z
        for atoms in self._pinned:
            need[self.groups(atoms)] = True
        for layer, atoms in self._frozen if check else ():
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

    @property
    def frozen(self):
        """`(layer, atoms)` pairs: channels of layers strip cannot narrow."""
        return list(self._frozen)

    def reason(self, layer):
        """Why strip cannot narrow `layer`."""
        return _reason(self, layer)

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
            record = registry.lookup(layer)
            if op.kind == "mix" and not op.frozen_out:
                return ScaleSite(layer, zero_ok and op.zero_preserving,
                                 homog_ok and op.homogeneous)
            if (op.kind == "channelwise" and record.fold_into
                    and op.repeat == 1):
                error = record.can_fold(layer)
                if error:
                    return ScaleSite(error=error)
                # A depthwise conv's own activation comes after the fold.
                own = activation_traits(getattr(layer, "activation", None)
                                        or "linear") or (False, False)
                return ScaleSite(layer, zero_ok and own[0],
                                 homog_ok and own[1])
            if (op.kind == "channelwise" and op.repeat == 1
                    and record.passes_scale):
                zero_ok = zero_ok and op.zero_preserving
                homog_ok = homog_ok and op.homogeneous
                tensor = producer.input_tensors[_source(op)]
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


def _source(op):
    """The data input a channelwise op takes its channels from."""
    return op.inputs[0] if op.inputs else 0


def _carrying(op, items):
    """The entries of `items` (one per data input) that carry channels."""
    return items if op.inputs is None else [items[i] for i in op.inputs]


def _broadcast_inputs(op, n):
    """The data inputs that are broadcast along the channel axis."""
    return [] if op.inputs is None else [i for i in range(n)
                                         if i not in op.inputs]


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _classify(node):
    """The `Op` of one call node, from its layer's `LayerType`."""
    layer = node.operation
    if not _channels_last(layer):
        return registry.unknown(node, "it uses data_format='channels_first'")
    record = registry.lookup(layer)
    if record is not None and record.refused:
        return registry.unknown(node, record.refused)
    if len(node.input_tensors) != 1 and not (record and record.merges):
        return registry.unknown(node, "it takes several inputs")
    if record is None:
        return registry.unknown(node, f"strip does not know how "
                                      f"{type(layer).__name__} uses channels")
    return record.flow(node)


def _zeros_out(op, z_in, scales):
    """Which output channels of `op` are exactly zero, given the inputs'."""
    kind = op.kind
    n_out = [_width(t) for t in op.node.outputs]
    if kind == "gate":
        scale = np.asarray(scales[op.layer.name])
        return [z_in[0] | (scale == 0)]
    if kind == "channelwise":
        if op.zero_preserving:
            return [np.repeat(z_in[_source(op)], op.repeat)]
        return [np.zeros(n_out[0], bool)]
    if kind == "sum":
        return [np.logical_and.reduce(_carrying(op, z_in))]
    if kind == "product":
        return [np.logical_or.reduce(_carrying(op, z_in))]
    if kind == "concat":
        return [np.concatenate(z_in)]
    if kind == "tile":
        return [np.tile(z_in[0], op.repeat)]
    return [np.zeros(n, bool) for n in n_out]  # mix, unknown


def _reason(graph, layer):
    op = graph.op_of(layer)
    return op.reason or "strip does not know how it uses channels"
