"""Walking and rebuilding Keras functional graphs.

`add_gates` and `strip` both rewrite a model: the first inserts layers, the
second replaces layers by narrower ones. Both go through `rebuild`, which
replays the model's call graph node by node, inlines nested Functional and
Sequential models (so every layer is reachable from one flat graph), and
lets the caller swap layers and wrap their outputs.
"""

import collections

import keras
from keras import tree

try:  # Keras's own class for graph networks; private, but stable across 3.x.
    from keras.src.models.functional import Functional
except ImportError:  # pragma: no cover
    Functional = None


def check_traceable(model, what="add_gates"):
    """Raise a clear error unless `model` is a Keras model we can walk."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{what} expects a keras.Model (Sequential or functional); got "
            f"{type(model).__name__}. Build a Keras model first, e.g. "
            "keras.Sequential([...]) or keras.Model(inputs, outputs)."
        )
    graph = _functional_of(model)
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


def _functional_of(model):
    """The Functional graph behind `model`, or None (subclassed, unbuilt)."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if Functional is not None and isinstance(model, Functional):
        return model
    return None


def _is_inlinable(layer):
    return isinstance(layer, keras.Model) and _functional_of(layer) is not None


def _clone(layer, name):
    config = layer.get_config()
    config["name"] = name
    return layer.__class__.from_config(config)


def rebuild(model, make_layer=None, after=None, name=None, skip=None):
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

    Returns:
        `(new_model, layer_map)` where `layer_map` maps each original layer
        (by `id`) to `(original_layer, new_layer)`. Weights are not copied:
        use `copy_weights` or set them from `layer_map`.
    """
    graph = check_traceable(model, "rebuild")
    make_layer = make_layer or _clone
    layer_map = {}
    used_names = set()
    tensors = {}

    new_inputs = []
    for x in graph.inputs:
        layer_name = x._keras_history[0].name
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

    def walk(fn_graph, tensors, prefix):
        for node in topological_nodes(fn_graph):
            layer = node.operation
            args, kwargs = node.arguments.fill_in(tensors)
            if _is_inlinable(layer):
                inner = _functional_of(layer)
                inner_tensors = {}
                flat_in = [t for t in tree.flatten((args, kwargs))
                           if isinstance(t, keras.KerasTensor)]
                if len(flat_in) != len(inner.inputs):
                    raise ValueError(
                        f"Cannot inline nested model {layer.name!r}: it is "
                        f"called with {len(flat_in)} tensors but has "
                        f"{len(inner.inputs)} inputs."
                    )
                for ref, value in zip(inner.inputs, flat_in):
                    inner_tensors[id(ref)] = value
                walk(inner, inner_tensors, layer.name)
                outputs = [inner_tensors[id(t)] for t in inner.outputs]
            elif skip is not None and skip(layer):
                outputs = [_passed_through(layer, args, kwargs)]
            else:
                if id(layer) not in layer_map:
                    new_layer = make_layer(layer, unique(layer.name, prefix))
                    layer_map[id(layer)] = (layer, new_layer)
                new_layer = layer_map[id(layer)][1]
                outputs = new_layer(*args, **kwargs)
                if after is not None:
                    outputs = after(layer, outputs)
                outputs = tree.flatten(outputs)
            for ref, value in zip(node.outputs, outputs):
                tensors[id(ref)] = value

    walk(graph, tensors, "")
    new_outputs = [tensors[id(t)] for t in graph.outputs]
    struct = getattr(graph, "_outputs_struct", None)
    if struct is not None and not isinstance(model, keras.Sequential):
        new_outputs = tree.pack_sequence_as(struct, new_outputs)
    elif len(new_outputs) == 1:
        new_outputs = new_outputs[0]
    inputs = new_inputs[0] if len(new_inputs) == 1 else new_inputs
    return keras.Model(inputs, new_outputs, name=name or model.name), layer_map


def _passed_through(layer, args, kwargs):
    """The single input of a skipped layer, which takes its output's place."""
    flat_in = [t for t in tree.flatten((args, kwargs))
               if isinstance(t, keras.KerasTensor)]
    if len(flat_in) != 1:
        raise ValueError(
            f"Cannot skip layer {layer.name!r}: it is called with "
            f"{len(flat_in)} tensors, and only a one-input layer can be "
            "replaced by its input."
        )
    return flat_in[0]


def topological_nodes(graph):
    """The call nodes of a Functional graph, producers before consumers."""
    nodes = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def copy_weights(layer_map):
    """Copy every original layer's weights into its same-shaped clone."""
    for old, new in layer_map.values():
        if getattr(old, "weights", None):  # keras.ops calls have none
            new.set_weights(old.get_weights())


def flatten(model, name=None):
    """A flat functional copy of `model` (nested models inlined), weights copied."""
    flat, layer_map = rebuild(model, name=name)
    copy_weights(layer_map)
    return flat


def flat(model):
    """`model` itself, or a flat copy (weights copied) if it nests models.

    A copy rather than a replay with the same layers: inlined layers may
    share a name, and the copy renames them the way `add_gates` does.
    """
    if any(isinstance(layer, keras.Model) for layer in model.layers):
        return flatten(model)
    return model


class Graph:
    """Producers and consumers of the tensors of a flat functional model."""

    def __init__(self, model):
        self.model = model
        self.nodes = topological_nodes(check_traceable(model, "Graph"))
        self.producer = {}
        self.consumers = collections.defaultdict(list)
        for node in self.nodes:
            for t in node.outputs:
                self.producer[id(t)] = node
            for t in node.input_tensors:
                self.consumers[id(t)].append(node)
        self.output_ids = {id(t) for t in model.outputs}

    def nodes_of(self, layer):
        return [n for n in self.nodes if n.operation is layer]
