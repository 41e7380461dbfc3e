"""Folded gates: the next layer applies a gate's code to its kernel.

A gate multiplies its activation by a per-channel code, a pass over
`batch x height x width x channels` values forward and two backward (the
activation's gradient and the code's). When every path from the gate to
the layer that reads it goes through operations that commute with a
non-negative per-channel scale (max or average pooling, dropout,
flattening, ReLU), that layer can scale its kernel's input rows by the
code instead:

    conv(pool(x * code)) == conv_with_kernel[..., c, :] * code[c] (pool(x))

which costs a pass over the kernel, not over the activation.

`fold(gated)` rewrites a gated model so: each foldable gate is called
with `fold=True` and returns `(activation, code)`, and its consumer is
wrapped in `ScaledInputs`, which takes the code as a second input. The
model computes the same function with the same weights (to float
rounding). `tracing.trace` reads a folded model as the unfolded one it
stands for (the gate's output the product, `ScaledInputs` its layer), so
the channel graph, `CostModel`, `count_flops`, the criteria and `strip`
see one graph whichever form was trained.

Gates whose path does not qualify (a residual `Add`, a batch norm in
between, several readers, a model output, a `Masking` mask, a consumer
that is not a plain channels-last `Conv1D/2D/3D` or `Dense`) keep the
product; `foldable(gated)` says which gate folds and why not.

Folding pays only where the kernel is smaller than the activation: the
product touches `batch x positions x channels` values (forward, and
twice backward), the folded path the consumer's kernel (likewise). Deep
in VGG16 at 32x32 (2x2 positions, 3x3x512x512 kernels) or before a wide
`Dense`, the product is the cheaper one. So a gate folds only where, at
`batch_size` examples, its activation holds at least as many values as
the kernel (`batch_size=None` folds wherever the path allows; a gate
whose positions are unknown until run time folds).
"""

import math

import keras
from keras import ops

from keras_autopruner import tracing
from keras_autopruner.gate import AutoPrunerGate

L = keras.layers

# Channel-wise operations that commute with a non-negative per-channel
# scale: op(x * s) == op(x) * s.
_COMMUTING = (
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
    L.Flatten, L.Identity, L.LeakyReLU,
)
# The layers whose kernel has one input row per input channel
# (`(..., in, out)`), applied by `ScaledInputs`. Exact types: a subclass
# may compute something else with its kernel.
_CONSUMERS = (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)
# Activations that are positively homogeneous: f(s * x) == s * f(x), s >= 0.
_HOMOGENEOUS = ("relu", "linear")


