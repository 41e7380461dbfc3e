"""Counting the size and the compute cost of a Keras model.

Pruning is judged by what it saves, so the two numbers every report needs
live here: `count_params` (stored weights) and `count_flops` (the cost of
one forward pass).

Conventions of `count_flops`, chosen to match how pruning papers quote
VGG16 at about 15.5 G "FLOPs":

* The unit is the multiply-accumulate (MAC) for one example (batch 1).
  Multiply the total by two if you need separate multiplies and adds.
* Biases are not counted; they are a rounding error next to the products.
* Convolutions and `Dense` count one MAC per kernel weight per output
  position (per input position for transposed convolutions).
* `BatchNormalization` counts one MAC per output element: at inference it
  is a per-channel scale and shift that the next layer can absorb.
  `LayerNormalization` counts the same (its statistics are not counted).
* Pooling counts one MAC per input element read: the window size times the
  number of outputs for local pooling, the input size for global pooling.
* Merges (`Add`, `Multiply`, `Concatenate`, ...), activations and shape
  layers count zero.
* An `AutoPrunerGate` counts one multiply per element: its inference cost
  (the map that computes its code only runs in training).
* Wrappers count what they wrap: `TimeDistributed` the wrapped layer once
  per step, `Bidirectional` both directions; recurrent layers (LSTM, GRU,
  SimpleRNN) their input and recurrent kernels at every step;
  `MultiHeadAttention` its projections, scores and weighted sums; `Dense`
  on a `(batch, steps, features)` input once per step; `keras.ops.matmul`
  one MAC per product. Models used as layers are walked.
* A layer or `keras.ops` call without a counting rule (a custom layer, a
  `Lambda`, an op such as `einsum`) counts zero and is named in
  `FlopCount.unknown`, so a missing rule is visible, never silent. Add
  rules for your own layers with `register_flops`, or describe the whole
  layer with `register_prunable` (see `registry`).
"""

import dataclasses
import math
import numbers
import operator

import keras
import numpy as np

from keras_autopruner import registry, tracing

__all__ = [
    "FlopCount",
    "count_flops",
    "count_params",
    "register_flops",
]


