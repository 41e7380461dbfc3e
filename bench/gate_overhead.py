"""Training-step time with gates, against without; gate memory; the
pruning phase's wall time.

Per network (`vgg_small` on 28x28x1, and VGG16 (`vgg16_cub`, 10 classes) on
32x32x3), batch 64 by default, with and without XLA (`jit_compile`), four
compiled models run `train_on_batch` on the same batch:

- plain: the network without gates;
- gated, pushing: gates computing their codes and the pruning term;
- gated, done: after the exact choice (phase 2, a fixed 0/1 mask, half
  the channels kept);
- ceiling: the network hand-built at the kept widths (half), what `strip`
  gives: the step time pruning is for;
- folded gates, pushing and done (`--fold`, on by default): the same
  with `add_gates(..., fold=True, fold_batch_size=batch_size)`, where
  each gate's code scales the next layer's kernel instead of the
  activation, where that is cheaper (`folding.py`);
- floor: the network with, where the gates go, only a multiply by a fixed
  per-channel vector (`--floor`): what any gate that multiplies the
  channels costs at least, without fusion;
- folded (`--folded`, vgg_small only): a hand-built probe of a gate that
  never multiplies the activation. Each gate's code (the pushing gate's
  own pool, map, sigmoid, moving state and loss term, without the phase
  conditional) scales the input channels of the next layer's kernel
  instead, which computes the same function, since max pooling, dropout
  and flattening commute with a positive per-channel scale. The probe
  that came before `add_gates(..., fold=True)`, kept to compare with it.

They are timed in interleaved rounds, one step of each per round in a
random order, so that load on the machine hits all of them alike; the rounds
come in `blocks` blocks and every ratio is printed as the median of the
blocks' median ratios with their range, so that a loaded machine shows as
spread. Gate parameters are printed as a share of the model's (VGG16 also
at 224x224 with 200 classes, counted per gate without building it).

The pruning phase: `vgg_small`, trained `full_epochs` on the shipped
Fashion-MNIST subset, is pruned with `AutoPrunerCallback` (global MAC
budget, `stop_when_done`) at each rate of `phase_rates`; printed are the
optimizer steps to done, the phase's wall time, and the wall time of as
many plain training steps on the same batches, each also without its
stalls (steps over 10x the median: a retrace of the training function,
or the machine's load). With `phase_gates=product,folded,product_xla`
(the default) each rate runs three times from one start (weights, gates,
dropout's random state): with the product gates, folded, and with the
product gates under XLA, which computes the same steps in another float
order. The last two rows say how many channels they chose as the
product run did (the XLA row: what float rounding alone changes), and
every row gives the stripped model's MAC share and test accuracy.

    .venv/bin/python bench/gate_overhead.py [--nets=vgg_small,vgg16_32] \\
        [--xla=off,on] [--rounds=100] [--vgg16_rounds=6] [--blocks=3]
"""

import os
import random
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner import models  # noqa: E402
from keras_autopruner.datasets import load_fashion_mnist  # noqa: E402
from keras_autopruner.gate import AutoPrunerGate, gates_of  # noqa: E402

