"""Importance criteria: how much each channel of a gated model is worth.

A criterion scores every channel behind every gate; `kap.prune` turns the
scores into masks that meet a budget through the same exact choice as
`AutoPrunerCallback` (`budget.exact_choice`), and `strip` removes the rest.

Built in (name for `kap.prune(importance=...)` in brackets):

- `AutoPrunerImportance` ("autopruner"): the gates' learned ranking (their
  moving logits), for a model whose gates were trained.
- `L1Norm` ("l1") and `L2Norm` ("l2"): the norm of each filter of the
  prunable layer's kernel.
- `BatchNormScale` ("bn"): |gamma| of the batch norm right behind the layer.
- `Taylor` ("taylor"): the first-order Taylor estimate of the loss change,
  `|sum over examples and positions of a * dL/da|` per channel, from a few
  batches of data.
- `RandomImportance` ("random"): uniform random scores, seeded.

A criterion of your own subclasses `Importance` and implements `scores`:

    class Last(kap.Importance):
        '''Keeps the channels with the highest index.'''
        def scores(self, gated, gates, data=None):
            return {g.name: np.arange(g.units, dtype=float) for g in gates}

    compact = kap.prune(model, importance=Last(), target_rate=0.5)

Scores are compared across layers (by a global budget) only after
`normalise`: by default each gate's scores are divided by that gate's
largest score, so the best channel of every layer scores 1 and a layer
whose channels all matter equally keeps them together. Criteria whose raw
scores already share one scale across layers override `normalise`
(`AutoPrunerImportance`: a logit means the same in every gate).
"""

import zlib

import keras
import numpy as np
from keras import ops

from keras_autopruner import tracing
from keras_autopruner.gate import AutoPrunerGate


