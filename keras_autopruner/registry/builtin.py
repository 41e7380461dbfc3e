"""The records of Keras's own layers and of `AutoPrunerGate`.

This is the one place that names built-in layer classes: everything else
in the package reaches them through `lookup`. The `keras.ops` calls are
described in `ops.py`.
"""

import math

import keras

from keras_autopruner.gate import AutoPrunerGate
from keras_autopruner.registry.record import (
    IN, OUT, LayerType, Op, activation_traits, lookup, mixer_flow, register,
    unknown)

L = keras.layers


# Channel flows.

def _depthwise_flow(node):
    layer = node.operation
    traits = activation_traits(layer.activation)
    if traits is None:
        return unknown(node, "its activation mixes channels")
    zero = traits[0] and not layer.use_bias
    return Op(node, "channelwise", zero, False,
              repeat=int(layer.depth_multiplier))


def _last_axis(node, axis):
    rank = len(node.input_tensors[0].shape)
    if isinstance(axis, (list, tuple)):
        axis = axis[0] if len(axis) == 1 else None
    return axis is not None and axis % rank == rank - 1


def _batch_norm_flow(node):
    if not _last_axis(node, node.operation.axis):
        return unknown(node, "it normalises along an axis other than the "
                             "channel axis")
    return Op(node, "channelwise", False, False)


def _layer_norm_flow(node):
    return unknown(node, "it normalises over the channels together, so "
                         "removing one changes the others")


def _activation_flow(node):
    traits = activation_traits(node.operation.activation)
    if traits is None:
        return unknown(node, "its activation mixes channels or is not known")
    return Op(node, "channelwise", *traits)


def _relu_flow(node):
    layer = node.operation
    t, slope = float(layer.threshold), float(layer.negative_slope)
    return Op(node, "channelwise", t <= 0 or slope == 0,
              t == 0 and layer.max_value is None)


def _elu_flow(node):
    return Op(node, "channelwise", True, False)


def _kind(kind):
    def flow(node):
        return Op(node, kind)
    return flow


def _concat_flow(node):
    rank = len(node.outputs[0].shape)
    if node.operation.axis % rank == rank - 1:
        return Op(node, "concat")
    # Joined along another axis, channel c of the output holds channel c of
    # every input: the inputs' channels are one channel, as in Add.
    return Op(node, "sum")


