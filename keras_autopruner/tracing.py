"""The one traced graph of a Keras model, and the rebuilds that rewrite it.

Every stage of the package reads a model through `trace(model)`: a `Trace`
holds each call node of the model, producers first (layers, `keras.ops`
calls such as `x + 3.0` or `ops.sum(h, axis=1)`, and the mask ops Keras
inserts for `Masking`), with each call's data inputs apart from the masks
it is handed. `add_gates`, the channel graph, `CostModel`, `count_flops`,
`strip` and the report all consume it, and a model is traced once (the
trace is cached on the model object, whose graph never changes).

`add_gates` and `strip` both rewrite a model through `rebuild`, which
replays the model's call graph node by node, inlines nested Functional and
Sequential models (so every layer is reachable from one flat graph), and
lets the caller swap layers and wrap their outputs.

This is the only module that reads Keras's private graph internals
(`keras.src`, `_keras_history`, `_nodes_by_depth`, `Node.arguments`,
`_outputs_struct`, `_functional`); `tests/test_tracing.py` pins each of
them, so that a Keras upgrade that moves one breaks there.
"""

import collections
import weakref

import keras
from keras import tree

try:  # Keras's own class for graph networks; private, but stable across 3.x.
    from keras.src.models.functional import Functional
except ImportError:  # pragma: no cover
    Functional = None

# The keyword under which Keras hands a layer call its input's mask.
MASK_KWARG = "mask"
# The keyword of a gate call that returns (activation, code) (folding.py).
FOLD_KWARG = "fold"


def check_traceable(model, what="add_gates"):
    """The Functional graph behind `model`, or a clear error."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{what} expects a keras.Model (Sequential or functional); got "
            f"{type(model).__name__}. Build a Keras model first, e.g. "
            "keras.Sequential([...]) or keras.Model(inputs, outputs)."
        )
    graph = functional_of(model)
    if graph is None:
        if isinstance(model, keras.Sequential):
            raise ValueError(
                f"{what}: the Sequential model {model.name!r} is not built. "
                "Give it an input, e.g. keras.Sequential([keras.Input(shape), "
                "...]), or call model.build(input_shape) first."
            )
        raise TypeError(
            f"{what} cannot trace the subclassed model "
            f"{type(model).__name__!r}: its call() is Python code, not a "
            "graph of layers. Rewrite it as a functional model "
            "(keras.Model(inputs, outputs)) or as keras.Sequential, or apply "
            f"{what} to the functional sub-models it is made of."
        )
    return graph


def functional_of(model):
    """The Functional graph behind `model`, or None (subclassed, unbuilt)."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if Functional is not None and isinstance(model, Functional):
        return model
    return None


def is_nested_model(operation):
    """Whether a call node's operation is a model with a graph of its own."""
    return (isinstance(operation, keras.Model)
            and functional_of(operation) is not None)


def producer_of(tensor):
    """The operation that computed a symbolic tensor."""
    return tensor._keras_history[0]


def op_class(fn, *shapes):
    """The class of the operation `fn` records on symbolic inputs.

    `keras.ops` functions record an operation object whose class is not
    public (`keras.ops.add` records `Add`); the registry describes those
    calls by tracing each function once here.

    Example:

    >>> op_class(lambda x: keras.ops.add(x, 1.0), (4,)).__name__
    'Add'
    """
    inputs = [keras.KerasTensor((None,) + tuple(s)) for s in shapes or [(2,)]]
    return type(producer_of(fn(*inputs)))


def topological_nodes(graph):
    """The Keras call nodes of a Functional graph, producers first."""
    nodes = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def _symbolic(items):
    return [t for t in tree.flatten(items) if isinstance(t, keras.KerasTensor)]


