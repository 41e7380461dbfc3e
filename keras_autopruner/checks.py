"""checks: refuse models whose weights are not finite.

One NaN batch can turn a layer's kernel into NaN while the loss stays
finite (a max-pool or a ReLU downstream hides it), so neither the loss nor
`keras.callbacks.TerminateOnNaN` notices. `AutoPrunerCallback` calls
`nonfinite_weights` at every control step; `strip` and `export` call
`check_finite` first, so a broken model is never stripped or written.
"""

import keras
from keras import ops


class NonFiniteError(ValueError):
    """A model's weights (or the training loss) hold NaN or Inf."""


def _leaves(layer, prefix=None):
    """(path, layer) for every layer of `layer` that is not a model; the
    path names the nested models below the top one (`"inner/conv"`)."""
    sub = getattr(layer, "layers", None)
    if isinstance(layer, keras.Model) and sub is not None:
        inner = "" if prefix is None else f"{prefix}{layer.name}/"
        for child in sub:
            yield from _leaves(child, inner)
    else:
        yield f"{prefix or ''}{layer.name}", layer


def nonfinite_weights(model, trainable_only=False):
    """The weights of `model` that hold a NaN or an Inf.

    Each weight is reduced on its device (`all(isfinite(w))`), so only one
    boolean per weight leaves it. Integer weights (seed states, counters)
    are skipped.

    Args:
        model: a Keras model (nested models are searched).
        trainable_only: look at trainable weights only.

    Returns:
        A list of `(layer_path, weight_name)` pairs, in layer order; empty
        when every weight is finite.

    Example:

    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> nonfinite_weights(m)
    []
    """
    found, seen = [], set()
    for path, layer in _leaves(model):
        weights = layer.trainable_weights if trainable_only else layer.weights
        for w in weights:
            if id(w) in seen:
                continue  # A weight shared by two layers is reported once.
            seen.add(id(w))
            if not str(w.dtype).startswith(("float", "bfloat")):
                continue
            if not bool(ops.convert_to_numpy(ops.all(ops.isfinite(w)))):
                found.append((path, w.name))
    return found


def describe(bad, limit=4):
    """`"layer 'c1' (kernel), layer 'c2' (bias)"` for `nonfinite_weights`."""
    text = ", ".join(f"layer {p!r} ({w})" for p, w in bad[:limit])
    if len(bad) > limit:
        text += f" and {len(bad) - limit} more"
    return text


def check_finite(model, what):
    """Raise `NonFiniteError`, naming the layers, if any weight is not finite.

    Args:
        model: the model about to be stripped or exported.
        what: the caller's name for the message (`"strip"`, `"export"`).

    Raises:
        NonFiniteError: (a ValueError) some weight holds NaN or Inf.

    Example:

    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> check_finite(m, "export")
    """
    bad = nonfinite_weights(model)
    if bad:
        raise NonFiniteError(
            f"{what}: model {model.name!r} has weights that are NaN or Inf: "
            f"{describe(bad)}. Training diverged; nothing was written. "
            "Restore the model from a checkpoint taken before (ModelCheckpoint"
            " or BackupAndRestore) and train again with a lower learning "
            "rate or gradient clipping (e.g. clipnorm=1.0 on the optimizer)."
        )