NETS = {
    "vgg_small": dict(
        build=lambda widths=None: models.vgg_small(widths=widths),
        shape=(28, 28, 1), defaults=models.VGG_SMALL_WIDTHS),
    "vgg16_32": dict(
        build=lambda widths=None: models.vgg16_cub(
            num_classes=10, input_shape=(32, 32, 3), widths=widths),
        shape=(32, 32, 3), defaults=models.VGG16_WIDTHS),
}


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_integer("batch_size", 64, "batch size of the timed steps",
                         flag_values=fv)
    flags.DEFINE_list("nets", ["vgg_small", "vgg16_32"],
                      f"networks to time, of {sorted(NETS)} (none: only "
                      "the pruning phase)", flag_values=fv)
    flags.DEFINE_list("xla", ["off", "on"], "jit_compile settings to time",
                      flag_values=fv)
    flags.DEFINE_integer("rounds", 100, "timed rounds per block, vgg_small",
                         flag_values=fv)
    flags.DEFINE_integer("vgg16_rounds", 6, "timed rounds per block, VGG16",
                         flag_values=fv)
    flags.DEFINE_integer("blocks", 3, "blocks of rounds (the spread)",
                         flag_values=fv)
    flags.DEFINE_integer("warmup", 3, "untimed rounds first",
                         flag_values=fv)
    flags.DEFINE_bool("floor", False, "also time the fixed-multiply floor",
                      flag_values=fv)
    flags.DEFINE_bool("folded", False, "also time the folded-gate probe "
                      "(vgg_small)", flag_values=fv)
    flags.DEFINE_bool("fold", True, "also time add_gates(..., fold=True)",
                      flag_values=fv)
    flags.DEFINE_string("gate_map", "auto", "add_gates' gate_map",
                        flag_values=fv)
    flags.DEFINE_list("phase_gates", ["product", "folded", "product_xla"],
                      "gates of the pruning-phase runs: product (the "
                      "default add_gates), folded (fold=True), "
                      "product_xla (the product run compiled with XLA: "
                      "the same steps in another float order)",
                      flag_values=fv)
    flags.DEFINE_list("phase_rates", ["0.5", "0.25", "0.12"],
                      "rates of the pruning-phase runs (none: skip)",
                      flag_values=fv)
    flags.DEFINE_integer("train_examples", 3000,
                         "Fashion-MNIST images of the pruning-phase runs",
                         flag_values=fv)
    flags.DEFINE_integer("full_epochs", 2,
                         "epochs before gating, pruning-phase runs",
                         flag_values=fv)
    flags.DEFINE_integer("prune_epochs", 5, "most epochs of a pruning phase",
                         flag_values=fv)


def compiled(model, jit):
    model.compile(keras.optimizers.Adam(1e-3),
                  "sparse_categorical_crossentropy", jit_compile=jit)
    return model


class ChannelScale(keras.layers.Layer):
    """x * v for a fixed per-channel vector v: the floor of a gate."""

    def build(self, input_shape):
        self.v = self.add_weight(shape=(input_shape[-1],), initializer="ones",
                                 trainable=False)

    def call(self, x):
        return x * self.v


def with_floor(model):
    """`model` with a ChannelScale where add_gates puts its gates."""
    from keras_autopruner import tracing

    gated_names = {
        g._inbound_nodes[0].input_tensors[0]._keras_history.operation.name
        for g in gates_of(kap.add_gates(model, 0.5))}
    flat, _ = tracing.rebuild(model)
    out, _ = tracing.rebuild(
        flat, make_layer=lambda layer, _: layer,
        after=lambda layer, y: ChannelScale()(y)
        if layer.name in gated_names else y)
    return out


class CodeOnly(AutoPrunerGate):
    """The pushing gate's learning step, returning its code, not the
    product (the folded probe)."""

    def call(self, inputs, training=False):
        logits = self.compute_logits(inputs)
        code = keras.ops.sigmoid(keras.ops.convert_to_tensor(self.alpha)
                                 * logits)
        m = self.momentum
        self.code.assign(code)
        self.moving_code.assign(m * self.moving_code + (1 - m) * code)
        self.moving_logit.assign(m * self.moving_logit + (1 - m) * logits)
        self.add_loss(keras.ops.convert_to_tensor(self.coef) * keras.ops.square(
            keras.ops.mean(code) - keras.ops.convert_to_tensor(self.center)))
        return code

    def compute_output_spec(self, inputs, training=False):
        return keras.KerasTensor((inputs.shape[-1],), dtype="float32")


class ScaledInputs(keras.layers.Layer):
    """`layer(x)` with the kernel's input rows scaled by `code`, tiled
    `repeat` times (a Dense behind a Flatten reads each channel at every
    position)."""

    def __init__(self, layer, repeat=1, **kwargs):
        super().__init__(**kwargs)
        self.layer, self.repeat = layer, repeat

    def build(self, input_shape):
        self.layer.build(input_shape)

    def call(self, x, code):
        layer = self.layer
        scale = keras.ops.tile(code, (self.repeat,)) if self.repeat > 1 \
            else code
        kernel = layer.kernel * scale[:, None]
        if isinstance(layer, keras.layers.Conv2D):
            y = keras.ops.conv(x, kernel, strides=layer.strides,
                               padding=layer.padding)
        else:
            y = keras.ops.matmul(x, kernel)
        if layer.use_bias:
            y = y + layer.bias
        return layer.activation(y)