def _tile_flow(node):
    """Flatten/Reshape: fine when the output's last axis repeats the channels.

    In row-major order an element's channel is its flat index modulo C. If
    the output's last axis has k*C entries, its entry j holds channel
    j mod C: the channel list repeated k times. (Flatten is the case where
    the output's last axis holds everything.)
    """
    shape_in, shape_out = node.input_tensors[0].shape, node.outputs[0].shape
    if any(d is None for d in tuple(shape_in[1:]) + tuple(shape_out[1:])):
        return unknown(node, "its shapes are not static")
    c, last = int(shape_in[-1]), int(shape_out[-1])
    if len(shape_in) < 2 or c == 0 or last % c:
        return unknown(node, "it moves the channel axis")
    return Op(node, "tile", repeat=last // c)


def _reshape_resize(config, node, channels):
    config["target_shape"] = tuple(node.outputs[0].shape[1:-1]) + (channels,)
    return config


def _masking_flow(node):
    # Masking multiplies each step by any(x != mask_value) over the
    # channels; with mask_value 0 a zero channel changes neither.
    if float(node.operation.mask_value) != 0.0:
        return unknown(node, "its mask_value is not 0, so every channel "
                             "decides the mask")
    return Op(node, "channelwise")


def _lambda_flow(node):
    return unknown(node, "a Lambda is opaque, so its channels all stay. "
                         "Write it as a layer class and describe that with "
                         "keras_autopruner.registry.register")


# MACs for one example (see metrics.py for the conventions).

def _spatial(shape, data_format):
    """Drops the batch and channel entries of a feature-map shape."""
    if data_format == "channels_first":
        return shape[2:]
    return shape[1:-1]


def _numel(shape):
    return math.prod(shape[1:])


def _conv_macs(layer, ins, outs):
    # Kernel is (*kernel_size, in_channels // groups, filters): every
    # output position multiplies each of its entries once. Depthwise
    # kernels are (*kernel_size, in_channels, multiplier): the same.
    spatial = _spatial(outs[0], layer.data_format)
    return math.prod(layer.kernel.shape) * math.prod(spatial)


def _conv_transpose_macs(layer, ins, outs):
    # Each input position scatters the whole kernel into the output.
    spatial = _spatial(ins[0], layer.data_format)
    return math.prod(layer.kernel.shape) * math.prod(spatial)


def _separable_macs(layer, ins, outs):
    # The depthwise step runs at the strided output positions, and so does
    # the 1x1 pointwise step that follows it.
    positions = math.prod(_spatial(outs[0], layer.data_format))
    depthwise = math.prod(layer.depthwise_kernel.shape)
    pointwise = math.prod(layer.pointwise_kernel.shape)
    return (depthwise + pointwise) * positions


def _dense_macs(layer, ins, outs):
    # Dense maps the last axis; the other non-batch axes repeat it.
    return math.prod(layer.kernel.shape) * math.prod(ins[0][1:-1])


def _per_output_element(layer, ins, outs):
    return _numel(outs[0])


def _local_pool_macs(layer, ins, outs):
    return math.prod(layer.pool_size) * _numel(outs[0])


def _per_input_element(layer, ins, outs):
    return _numel(ins[0])


def _dot_macs(layer, ins, outs):
    axes = layer.axes
    if isinstance(axes, int):
        axes = (axes, axes)
    rank = len(ins[0])
    return _numel(outs[0]) * ins[0][axes[0] % rank]


def _zero(layer, ins, outs):
    return 0


def _time_distributed_macs(layer, ins, outs):
    # The wrapped layer runs once per step of axis 1.
    rule = getattr(lookup(layer.layer), "flops", None)
    if rule is None:
        return None
    steps = ins[0][1]
    inner_in = [(1,) + tuple(s[2:]) for s in ins]
    inner_out = [(1,) + tuple(s[2:]) for s in outs]
    macs = rule(layer.layer, inner_in, inner_out)
    return None if macs is None else macs * steps


# Per step: the products of the input and recurrent kernels.
_RNN_KERNELS = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def _rnn_macs(layer, ins, outs):
    cell = getattr(layer, "cell", layer)
    gates = next((k for cls, k in _RNN_KERNELS.items()
                  if isinstance(layer, getattr(L, cls))), None)
    units = int(cell.units)
    return gates * (int(ins[0][-1]) + units) * units * int(ins[0][1])


def _bidirectional_macs(layer, ins, outs):
    return sum(int(_rnn_macs(d, ins, outs)) for d in
               (layer.forward_layer, layer.backward_layer))


def _attention_macs(layer, ins, outs):
    # Projections of query, key and value, the scores, the weighted sum of
    # the values and the output projection.
    q, v = ins[0], ins[1] if len(ins) > 1 else ins[0]
    k = ins[2] if len(ins) > 2 else v
    tq, tk = math.prod(q[1:-1]), math.prod(k[1:-1])
    heads, kd = int(layer.num_heads), int(layer.key_dim)
    vd = int(layer.value_dim or kd)
    out_dim = int(outs[0][-1])
    return (tq * q[-1] * heads * kd + tk * k[-1] * heads * kd
            + tk * v[-1] * heads * vd + heads * tq * tk * (kd + vd)
            + tq * heads * vd * out_dim)


# The records.

DENSE_WEIGHTS = {"kernel": (IN, OUT), "bias": (OUT,)}
_BN_WEIGHTS = {k: (OUT,) for k in ("gamma", "beta", "moving_mean",
                                   "moving_variance")}


def _mixer(width_key, weights, flops):
    return LayerType(flow=mixer_flow, width_key=width_key, weights=weights,
                     flops=flops)


def _channelwise(flow, flops=_zero, **fields):
    return LayerType(flow=flow, flops=flops, **fields)


_PASS = _channelwise(_kind("channelwise"))
_PASS_SCALE = _channelwise(_kind("channelwise"), passes_scale=True)
_ACTIVATION = dict(follows=True, passes_scale=True)


def _table():
    conv_t = {"kernel": (OUT, IN), "bias": (OUT,)}
    separable = {"depthwise_kernel": (IN, None), "pointwise_kernel": (IN, OUT),
                 "bias": (OUT,)}
    depthwise = {"kernel": (IN, None), "bias": (OUT,)}
    prelu = {"alpha": (OUT,)}
    table = {
        "Dense": _mixer("units", DENSE_WEIGHTS, _dense_macs),
        "Conv1D Conv2D Conv3D": _mixer("filters", DENSE_WEIGHTS, _conv_macs),
        "Conv1DTranspose Conv2DTranspose Conv3DTranspose": _mixer(
            "filters", conv_t, _conv_transpose_macs),
        "SeparableConv1D SeparableConv2D": _mixer(
            "filters", separable, _separable_macs),
        # A follower only where its call keeps one channel per channel
        # (add_gates checks the Op's repeat): the gate then multiplies the
        # channel after the depthwise stage, where the next mixer reads it.
        "DepthwiseConv1D DepthwiseConv2D": _channelwise(
            _depthwise_flow, _conv_macs, weights=depthwise,
            fold_into=("kernel", "bias"), follows=True),
        "BatchNormalization": _channelwise(
            _batch_norm_flow, _per_output_element, weights=_BN_WEIGHTS,
            fold_into=("gamma", "beta"), follows=True),
        "LayerNormalization": LayerType(flow=_layer_norm_flow,
                                        flops=_per_output_element),
        "Activation": _channelwise(_activation_flow, **_ACTIVATION),
        "ReLU": _channelwise(_relu_flow, **_ACTIVATION),
        "LeakyReLU": _channelwise(_kind("channelwise"), **_ACTIVATION),
        "ELU": _channelwise(_elu_flow, **_ACTIVATION),
        "PReLU": _channelwise(_kind("channelwise"), weights=prelu,
                              **_ACTIVATION),
        "Softmax": LayerType(flops=_zero),
        "Embedding": LayerType(flops=_zero),  # a lookup, not arithmetic
        # The identity in inference.
        "Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D "
        "GaussianDropout GaussianNoise AlphaDropout ActivityRegularization "
        "Identity": _PASS_SCALE,
        # Per channel, 0 -> 0, no per-channel weights. Zero padding sits
        # before strided depthwise convolutions: a gate may cross it.
        "ZeroPadding1D ZeroPadding2D ZeroPadding3D": _channelwise(
            _kind("channelwise"), crosses=True),
        "Cropping1D Cropping2D Cropping3D UpSampling1D UpSampling2D "
        "UpSampling3D": _PASS,
        "MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D "
        "AveragePooling2D AveragePooling3D": _channelwise(
            _kind("channelwise"), _local_pool_macs),
        "GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D "
        "GlobalAveragePooling1D GlobalAveragePooling2D "
        "GlobalAveragePooling3D": _channelwise(
            _kind("channelwise"), _per_input_element),
        "AdaptiveAveragePooling1D AdaptiveAveragePooling2D "
        "AdaptiveAveragePooling3D AdaptiveMaxPooling1D AdaptiveMaxPooling2D "
        "AdaptiveMaxPooling3D": LayerType(flops=_per_input_element),
        # A "sum" output is zero where every input is; a "product" output
        # where any input is.
        "Add Subtract Average Maximum Minimum": LayerType(
            flow=_kind("sum"), flops=_zero, merges=True),
        "Multiply": LayerType(flow=_kind("product"), flops=_zero, merges=True),
        "Concatenate": LayerType(flow=_concat_flow, flops=_zero, merges=True),
        "Flatten": LayerType(flow=_tile_flow, flops=_zero),
        "Reshape": LayerType(flow=_tile_flow, resize=_reshape_resize,
                             flops=_zero),
        "Dot": LayerType(flops=_dot_macs),
    }
    for names, record in table.items():
        for name in names.split():
            cls = getattr(L, name, None)  # some only in newer Keras
            if cls is not None:
                register(cls, record)
    register(AutoPrunerGate, LayerType(flow=_kind("gate"),
                                       flops=_per_output_element))
    extra = {
        "Masking": _channelwise(_masking_flow, passes_scale=True),
        "Permute": LayerType(flops=_zero),
        # (batch, C) -> (batch, n, C): every step holds the same channels.
        "RepeatVector": _channelwise(_kind("channelwise")),
        # Opaque: its channels all stay, unless a record describes it.
        "Lambda": LayerType(flow=_lambda_flow),
        # Preprocessing on the inputs: one multiply-add per element.
        "Rescaling Normalization": LayerType(flops=_per_output_element),
        "MultiHeadAttention": LayerType(flops=_attention_macs),
        "LSTM GRU SimpleRNN": LayerType(flops=_rnn_macs),
        "Bidirectional": LayerType(flops=_bidirectional_macs),
        "TimeDistributed": LayerType(
            inner=lambda layer: layer.layer,
            config_of=lambda config: config["layer"]["config"],
            flops=_time_distributed_macs),
    }
    for names, record in extra.items():
        for name in names.split():
            cls = getattr(L, name, None)
            if cls is not None:
                register(cls, record)
    _applications()


def _applications():
    """Layers that keras.applications models define for themselves."""
    try:
        from keras.src.applications import convnext, inception_resnet_v2
    except ImportError:  # pragma: no cover
        return
    register(convnext.LayerScale, LayerType(
        flow=_kind("channelwise"), weights={"gamma": (OUT,)},
        flops=_per_output_element, passes_scale=True,
        resize=_layer_scale_resize))
    # inputs[0] + inputs[1] * scale: zero where both inputs are.
    register(inception_resnet_v2.CustomScaleLayer, LayerType(
        flow=_kind("sum"), merges=True, flops=_per_output_element))


def _layer_scale_resize(config, node, channels):
    config["projection_dim"] = channels
    return config


def is_input_layer(layer):
    """Whether `layer` is a model's input placeholder."""
    return isinstance(layer, L.InputLayer)


_table()
