"""Model builders for the examples and the comparison study.

Every builder takes `widths`, the number of filters (or neurons) of each
prunable hidden layer, keyed by layer name. That one argument is what the
study needs to rebuild an architecture at other widths: the widths
AutoPruner selected (to train them from scratch) or every layer narrowed by
one factor (the uniform baseline). The output layer's width is the number of
classes and is never part of `widths`.

Layer names are fixed by the builders (`block1_conv1`, `fc1`, ...), so the
widths of a stripped model, read back with `widths_of`, can be passed
straight to the builder that made the original.

Builders also take `keras_module`: pass `tf_keras` to get the same network
in Keras 2 (what tensorflow-model-optimization needs).

Example:

>>> full = vgg_small()
>>> widths = scale_widths(default_widths(vgg_small), 0.5)
>>> half = with_widths(vgg_small, widths)()
>>> widths_of(half)["block1_conv1"]
8
"""

import functools

import keras
import numpy as np

# Widths of the ImageNet VGG16's 13 convolutions and 2 hidden dense layers.
VGG16_WIDTHS = {
    "block1_conv1": 64,
    "block1_conv2": 64,
    "block2_conv1": 128,
    "block2_conv2": 128,
    "block3_conv1": 256,
    "block3_conv2": 256,
    "block3_conv3": 256,
    "block4_conv1": 512,
    "block4_conv2": 512,
    "block4_conv3": 512,
    "block5_conv1": 512,
    "block5_conv2": 512,
    "block5_conv3": 512,
    "fc1": 4096,
    "fc2": 4096,
}

# A VGG-style network small enough to train on two CPU cores in seconds
# per epoch: two blocks of two 3x3 convolutions, then one hidden dense layer.
VGG_SMALL_WIDTHS = {
    "block1_conv1": 16,
    "block1_conv2": 16,
    "block2_conv1": 32,
    "block2_conv2": 32,
    "fc1": 64,
}

# Hidden layers of the fully connected tagger; a funnel, as in the jet
# flavour tagging networks this example follows.
FC_DNN_WIDTHS = {
    "dense1": 256,
    "dense2": 128,
    "dense3": 64,
    "dense4": 32,
}

VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _resolve_widths(defaults, widths, builder_name):
    """Merge `widths` (dict, sequence or None) into a copy of `defaults`."""
    resolved = dict(defaults)
    if widths is None:
        return resolved
    if isinstance(widths, dict):
        unknown = sorted(set(widths) - set(defaults))
        if unknown:
            raise ValueError(
                f"{builder_name}: widths names layers {unknown} that it does "
                f"not build. Its prunable layers are {list(defaults)}."
            )
        resolved.update(widths)
    else:
        widths = list(widths)
        if len(widths) != len(defaults):
            raise ValueError(
                f"{builder_name}: got {len(widths)} widths for "
                f"{len(defaults)} prunable layers {list(defaults)}. Pass one "
                "width per layer, or a dict {layer_name: width}."
            )
        resolved = dict(zip(defaults, widths))
    for layer_name, w in resolved.items():
        if int(w) != w or int(w) < 1:
            raise ValueError(
                f"{builder_name}: width of {layer_name!r} must be a positive "
                f"integer, got {w!r}."
            )
        resolved[layer_name] = int(w)
    return resolved


# BatchNormalization's moving statistics: Keras's default momentum (0.99)
# needs about 500 steps to forget its initial values, longer than a short
# CPU run trains, and evaluation then sees stale statistics.
BN_MOMENTUM = 0.9


def _conv_block(k, x, widths, names, batchnorm):
    L = k.layers
    for layer_name in names:
        x = L.Conv2D(widths[layer_name], 3, padding="same",
                     use_bias=not batchnorm,
                     activation=None if batchnorm else "relu",
                     name=layer_name)(x)
        if batchnorm:
            x = L.BatchNormalization(momentum=BN_MOMENTUM,
                                     name=f"{layer_name}_bn")(x)
            x = L.ReLU(name=f"{layer_name}_relu")(x)
    return x


