"""One record per layer type: width, channel flow, weight slicing, cost.

Every rule the package has about a kind of layer lives in its `LayerType`
(see `record.py`): `add_gates` asks it whether the layer is prunable and
how wide it is, the channel graph how channels flow through it, `strip` how
to cut its weights and config, `count_flops` and `CostModel` what it costs.
Keras's layers are described in `builtin.py`, the only module that names
them; a user describes a custom layer once, with `register_prunable` (a
layer whose output channels are filters) or `register` (anything else).

Example:

>>> import keras
>>> from keras_autopruner import registry
>>> registry.lookup(keras.layers.Conv2D(4, 3)).width_key
'filters'
>>> registry.lookup(keras.layers.Dropout(0.5)).width_key is None
True
"""

import math

from keras_autopruner.registry.record import (
    IN, OUT, LayerType, Op, activation_traits, check_roles, lookup,
    mixer_flow, nearest, register, registered, restore, unknown)
from keras_autopruner.registry.builtin import is_input_layer
from keras_autopruner.registry import ops  # noqa: F401 (registers)

try:  # HGQ2's quantised layers, where hgq2 is installed.
    import hgq as _hgq  # noqa: F401
except ImportError:
    pass
else:
    try:
        from keras_autopruner.registry import hgq as _hgq_records  # noqa
    except (ImportError, AttributeError) as _error:
        # A release of hgq2 that moved its layers: the rest of the package
        # still works, and HGQ2 layers are then refused as unknown.
        import warnings
        warnings.warn(f"keras_autopruner: HGQ2's layers are not described "
                      f"({_error}); this package was written for hgq2 "
                      "0.2.0.")

__all__ = [
    "IN", "OUT", "LayerType", "Op", "activation_traits", "check_roles",
    "is_input_layer", "is_prunable", "lookup", "mixer_flow", "nearest",
    "prunable_types", "register", "register_prunable", "registered",
    "restore", "unknown", "width_of",
]


def is_prunable(layer):
    """Whether `add_gates` can gate `layer`: its outputs are filters."""
    record = lookup(layer)
    return record is not None and record.width_key is not None


def prunable_types():
    """The names of the registered prunable layer classes, sorted."""
    return sorted(cls.__name__ for cls, record in registered().items()
                  if record.width_key is not None)


def width_of(layer):
    """The number of filters (output channels) of a prunable layer."""
    record = lookup(layer)
    if record is None or record.width_key is None:
        raise TypeError(f"{type(layer).__name__} is not a prunable layer.")
    return record.width(layer)


def register_prunable(layer_class, width_key, *, weights=None, flops=None):
    """Declare a layer class prunable, for every part of the package.

    The layer must read every channel of its one input and write new
    channels: output channel j is computed from the weight entries whose
    `"out"` axis index is j, then passed through the layer's `activation`
    attribute if it has one (else it is taken to be linear). Its
    `get_config()` must hold its width under `width_key`, and
    `from_config` must build the narrower layer from the edited config.
    Then `add_gates` gates it, `strip` narrows it (and the layers that read
    it), and `count_flops` and `CostModel` count it.

    Args:
        layer_class: the Keras layer class (its subclasses that do not
            override `call` are covered too).
        width_key: the config key of its number of output channels, such as
            `"filters"` or `"units"`.
        weights: weight name (the name given to `add_weight`) -> the role
            of each trailing axis: `"in"` (input channel), `"out"` (output
            channel) or None. A Dense-like kernel `(in, out)` with a bias
            is `{"kernel": ("in", "out"), "bias": ("out",)}`; a Conv2D
            kernel `(h, w, in, out)` is described the same way. Required
            unless `layer_class` subclasses a prunable layer, whose
            description it then keeps.
        flops: `fn(layer, input_shapes, output_shapes) -> int`, the MACs of
            one call for one example. Default: the base's rule for a
            subclass, else one MAC per entry of every weight with an `"in"`
            axis at every output position (each output axis but the batch
            and the channels), as for Dense and Conv.

    Returns:
        The `LayerType` registered.

    Example:

    >>> import keras
    >>> class Linear(keras.layers.Layer):
    ...     def __init__(self, units, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.units = units
    ...     def build(self, shape):
    ...         self.w = self.add_weight(shape=(shape[-1], self.units),
    ...                                  name="w")
    ...     def call(self, x):
    ...         return keras.ops.matmul(x, self.w)
    ...     def get_config(self):
    ...         return {**super().get_config(), "units": self.units}
    >>> record = register_prunable(Linear, "units",
    ...                            weights={"w": ("in", "out")})
    >>> is_prunable(Linear(3))
    True
    """
    if not isinstance(layer_class, type):
        raise TypeError(
            f"register_prunable expects a layer class, got {layer_class!r}.")
    base = nearest(layer_class)
    inherited = base is not None and base.width_key is not None
    if weights is None:
        if not inherited:
            raise TypeError(
                f"register_prunable({layer_class.__name__}, ...) needs "
                "weights={name: roles}: how each of its weights is indexed "
                "by input and output channels, e.g. {'kernel': ('in', "
                "'out'), 'bias': ('out',)}.")
        weights = base.weights
    weights = check_roles(weights)
    if flops is None:
        flops = base.flops if inherited else _kernel_macs(weights)
    elif not callable(flops):
        raise TypeError(
            "flops must be fn(layer, input_shapes, output_shapes) -> int, "
            f"got {flops!r}.")
    return register(layer_class, LayerType(
        flow=mixer_flow, width_key=width_key, weights=weights, flops=flops))


def _kernel_macs(weights):
    reading = [name for name, roles in weights.items() if IN in roles]

    def macs(layer, ins, outs):
        sizes = sum(math.prod(w.shape) for w in layer.weights
                    if w.name in reading)
        return sizes * math.prod(outs[0][1:-1])
    return macs
