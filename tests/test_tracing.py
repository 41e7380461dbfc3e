"""The traced graph, and the Keras internals it alone reads.

`tracing.py` is the one module that reads Keras's private graph
internals. The first tests pin each of them on the installed Keras, so
that an upgrade that moves one fails here, by name, instead of deep inside
strip.
"""

import pathlib
import re

import keras
import numpy as np
import pytest
from keras import ops

import keras_autopruner as kap
from keras_autopruner import tracing

L = keras.layers


def masked_model():
    x = keras.Input((5, 3), name="tracks")
    h = L.Masking(name="masking")(x)
    h = L.Dense(4, name="dense")(h)
    s = ops.sum(h, axis=1)
    m = L.GlobalAveragePooling1D(name="pool")(h)
    return keras.Model(x, L.Concatenate(name="cat")([s, m]))


# The internals, pinned.

def test_keras_internals_the_trace_reads_are_there():
    from keras.src.models.functional import Functional

    model = masked_model()
    assert isinstance(model, Functional)
    seq = keras.Sequential([keras.Input((3,)), L.Dense(2)])
    assert isinstance(seq._functional, Functional)
    assert isinstance(model._nodes_by_depth, dict)
    node = model._nodes_by_depth[0][0]
    assert hasattr(node.arguments, "fill_in")
    assert isinstance(node.arguments.args, tuple)
    assert isinstance(node.arguments.kwargs, dict)
    assert node.is_input is False and node.operation is not None
    history = model.outputs[0]._keras_history
    assert history[0] is node.operation
    assert hasattr(model, "_outputs_struct")
    # Keras hands a layer its input's mask as the `mask` keyword.
    pool = next(n for d in model._nodes_by_depth.values() for n in d
                if n.operation.name == "pool")
    assert tracing.MASK_KWARG in pool.arguments.kwargs


def test_no_other_module_reads_keras_internals():
    package = pathlib.Path(kap.__file__).parent
    pattern = re.compile(r"keras\.src\.(?!applications)|_keras_history|"
                         r"_nodes_by_depth|_outputs_struct|\._functional\b|"
                         r"\.arguments\.")
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "tracing.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(package)}:{number}")
    assert not offenders, offenders


# The trace.

def test_trace_holds_layers_ops_and_mask_ops_with_masks_apart():
    model = masked_model()
    trace = tracing.trace(model)
    kinds = [type(c.operation).__name__ for c in trace.nodes]
    # The mask ops Keras records for Masking, and the user's ops.sum.
    assert {"NotEqual", "Any", "Sum", "Masking", "Dense"} <= set(kinds)
    pool = next(c for c in trace.nodes if c.operation.name == "pool")
    assert len(pool.input_tensors) == 1 and len(pool.mask_tensors) == 1
    assert tuple(pool.mask_tensors[0].shape) == (None, 5)
    add = tracing.trace(keras.Model(
        model.input, model.output + 3.0)).nodes[-1]
    assert add.constants == [3.0]


def test_model_is_traced_once():
    model = masked_model()
    assert tracing.trace(model) is tracing.trace(model)


def test_gates_come_in_one_order_everywhere():
    """gates_of, CostModel.gates and the channel graph agree, on a graph
    where the order of model.layers differs from the order of the calls
    (the second input's branch is built first)."""
    a = keras.Input((4,), name="a")
    b = keras.Input((6,), name="b")
    late = L.Dense(8, activation="relu", name="late")
    early = L.Dense(5, activation="relu", name="early")
    hb = early(b)
    ha = late(a)
    h = L.Dense(6, activation="relu", name="head")(
        L.Concatenate()([ha, hb]))
    model = keras.Model([a, b], L.Dense(2, name="out")(h))
    gated = kap.add_gates(model, 0.5, exclude=["early"])
    names = [g.name for g in kap.gate.gates_of(gated)]
    assert names == [g.name for g in kap.CostModel(gated, "flops").gates]
    from keras_autopruner.graph import ChannelGraph
    assert names == [g.name for g in ChannelGraph(gated).gate_layers()]
    callback = kap.AutoPrunerCallback(
        objective=kap.PruningObjective("global", weighting="flops"),
        control_every=1, prune_steps=2)
    gated.compile("adam", "mse")
    x = [np.ones((8, 4), "float32"), np.ones((8, 6), "float32")]
    with pytest.warns(UserWarning):
        gated.fit(x, np.zeros((8, 2)), batch_size=4, epochs=2, verbose=0,
                  callbacks=[callback])
    assert callback.done


def test_op_class_names_the_recorded_operation():
    assert tracing.op_class(lambda t: ops.sum(t, axis=1), (3, 2)).__name__ \
        == "Sum"