class Call:
    """One call node of a traced model.

    Attributes:
        node: the Keras node.
        operation: the layer or `keras.ops` operation called.
        input_tensors: the symbolic data inputs, in argument order; the
            mask a layer is handed (`mask=`) is not among them.
        mask_tensors: the masks handed to the call.
        outputs: the output tensors.
        constants: the positional arguments that are not tensors (the 3.0
            of `x + 3.0`).
        leading_constant: the first positional argument is a constant
            (`3.0 - x`).
    """

    __slots__ = ("node", "operation", "input_tensors", "mask_tensors",
                 "outputs", "constants", "leading_constant", "_role")

    def __init__(self, node):
        self.node = node
        self.operation = node.operation
        args, kwargs = node.arguments.args, node.arguments.kwargs
        data_kwargs = {k: v for k, v in kwargs.items() if k != MASK_KWARG}
        self.input_tensors = _symbolic((args, data_kwargs))
        self.mask_tensors = _symbolic(kwargs.get(MASK_KWARG))
        self.outputs = list(node.outputs)
        self.constants = [a for a in args
                          if not _symbolic(a) and a is not None]
        self.leading_constant = bool(args) and not _symbolic(args[0])
        # A folded model is read as the unfolded one it computes (see
        # folding.py): a gate called with fold=True stands for its product
        # (its code output is left out), and the layer that applies that
        # code to its kernel stands for the layer it wraps, reading only
        # its first input.
        self._role = getattr(self.operation, "_fold_role", None)
        if self._role == "gate" and kwargs.get(FOLD_KWARG) is True:
            self.outputs = self.outputs[:1]
        elif self._role == "consumer":
            self.operation = self.operation.layer
            self.input_tensors = self.input_tensors[:1]
            self.constants = []
        else:
            self._role = None

    def fill_in(self, tensors):
        """`(args, kwargs)` of the call with `tensors` (id -> tensor) in
        place of the recorded symbolic tensors."""
        if self._role == "consumer":
            return (tensors[id(self.input_tensors[0])],), {}
        args, kwargs = self.node.arguments.fill_in(tensors)
        if self._role == "gate":
            kwargs = {k: v for k, v in kwargs.items() if k != FOLD_KWARG}
        return args, kwargs

    def __repr__(self):
        return f"Call({self.operation.name!r})"


class Trace:
    """Every call of a model, producers first, with who reads what.

    Args:
        model: a built Sequential or functional model. Nested models are
            calls of their own here (`nested` says whether there are any);
            `flat(model)` inlines them.

    Attributes:
        model: the model.
        inputs, outputs: its symbolic input and output tensors.
        nodes: one `Call` per call node, producers first.
        producer: `id(tensor)` -> the `Call` that computes it.
        consumers: `id(tensor)` -> the `Call`s that read it as data.
        output_ids: the ids of the model's output tensors.
        nested: whether any call is a model with a graph of its own.
        folded: whether the model has folded gates (read as unfolded).
    """

    def __init__(self, model):
        functional = check_traceable(model, "trace")
        self.model = model
        self.inputs = list(functional.inputs)
        self.outputs = list(functional.outputs)
        self.nodes = [Call(n) for n in topological_nodes(functional)]
        self.producer = {}
        self.consumers = collections.defaultdict(list)
        self._calls = collections.defaultdict(list)
        for call in self.nodes:
            self._calls[id(call.operation)].append(call)
            for t in call.outputs:
                self.producer[id(t)] = call
            for t in call.input_tensors:
                self.consumers[id(t)].append(call)
        self.output_ids = {id(t) for t in self.outputs}
        self.nested = any(is_nested_model(c.operation) for c in self.nodes)
        self.folded = any(c._role is not None for c in self.nodes)

    def nodes_of(self, operation):
        """The calls of `operation`, in graph order."""
        return self._calls.get(id(operation), [])

    def operations(self, deep=True):
        """Each operation once, in the order of its first call; with `deep`,
        the operations of nested models stand in their model's place."""
        seen, found = set(), []
        for call in self.nodes:
            op = call.operation
            if id(op) in seen:
                continue
            seen.add(id(op))
            if deep and is_nested_model(op):
                found.extend(o for o in trace(op).operations()
                             if id(o) not in seen)
                seen.update(id(o) for o in found)
            else:
                found.append(op)
        return found


