"""The records of HGQ2's quantised layers (`pip install hgq2`).

HGQ2 (`hgq` on import) trains a network with learned bit-widths: its
`QDense`, `QConv1D/2D/3D` and `QBatchNormalization` are Keras's layers with
quantisers attached as sub-layers, the input quantiser `iq` (one bit-width
per input channel by default), the kernel quantiser `kq` (one per kernel
entry) and the bias quantiser `bq` (one per output channel), plus an
optional output quantiser `oq`. A standalone `Quantizer` layer quantises a
tensor channel by channel.

A quantiser's variables (`k`, `i`, `f`, `b`, the float quantiser's `m`,
`e`, `e0`, and the scalar `i_decay_speed`) are broadcast over the tensor
they quantise, so they are cut along the same channel axes: `_iq/f` of a
`QDense` is `(1, in)` and loses the rows of the pruned inputs, `_kq/b` is
`(in, out)` like the kernel, `_bq/b` is `(out,)` like the bias. A
quantiser configured per tensor holds axes of length 1, which stay. They
are named here by the layer attribute holding the quantiser and the
variable's own name (see `LayerType.weight_names`).

This module is imported by `keras_autopruner.registry` only when `hgq`
imports; nothing else in the package names HGQ2.

Example (needs hgq2):

    import keras
    from hgq.layers import QDense
    import keras_autopruner as kap

    model = keras.Sequential([keras.Input((16,)),
                              QDense(64, activation="relu"),
                              QDense(26)])
    gated = kap.add_gates(model, target_rate=0.5)
    # ... fit with kap.AutoPrunerCallback(), then:
    compact = kap.strip(gated)   # QDense layers, fewer units, same quantisers
"""

from hgq import layers as hgq_layers
from hgq.quantizer import Quantizer

from keras_autopruner.registry.builtin import (
    _batch_norm_flow, _conv_macs, _dense_macs, _per_output_element, _zero)
from keras_autopruner.registry.record import (
    IN, OUT, LayerType, Op, mixer_flow, register)

# Every variable an HGQ2 quantiser may hold: the fixed-point quantisers'
# keep-negative, integer, fractional and total bits, the float quantiser's
# mantissa and exponent bits and exponent offset, each broadcast over the
# quantised tensor; and the scalar decay rate of WRAP-mode integer bits.
_PER_ENTRY = ("k", "i", "f", "b", "m", "e", "e0")
_SCALAR = ("i_decay_speed",)
# What every HGQ2 layer holds for itself: the EBOPs-loss weight and the
# last EBOPs count (scalars; EBOPs are recounted at every training step).
_LAYER_SCALARS = {"beta": (), "ebops": ()}


def quantizer_weights(attr, roles):
    """The weight description of the quantiser held by `layer.<attr>`.

    Args:
        attr: the attribute of the layer that holds the `Quantizer`
            (`"_iq"`, `"_kq"`, `"_bq"`, `"_oq"`; `"quantizer"` for the
            internal quantiser of a standalone `Quantizer` layer).
        roles: the axis roles of the tensor it quantises, such as
            `("in", "out")` for a kernel.

    Returns:
        A dict `"attr/name" -> roles` for every variable it may hold.

    Example:

        >>> quantizer_weights("_bq", ("out",))["_bq/b"]
        ('out',)
    """
    spec = {f"{attr}/{name}": tuple(roles) for name in _PER_ENTRY}
    spec.update({f"{attr}/{name}": () for name in _SCALAR})
    return spec


def _quantised(weights, *, inputs, outputs, kernel=(IN, OUT), bias=(OUT,)):
    spec = dict(weights, **_LAYER_SCALARS)
    spec.update(quantizer_weights("_iq", inputs))
    spec.update(quantizer_weights("_kq", kernel))
    spec.update(quantizer_weights("_bq", bias))
    spec.update(quantizer_weights("_oq", outputs))
    return spec


def _quantizer_flow(node):
    # Fixed- and float-point quantisers map 0 to 0 channel by channel; an
    # affine quantiser (`affine=(a, b)`) adds b afterwards. Rounding does
    # not commute with a scale, so no gate scale may be folded across it.
    affine = getattr(node.operation, "affine", None)
    return Op(node, "channelwise", zero_preserving=affine is None,
              homogeneous=False)


def _register():
    dense = _quantised({"kernel": (IN, OUT), "bias": (OUT,)},
                       inputs=(IN,), outputs=(OUT,))
    # A scale folded into a mixer goes into its float kernel and bias, not
    # into its bit-widths.
    fold = ("kernel", "bias")
    register(hgq_layers.QDense, LayerType(
        flow=mixer_flow, width_key="units", weights=dense, fold_into=fold,
        flops=_dense_macs))
    for cls in (hgq_layers.QConv1D, hgq_layers.QConv2D, hgq_layers.QConv3D):
        register(cls, LayerType(
            flow=mixer_flow, width_key="filters", weights=dense,
            fold_into=fold, flops=_conv_macs))
    # Channel by channel: scale and offset per channel, quantised by kq and
    # bq, applied to the quantised input.
    norm = _quantised(
        {name: (OUT,) for name in ("bn_gamma", "bn_beta", "moving_mean",
                                   "moving_variance")},
        inputs=(IN,), outputs=(OUT,), kernel=(OUT,), bias=(OUT,))
    register(hgq_layers.QBatchNormalization, LayerType(
        flow=_batch_norm_flow, weights=norm, flops=_per_output_element,
        fold_into=("bn_gamma", "bn_beta"), follows=True))
    register(Quantizer, LayerType(
        flow=_quantizer_flow, weights=quantizer_weights("quantizer", (IN,)),
        flops=_zero))


_register()
