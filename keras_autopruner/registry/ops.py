"""The records of the `keras.ops` calls that functional graphs record.

`x + 3.0`, `ops.sum(h * mask, axis=1)` or the `NotEqual`/`Any` pair that
`Masking` records are call nodes of their own in a traced graph. Their
classes are not public: each is found by tracing its function once on a
symbolic tensor (`tracing.op_class`) and given a record here. A call whose
class has no record is opaque: its channels all stay.
"""

import numbers

import keras
import numpy as np

from keras_autopruner import tracing
from keras_autopruner.registry.builtin import (
    _kind, _numel, _per_input_element, _zero)
from keras_autopruner.registry.record import (
    _CHANNELWISE, LayerType, Op, activation_traits, register, unknown)

ops = keras.ops


def _scalar(value):
    """A Python or 0-d constant as a float, else None (an array constant
    would be a per-channel weight that strip cannot cut)."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, numbers.Number):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    return None


def _width(tensor):
    shape = tensor.shape
    return None if len(shape) < 1 else shape[-1]


def _broadcast(node):
    """Which data inputs carry the output's channels, which are broadcast
    along the channel axis; None when neither fits."""
    out = _width(node.outputs[0])
    full, other = [], []
    for i, t in enumerate(node.input_tensors):
        w = _width(t)
        if len(t.shape) >= 2 and w == out:
            full.append(i)
        elif w == 1 and out != 1 or len(t.shape) < 2:
            other.append(i)
        else:
            return None
    return tuple(full), tuple(other)


def _elementwise(name):
    """The flow of a binary `keras.ops` call (`x + 3.0`, `a * b`)."""
    def flow(node):
        if len(node.outputs) != 1:
            return unknown(node, f"ops.{name} has several outputs")
        split = _broadcast(node)
        if split is None or not split[0]:
            return unknown(node, f"ops.{name} broadcasts its inputs along "
                                 "the channel axis")
        full, other = split
        constants = [_scalar(c) for c in node.constants]
        if any(c is None for c in constants):
            return unknown(node, f"ops.{name} takes an array constant, a "
                                 "per-channel weight strip cannot cut")
        if len(full) > 1:
            if other:
                return unknown(node, f"ops.{name} mixes broadcast and "
                                     "full-width inputs")
            kind = {"add": "sum", "subtract": "sum", "maximum": "sum",
                    "minimum": "sum", "multiply": "product"}.get(name)
            if kind is None:
                return unknown(node, f"ops.{name} of two feature tensors")
            return Op(node, kind)
        # One tensor carries the channels; the rest is a constant or is
        # broadcast along the channel axis.
        first = full[0] == 0 and not (node.constants and _constant_first(
            node))
        c = constants[0] if constants else None
        zero, homog = _binary_traits(name, c, first, bool(other))
        return Op(node, "channelwise", zero, homog, inputs=full)
    return flow


def _constant_first(node):
    return node.leading_constant


def _binary_traits(name, c, first, broadcast):
    """(f(0) == 0, f(s x) == s f(x)) of x -> x <name> c (or c <name> x),
    where the other operand is a constant c or (c None) a broadcast
    tensor of unknown values."""
    if name == "multiply":
        return True, True
    if name in ("divide", "true_divide"):
        return (True, True) if first else (False, False)
    if broadcast:
        return False, False
    if name in ("add", "subtract", "maximum", "minimum"):
        return c == 0, c == 0
    if name == "not_equal":
        return c == 0, False
    if name == "equal":
        return c != 0, False
    if name == "greater":
        return (c >= 0, False) if first else (c <= 0, False)
    if name == "less":
        return (c <= 0, False) if first else (c >= 0, False)
    return False, False


def _unary(traits):
    def flow(node):
        if len(node.input_tensors) != 1 or node.constants:
            return unknown(node, f"{type(node.operation).__name__} takes "
                                 "other arguments")
        return Op(node, "channelwise", *traits)
    return flow


def _axes(node, axis):
    rank = len(node.input_tensors[0].shape)
    if axis is None:
        return set(range(rank))
    axis = axis if isinstance(axis, (list, tuple)) else [axis]
    return {int(a) % rank for a in axis}


# Reductions: (f(0) == 0, homogeneous), and whether a zero channel leaves a
# reduction over the channels unchanged (a sum does; a mean does not).
_REDUCTIONS = {"sum": (True, True, True), "mean": (True, True, False),
               "max": (True, True, False), "min": (True, True, False),
               "any": (True, False, True), "all": (True, False, False),
               "prod": (True, False, False)}


def _reduce_flow(name):
    zero, homog, drops_zero = _REDUCTIONS[name]

    def flow(node):
        if len(node.input_tensors) != 1:
            return unknown(node, f"ops.{name} takes several tensors")
        op = node.operation
        rank = len(node.input_tensors[0].shape)
        axes = _axes(node, getattr(op, "axis", None))
        if rank - 1 not in axes:
            return Op(node, "channelwise", zero, homog)
        if drops_zero:
            # It reads the channels into a new axis, as a mixer does: a
            # channel that is zero there adds nothing.
            return Op(node, "mix", frozen_out=True,
                      reason=f"ops.{name} over the channel axis")
        return unknown(node, f"ops.{name} over the channel axis depends on "
                             "how many channels there are")
    return flow


def _expand_flow(node):
    op = node.operation
    rank_out = len(node.outputs[0].shape)
    axes = op.axis if isinstance(op.axis, (list, tuple)) else [op.axis]
    if any(int(a) % rank_out == rank_out - 1 for a in axes):
        return unknown(node, "it adds an axis behind the channels")
    return Op(node, "channelwise")


def _squeeze_flow(node):
    op = node.operation
    rank = len(node.input_tensors[0].shape)
    axis = getattr(op, "axis", None)
    if axis is None or rank - 1 in _axes(node, axis):
        return unknown(node, "it may remove the channel axis")
    return Op(node, "channelwise")


def _op_concat_flow(node):
    rank = len(node.outputs[0].shape)
    if int(node.operation.axis) % rank == rank - 1:
        return Op(node, "concat")
    return Op(node, "sum")


def _matmul_macs(layer, ins, outs):
    # Every output entry is a dot product along the contracted axis.
    return _numel(outs[0]) * int(ins[0][-1])


def register_operations():
    """`keras.ops` calls recorded in functional graphs, found by tracing."""
    x = keras.KerasTensor((None, 3, 4))

    def reg(call, record):
        register(type(tracing.producer_of(call(x))), record)

    zero = LayerType(flow=_kind("channelwise"), flops=_zero)
    for name in sorted(_CHANNELWISE):
        fn = getattr(ops, name, None)
        if fn is not None:
            reg(fn, LayerType(flow=_unary(activation_traits(name)),
                              flops=_zero))
    for name, traits in {"abs": (True, True), "negative": (True, True),
                         "square": (True, False), "sqrt": (True, False),
                         "sign": (True, False), "log1p": (True, False),
                         "exp": (False, False), "log": (False, False),
                         "logical_not": (False, False)}.items():
        reg(getattr(ops, name), LayerType(flow=_unary(traits), flops=_zero))
    reg(lambda t: ops.cast(t, "float16"), zero)
    for name in ("add", "subtract", "multiply", "divide", "true_divide",
                 "maximum", "minimum", "not_equal", "equal", "greater",
                 "less"):
        fn = getattr(ops, name, None)
        if fn is not None:
            reg(lambda t, fn=fn: fn(t, 1.0), LayerType(
                flow=_elementwise(name), flops=_zero, merges=True))
    for name in _REDUCTIONS:
        reg(lambda t, name=name: getattr(ops, name)(t, axis=1),
            LayerType(flow=_reduce_flow(name), flops=_per_input_element))
    reg(lambda t: ops.expand_dims(t, 1), LayerType(flow=_expand_flow,
                                                   flops=_zero))
    reg(lambda t: ops.squeeze(ops.expand_dims(t, 1), 1), LayerType(
        flow=_squeeze_flow,
        flops=_zero))
    reg(lambda t: ops.concatenate([t, t], axis=-1), LayerType(
        flow=_op_concat_flow, flops=_zero, merges=True))
    reg(lambda t: ops.matmul(t, ops.transpose(t, (0, 2, 1))), LayerType(
        flops=_matmul_macs))
    for call in (lambda t: ops.transpose(t, (0, 2, 1)),
                 lambda t: ops.reshape(t, (-1, 12)), lambda t: t[:, 0],
                 ops.softmax, ops.log_softmax):
        reg(call, LayerType(flops=_zero))




register_operations()