# Traces by Functional graph. A built graph never changes (a Sequential
# that grows gets a new one), so one trace serves every stage that reads
# the model.
_TRACES = weakref.WeakKeyDictionary()


def trace(model):
    """The `Trace` of `model`, made once per graph."""
    graph = check_traceable(model, "trace")
    try:
        cached = _TRACES.get(graph)
    except TypeError:  # not weakly referable: trace it each time
        return Trace(model)
    if cached is None or cached.model is not model:
        cached = _TRACES[graph] = Trace(model)
    return cached


# Graph is the name the channel graph and add_gates knew it by.
Graph = trace


def clone_layer(layer, name, config=None):
    """A new layer like `layer` (or built from `config`), named `name`.

    A layer whose config does not rebuild it (a `Lambda` refused by
    Keras's safe mode) but that holds no weights is reused as it is: it
    has no state to share, and the user loads nothing.
    """
    config = _unbuilt(layer.get_config() if config is None else config)
    config["name"] = name
    try:
        return layer.__class__.from_config(config)
    except Exception as error:
        if getattr(layer, "weights", None) or config != {
                **_unbuilt(layer.get_config()), "name": name}:
            raise
        if name != layer.name:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) cannot be "
                f"rebuilt from its config ({error}), and reusing it would "
                f"need the new name {name!r}. Give it a name unique in the "
                "whole model (nested models included).") from error
        return layer


def _unbuilt(config):
    """`config` without the build shapes of the layers nested in it (the
    layer a `TimeDistributed` wraps): the clone is built when called, at
    the widths it is called with."""
    if isinstance(config, dict):
        return {k: _unbuilt(v) for k, v in config.items()
                if k != "build_config"}
    if isinstance(config, list):
        return [_unbuilt(v) for v in config]
    return config


