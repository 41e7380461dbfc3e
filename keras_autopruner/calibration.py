"""recalibrate_batch_norm: batch-norm statistics measured on the network as it is now."""

import numbers

import keras
import numpy as np

from keras_autopruner.checks import NonFiniteError

# Layers whose training-mode noise would bias the statistics of the batch
# norms after them, and the attribute that switches the noise off.
_NOISE = ((keras.layers.Dropout, "rate"),
          (keras.layers.GaussianDropout, "rate"),
          (keras.layers.AlphaDropout, "rate"),
          (keras.layers.GaussianNoise, "stddev"))


def _all_layers(model):
    seen, out, stack = set(), [], [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        stack.extend(getattr(layer, "layers", None) or [])
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.layers.Layer):
            stack.append(inner)
    return out


def _is_array(x):
    return isinstance(x, np.ndarray) or (
        hasattr(x, "shape") and hasattr(x, "__getitem__")
        and not hasattr(x, "take"))


def _batches(data, batch_size, max_batches):
    """Input batches (no labels), read as `fit` reads its data: a tuple is
    `(x, y[, sample_weight])`; a list or dict of arrays is the inputs of a
    multi-input model; anything else not an array is an iterable of
    batches."""
    if isinstance(data, tuple) and 1 <= len(data) <= 3:
        data = data[0]
    parts = (list(data.values()) if isinstance(data, dict)
             else data if isinstance(data, list) else [data])
    if parts and all(_is_array(p) for p in parts):
        arrays = [np.asarray(p) for p in parts]
        lengths = sorted({len(a) for a in arrays})
        if len(lengths) != 1:
            raise ValueError(
                "recalibrate_batch_norm: the inputs of a multi-input model "
                f"must have as many examples each; got {lengths}.")
        for start in range(0, min(lengths[0], batch_size * max_batches),
                           batch_size):
            cut = [a[start:start + batch_size] for a in arrays]
            if isinstance(data, dict):
                yield dict(zip(data, cut))
            else:
                yield cut if isinstance(data, list) else cut[0]
        return
    for count, item in enumerate(data):
        if count >= max_batches:
            return
        yield item[0] if isinstance(item, tuple) else item


def recalibrate_batch_norm(model, data, batch_size=256, max_batches=16):
    """Re-estimate every batch norm's moving mean and variance on `data`.

    After a pruning choice the channels a batch norm sees change: the kept
    ones lose the soft factor the gates multiplied them by, and the layers
    after a cut see fewer inputs. The moving statistics gathered before no
    longer describe the network, and its inference accuracy drops although
    no weight is wrong. This measures them again: the model runs in
    training mode on up to `max_batches` batches, and each batch norm's
    moving mean and variance become the average of its batch statistics
    over them (the momentum is set for an exact running average, then put
    back). Weights, gamma and beta do not change; dropout and noise layers
    are switched off for the pass, since their noise is absent at
    inference. A batch norm that is not trainable (frozen) keeps its
    statistics, as in `fit`.

    Args:
        model: a Keras model (a stripped `PrunedModel`, a gated model with
            its choice made, or any model with `BatchNormalization`).
        data: input examples as `fit` takes them: an array, a list or
            dict of arrays (a multi-input model), an `(x, y)` or
            `(x, y, sample_weight)` tuple of those, or an iterable of
            batches (a `tf.data.Dataset` of `x` or `(x, y)`).
        batch_size: batch size for arrays.
        max_batches: the most batches used.

    Returns:
        The number of batch norms re-estimated (0: the model has none, and
        it is left as it was).

    Raises:
        ValueError: no data, or data that gave no batch.
        NonFiniteError: the data gave NaN or Inf statistics. On this or
            any other error the model keeps the statistics it had.

    Example:

    >>> import numpy as np, keras, keras_autopruner as kap
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
    ...                       keras.layers.BatchNormalization()])
    >>> kap.recalibrate_batch_norm(m, np.ones((64, 4), "float32"))
    1
    """
    if not (isinstance(batch_size, numbers.Integral) and batch_size > 0
            and isinstance(max_batches, numbers.Integral)
            and max_batches > 0):
        raise ValueError(
            "recalibrate_batch_norm: batch_size and max_batches must be "
            f"positive whole numbers, got {batch_size!r}, {max_batches!r}.")
    if not isinstance(model, keras.Model):
        raise TypeError("recalibrate_batch_norm expects a keras.Model; got "
                        f"{type(model).__name__}.")
    if data is None or isinstance(data, (str, bytes)):
        raise ValueError(
            "recalibrate_batch_norm needs input examples: an array, a list "
            "or dict of arrays, an (x, y) tuple, or an iterable of batches "
            f"(a tf.data.Dataset); got {type(data).__name__}.")
    layers = _all_layers(model)
    norms = [layer for layer in layers
             if isinstance(layer, keras.layers.BatchNormalization)
             and layer.trainable and not layer.renorm]
    if not norms:
        return 0
    noisy = [(layer, attr, getattr(layer, attr)) for layer in layers
             for cls, attr in _NOISE if isinstance(layer, cls)]
    momenta = [norm.momentum for norm in norms]
    # Only the moving statistics may change: a stateful layer of another
    # kind (a gate's moving code) is put back afterwards, and so are the
    # statistics themselves when the pass fails or gives NaN/Inf.
    stats = [v for norm in norms
             for v in (norm.moving_mean, norm.moving_variance)]
    theirs = {id(v) for norm in norms for v in norm.variables}
    others = list({id(v): v for layer in layers
                   for v in layer.non_trainable_variables
                   if id(v) not in theirs}.values())
    saved = [np.array(keras.ops.convert_to_numpy(v)) for v in others]
    saved_stats = [np.array(keras.ops.convert_to_numpy(v)) for v in stats]
    seen, ok = 0, False
    try:
        for layer, attr, _ in noisy:
            setattr(layer, attr, 0.0)
        for batch in _batches(data, batch_size, max_batches):
            for norm in norms:
                # After k batches, momentum k / (k + 1) keeps the mean of
                # all k + 1; the first batch replaces the old statistics.
                norm.momentum = seen / (seen + 1.0)
            model(batch, training=True)
            seen += 1
        bad = [norm.name for norm in norms if not all(
            np.all(np.isfinite(keras.ops.convert_to_numpy(v)))
            for v in (norm.moving_mean, norm.moving_variance))] if seen else []
        if bad:
            raise NonFiniteError(
                "recalibrate_batch_norm: the data gave NaN or Inf "
                f"statistics in {bad[:3]}{' ...' if len(bad) > 3 else ''}; "
                "the model's statistics are left as they were. Check the "
                "examples for NaN/Inf (np.isfinite(x).all()).")
        ok = True
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for layer, attr, value in noisy:
            setattr(layer, attr, value)
        for v, value in zip(others, saved):
            v.assign(value)
        if not ok:
            for v, value in zip(stats, saved_stats):
                v.assign(value)
    if seen == 0:
        raise ValueError(
            "recalibrate_batch_norm: the data gave no batch; pass at least "
            "one example (an array, (x, y), or a dataset of batches).")
    return len(norms)