def count_params(model):
    """Counts every weight of a built layer or model.

    Trainable and non-trainable weights (such as batch-norm moving
    statistics) are both counted. A variable reachable twice, through a
    shared layer or a model nested inside another, is counted once.

    Args:
        model: a built `keras.Layer` or `keras.Model`.

    Returns:
        The number of scalars held in the model's weights, as an int.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> count_params(model)
    15
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError("count_params expects a Keras model or layer; got "
                        f"{type(model).__name__}.")
    if not getattr(model, "built", True):
        raise ValueError(
            f"{model.name} is not built, so its weights do not exist yet. "
            "Give it an `keras.Input` or call `model.build(input_shape)` "
            "before counting."
        )
    seen = set()
    total = 0
    for variable in model.weights:
        if id(variable) in seen:
            continue
        seen.add(id(variable))
        total += math.prod(int(d) for d in variable.shape)
    return total


@dataclasses.dataclass(eq=False)
class FlopCount:
    """Result of `count_flops`: the MACs of one forward pass, by layer.

    It stands for its `total` wherever a number is expected: `int(count)`,
    `float(count)`, `count > 1e9`, `count / 1e9`, `sum(counts)` and
    `f"{count:,}"`, `np.asarray(count)` and `pytest.approx` all use the
    total. `str(count)` (and `print`) give the
    per-layer table instead.

    Attributes:
        total: multiply-accumulates for one example, summed over layers.
        per_layer: layer name to MACs, in execution order. Layers inside a
            nested model are named `"outer_model/inner_layer"`; a layer
            called several times holds the sum over its calls.
        layer_classes: layer name to its class name, for reports.
        unknown: names of the layers and ops that have no counting rule;
            they contribute zero to `total`. An empty list means the
            count is complete.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...                           keras.layers.Dense(3, name="d")])
    >>> count = count_flops(model)
    >>> int(count), count.per_layer
    (12, {'d': 12})
    >>> f"{count / 1e3:.3f} kMACs", count == 12
    ('0.012 kMACs', True)
    """

    total: int
    per_layer: dict
    layer_classes: dict = dataclasses.field(default_factory=dict)
    unknown: list = dataclasses.field(default_factory=list)

    @property
    def flops(self):
        """Floating point operations, counting multiply and add apart."""
        return 2 * self.total

    def table(self, skip_zero=False):
        """Formats the per-layer counts as a plain-text table.

        Args:
            skip_zero: leave out layers that cost nothing.

        Returns:
            A multi-line string with one row per layer and a total row.
        """
        rows = [
            (name, self.layer_classes.get(name, ""), macs)
            for name, macs in self.per_layer.items()
            if macs or not skip_zero
        ]
        name_w = max([len("layer")] + [len(r[0]) for r in rows])
        cls_w = max([len("class")] + [len(r[1]) for r in rows])
        total = max(self.total, 1)
        lines = [f"{'layer':<{name_w}}  {'class':<{cls_w}}  {'MACs':>15}  share"]
        for name, cls, macs in rows:
            mark = "  (no rule)" if name in self.unknown else ""
            lines.append(
                f"{name:<{name_w}}  {cls:<{cls_w}}  {macs:>15,}  "
                f"{100.0 * macs / total:5.1f}%{mark}"
            )
        lines.append(f"{'total':<{name_w}}  {'':<{cls_w}}  {self.total:>15,}")
        if self.unknown:
            lines.append(
                "uncounted (no counting rule, counted as 0): "
                + ", ".join(self.unknown)
            )
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    # The total, as a number.

    def __int__(self):
        return int(self.total)

    __index__ = __int__

    def __float__(self):
        return float(self.total)

    def __format__(self, spec):
        return format(self.total, spec)

    def __array__(self, dtype=None, copy=None):
        # NumPy (and pytest.approx) then see the total.
        return np.asarray(self.total, dtype=dtype)

    def __bool__(self):
        return bool(self.total)

    def __hash__(self):
        return hash(self.total)

    def __round__(self, ndigits=None):
        return round(self.total, ndigits)

    def __neg__(self):
        return -self.total

    def __abs__(self):
        return abs(self.total)


def _other(value):
    """The number to combine with a `FlopCount`, or None."""
    if isinstance(value, FlopCount):
        return value.total
    if isinstance(value, numbers.Number):
        return value
    return None


def _number_method(op, swap=False):
    def method(self, other):
        value = _other(other)
        if value is None:
            return NotImplemented
        return op(value, self.total) if swap else op(self.total, value)
    return method


for _name, _op in [("eq", operator.eq), ("ne", operator.ne),
                   ("lt", operator.lt), ("le", operator.le),
                   ("gt", operator.gt), ("ge", operator.ge),
                   ("add", operator.add), ("sub", operator.sub),
                   ("mul", operator.mul), ("truediv", operator.truediv),
                   ("floordiv", operator.floordiv), ("mod", operator.mod),
                   ("pow", operator.pow)]:
    setattr(FlopCount, f"__{_name}__", _number_method(_op))
    if _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow"):
        setattr(FlopCount, f"__r{_name}__", _number_method(_op, swap=True))


def register_flops(cls, fn=None):
    """Registers how to count the MACs of a layer class.

    The rule receives the layer and the shapes of one call, and returns
    the MACs of that call for one example. Shapes are tuples whose first
    (batch) entry is 1 and whose other entries are known ints. Subclasses
    of `cls` use the rule too unless they register their own. Registering
    a class again replaces its rule.

    Args:
        cls: a layer class.
        fn: callable `fn(layer, input_shapes, output_shapes) -> int`, where
            `input_shapes` and `output_shapes` are lists of shape tuples.
            When omitted, `register_flops` returns a decorator.

    Returns:
        `fn` (so it can be used as a decorator).

    Example:

    >>> class Scale(keras.layers.Layer):
    ...     def build(self, shape):
    ...         self.w = self.add_weight(shape=shape[-1:])
    ...     def call(self, x):
    ...         return x * self.w
    >>> rule = register_flops(
    ...     Scale, lambda layer, ins, outs: math.prod(outs[0]))
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_flops expects a class, got {cls!r}.")
    if fn is None:
        return lambda f: register_flops(cls, f)
    if not callable(fn):
        raise TypeError(
            "register_flops expects fn(layer, input_shapes, output_shapes) "
            f"returning an int, got {fn!r}."
        )
    base = registry.lookup(cls)
    if base is None or base.refused:
        base = registry.LayerType()
    registry.register(cls, dataclasses.replace(base, flops=fn))
    return fn