def vgg16_cub(num_classes=200, input_shape=(224, 224, 3), widths=None,
              dropout=0.5, batchnorm=False, weights=None, keras_module=None,
              name="vgg16_cub"):
    """VGG16 for fine-grained classification, as pruned in AutoPruner.

    The 13 convolutions and 5 max pools of VGG16, then the feature map is
    flattened (no average pooling, as in the paper's CUB-200 experiments)
    into two fully connected layers with dropout and a softmax over
    `num_classes`. Layer names match `keras.applications.VGG16`, so its
    ImageNet weights load into the convolutions by name.

    Args:
        num_classes: number of output classes (200 for CUB-200-2011).
        input_shape: `(height, width, channels)`; height and width must be
            at least 32 (five 2x2 pools).
        widths: filters/units per prunable layer, a dict keyed by the names
            in `VGG16_WIDTHS` (missing ones keep the default) or a list of
            15 numbers in that order.
        dropout: dropout rate after `fc1` and `fc2`.
        batchnorm: insert BatchNormalization after every convolution (not in
            the original network; helps training from random init).
        weights: `None` (random init), `"imagenet"` (the Keras VGG16 notop
            weights, which must already be in the Keras cache or be
            downloadable) or a path to such an `.h5` file. Only for the
            default convolution widths, 3 input channels and no batchnorm.
        keras_module: `keras` (default) or `tf_keras`.
        name: model name.

    Returns:
        An uncompiled functional model.
    """
    k = keras_module or keras
    w = _resolve_widths(VGG16_WIDTHS, widths, "vgg16_cub")
    if min(input_shape[:2]) < 32:
        raise ValueError(
            f"vgg16_cub needs images of at least 32x32 (five 2x2 pools); got "
            f"input_shape={input_shape}."
        )
    L = k.layers
    inputs = k.Input(input_shape, name="image")
    x = inputs
    for block, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        names = [f"block{block}_conv{i}" for i in range(1, count + 1)]
        x = _conv_block(k, x, w, names, batchnorm)
        x = L.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = L.Flatten(name="flatten")(x)
    for layer_name in ("fc1", "fc2"):
        x = L.Dense(w[layer_name], activation="relu", name=layer_name)(x)
        x = L.Dropout(dropout, name=f"{layer_name}_dropout")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = k.Model(inputs, outputs, name=name)
    if weights is not None:
        conv_widths = {n: v for n, v in w.items() if n.startswith("block")}
        if (conv_widths != {n: v for n, v in VGG16_WIDTHS.items()
                            if n.startswith("block")}
                or batchnorm or input_shape[-1] != 3):
            raise ValueError(
                "Pretrained VGG16 weights fit only the default convolution "
                "widths, 3 input channels and batchnorm=False. Load them "
                "into the full model and prune it instead."
            )
        load_vgg16_weights(model, weights, keras_module=k)
    return model


def load_vgg16_weights(model, weights="imagenet", keras_module=None):
    """Copy ImageNet VGG16 convolution weights into `model`, by layer name.

    Args:
        model: a model with VGG16's `blockN_convM` layers.
        weights: `"imagenet"` or a path to the notop `.h5` weights file.
        keras_module: `keras` (default) or `tf_keras`.

    Returns:
        The names of the layers that received weights.
    """
    k = keras_module or keras
    source = k.applications.VGG16(include_top=False, weights=weights,
                                  input_shape=(32, 32, 3))
    loaded = []
    for layer in source.layers:
        if layer.name.startswith("block") and layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            loaded.append(layer.name)
    return loaded


def cached_vgg16_weights():
    """Path of the ImageNet VGG16 notop weights in the Keras cache, or None."""
    import os

    cache = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras")
    path = os.path.join(cache, "models", VGG16_NOTOP_FILE)
    return path if os.path.isfile(path) else None


def vgg_small(input_shape=(28, 28, 1), num_classes=10, widths=None,
              dropout=0.3, batchnorm=True, keras_module=None,
              name="vgg_small"):
    """A small VGG-style convnet: the study's default network.

    Two blocks of two 3x3 convolutions (each followed by BatchNormalization
    and ReLU) and a 2x2 max pool, then a flattened dense layer with dropout
    and the softmax. With the default widths it has about 0.12 M parameters
    and 3.7 M multiply-accumulates on a 28x28 image.

    Args:
        input_shape: `(height, width, channels)`, at least 4x4.
        num_classes: number of output classes.
        widths: dict keyed by the names in `VGG_SMALL_WIDTHS`, or a list of
            5 numbers in that order.
        dropout: dropout rate after `fc1`.
        batchnorm: use BatchNormalization after each convolution.
        keras_module: `keras` (default) or `tf_keras`.
        name: model name.

    Returns:
        An uncompiled functional model.
    """
    k = keras_module or keras
    w = _resolve_widths(VGG_SMALL_WIDTHS, widths, "vgg_small")
    L = k.layers
    inputs = k.Input(input_shape, name="image")
    x = inputs
    for block in (1, 2):
        names = [f"block{block}_conv{i}" for i in (1, 2)]
        x = _conv_block(k, x, w, names, batchnorm)
        x = L.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(w["fc1"], activation="relu", name="fc1")(x)
    x = L.Dropout(dropout, name="fc1_dropout")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    return k.Model(inputs, outputs, name=name)