def folded_vgg_small(widths=models.VGG_SMALL_WIDTHS):
    """vgg_small, pushing, with every gate folded into the next kernel."""
    L = keras.layers
    inputs = keras.Input((28, 28, 1))
    x, code = inputs, None
    convs = [f"block{b}_conv{i}" for b in (1, 2) for i in (1, 2)]
    for i, name in enumerate(convs):
        conv = L.Conv2D(widths[name], 3, padding="same", use_bias=False)
        x = conv(x) if code is None else ScaledInputs(conv)(x, code)
        x = L.BatchNormalization(momentum=models.BN_MOMENTUM)(x)
        x = L.ReLU()(x)
        code = CodeOnly(0.5)(x)
        if i % 2:
            x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    fc1 = L.Dense(widths["fc1"], activation="relu")
    x = ScaledInputs(fc1, repeat=7 * 7)(x, code)
    code = CodeOnly(0.5)(x)
    x = L.Dropout(0.3)(x)
    outputs = ScaledInputs(L.Dense(10, activation="softmax"))(x, code)
    model = keras.Model(inputs, outputs)
    for g in gates_of(model):
        g.phase.assign(1.0)
        g.coef.assign(1.0)
    return model


def gate_share(net, gate_map):
    """Gate parameters / model parameters, for one gated model."""
    gated = kap.add_gates(NETS[net]["build"](), 0.5, gate_map=gate_map)
    gate = sum(g.count_params() for g in gates_of(gated))
    return gate, gated.count_params() - gate


def vgg16_224_share(gate_map, wide_units=1024):
    """The same on VGG16 at 224x224, 200 classes, counted per gate."""
    widths = models.VGG16_WIDTHS
    params, cin = 0, 3
    for name, w in widths.items():
        if name.startswith("block"):
            params += 9 * cin * w + w
            cin = w
    params += 7 * 7 * 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 200 + 200
    gate = 0
    for w in widths.values():
        kind = gate_map if gate_map != "auto" else (
            "low_rank" if w > wide_units else "full")
        g = AutoPrunerGate(map=kind)
        g.build((None, w))
        gate += g.count_params()
    return gate, params