class Importance:
    """Base class of the importance criteria.

    Subclasses implement `scores`; `normalise` (per-gate division by the
    largest score) and `get_config` (the constructor's arguments, which
    subclasses with arguments extend) have defaults.

    Attributes:
        name: the short name `get` accepts ("l1", ...); None for a
            criterion of your own.
        needs_data: whether `scores` needs `data`.

    Example:

        class Last(Importance):
            def scores(self, gated, gates, data=None):
                return {g.name: np.arange(g.units, dtype=float)
                        for g in gates}
    """

    name = None
    needs_data = False

    def scores(self, gated, gates, data=None):
        """Score every channel behind every gate; higher is kept first.

        Args:
            gated: the gated model (from `add_gates`), with the original
                weights.
            gates: its `AutoPrunerGate` layers to score.
            data: what `kap.prune` was given as `data` (batches of
                `(x, y)`), or None.

        Returns:
            A dict `{gate.name: array of gate.units floats}`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement scores(self, gated, "
            "gates, data=None) -> {gate_name: np.ndarray}.")

    def normalise(self, scores):
        """Make scores comparable across gates: each gate's divided by its
        largest (so every gate's best channel scores 1).

        Args:
            scores: `{gate_name: array}`, as `scores` returns, all >= 0.

        Returns:
            A new dict of float64 arrays.
        """
        out = {}
        for name, s in scores.items():
            s = np.asarray(s, np.float64)
            if s.size and s.min() < 0:
                raise ValueError(
                    f"{type(self).__name__}: the scores of gate {name!r} are "
                    "negative somewhere; the default normalise divides by "
                    "the gate's largest score and needs scores >= 0. Return "
                    "non-negative scores or override normalise().")
            top = s.max() if s.size else 0.0
            out[name] = s / top if top > 0 else s.copy()
        return out

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_autopruner")
class AutoPrunerImportance(Importance):
    """The gates' own ranking: each channel's moving logit.

    Meaningful once the gates were trained (with `AutoPrunerCallback`, or
    a plain `fit` of the gated model); on freshly added gates every channel
    ties and the lowest indices are kept. The logits are compared across
    gates as they are: the gate keeps a channel when its logit is above 0
    in every layer, so they share one scale.
    """

    name = "autopruner"

    def scores(self, gated, gates, data=None):
        return {g.name: np.asarray(g.ranking(), np.float64) for g in gates}

    def normalise(self, scores):
        return {n: np.asarray(s, np.float64) for n, s in scores.items()}


class _NormImportance(Importance):
    order = None

    def scores(self, gated, gates, data=None):
        out = {}
        for gate in gates:
            layer = prunable_layer(gated, gate)
            w = filter_weights(layer, gate.units)
            if self.order == 1:
                out[gate.name] = np.sum(np.abs(w), axis=0)
            else:
                out[gate.name] = np.sqrt(np.sum(np.square(w), axis=0))
        return out


@keras.saving.register_keras_serializable(package="keras_autopruner")
class L1Norm(_NormImportance):
    """The L1 norm of each filter: `sum |kernel|` over everything but the
    output channel axis of the prunable layer's kernel (the pointwise
    kernel of a separable convolution)."""

    name = "l1"
    order = 1


@keras.saving.register_keras_serializable(package="keras_autopruner")
class L2Norm(_NormImportance):
    """The L2 norm of each filter of the prunable layer's kernel (see
    `L1Norm`)."""

    name = "l2"
    order = 2


@keras.saving.register_keras_serializable(package="keras_autopruner")
class BatchNormScale(Importance):
    """|gamma| of the `BatchNormalization` right behind the prunable layer
    (network slimming's criterion). A layer without one, or whose batch
    norm has no scale, is refused; exclude it from `add_gates` or use
    another criterion."""

    name = "bn"

    def scores(self, gated, gates, data=None):
        out = {}
        for gate in gates:
            layer = prunable_layer(gated, gate)
            bn = _batch_norm_behind(gated, layer)
            if bn is None or bn.gamma is None:
                why = ("is not followed by a BatchNormalization" if bn is None
                       else f"feeds {bn.name!r}, which has scale=False")
                raise ValueError(
                    f"BatchNormScale: layer {layer.name!r} {why}, so it has "
                    "no gamma to rank its channels by. Exclude it from "
                    f"add_gates (exclude=[{layer.name!r}]) or use another "
                    "criterion, such as 'l1'.")
            gamma = np.abs(ops.convert_to_numpy(bn.gamma)).astype(np.float64)
            if gamma.shape != (gate.units,):
                raise ValueError(
                    f"BatchNormScale: {bn.name!r} behind {layer.name!r} has "
                    f"{gamma.size} scales for {gate.units} channels (it does "
                    "not normalise the last axis); use another criterion.")
            out[gate.name] = gamma
        return out


@keras.saving.register_keras_serializable(package="keras_autopruner")
class Taylor(Importance):
    """First-order Taylor importance from a few batches of data.

    For channel c with activation `a_c` (the tensor the gate multiplies)
    the score is the batch average of `|sum over examples and positions of
    a_c * dL/da_c|`: the first-order change of the loss when the channel is
    zeroed (Molchanov et al., 2017). It is computed as the gradient of the
    loss with respect to each gate's per-channel multiplier, with every
    multiplier at 1 (the network without gates), which is exactly that sum.
    A channel whose activation is zero scores 0.

    Runs on the TensorFlow, JAX and PyTorch backends.

    Args:
        loss: a Keras loss (name, function or `keras.losses.Loss`) of the
            model's outputs. Default: the loss the model given to
            `kap.prune` was compiled with.
        batches: how many batches of `data` to average over.
        batch_size: the batch size used when `data` is a tuple of arrays.

    Example:

        compact = kap.prune(model, importance=kap.Taylor(
            loss="sparse_categorical_crossentropy", batches=4),
            target_rate=0.5, data=(x_train, y_train))
    """

    name = "taylor"
    needs_data = True

    def __init__(self, loss=None, batches=4, batch_size=32):
        if int(batches) < 1 or int(batch_size) < 1:
            raise ValueError(
                f"Taylor: batches and batch_size must be >= 1, got "
                f"{batches} and {batch_size}.")
        self.loss = loss
        self.batches = int(batches)
        self.batch_size = int(batch_size)

    def get_config(self):
        loss = self.loss
        if loss is not None and not isinstance(loss, str):
            loss = keras.saving.serialize_keras_object(loss)
        return {"loss": loss, "batches": self.batches,
                "batch_size": self.batch_size}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("loss"), dict):
            config["loss"] = keras.saving.deserialize_keras_object(
                config["loss"])
        return cls(**config)

    def scores(self, gated, gates, data=None):
        loss = self.loss if self.loss is not None else getattr(
            gated, "loss", None)
        if loss is None:
            raise ValueError(
                "Taylor needs a loss: pass Taylor(loss=...) (such as "
                "'sparse_categorical_crossentropy'), or compile the model "
                "given to prune with its loss.")
        loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
        batches = _batches(data, self.batches, self.batch_size)
        variables = list(gated.non_trainable_variables)
        where = {id(v): i for i, v in enumerate(variables)}
        base = [ops.convert_to_tensor(v) for v in variables]
        for g in gates_in(gated):
            # Soft path, not done: the gate multiplies by `moving_code`
            # itself, which is the multiplier we differentiate.
            base[where[id(g.hard)]] = ops.zeros((), "float32")
            base[where[id(g.phase)]] = ops.zeros((), "float32")
            base[where[id(g.moving_code)]] = ops.ones((g.units,), "float32")
        slots = [where[id(g.moving_code)] for g in gates]
        trainable = [ops.convert_to_tensor(v)
                     for v in gated.trainable_variables]

        def loss_of(codes, x, y):
            values = list(base)
            for i, c in zip(slots, codes):
                values[i] = c
            pred, _ = gated.stateless_call(trainable, values, x,
                                           training=False)
            return ops.sum(loss_fn(y, pred))

        grad = _gradient(loss_of)
        total = [np.zeros(g.units) for g in gates]
        for x, y in batches:
            codes = [ops.ones((g.units,), "float32") for g in gates]
            for t, gr in zip(total, grad(codes, x, y)):
                t += np.abs(np.asarray(ops.convert_to_numpy(gr), np.float64))
        return {g.name: t / len(batches) for g, t in zip(gates, total)}


@keras.saving.register_keras_serializable(package="keras_autopruner")
class RandomImportance(Importance):
    """Uniform random scores: random pruning, the usual baseline.

    Each gate draws from its own generator seeded by `(seed, gate name)`,
    so the same seed gives the same scores whatever order the gates are
    visited in.

    Args:
        seed: an int.
    """

    name = "random"

    def __init__(self, seed=0):
        self.seed = int(seed)

    def get_config(self):
        return {"seed": self.seed}

    def scores(self, gated, gates, data=None):
        return {g.name: np.random.default_rng(
            [self.seed, zlib.crc32(g.name.encode())]).random(g.units)
            for g in gates}


CRITERIA = {c.name: c for c in (AutoPrunerImportance, L1Norm, L2Norm,
                                BatchNormScale, Taylor, RandomImportance)}


def get(identifier):
    """An `Importance` from a name ("l1", ...), an instance or a class.

    Args:
        identifier: one of `CRITERIA`'s names, an `Importance` instance, an
            `Importance` subclass (built without arguments) or a config
            dict `{"class_name": ..., "config": ...}`.

    Returns:
        An `Importance` instance.

    Example:

    >>> get("l1")
    L1Norm()
    >>> get(RandomImportance(seed=3))
    RandomImportance(seed=3)
    """
    if isinstance(identifier, Importance):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Importance):
        return identifier()
    if isinstance(identifier, str) and identifier.lower() in CRITERIA:
        return CRITERIA[identifier.lower()]()
    if isinstance(identifier, dict) and "class_name" in identifier:
        by_class = {c.__name__: c for c in CRITERIA.values()}
        cls = by_class.get(identifier["class_name"])
        if cls is not None:
            return cls.from_config(identifier.get("config", {}))
    raise ValueError(
        f"Unknown importance criterion {identifier!r}. Use one of "
        f"{sorted(CRITERIA)} or an instance of a keras_autopruner.Importance "
        "subclass.")


def gates_in(gated):
    return [layer for layer in gated.layers
            if isinstance(layer, AutoPrunerGate)]


def prunable_layer(gated, gate):
    """The layer whose filters `gate` (made by `add_gates`) chooses."""
    layer_name = gate.name.removesuffix("_gate")
    # Through the trace, so that a layer wrapped by a folded gate
    # (folding.ScaledInputs) is found as itself.
    for op in tracing.trace(gated).operations():
        if op.name == layer_name and not isinstance(op, AutoPrunerGate):
            return op
    raise ValueError(
        f"Gate {gate.name!r} has no layer {layer_name!r} in "
        f"{gated.name!r}: this criterion needs the gates add_gates "
        "puts behind a layer (named '<layer>_gate'). Gate the model "
        "with add_gates, or use 'autopruner' or 'random'.")


def filter_weights(layer, units):
    """The layer's kernel as a (fan_in, units) array: one column a filter.

    A wrapper (`TimeDistributed`) is read through the layer it wraps.
    """
    from keras_autopruner import registry

    record = registry.lookup(type(layer))  # the class's: unspecialised
    if record is not None and record.inner is not None:
        return filter_weights(record.inner(layer), units)
    kind = type(layer).__name__
    if getattr(layer, "pointwise_kernel", None) is not None:
        w, axis = layer.pointwise_kernel, -1
    elif getattr(layer, "depthwise_kernel", None) is not None:
        # (..., in, multiplier): output channel i*multiplier + j.
        w = ops.convert_to_numpy(layer.depthwise_kernel)
        w, axis = w.reshape(w.shape[:-2] + (-1,)), -1
    elif getattr(layer, "kernel", None) is not None:
        # Transposed convolutions store (..., filters, in_channels).
        w, axis = layer.kernel, (-2 if "Transpose" in kind else -1)
    else:
        w = None
    if w is not None:
        w = np.moveaxis(np.asarray(ops.convert_to_numpy(w), np.float64),
                        axis, -1)
    if w is None or w.shape[-1] != units:
        raise ValueError(
            f"The filter-norm criteria read the kernel of layer "
            f"{layer.name!r} ({kind}), and could not find one with {units} "
            "output channels. Use another criterion ('taylor', 'random') or "
            "a subclass of Importance that knows this layer.")
    return w.reshape(-1, units)


def _batch_norm_behind(gated, layer):
    trace = tracing.trace(gated)
    calls = trace.nodes_of(layer)
    if len(calls) != 1:  # called more than once: no one batch norm
        return None
    for reader in trace.consumers[id(calls[0].outputs[0])]:
        if isinstance(reader.operation, keras.layers.BatchNormalization):
            return reader.operation
    return None


def _batches(data, count, batch_size):
    """The first `count` `(x, y)` batches of `data`, as backend tensors."""
    if data is None:
        raise ValueError(
            "Taylor importance needs data: pass data=(x, y) (arrays) or an "
            "iterable of (x, y) batches, such as a tf.data.Dataset, to "
            "kap.prune.")
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(
            hasattr(a, "shape") for a in data[:2]):
        x, y = data[0], data[1]
        n = len(y)
        found = [(x[i:i + batch_size], y[i:i + batch_size])
                 for i in range(0, min(n, count * batch_size), batch_size)]
    else:
        found = []
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(
                    "Taylor importance needs labelled batches (x, y); got a "
                    f"batch of type {type(batch).__name__}.")
            found.append((batch[0], batch[1]))
            if len(found) == count:
                break
    if not found:
        raise ValueError("Taylor importance: data holds no batch.")

    def tensor(t):
        return keras.tree.map_structure(
            lambda a: ops.convert_to_tensor(np.asarray(a)), t)

    return [(tensor(x), tensor(y)) for x, y in found]


def _gradient(loss_of):
    """`fn(codes, x, y) -> d loss_of / d codes` on the current backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def grad(codes, x, y):
            with tf.GradientTape() as tape:
                tape.watch(codes)
                value = loss_of(codes, x, y)
            return tape.gradient(value, codes)
    elif backend == "jax":
        import jax

        def grad(codes, x, y):
            return jax.grad(lambda c: loss_of(c, x, y))(codes)
    elif backend == "torch":
        import torch

        def grad(codes, x, y):
            codes = [c.detach().requires_grad_(True) for c in codes]
            return torch.autograd.grad(loss_of(codes, x, y), codes)
    else:
        raise NotImplementedError(
            f"Taylor importance computes gradients on the TensorFlow, JAX "
            f"and PyTorch backends, not on {backend!r}. Use another "
            "backend, or a gradient-free criterion ('l1', 'l2', 'bn').")
    return grad