def fc_dnn(input_dim=16, num_classes=26, widths=None, dropout=0.1,
           batchnorm=True, keras_module=None, name="fc_dnn"):
    """A fully connected tagger: Dense -> BatchNorm -> ReLU -> Dropout blocks.

    This is the shape of the networks used for jet flavour tagging on
    tabular high-level features. Pruning it removes neurons.

    Args:
        input_dim: number of input features.
        num_classes: number of output classes.
        widths: dict keyed by the names in `FC_DNN_WIDTHS`, or a list of 4
            numbers in that order.
        dropout: dropout rate after every hidden layer.
        batchnorm: use BatchNormalization after every hidden layer.
        keras_module: `keras` (default) or `tf_keras`.
        name: model name.

    Returns:
        An uncompiled functional model.
    """
    k = keras_module or keras
    w = _resolve_widths(FC_DNN_WIDTHS, widths, "fc_dnn")
    L = k.layers
    inputs = k.Input((input_dim,), name="features")
    x = inputs
    for layer_name, units in w.items():
        x = L.Dense(units, use_bias=not batchnorm, name=layer_name)(x)
        if batchnorm:
            x = L.BatchNormalization(momentum=BN_MOMENTUM,
                                     name=f"{layer_name}_bn")(x)
        x = L.ReLU(name=f"{layer_name}_relu")(x)
        if dropout:
            x = L.Dropout(dropout, name=f"{layer_name}_dropout")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    return k.Model(inputs, outputs, name=name)


BUILDERS = {
    "vgg16_cub": (vgg16_cub, VGG16_WIDTHS),
    "vgg_small": (vgg_small, VGG_SMALL_WIDTHS),
    "fc_dnn": (fc_dnn, FC_DNN_WIDTHS),
}


def get_builder(name):
    """The builder function registered under `name`."""
    if name not in BUILDERS:
        raise ValueError(
            f"Unknown model {name!r}; choose one of {sorted(BUILDERS)}."
        )
    return BUILDERS[name][0]


def default_widths(builder):
    """The default `widths` dict of a builder (a copy).

    Args:
        builder: one of this module's builders, or what `with_widths`
            returned.
    """
    builder = getattr(builder, "func", builder)
    for fn, defaults in BUILDERS.values():
        if fn is builder:
            return dict(defaults)
    raise ValueError(
        f"{builder!r} is not one of the builders {sorted(BUILDERS)}; its "
        "default widths are unknown."
    )


def with_widths(builder, widths):
    """A builder for the same architecture at other per-layer widths.

    Args:
        builder: a builder of this module (or an earlier `with_widths`).
        widths: dict `{layer_name: width}`; layers not named keep the width
            they had.

    Returns:
        A callable taking the builder's other arguments.

    Example:

    >>> narrow = with_widths(vgg_small, {"fc1": 16})
    >>> model = narrow(input_shape=(28, 28, 1), num_classes=10)
    """
    base = getattr(builder, "func", builder)
    merged = dict(getattr(builder, "keywords", {}).get("widths") or {})
    merged.update(widths)
    return functools.partial(base, widths=merged)


def widths_of(model):
    """Width of every prunable layer of `model`, by layer name, in order.

    Gates are ignored, so this reads a stripped model's widths as well as a
    full one's. The output layer is included; drop it (or keep only the
    keys of `default_widths`) before passing the dict to a builder.
    """
    from keras_autopruner import instrument

    return {layer.name: instrument.width_of(layer) for layer in model.layers
            if instrument.is_prunable(layer)}


def scale_widths(widths, factor):
    """Every width times `factor`, rounded, at least 1."""
    return {n: max(1, int(round(w * factor))) for n, w in widths.items()}


def match_params(builder, target_params, widths=None, tolerance=1e-3,
                 max_steps=60, **build_kwargs):
    """The one width factor whose model has `target_params` parameters.

    `match_cost` with `measure="params"`; see there.
    """
    return match_cost(builder, target_params, "params", widths=widths,
                      tolerance=tolerance, max_steps=max_steps,
                      **build_kwargs)