def time_steps(net, jit, args):
    spec = NETS[net]
    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(0)
    x = rng.rand(args.batch_size, *spec["shape"]).astype("float32")
    y = rng.randint(0, 10, args.batch_size)
    half = {k: max(1, v // 2) for k, v in spec["defaults"].items()}

    def gated(phase, fold=False):
        model = kap.add_gates(spec["build"](), 0.5, gate_map=args.gate_map,
                              fold=fold, fold_batch_size=args.batch_size)
        for g in gates_of(model):
            if phase == "pushing":  # what the callback sets while pushing
                g.phase.assign(1.0)
                g.coef.assign(1.0)
            else:
                g.set_mask(np.arange(g.units) % 2 == 0)
        return model

    runs = {"plain": spec["build"](), "gated, pushing": gated("pushing"),
            "gated, done": gated("done")}
    if args.fold:
        runs["folded gates, pushing"] = gated("pushing", fold=True)
        runs["folded gates, done"] = gated("done", fold=True)
    runs["ceiling (kept widths)"] = spec["build"](half)
    if args.floor:
        runs["floor (fixed multiply)"] = with_floor(spec["build"]())
    if args.folded and net == "vgg_small":
        runs["folded probe (code into next kernel)"] = folded_vgg_small()
    for model in runs.values():
        compiled(model, jit)
    for _ in range(args.warmup):
        for model in runs.values():
            model.train_on_batch(x, y)
    rounds = args.rounds if net == "vgg_small" else args.vgg16_rounds
    names = list(runs)
    blocks = []
    for _ in range(args.blocks):
        times = {name: [] for name in runs}
        for _ in range(rounds):
            random.shuffle(names)
            for name in names:
                start = time.perf_counter()
                runs[name].train_on_batch(x, y)
                times[name].append(time.perf_counter() - start)
        blocks.append({n: float(np.median(t)) for n, t in times.items()})
    return runs, blocks, rounds


def print_steps(net, jit, blocks, rounds, args, base=None):
    print(f"\n{net}, batch {args.batch_size}, XLA {'on' if jit else 'off'}: "
          f"{args.blocks} blocks of {rounds} interleaved rounds")
    print("| model | step (ms), median of blocks | x plain, median "
          "[range] |" + (" x plain without XLA |" if base else ""))
    print("|---|---|---|" + ("---|" if base else ""))
    for name in blocks[0]:
        ms = np.median([b[name] for b in blocks]) * 1000
        ratios = [b[name] / b["plain"] for b in blocks]
        row = (f"| {name} | {ms:.2f} | {np.median(ratios):.3f} "
               f"[{min(ratios):.3f}-{max(ratios):.3f}] |")
        if base:
            row += f" {ms / base:.3f} |"
        print(row)
    return np.median([b["plain"] for b in blocks]) * 1000


class StepClock(keras.callbacks.Callback):
    """Each step's end time; with `stop_after`, stops `fit` after that many
    steps.

    `wall` runs from the first batch's end to the last's: every step but
    the first (which traces the training function), callbacks included.
    `traced` is the part of it spent in steps that took over `TRACED`
    times the median step: a retrace of the training function, or a stall
    of the machine.
    """

    TRACED = 10.0

    def __init__(self, stop_after=None):
        super().__init__()
        self.ends = []
        self.stop_after = stop_after

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())
        if self.stop_after and len(self.ends) >= self.stop_after:
            self.model.stop_training = True

    @property
    def steps(self):
        return np.diff(self.ends)

    @property
    def wall(self):
        return self.ends[-1] - self.ends[0]

    @property
    def traced(self):
        steps = self.steps
        return float(np.sum(steps[steps > self.TRACED * np.median(steps)]))


class TimedPruning(kap.AutoPrunerCallback):
    """AutoPrunerCallback that adds up the wall time of its own batch hooks
    (the control steps' reads, checks and writes)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seconds = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        begin = time.perf_counter()
        super().on_train_batch_begin(batch, logs)
        self.seconds += time.perf_counter() - begin

    def on_train_batch_end(self, batch, logs=None):
        begin = time.perf_counter()
        super().on_train_batch_end(batch, logs)
        self.seconds += time.perf_counter() - begin


def pruning_phase(args):
    (x, y), (xt, yt) = load_fashion_mnist()
    n = args.train_examples
    x = (x[:n, ..., None] / 255.0).astype("float32")
    y = y[:n]
    xt = (xt[..., None] / 255.0).astype("float32")
    for kind in args.phase_gates:
        if kind not in ("product", "folded", "product_xla"):
            raise app.UsageError(f"--phase_gates: {kind!r} is not product, "
                                 "folded or product_xla")
    keras.utils.set_random_seed(0)
    base = compiled(models.vgg_small(), False)
    base.fit(x, y, batch_size=32, epochs=args.full_epochs, verbose=0)
    print(f"\nPruning phase: vgg_small on {n} Fashion-MNIST images, batch "
          f"32, after {args.full_epochs} epochs of training; at most "
          f"{args.prune_epochs} epochs, stop_when_done. Plain: the same "
          "network without gates, on the same batches, for as many steps. "
          "Wall: steps 2 to the last, callbacks included; traced: the "
          "part of it in steps over 10x the median (a retrace or a "
          "stall); without: the wall less that; callback: the "
          "time in AutoPrunerCallback's batch hooks. Same channels: the "
          "share of channels whose keep/cut matches the product gates' "
          f"run; test: the stripped model on {len(yt)} test images, before "
          "any fine-tuning")
    print("| rate | gates | steps to done | reason | pruning wall (s) "
          "| traced (s) | same steps plain (s) | traced (s) | ratio "
          "| ratio without traced steps | callback (s) "
          "| callback per step / plain step | MACs kept | same channels "
          "| test acc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    full_macs = int(kap.count_flops(base))
    for rate in [float(r) for r in args.phase_rates]:
        product_masks = None
        # All three from one start (weights, gates, dropout's random
        # state): the folded model and the XLA copy are made from the
        # product one before any trains.
        start = kap.add_gates(base, rate, gate_map=args.gate_map)
        copy, layer_map = kap.tracing.rebuild(start)
        kap.tracing.copy_state(layer_map)
        runs = {"folded": kap.folding.fold(start, batch_size=32),
                "product_xla": copy, "product": start}
        for kind in args.phase_gates:
            keras.utils.set_random_seed(0)
            gated = compiled(runs[kind], kind == "product_xla")
            cb, clock = TimedPruning(stop_when_done=True), StepClock()
            # The clock last: its batch end follows the pruning callback's.
            gated.fit(x, y, batch_size=32, epochs=args.prune_epochs,
                      verbose=0, callbacks=[cb, clock])
            steps = len(clock.ends)
            plain = compiled(keras.models.clone_model(base), False)
            plain.set_weights(base.get_weights())
            # The same batches in the same order as the gated run.
            plain_clock = StepClock(stop_after=steps)
            plain.fit(x, y, batch_size=32, epochs=args.prune_epochs,
                      verbose=0, callbacks=[plain_clock])
            reason = (cb.result or {}).get("reason", "not done")
            pure = clock.wall - clock.traced
            plain_pure = plain_clock.wall - plain_clock.traced
            masks = np.concatenate([g.mask() for g in gates_of(gated)])
            if kind == "product":
                product_masks = masks
            same = ("-" if product_masks is None
                    else f"{np.mean(masks == product_masks):.1%}")
            compact = kap.strip(gated, force=True)
            compact.compile(metrics=["accuracy"],
                            loss="sparse_categorical_crossentropy")
            acc = compact.evaluate(xt, yt, batch_size=256, verbose=0)[1]
            share = int(kap.count_flops(compact)) / full_macs
            print(f"| {rate} | {kind} | {steps} | {reason} | "
                  f"{clock.wall:.1f} | {clock.traced:.1f} | "
                  f"{plain_clock.wall:.1f} | {plain_clock.traced:.1f} | "
                  f"{clock.wall / plain_clock.wall:.3f} | "
                  f"{pure / plain_pure:.3f} | {cb.seconds:.2f} | "
                  f"{cb.seconds / plain_pure:.3f} | {share:.4f} | {same} | "
                  f"{acc:.4f} |")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    if args.nets == ["none"]:  # the pruning phase only
        args.nets = []
    for net in args.nets:
        if net not in NETS:
            raise app.UsageError(f"--nets: {net!r} is not one of "
                                 f"{sorted(NETS)}")
    print("Gate parameters as a share of the model's")
    print("| network | gate_map | gate params | model params | share |")
    print("|---|---|---|---|---|")
    for gate_map in ("full", args.gate_map):
        for net in args.nets:
            gate, params = gate_share(net, gate_map)
            print(f"| {net} | {gate_map} | {gate:,} | {params:,} | "
                  f"{gate / params:.1%} |")
        gate, params = vgg16_224_share(gate_map)
        print(f"| vgg16_cub 224x224, 200 classes | {gate_map} | {gate:,} | "
              f"{params:,} | {gate / params:.1%} |")
    for net in args.nets:
        base = None
        for setting in args.xla:
            jit = setting == "on"
            _, blocks, rounds = time_steps(net, jit, args)
            plain = print_steps(net, jit, blocks, rounds, args, base)
            base = base or plain
    if args.phase_rates and args.phase_rates != ["none"]:
        pruning_phase(args)


if __name__ == "__main__":
    define_flags()
    app.run(main)