@keras.saving.register_keras_serializable(package="keras_autopruner")
class ScaledInputs(L.Wrapper):
    """`layer(x)` with its kernel's input rows scaled by a gate's code.

    It computes `layer(x * code)` for a `Dense` or channels-last
    `Conv1D/2D/3D` without a pass over `x`: the code multiplies the
    kernel's input-channel axis. Behind a `Flatten` each channel is read
    at every position, so the code is tiled `repeat` times (the flattened
    index is `position * channels + channel`).

    Args:
        layer: the `Dense` or `Conv1D/2D/3D` layer to wrap.
        repeat: how many times the code repeats along the kernel's input
            axis (the positions a `Flatten` put side by side).
        **kwargs: standard layer arguments (`name`, ...).

    Call arguments:
        inputs: what `layer` reads.
        code: the gate's code, one value per channel, shape `(channels,)`.

    Example:

    >>> dense = keras.layers.Dense(3)
    >>> scaled = ScaledInputs(dense)
    >>> x = keras.ops.ones((2, 4))
    >>> code = keras.ops.convert_to_tensor([1.0, 0.0, 0.5, 1.0])
    >>> y = scaled(x, code)
    >>> bool(keras.ops.all(keras.ops.isclose(y, dense(x * code))))
    True
    """

    # How tracing reads a folded model (tracing.Call).
    _fold_role = "consumer"

    def __init__(self, layer, repeat=1, **kwargs):
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        reason = _not_a_consumer(layer)
        if reason:
            raise ValueError(f"ScaledInputs cannot wrap {layer.name!r}: "
                             f"{reason}.")
        if isinstance(repeat, bool) or not isinstance(repeat, int) \
                or repeat < 1:
            raise ValueError(
                f"repeat must be a whole number >= 1, got {repeat!r}.")
        self.repeat = int(repeat)

    def build(self, inputs_shape, code_shape=None):
        if not self.layer.built:
            self.layer.build(inputs_shape)
        self.built = True

    def call(self, inputs, code):
        layer = self.layer
        code = ops.cast(code, self.compute_dtype)
        if self.repeat > 1:
            code = ops.tile(code, (self.repeat,))
        kernel = layer.kernel * code[:, None]
        if isinstance(layer, L.Dense):
            outputs = ops.matmul(inputs, kernel)
            if layer.bias is not None:
                outputs = ops.add(outputs, layer.bias)
        else:
            outputs = layer.convolution_op(inputs, kernel)
            if layer.use_bias:
                outputs = ops.add(outputs, layer.bias)
        if layer.activation is not None:
            outputs = layer.activation(outputs)
        return outputs

    def compute_output_shape(self, inputs_shape, code_shape=None):
        return self.layer.compute_output_shape(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config["repeat"] = self.repeat
        return config


def _not_a_consumer(layer):
    """Why `ScaledInputs` cannot wrap `layer` ('' if it can)."""
    if type(layer) not in _CONSUMERS:
        return (f"it is a {type(layer).__name__}, not a Dense or "
                "Conv1D/2D/3D")
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "it is channels_first"
    if getattr(layer, "groups", 1) != 1:
        return "it is a grouped convolution"
    if getattr(layer, "lora_enabled", False):
        return "it has LoRA enabled"
    if getattr(layer.dtype_policy, "quantization_mode", None):
        return "it is quantized"
    return ""


def _commutes(op):
    if isinstance(op, L.ReLU):
        # max_value caps and threshold shifts: neither commutes.
        return op.max_value is None and not op.threshold
    if isinstance(op, L.Activation):
        name = getattr(op.activation, "__name__", "")
        return name in _HOMOGENEOUS
    if type(op) not in _COMMUTING:
        return False
    return getattr(op, "data_format", "channels_last") in (
        "channels_last", None)


def _dearer(call, consumer, batch_size):
    """Why scaling `consumer`'s kernel costs more than the gate's product
    at `batch_size` ('' if it does not)."""
    if batch_size is None:
        return ""
    per_example = call.outputs[0].shape[1:]
    if any(s is None for s in per_example):
        return ""  # positions grow with the data: assume many
    activation = batch_size * math.prod(per_example)
    kernel = math.prod(consumer.kernel.shape)
    if kernel <= activation:
        return ""
    return (f"scaling the kernel of {consumer.name!r} ({kernel:,} values) "
            f"costs more than the product over the activation at batch "
            f"{batch_size} ({activation:,} values)")


def _check_batch_size(batch_size):
    if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int)
            or batch_size < 1):
        raise ValueError("the fold batch size must be a whole number >= 1 "
                         f"or None, got {batch_size!r}.")


def _target(trace, call, batch_size=None):
    """`(consumer, repeat, '')` for a gate call that folds, or
    `(None, 1, reason)`."""
    gate = call.operation
    if len(trace.nodes_of(gate)) != 1:
        return None, 1, "the gate is called more than once"
    if call.mask_tensors:
        return None, 1, "its input carries a mask"
    tensor, repeat = call.outputs[0], 1
    while True:
        if id(tensor) in trace.output_ids:
            return None, 1, "its channels are a model output"
        if getattr(tensor, "_keras_mask", None) is not None:
            return None, 1, "a mask travels with its channels"
        readers = trace.consumers[id(tensor)]
        if len(readers) != 1:
            return None, 1, (f"{len(readers)} layers read its channels"
                             if readers else "nothing reads its channels")
        reader = readers[0]
        op = reader.operation
        where = f"{op.name!r} ({type(op).__name__})"
        if len(trace.nodes_of(op)) != 1:
            return None, 1, f"{where} is called more than once"
        if (len(reader.input_tensors) != 1 or len(reader.outputs) != 1
                or reader.mask_tensors or reader.constants):
            return None, 1, f"{where} reads more than its channels"
        if type(op) in _CONSUMERS:
            reason = _not_a_consumer(op)
            if reason:
                return None, 1, f"{where}: {reason}"
            rows = tensor.shape[-1]
            if rows != gate.units * repeat:
                return None, 1, (f"{where} reads {rows} values, not "
                                 f"{gate.units} channels x {repeat}")
            reason = _dearer(call, op, batch_size)
            if reason:
                return None, 1, reason
            return op, repeat, ""
        if not _commutes(op):
            if op.weights:  # a layer of its own kind, not a passage
                return None, 1, f"{where}: {_not_a_consumer(op)}"
            return None, 1, (f"{where} does not commute with a "
                             "per-channel scale")
        if isinstance(op, L.Flatten):
            positions = tensor.shape[1:-1]
            if any(s is None for s in positions):
                return None, 1, f"{where} flattens positions of unknown size"
            repeat *= math.prod(positions)
        tensor = reader.outputs[0]


