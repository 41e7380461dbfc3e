"""The AutoPruner gate: a learned, batch-shared channel code."""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_autopruner import tracing

POOLINGS = ("avg", "max")
MAPS = ("full", "low_rank", "diagonal")


@keras.saving.register_keras_serializable(package="keras_autopruner")
class AutoPrunerGate(keras.layers.Layer):
    """Multiplies each channel of its input by a learned code in [0, 1].

    The gate reads the activation it sits on, averages it over the batch,
    reduces the spatial axes, maps the result through a fully connected layer
    to one logit per channel and squashes it with a scaled sigmoid:

        code = sigmoid(alpha * (pool(mean_batch(x)) @ kernel + bias))
        output = x * code

    `alpha` is raised during training (by `AutoPrunerCallback`) so that the
    code becomes binary; a channel whose code reaches 0 is a pruned filter.
    Because the code is shared by the whole batch it describes the layer, not
    a sample, and can be removed for real by `strip`.

    In inference (`training=False`) the gate uses a moving average of the
    codes seen in training, or, once `hard` is switched on, the 0/1 mask
    `moving_code > threshold`, so that evaluation shows the accuracy of the
    network that `strip` will build. Once the run is done (`phase` 2, set by
    the callback with the final, exact choice) the gate applies that mask
    in training too.

    The gate also carries the state of the pruning run (alpha, lambda, mu,
    phase) as non-trainable weights, so a saved model resumes where it left.
    Its pruning loss, `coef * (mean(code) - center)**2`, is added with
    `add_loss`; `coef` and `center` are set by the objective (zero by default:
    a gate that nobody drives only learns from the task loss).

    All the gate's weights are float32 and never autocast: under a mixed
    precision policy such as `"mixed_float16"` the codes are computed in
    float32 and only the product `x * code` is in the layer's compute dtype.

    Args:
        target_rate: fraction of channels this gate should keep, in (0, 1].
        pooling: how the spatial axes are reduced before the fully connected
            map. `"avg"` (default): global average pooling, a C x C map, cheap
            at any resolution. `"max"`: the authors' variant, a 2x2 max pool
            (2 along each spatial axis) whose every remaining position is
            connected, a (C*h*w) x C map; needs static spatial sizes.
        alpha: initial sigmoid scale.
        momentum: momentum of the moving code used in inference.
        threshold: a channel is kept when its code is above this value.
        bias_init: initial logit of every channel; positive values start the
            gate near "keep all", so inserting gates barely changes a trained
            network.
        kernel_scale: standard deviation of the initial kernel, times
            1/sqrt(fan_in).
        min_units: the fewest channels the objective lets this gate keep.
        map: the map from the pooled activation to the logits. `"full"`
            (default): the published fully connected (fan_in x C) kernel.
            `"low_rank"`: `kernel` (fan_in x rank) then `kernel_out` (rank x
            C), `rank * (fan_in + C)` weights instead of `fan_in * C`: for
            wide layers (a 4096-unit Dense gets 16.8 M gate weights with the
            full map, 0.5 M at rank 64). `"diagonal"`: one weight per
            channel, `logit_c = w_c * pool(x)_c + b_c` (avg pooling only).
            `add_gates(..., gate_map="auto")` picks `"low_rank"` for layers
            wider than its `wide_units`.
        rank: inner width of the `"low_rank"` map (ignored otherwise).
        speed: the logits are `speed * (pool(x) @ kernel + bias)`, with
            kernel and bias initialised `speed` times smaller (the same
            starting logits). Adam moves each weight by about one learning
            rate per step whatever its scale, so the logits move `speed`
            times faster: the gates choose in fewer optimizer steps without
            a learning rate of their own.
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: the activation, `(batch, ..., channels)`.
        training: whether the code learns (and the moving state moves).
        fold: return `(inputs, code)` instead of `inputs * code`: the
            layer the gate feeds then applies the code to its kernel
            (`add_gates(..., fold=True)`, see `folding.py`), and the gate
            makes no pass over the activation besides its pooling.

    Example:

    >>> x = keras.Input((8, 8, 16))
    >>> y = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    >>> y = AutoPrunerGate(target_rate=0.5)(y)
    >>> model = keras.Model(x, y)
    >>> wide = AutoPrunerGate(map="low_rank", rank=8)
    >>> _ = wide(keras.ops.ones((2, 256)))
    >>> wide.count_params() < 256 * 256 // 10
    True
    """

    # How tracing reads a folded model (tracing.Call).
    _fold_role = "gate"

    def __init__(
        self,
        target_rate=0.5,
        pooling="avg",
        alpha=1.0,
        momentum=0.9,
        threshold=0.5,
        bias_init=2.0,
        kernel_scale=0.1,
        min_units=1,
        speed=10.0,
        map="full",
        rank=64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_rate(target_rate)
        if pooling not in POOLINGS:
            raise ValueError(
                f"pooling must be one of {POOLINGS}, got {pooling!r}."
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.target_rate = float(target_rate)
        self.pooling = pooling
        self.alpha_init = float(alpha)
        self.momentum = float(momentum)
        self.threshold = float(threshold)
        self.bias_init = float(bias_init)
        self.kernel_scale = float(kernel_scale)
        self.min_units = int(min_units)
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}.")
        self.speed = float(speed)
        if map not in MAPS:
            raise ValueError(f"map must be one of {MAPS}, got {map!r}.")
        if map == "diagonal" and pooling != "avg":
            raise ValueError(
                "map='diagonal' gives each channel one weight on its own "
                "pooled value and needs pooling='avg'; got "
                f"pooling={pooling!r}. Use map='low_rank' with max pooling.")
        if (isinstance(rank, bool) or not isinstance(rank, numbers.Integral)
                or rank < 1):
            raise ValueError(
                f"rank must be a whole number >= 1, got {rank!r}.")
        self.map = map
        self.rank = int(rank)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "AutoPrunerGate needs inputs of shape (batch, ..., channels) "
                f"with a known channel count; got {input_shape}."
            )
        self.units = int(input_shape[-1])
        self._spatial = tuple(input_shape[1:-1])
        fan_in = self.units
        if self.pooling == "max" and self._spatial:
            if any(s is None for s in self._spatial):
                raise ValueError(
                    "pooling='max' connects every pooled position and needs "
                    f"static spatial sizes; got {input_shape}. Use "
                    "pooling='avg' for inputs of variable size."
                )
            fan_in = self.units * math.prod(
                max(1, s // 2) for s in self._spatial
            )
        # float32 and never autocast (see the class docstring): then
        # sigmoid(alpha * logit) saturates at the same place on every policy.
        def weight(name, shape, stddev):
            return self.add_weight(
                name=name, shape=shape,
                initializer=keras.initializers.RandomNormal(stddev=stddev),
                dtype="float32", autocast=False)

        scale = self.kernel_scale / self.speed
        if self.map == "full":
            self.kernel = weight("kernel", (fan_in, self.units),
                                 scale / math.sqrt(fan_in))
        elif self.map == "diagonal":
            self.kernel = weight("kernel", (self.units,), scale)
        else:
            # A rank wider than the layer would cost more than the full map.
            rank = min(self.rank, fan_in, self.units)
            # The first factor keeps the pooled values' scale; the second
            # gives the logits the spread of the full map's.
            self.kernel = weight("kernel", (fan_in, rank),
                                 1.0 / math.sqrt(fan_in))
            self.kernel_out = weight("kernel_out", (rank, self.units),
                                     scale / math.sqrt(rank))
        self.bias = self.add_weight(
            name="bias",
            shape=(self.units,),
            initializer=keras.initializers.Constant(
                self.bias_init / self.speed),
            dtype="float32",
            autocast=False,
        )

        def state(name, shape, value, aggregation="only_first_replica"):
            return self.add_weight(
                name=name,
                shape=shape,
                initializer=keras.initializers.Constant(value),
                trainable=False,
                aggregation=aggregation,
                dtype="float32",
                autocast=False,
            )

        start = 1.0 / (1.0 + math.exp(-self.alpha_init * self.bias_init))
        # Codes are written inside the replica step, so replicas average them.
        self.moving_code = state("moving_code", (self.units,), start, "mean")
        self.moving_logit = state("moving_logit", (self.units,),
                                  self.bias_init, "mean")
        self.code = state("code", (self.units,), start, "mean")
        self.alpha = state("alpha", (), self.alpha_init)
        self.hard = state("hard", (), 0.0)
        self.coef = state("coef", (), 0.0)
        self.center = state("center", (), self.target_rate)
        self.lam = state("lam", (), 0.0)
        self.mu = state("mu", (), 1.0)
        self.phase = state("phase", (), 0.0)
        # Optimizer steps since gating, and the miss the lambda controller
        # last compared against: saved so that a resumed run continues
        # exactly.
        self.step = state("step", (), 0.0)
        self.ref_miss = state("ref_miss", (), -1.0)
        # The share of a global budget allotted to this gate (-1: not yet).
        self.alloc = state("alloc", (), -1.0)

    def _pool(self, x):
        """Mean over the batch and the spatial axes, as a (1, fan_in) row."""
        if not self._spatial:
            return ops.mean(x, axis=0, keepdims=True)
        if self.pooling == "avg":
            # One reduction over batch and space: a single pass over x.
            axes = tuple(range(len(self._spatial) + 1))
            return ops.reshape(ops.mean(x, axis=axes), (1, -1))
        x = ops.mean(x, axis=0, keepdims=True)
        size = tuple(2 if s >= 2 else 1 for s in self._spatial)
        x = ops.max_pool(x, pool_size=size, strides=size, padding="valid")
        return ops.reshape(x, (1, -1))

    def compute_logits(self, x):
        """The logits before alpha for a batch `x`, shape (channels,)."""
        # The gate reads the activation but does not train the network
        # through it: otherwise the pruning term would reshape features to
        # move codes instead of choosing channels.
        x = ops.stop_gradient(ops.cast(x, "float32"))
        pooled = self._pool(x)
        if self.map == "diagonal":
            logits = pooled[0] * self.kernel + self.bias
        else:
            logits = ops.matmul(pooled, self.kernel)
            if self.map == "low_rank":
                logits = ops.matmul(logits, self.kernel_out)
            logits = logits[0] + self.bias
        return self.speed * logits

    def compute_code(self, x):
        """The soft code for a batch `x`, shape (channels,)."""
        alpha = ops.convert_to_tensor(self.alpha)
        return ops.sigmoid(alpha * self.compute_logits(x))

    def _hard_mask(self, moving_code):
        return ops.cast(moving_code > self.threshold, "float32")

    def call(self, inputs, training=False, fold=False):
        # Variables are read into tensors once: JAX refuses a Keras variable
        # where it expects an array (inside `where`, say), and under JAX's
        # stateless training step `convert_to_tensor` returns the step's
        # current value.
        moving_code = ops.convert_to_tensor(self.moving_code)
        # Once the run is done (phase 2) the choice is final: training goes
        # on with the hard mask, so fine-tuning the gated model is
        # fine-tuning the network strip builds.
        done = ops.convert_to_tensor(self.phase) > 1.5
        if not training:
            hard = ops.convert_to_tensor(self.hard) > 0.5
            code = ops.where(ops.logical_or(hard, done),
                             self._hard_mask(moving_code), moving_code)
            if fold:
                return inputs, code
            return inputs * ops.cast(code, inputs.dtype)
        moving_logit = ops.convert_to_tensor(self.moving_logit)
        m = self.momentum

        def product(code):
            # Folded, the next layer applies the code to its kernel: no
            # pass over the activation here, forward or backward.
            return () if fold else (inputs * ops.cast(code, inputs.dtype),)

        def fixed():
            # Done: a fixed 0/1 multiply. No logits, no moving averages,
            # and (the product being inside the branch) no gradient
            # reduction over the activation for a code that cannot move.
            mask = self._hard_mask(moving_code)
            return product(mask) + (mask, moving_code, moving_logit)

        def learning():
            logits = self.compute_logits(inputs)
            soft = ops.sigmoid(ops.convert_to_tensor(self.alpha) * logits)
            return product(soft) + (soft, m * moving_code + (1 - m) * soft,
                                    m * moving_logit + (1 - m) * logits)

        # A conditional, not a `where` of both: the branch not taken is not
        # computed (tf.cond / lax.cond; a Python `if` on PyTorch).
        *outputs, code, new_code, new_logit = ops.cond(done, fixed, learning)
        self.code.assign(code)
        self.moving_code.assign(new_code)
        self.moving_logit.assign(new_logit)
        self.add_loss(ops.convert_to_tensor(self.coef) * ops.square(
            ops.mean(code) - ops.convert_to_tensor(self.center)))
        return (inputs, code) if fold else outputs[0]

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, training=False, fold=False):
        out = keras.KerasTensor(inputs.shape, dtype=inputs.dtype)
        if not fold:
            return out
        return out, keras.KerasTensor((inputs.shape[-1],), dtype="float32")

    def mask(self, threshold=None):
        """The hard 0/1 keep mask as a NumPy bool array."""
        t = self.threshold if threshold is None else threshold
        return self.moving_code.numpy() > t

    def scores(self):
        """Moving codes as NumPy floats: how much each channel is wanted."""
        return self.moving_code.numpy()

    def ranking(self):
        """Moving logits as NumPy floats: the order in which channels are
        kept. Unlike the codes they do not saturate at 0 or 1, so they still
        separate channels once alpha has made the codes binary."""
        return self.moving_logit.numpy()

    def set_mask(self, mask):
        """Make `mask` (bool per channel) this gate's final choice: codes
        become exactly 0/1, hard masks are on, and training keeps it.

        The gate's phase becomes "done" (2), as after the callback's exact
        choice, so a later `fit` (with or without `AutoPrunerCallback`)
        trains the network with this mask and `strip` needs no `force`.
        """
        mask = np.asarray(mask)
        if mask.shape != (self.units,):
            raise ValueError(
                f"set_mask: gate {self.name!r} has {self.units} channels; "
                f"got a mask of shape {mask.shape}. Pass one bool per "
                "channel.")
        self.moving_code.assign(mask.astype("float32"))
        self.code.assign(mask.astype("float32"))
        self.hard.assign(1.0)
        self.coef.assign(0.0)
        # Without "done" a training step goes back to the soft code and the
        # moving code drifts away from the mask.
        self.phase.assign(2.0)

    def get_config(self):
        config = super().get_config()
        config.update(
            target_rate=self.target_rate,
            pooling=self.pooling,
            alpha=self.alpha_init,
            momentum=self.momentum,
            threshold=self.threshold,
            bias_init=self.bias_init,
            kernel_scale=self.kernel_scale,
            min_units=self.min_units,
            speed=self.speed,
            map=self.map,
            rank=self.rank,
        )
        return config