def rebuild(model, make_layer=None, after=None, name=None, skip=None,
            call_layer=None):
    """Replay `model` as a new flat functional model.

    Args:
        model: a Sequential or functional model (nested models allowed).
        make_layer: `fn(layer, name) -> layer` building the replacement of an
            original layer (called once per layer, so shared layers stay
            shared). Default: a fresh clone from the layer's config.
        after: `fn(layer, outputs) -> outputs`, called after each layer call
            with the original layer and the new output tensors; return other
            tensors to insert layers behind it.
        name: name of the new model (default: the original's).
        skip: optional `fn(layer) -> bool`; a layer for which it is true is
            left out and its input passed through in its place (it must
            take one tensor and return one of the same shape). `strip`
            uses this to drop gates.
        call_layer: optional `fn(layer, new_layer, args, kwargs) ->
            outputs`
            that calls the new layer in place of `new_layer(*args,
            **kwargs)` (`folding.fold` hands a gate's code to the layer
            behind it).

    Returns:
        `(new_model, layer_map)` where `layer_map` maps each original layer
        (by `id`) to `(original_layer, new_layer)`. Weights are not copied:
        use `copy_weights` or set them from `layer_map`.
    """
    graph = check_traceable(model, "rebuild")
    make_layer = make_layer or clone_layer
    layer_map = {}
    used_names = set()
    tensors = {}

    new_inputs = []
    for x in graph.inputs:
        layer_name = producer_of(x).name
        new_x = keras.Input(
            shape=x.shape[1:],
            batch_size=x.shape[0],
            dtype=x.dtype,
            sparse=getattr(x, "sparse", False),
            name=layer_name,
        )
        used_names.add(layer_name)
        tensors[id(x)] = new_x
        new_inputs.append(new_x)

    def unique(layer_name, prefix):
        candidate = layer_name
        if candidate in used_names and prefix:
            candidate = f"{prefix}_{layer_name}"
        base, i = candidate, 1
        while candidate in used_names:
            candidate, i = f"{base}_{i}", i + 1
        used_names.add(candidate)
        return candidate

    def walk(inner_model, tensors, prefix):
        for call in trace(inner_model).nodes:
            layer = call.operation
            args, kwargs = call.fill_in(tensors)
            if is_nested_model(layer):
                inner = functional_of(layer)
                inner_tensors = {}
                flat_in = _symbolic((args, kwargs))
                if len(flat_in) != len(inner.inputs):
                    raise ValueError(
                        f"Cannot inline nested model {layer.name!r}: it is "
                        f"called with {len(flat_in)} tensors but has "
                        f"{len(inner.inputs)} inputs."
                    )
                for ref, value in zip(inner.inputs, flat_in):
                    inner_tensors[id(ref)] = value
                walk(layer, inner_tensors, layer.name)
                outputs = [inner_tensors[id(t)] for t in inner.outputs]
            elif skip is not None and skip(layer):
                outputs = [_passed_through(layer, args, kwargs)]
            else:
                if id(layer) not in layer_map:
                    new_layer = make_layer(layer, unique(layer.name, prefix))
                    layer_map[id(layer)] = (layer, new_layer)
                new_layer = layer_map[id(layer)][1]
                outputs = (new_layer(*args, **kwargs) if call_layer is None
                           else call_layer(layer, new_layer, args, kwargs))
                if after is not None:
                    outputs = after(layer, outputs)
                outputs = tree.flatten(outputs)
            for ref, value in zip(call.outputs, outputs):
                tensors[id(ref)] = value

    walk(model, tensors, "")
    new_outputs = [tensors[id(t)] for t in graph.outputs]
    struct = getattr(graph, "_outputs_struct", None)
    if struct is not None and not isinstance(model, keras.Sequential):
        new_outputs = tree.pack_sequence_as(struct, new_outputs)
    elif len(new_outputs) == 1:
        new_outputs = new_outputs[0]
    inputs = new_inputs[0] if len(new_inputs) == 1 else new_inputs
    return keras.Model(inputs, new_outputs, name=name or model.name), layer_map


def _passed_through(layer, args, kwargs):
    """The single data input of a skipped layer, which takes its place."""
    data_kwargs = {k: v for k, v in kwargs.items() if k != MASK_KWARG}
    flat_in = _symbolic((args, data_kwargs))
    if len(flat_in) != 1:
        raise ValueError(
            f"Cannot skip layer {layer.name!r}: it is called with "
            f"{len(flat_in)} tensors, and only a one-input layer can be "
            "replaced by its input."
        )
    return flat_in[0]


def copy_weights(layer_map):
    """Copy every original layer's weights into its same-shaped clone."""
    for old, new in layer_map.values():
        if getattr(old, "weights", None) and new is not old:
            new.set_weights(old.get_weights())


def copy_state(layer_map):
    """Copy every variable of every original layer into its clone: the
    weights and also the random seeds' state (a clone's dropout then
    draws the masks the original's would)."""
    for old, new in layer_map.values():
        if new is not old:  # (a keras.ops operation holds no state)
            for a, b in zip(getattr(old, "variables", ()),
                            getattr(new, "variables", ()), strict=True):
                b.assign(a)


def flatten(model, name=None):
    """A flat functional copy of `model` (nested models inlined), weights copied."""
    flat_model, layer_map = rebuild(model, name=name)
    copy_weights(layer_map)
    return flat_model


def flat(model):
    """`model` itself, or a flat copy (weights copied) if it nests models
    or folds gates (the copy is then the unfolded model, whose layers are
    the ones the trace reads).

    A copy rather than a replay with the same layers: inlined layers may
    share a name, and the copy renames them the way `add_gates` does.
    """
    traced = trace(model)
    if traced.nested or traced.folded:
        return flatten(model)
    return model