def match_cost(builder, target, measure="params", widths=None,
               tolerance=1e-3, max_steps=60, **build_kwargs):
    """The one width factor whose model costs `target`.

    Every prunable layer is narrowed by the same factor (rounded, at least
    1), and the factor is found by bisection on [0, 1]; the cost grows with
    the factor, so bisection converges, but rounding makes it a step
    function: the result is the closest cost reached, not always an exact
    match.

    Args:
        builder: a builder of this module.
        target: the cost to match.
        measure: `"params"` (`count_params`) or `"flops"` (`count_flops`,
            multiply-accumulates).
        widths: the widths the factor scales (default: the builder's).
        tolerance: stop once the relative gap is below this.
        max_steps: most bisection steps.
        **build_kwargs: the builder's other arguments (input shape, ...).

    Returns:
        `(factor, widths, cost)` of the closest model found.
    """
    from keras_autopruner.metrics import count_flops, count_params

    measures = {"params": count_params,
                "flops": lambda m: count_flops(m).total}
    if measure not in measures:
        raise ValueError(
            f"measure must be one of {sorted(measures)}, got {measure!r}.")
    count = measures[measure]
    base = dict(widths or default_widths(builder))
    cache = {}

    def cost_at(factor):
        scaled = scale_widths(base, factor)
        key = tuple(scaled.values())
        if key not in cache:
            model = with_widths(builder, scaled)(**build_kwargs)
            cache[key] = count(model)
            del model
        return scaled, cache[key]

    lo, hi = 0.0, 1.0
    best = None
    for _ in range(max_steps):
        mid = (lo + hi) / 2
        scaled, cost = cost_at(mid)
        gap = abs(cost - target)
        if best is None or gap < best[3]:
            best = (mid, scaled, cost, gap)
        if gap <= tolerance * target:
            break
        if cost < target:
            lo = mid
        else:
            hi = mid
    factor, scaled, cost, _ = best
    return factor, scaled, cost


# One keras.applications model per family, at the smallest input it takes:
# the zoo the strip tests and bench/zoo_plan.py run (untrained weights).
APPLICATION_FAMILIES = {
    "ConvNeXtTiny": 32, "DenseNet121": 32, "EfficientNetB0": 32,
    "EfficientNetV2B0": 32, "InceptionResNetV2": 75, "InceptionV3": 75,
    "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32,
    "NASNetMobile": 32, "ResNet50": 32, "ResNet50V2": 32, "VGG16": 32,
    "Xception": 71,
}


def application_names():
    """Every model `keras.applications` exports (40 in Keras 3.15)."""
    return sorted(n for n in dir(keras.applications) if n[:1].isupper())


def application(name, classes=10):
    """An untrained `keras.applications` model at a small input: its size
    in `APPLICATION_FAMILIES`, 32x32 for the models not listed there.

    Args:
        name: one of `application_names()`, e.g. `"ResNet101"`.
        classes: output classes (the top is built, without its softmax).

    Returns:
        `(model, size)`: the model, without its preprocessing layers, and
        its input size (the input is `(size, size, 3)`).
    """
    if name not in application_names():
        raise ValueError(f"application: unknown model {name!r}; choose one "
                         f"of {application_names()}.")
    # The models that need more than 32x32 are all family representatives.
    size = APPLICATION_FAMILIES.get(name, 32)
    kwargs = dict(weights=None, input_shape=(size, size, 3), classes=classes,
                  classifier_activation=None)
    if name.startswith(("ConvNeXt", "EfficientNetV2", "MobileNetV3")):
        kwargs["include_preprocessing"] = False
    return getattr(keras.applications, name)(**kwargs), size


def spread_statistics(model, rng):
    """Batch norms with varied statistics and shifts, so that signals do
    not fade through a deep untrained network and a wrong cut shows. A
    network without batch norm (VGG16) gets He-scaled kernels instead."""
    if not any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in model.layers):
        for layer in model.layers:
            kernel = getattr(layer, "kernel", None)
            if kernel is not None:
                fan_in = int(np.prod(kernel.shape[:-1]))
                kernel.assign(rng.normal(0, np.sqrt(2 / fan_in),
                                         kernel.shape).astype("float32"))
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        values = []
        for variable in layer.weights:
            low, high = ((0.8, 1.6) if variable.name in
                         ("gamma", "moving_variance") else (-0.3, 0.3))
            values.append(rng.uniform(low, high, variable.shape))
        layer.set_weights(values)