def foldable(gated, batch_size=32):
    """For each gate of `gated` (by name): `''` when it folds, or why not.

    Args:
        gated: a gated model (from `add_gates`).
        batch_size: the training batch size that the cost comparison
            assumes (see the module's docstring); None: fold wherever the
            path allows.

    Example:

    >>> import keras_autopruner as kap
    >>> model = kap.models.vgg_small()
    >>> reasons = foldable(kap.add_gates(model))
    >>> sorted(name for name, why in reasons.items() if not why)[:2]
    ['block1_conv1_gate', 'block1_conv2_gate']
    """
    _check_batch_size(batch_size)
    trace = tracing.trace(gated)
    found = {}
    for call in trace.nodes:
        if isinstance(call.operation, AutoPrunerGate):
            found.setdefault(call.operation.name,
                             _target(trace, call, batch_size)[2])
    return found


def folded_layers(model):
    """The layers of `model` that take a gate's code (`ScaledInputs`)."""
    return [layer for layer in getattr(model, "layers", [])
            if isinstance(layer, ScaledInputs)]


def is_folded(model):
    """Whether `model` has a gate folded into the layer behind it."""
    return bool(folded_layers(model))


def fold(gated, name=None, batch_size=32):
    """A copy of `gated` in which every foldable gate is folded.

    Every layer is a fresh copy with the state of `gated` (a Keras layer
    returns as many outputs at each call, so the gates that now return
    their code must be new ones). A gate that cannot fold (see `foldable`)
    keeps its product. Folding a folded model folds nothing more.

    Args:
        gated: a gated model (from `add_gates`).
        name: the new model's name (default: that of `gated`).
        batch_size: the training batch size that the cost comparison
            assumes (see the module's docstring); None: fold wherever the
            path allows.

    Returns:
        A functional model computing what `gated` computes.
    """
    _check_batch_size(batch_size)
    trace = tracing.trace(gated)
    targets = {}  # id(gate) -> (consumer, repeat)
    for call in trace.nodes:
        if isinstance(call.operation, AutoPrunerGate):
            consumer, repeat, _ = _target(trace, call, batch_size)
            if consumer is not None:
                targets[id(call.operation)] = (consumer, repeat)
    wrap = {id(c): (r, g) for g, (c, r) in targets.items()}
    codes = {}

    def make_layer(layer, layer_name):
        clone = tracing.clone_layer(layer, layer_name)
        if id(layer) in wrap:
            return ScaledInputs(clone, repeat=wrap[id(layer)][0],
                                name=f"{layer_name}_folded")
        return clone

    def call_layer(layer, new_layer, args, kwargs):
        if id(layer) in targets:
            outputs, code = new_layer(*args, fold=True, **kwargs)
            codes[id(layer)] = code
            return outputs
        if id(layer) in wrap:
            return new_layer(args[0], codes[wrap[id(layer)][1]])
        return new_layer(*args, **kwargs)

    folded, layer_map = tracing.rebuild(
        gated, make_layer=make_layer, call_layer=call_layer,
        name=name or gated.name)
    # All state, random seeds included: the copy's dropout draws the masks
    # the original's would, so the two train alike.
    tracing.copy_state(layer_map)
    plan = getattr(gated, "pruning_plan", None)
    if plan is not None:
        folded.pruning_plan = plan
    return folded