def _rule_for(layer):
    record = registry.lookup(layer)
    return None if record is None else record.flops


class UnknownSizeError(ValueError):
    """A size other than the batch is not known, so MACs cannot be counted.

    `where` names the layer, `shape` is its tensor's shape.
    """

    def __init__(self, where, shape, fix=None):
        self.where, self.shape = where, shape
        super().__init__(
            f"The input or output of {where} has shape {shape}, with an "
            "unknown size other than the batch. " + (fix or (
                "Pass the example shape, e.g. count_flops(model, "
                "input_shape=(224, 224, 3)).")))


def _example_shape(tensor, where):
    shape = tuple(tensor.shape)
    if not _known(tensor):
        raise UnknownSizeError(where, shape)
    return (1,) + tuple(int(d) for d in shape[1:])


def _known(tensor):
    return all(d is not None for d in tuple(tensor.shape)[1:])


def _run_on_zeros(op, call, refs, actual):
    """The outputs of one call run on zeros of the actual input shapes.

    For a layer that declares sizes it cannot infer (an `EinsumDense`
    built with `output_shape=(None, 6)`, say) although its inputs have
    every size: running it on one example of zeros gives the real ones.
    """
    zeros = {id(ref): keras.ops.zeros((1,) + tuple(a.shape[1:]), a.dtype)
             for ref, a in zip(refs, actual)}
    args, kwargs = call.fill_in(zeros)
    return [keras.KerasTensor(tuple(out.shape), dtype=out.dtype)
            for out in keras.tree.flatten(op(*args, **kwargs))]


def _same_example_shape(a, b):
    return tuple(a.shape[1:]) == tuple(b.shape[1:])


def _walk(model, inputs, prefix, result):
    """Counts every call of `model` fed with `inputs`; returns its outputs.

    Shapes are taken from the traced graph's own tensors, call by call, so
    a layer called twice is counted at each call's shapes. Only where the
    actual inputs differ from the recorded ones (a nested model built for
    variable sizes, or an `input_shape` override) are the outputs
    recomputed with `compute_output_spec`.
    """
    graph = tracing.trace(model)
    tensors = {id(ref): actual for ref, actual in zip(graph.inputs, inputs)}
    for call in graph.nodes:
        op = call.operation
        refs = call.input_tensors + call.mask_tensors
        if any(id(x) not in tensors for x in refs):
            continue  # Not connected to the inputs; never runs.
        actual_in = [tensors[id(x)] for x in call.input_tensors]
        name = prefix + op.name
        nested = tracing.is_nested_model(op)
        if nested:
            actual_out = _walk(op, actual_in, name + "/", result)
        elif all(_same_example_shape(a, r)
                 for a, r in zip(actual_in, call.input_tensors)):
            actual_out = list(call.outputs)
        else:
            args, kwargs = call.fill_in(tensors)
            actual_out = keras.tree.flatten(
                op.compute_output_spec(*args, **kwargs))
        if not nested and not all(map(_known, actual_out)) and all(
                _known(tensors[id(x)]) for x in refs):
            actual_out = _run_on_zeros(op, call, refs,
                                       [tensors[id(x)] for x in refs])
        for ref, actual in zip(call.outputs, actual_out):
            tensors[id(ref)] = actual
        if not nested:
            _count_node(op, name, actual_in, actual_out, result)
    outputs = []
    for ref in graph.outputs:
        if id(ref) not in tensors:
            raise ValueError(
                f"Output {ref.name} of {model.name} is not connected to its "
                "inputs, so its cost cannot be counted."
            )
        outputs.append(tensors[id(ref)])
    return outputs