def check_rate(rate, what="target_rate"):
    """Raise a ValueError unless `rate` is a real number in (0, 1].

    Strings (`"0.5"`) and booleans (`True` would be a rate of 1) are
    refused: they are almost always a mistake upstream (a flag read as
    text, a wrong argument), and accepting them hides it.

    Args:
        rate: the fraction of filters to keep.
        what: how the message names the argument.

    Example:

    >>> check_rate(0.25)
    >>> check_rate("0.5")
    Traceback (most recent call last):
    ...
    ValueError: target_rate is the fraction of filters to keep ...
    """
    ok = (isinstance(rate, numbers.Real) and not isinstance(rate, bool)
          and 0.0 < float(rate) <= 1.0)
    if not ok:
        hint = (" Pass a number, e.g. 0.5, not a string."
                if isinstance(rate, str) else "")
        raise ValueError(
            f"{what} is the fraction of filters to keep and must be a "
            f"number in (0, 1]; got {rate!r} ({type(rate).__name__}).{hint}"
        )


def gates_of(model):
    """All AutoPrunerGate layers of `model`, nested models included.

    In the one order every part of the package uses (`CostModel.gates`,
    the objective, the callback, `strip`): the order of their first call
    in the traced graph, producers first.
    """
    if tracing.functional_of(model) is not None:
        return [op for op in tracing.trace(model).operations()
                if isinstance(op, AutoPrunerGate)]
    found = []
    for layer in model.layers if hasattr(model, "layers") else []:
        if isinstance(layer, AutoPrunerGate):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(gates_of(layer))
    return found


def set_hard_masks(model, hard=True):
    """Switch every gate of `model` between hard 0/1 masks and soft codes.

    With hard masks, inference (`training=False`) multiplies each channel by
    `moving_code > threshold`: the model then computes exactly what its
    stripped version computes.
    """
    gates = gates_of(model)
    for gate in gates:
        gate.hard.assign(1.0 if hard else 0.0)
    return gates