def _count_node(op, name, actual_in, actual_out, result):
    rule = _rule_for(op)
    macs = None
    if rule is not None:
        where = f"layer '{name}'"
        ins = [_example_shape(t, where) for t in actual_in]
        outs = [_example_shape(t, where) for t in actual_out]
        macs = rule(op, ins, outs)
    if macs is None:
        # No rule, or a wrapper around a layer without one: it may cost
        # anything, so it is named rather than counted as free.
        if name not in result.unknown:
            result.unknown.append(name)
        macs = 0
    macs = int(macs)
    result.per_layer[name] = result.per_layer.get(name, 0) + macs
    result.layer_classes[name] = type(op).__name__
    result.total += macs


def _check_fills(model, shape, ref):
    """`shape` may give only the sizes the model input leaves open: the
    model cannot run on any other (Keras checks the known ones)."""
    known = tuple(ref.shape)[1:]
    shape = tuple(shape)
    if len(shape) != len(known) or any(
            not isinstance(s, numbers.Integral) or s < 1
            or (k is not None and s != k) for s, k in zip(shape, known)):
        raise ValueError(
            f"count_flops: input_shape {shape} does not fit the input "
            f"{ref.name!r} of {model.name}, of shape {(None,) + known}. It "
            "can give only the sizes the model leaves open (None); to count "
            "another size, build the model at that size.")


def count_flops(model, input_shape=None):
    """Counts the multiply-accumulates of one forward pass of one example.

    The model is walked through its functional graph, using the shapes of
    each call; models used as layers are walked too, and their layers are
    reported as `"nested_model/layer"`. See the module docstring for what
    each layer type counts.

    Args:
        model: a built Functional or Sequential `keras.Model`. Subclassed
            models have no graph to walk; wrap their parts in a functional
            model instead.
        input_shape: optional example shape (without the batch), or a list
            of them for several inputs, that fills in the sizes the model
            was built without, such as `keras.Input((None, None, 3))`.
            Sizes the model fixes must be given as they are.

    Returns:
        A `FlopCount`; `.total` is the MAC count and `.unknown` lists the
        layers that could not be counted.

    Example:

    >>> model = keras.Sequential([keras.Input((8, 8, 3)),
    ...                           keras.layers.Conv2D(4, 3, name="conv")])
    >>> count = count_flops(model)
    >>> count.per_layer, count > 3000
    ({'conv': 3888}, True)
    """
    if not isinstance(model, keras.Model):
        raise TypeError("count_flops expects a keras.Model (Sequential or "
                        f"functional); got {type(model).__name__}.")
    graph = tracing.functional_of(model)
    if graph is None:
        raise ValueError(
            f"count_flops needs a Functional or Sequential model with a "
            f"graph, but {model.name} ({type(model).__name__}) has none. "
            "Build a Sequential model first (give it a `keras.Input` or "
            "call `model.build(input_shape)`); for a subclassed model, "
            "express it with the functional API."
        )
    inputs = list(graph.inputs)
    if input_shape is not None:
        shapes = input_shape
        if not shapes or not isinstance(shapes[0], (tuple, list)):
            shapes = [shapes]
        if len(shapes) != len(inputs):
            raise ValueError(
                f"{model.name} has {len(inputs)} inputs but input_shape "
                f"gives {len(shapes)} shapes."
            )
        for shape, ref in zip(shapes, inputs):
            _check_fills(model, shape, ref)
        inputs = [
            keras.KerasTensor((1,) + tuple(shape), dtype=ref.dtype)
            for shape, ref in zip(shapes, inputs)
        ]
    result = FlopCount(total=0, per_layer={})
    _walk(model, inputs, "", result)
    return result
