"""Why does AutoPruner's learned choice lose to a one-shot cut? One lever at a time.

Every variant starts from the same trained full model of a seed (the
study's `full` run, stored in `--out`) and spends the same epochs after it
with the same learning-rate shape: `prune_epochs` at the training rate,
then `finetune_epochs` at the fine-tuning rate, like the criteria in the
study. Only AutoPruner's procedure differs:

- `stop`: the study's procedure before issue 17 item 3: prune until the
  choice is made, stop at the end of that epoch, strip, fine-tune at the
  low rate (fewer epochs in all when the choice comes early);
- `stop_bn`: `stop`, with the batch-norm statistics re-estimated on the
  chosen network right after the choice (`kap.recalibrate_batch_norm`);
- `train_on`: the choice made as before, the rest of the `prune_epochs`
  trains the chosen network at the training rate, then the low rate;
- `fast`: `train_on` with the choice made after at most `--fast_epochs`
  of pushing (soft codes or not), so the chosen network trains longer;
- `fast_bn`: `fast` with the batch-norm re-estimate after the choice;
- the controller's settings, each on `fast` (the study's procedure):
  `fast_lam3` and `fast_lam1.2` (lambda raised by 3x or 1.2x at a stalled
  control step instead of 1.5x, `LambdaController(growth=...)`),
  `fast_alpha6` and `fast_alpha24` (alpha doubled every 6 or 24 steps
  once released instead of 12, `AlphaSchedule(double_every=...)`);
- `fast_cheap_whole`: `fast` with no gate on a layer whose channels
  control under 5% of the MACs (its own and its consumers' share of
  them; on vgg_small only `fc1`, 2.1%): under a MAC budget cutting it
  saves little, and `bn`, which cannot cut `fc1`, tied AutoPruner;
- `l1`, `random`, `bn`: one-shot cuts of the full model at the same
  budget, `prune_epochs` at the training rate then the low rate (the
  references);
- allocation against selection, which of the two the learned choice
  gains or loses by:
  - `l1_at_fast`, `random_at_fast`, `bn_at_fast`: a one-shot cut (as
    `l1`, `random`, `bn`) at the per-layer widths `fast` chose for the
    same seed and rate (run `fast` first), the channels of each layer by
    the criterion (`bn`: by L1 in a layer without batch norm behind it);
  - `fast_at_l1`: `fast`'s gates, pushed as in `fast` for
    `ceil(fast_epochs)` epochs, then cut by their own ranking (the moving
    logits) to the widths `l1` chose (run `l1` first), the one-shot
    criteria's allocation; the network then trains for the epochs left as
    in `fast`;
  - `fast_then_ap`, `fast_then_bn`, `fast_then_l1`: `fast`'s pushing for
    `ceil(fast_epochs)` epochs and the widths the gates chose, then the
    pushed network's channels of each layer chosen by the gates' ranking
    (`ap`: `fast` through the same path, the control), by |gamma| or by
    L1; stripped and trained for the epochs left. Same epochs as every
    other variant: AutoPruner's allocation with another selection;
- `<variant>_kd` (e.g. `fast_kd`, `l1_kd`, `bn_kd`): the variant with
  every fit after the full model trained on soft targets (knowledge
  distillation from the seed's trained full model, which every method
  here starts from): `(1 - kd_alpha) * one_hot(y) + kd_alpha *
  p_full^(1/T)` renormalised, `T = --kd_temperature`, cross-entropy. The
  teacher's probabilities are computed once on the (unaugmented) training
  images. Accuracy is measured as without it.

Printed: per variant, accuracy after the cut / choice and final accuracy,
per seed and their mean, and paired differences to `l1`.

    .venv/bin/python bench/autopruner_ablation.py --train_examples=10000 \\
        --seeds=0,1 --rates=0.25,0.12 --out=/tmp/ablation
"""

import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

VARIANTS = ("stop", "stop_bn", "train_on", "fast", "fast_bn",
            "fast_cheap_whole", "l1", "random", "bn",
            "l1_at_fast", "random_at_fast", "bn_at_fast", "fast_at_l1",
            "fast_then_ap", "fast_then_bn", "fast_then_l1")
CRITERIA = ("l1", "random", "bn")
AT = "_at_"
THEN = "fast_then_"
KD = "_kd"
# The controller's settings varied one at a time on `fast`: the callback's
# keyword arguments for each.
CONTROLLER_VARIANTS = {
    "fast_lam3": dict(growth=3.0),
    "fast_lam1.2": dict(growth=1.2),
    "fast_alpha6": dict(double_every=6),
    "fast_alpha24": dict(double_every=24),
}


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_string("out", "/tmp/autopruner_ablation", "study folder",
                        flag_values=fv)
    flags.DEFINE_list("variants", list(VARIANTS),
                      "variants to run, from "
                      + ",".join(VARIANTS + tuple(CONTROLLER_VARIANTS)),
                      flag_values=fv)
    flags.DEFINE_list("rates", ["0.25", "0.12"], "kept MAC shares",
                      flag_values=fv)
    flags.DEFINE_list("seeds", ["0", "1"], "seeds", flag_values=fv)
    flags.DEFINE_integer("train_examples", 10000, "training images",
                         flag_values=fv)
    flags.DEFINE_integer("full_epochs", 7, "epochs of the full model",
                         flag_values=fv)
    flags.DEFINE_integer("prune_epochs", 5,
                         "epochs at the training rate after full training",
                         flag_values=fv)
    flags.DEFINE_integer("finetune_epochs", 2,
                         "epochs at the fine-tuning rate", flag_values=fv)
    flags.DEFINE_float("kd_alpha", 0.5,
                       "weight of the full model's soft targets in `_kd`",
                       flag_values=fv)
    flags.DEFINE_float("kd_temperature", 2.0,
                       "temperature of the soft targets in `_kd`",
                       flag_values=fv)
    flags.DEFINE_float("fast_epochs", 1.0,
                       "most epochs of pushing in the fast variants",
                       flag_values=fv)


CHEAP = 0.05


def cheap_layers(model, share=CHEAP):
    """Layers whose channels control under `share` of the MACs: dropping
    all of a gate's channels (through the channel graph, so the layers
    that read them lose those inputs too) saves less than that."""
    import keras_autopruner as kap

    cost = kap.CostModel(kap.add_gates(model, target_rate=0.5), "flops")
    cheap = []
    for i, gate in enumerate(cost.gates):
        keep = [np.zeros(g.units) if j == i else np.ones(g.units)
                for j, g in enumerate(cost.gates)]
        if cost.full - cost.cost(keep) < share * cost.full:
            cheap.append(gate.name.removesuffix("_gate"))
    return cheap


def _autopruner(study, rate, seed, prune_steps, train_on, bn,
                controller=None, exclude=None):
    import keras_autopruner as kap
    from keras_autopruner.study.methods import _stop_at_epoch_end

    c = study.config
    full = study.full_model(seed)
    gated = kap.add_gates(full, target_rate=rate,
                          exclude=exclude(full) if exclude else None)
    study.compile(gated)
    controller = dict(controller or {})
    alpha = {k: controller.pop(k) for k in ("double_every",)
             if k in controller}
    callback = kap.AutoPrunerCallback(
        schedule=kap.LambdaController(**controller),
        alpha=kap.AlphaSchedule(**alpha), prune_steps=prune_steps)
    extra = [] if train_on else [_stop_at_epoch_end(callback)]
    hist = study.fit(gated, c.prune_epochs, seed, "ablation",
                     callbacks=[callback] + extra)
    epochs = len(hist["loss"])
    _, chosen = study.evaluate(gated)
    compact = kap.strip(gated)
    if bn:
        kap.recalibrate_batch_norm(compact, study.sample_batches(32))
    study.compile(compact)
    _, cut = study.evaluate(compact)
    study.fit(compact, c.finetune_epochs, seed, "ablation", low_from=0)
    _, acc = study.evaluate(compact)
    return {"cut": cut, "chosen": chosen, "accuracy": acc,
            "epochs": epochs + c.finetune_epochs,
            "steps": callback.result["steps"],
            "reason": callback.result["reason"],
            "binary": callback.result["binary"],
            "share": kap.cost_share(gated, "flops"),
            "widths": _widths(compact)}


def _criterion(study, rate, seed, name):
    import keras_autopruner as kap

    from keras_autopruner.study.methods import without_batch_norm

    full = study.full_model(seed)
    # As in the study: |gamma| cannot rank a layer without batch norm
    # behind it, so such layers stay whole.
    exclude = (without_batch_norm(full, study.prunable_units(full))
               if name == "bn" else None)
    compact = kap.prune(full, importance=name, target_rate=rate,
                        exclude=exclude or None)
    return _train_cut(study, compact, full, seed)


def _train_cut(study, compact, full, seed):
    """Train a one-shot cut of `full` for every epoch after the full
    model, as the criteria are; its accuracy after the cut and at the
    end, MAC share and widths."""
    c = study.config
    study.compile(compact)
    _, cut = study.evaluate(compact)
    study.train(compact, c.prune_epochs + c.finetune_epochs, seed,
                "ablation", c.finetune_epochs)
    _, acc = study.evaluate(compact)
    return {"cut": cut, "accuracy": acc,
            "epochs": c.prune_epochs + c.finetune_epochs,
            "share": _share(compact, full), "widths": _widths(compact)}


def _widths(model):
    from keras_autopruner import models

    return {k: int(v) for k, v in models.widths_of(model).items()}


def _share(compact, full):
    from keras_autopruner.metrics import count_flops

    return count_flops(compact).total / count_flops(full).total


def masks_at_widths(gates, scores, widths):
    """`{gate name: bool mask}` keeping the `widths[layer]` best-scoring
    channels of each gate's layer (ties: the lower index)."""
    masks = {}
    for gate in gates:
        layer = gate.name.removesuffix("_gate")
        if layer not in widths:
            raise ValueError(
                f"The source run has no width for {layer!r}; it gated "
                f"{sorted(widths)}.")
        k = int(widths[layer])
        if not 1 <= k <= gate.units:
            raise ValueError(f"{layer!r} has {gate.units} channels; cannot "
                             f"keep {k}.")
        best = np.argsort(-np.asarray(scores[gate.name], np.float64),
                          kind="stable")
        mask = np.zeros(gate.units, bool)
        mask[best[:k]] = True
        masks[gate.name] = mask
    return masks


def _scores(name, gated, seed):
    """Channel scores of criterion `name` for every gate of `gated`
    (`"autopruner"`: the gates' moving logits). `bn` ranks a layer with no
    batch norm behind it by L1: only the order within a layer counts
    where the widths are given."""
    from keras_autopruner import importance
    from keras_autopruner.gate import gates_of
    from keras_autopruner.study.methods import without_batch_norm

    gates = gates_of(gated)
    if name == "random":
        return importance.RandomImportance(seed=seed).scores(gated, gates)
    if name != "bn":
        return importance.get(name).scores(gated, gates)
    plain = set(without_batch_norm(gated, [g.name.removesuffix("_gate")
                                           for g in gates]))
    by_l1 = [g for g in gates if g.name.removesuffix("_gate") in plain]
    scores = importance.get("l1").scores(gated, by_l1)
    scores.update(importance.get("bn").scores(
        gated, [g for g in gates if g not in by_l1]))
    return scores


def _at_widths(study, rate, seed, name, widths):
    """A one-shot cut by criterion `name` that keeps `widths[layer]`
    channels of each gated layer (its best by the criterion), trained as
    the criteria are."""
    import keras_autopruner as kap
    from keras_autopruner.gate import gates_of

    full = study.full_model(seed)
    gated = kap.add_gates(full, target_rate=rate)
    gates = gates_of(gated)
    masks = masks_at_widths(gates, _scores(name, gated, seed), widths)
    compact = kap.strip(full, keep={g.name.removesuffix("_gate"): masks[g.name]
                                    for g in gates})
    return _train_cut(study, compact, full, seed)


def _fast_then(study, rate, seed, fast_epochs, widths=None,
               criterion="autopruner"):
    """`fast`'s pushing for `ceil(fast_epochs)` epochs, then the pushed
    network cut by `criterion` to `widths[layer]` channels a layer (None:
    the widths the gates chose), stripped and trained for the epochs
    left, the last `finetune_epochs` at the low rate."""
    import keras_autopruner as kap
    from keras_autopruner.gate import gates_of

    c = study.config
    push = int(np.ceil(fast_epochs))
    if push >= c.prune_epochs:
        raise ValueError(
            f"The fast_* cuts push for {push} epochs and need some of the "
            f"{c.prune_epochs} prune epochs left to train the cut network.")
    full = study.full_model(seed)
    gated = kap.add_gates(full, target_rate=rate)
    study.compile(gated)
    callback = kap.AutoPrunerCallback(
        prune_steps=max(1, int(fast_epochs * study.steps_per_epoch())))
    study.fit(gated, push, seed, "ablation", callbacks=[callback])
    _, chosen = study.evaluate(gated)
    gates = gates_of(gated)
    if widths is None:
        widths = {g.name.removesuffix("_gate"): int(np.sum(g.mask()))
                  for g in gates}
    masks = masks_at_widths(gates, _scores(criterion, gated, seed), widths)
    for gate in gates:
        gate.set_mask(masks[gate.name])
    compact = kap.strip(gated)
    study.compile(compact)
    _, cut = study.evaluate(compact)
    left = c.prune_epochs - push + c.finetune_epochs
    study.train(compact, left, seed, "ablation", c.finetune_epochs)
    _, acc = study.evaluate(compact)
    return {"cut": cut, "chosen": chosen, "accuracy": acc,
            "epochs": push + left, "steps": callback.result["steps"],
            "reason": callback.result["reason"],
            "share": _share(compact, full), "widths": _widths(compact)}


class Distilled:
    """`study` with every fit on soft targets from the full model of `seed`.

    Stands in for the study in `_autopruner` and `_criterion`: `compile`,
    `fit`, `train` and `evaluate` are its own, the rest is the study's.
    Needs the study's training data as arrays.

    Args:
        study: a prepared `Study` whose full model of `seed` has run.
        seed: whose trained full model is the teacher.
        alpha: weight of the teacher's soft targets (0: the labels).
        temperature: soft targets are `p ** (1 / temperature)`,
            renormalised.
    """

    def __init__(self, study, seed, alpha, temperature):
        self._study = study
        if callable(study.data._train):
            raise ValueError(
                "The `_kd` variants need the study's training data as "
                "arrays (the demo's Fashion-MNIST); this study reads a "
                "tf.data pipeline.")
        x, y = study.data._train
        teacher = study.full_model(seed)
        p = teacher.predict(x, batch_size=512, verbose=0).astype("float64")
        soft = np.power(np.maximum(p, 1e-12), 1.0 / temperature)
        soft /= soft.sum(axis=1, keepdims=True)
        onehot = np.eye(p.shape[1])[np.asarray(y).astype(int)]
        self._train = (x, ((1 - alpha) * onehot + alpha * soft)
                       .astype("float32"))

    def __getattr__(self, name):
        return getattr(self._study, name)

    def compile(self, model):
        import keras

        model.compile(
            optimizer=keras.optimizers.Adam(self.config.learning_rate),
            loss="categorical_crossentropy",
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=self.config.jit_compile)

    def fit(self, model, *args, **kwargs):
        data = self._study.data
        labels = data._train
        data._train = self._train
        try:
            return self._study.fit(model, *args, **kwargs)
        finally:
            data._train = labels

    def train(self, model, epochs, seed, prefix, low_epochs=0):
        self.compile(model)
        return self.fit(model, epochs, seed, prefix,
                        low_from=epochs - low_epochs if low_epochs else None)

    def evaluate(self, model):
        x, y = self._study.data._test
        p = model.predict(x, batch_size=self.config.batch_size, verbose=0)
        return float("nan"), float(np.mean(np.argmax(p, 1) == y))


def run_variant(study, name, rate, seed, fast_epochs, kd=(0.5, 2.0),
                results=None):
    """Run variant `name`; `results` (by `"name|rate|seed"`) holds the
    runs whose widths an `_at_` variant takes."""
    if name.endswith(KD):
        return run_variant(Distilled(study, seed, *kd), name[:-len(KD)],
                           rate, seed, fast_epochs, results=results)
    steps = study.steps_per_epoch()
    c = study.config
    if name in CRITERIA:
        return _criterion(study, rate, seed, name)
    if name not in VARIANTS and name not in CONTROLLER_VARIANTS:
        raise ValueError(f"Unknown variant {name!r}; choose from "
                         f"{VARIANTS + tuple(CONTROLLER_VARIANTS)}.")
    if AT in name:
        criterion, source = name.split(AT)
        run = (results or {}).get(f"{source}|{rate}|{seed}")
        if run is None or "widths" not in run:
            raise ValueError(
                f"{name} takes the widths of the {source!r} run at rate "
                f"{rate}, seed {seed}, and there is none (with widths) in "
                f"the results: list {source!r} before {name!r}.")
        if criterion == "fast":
            return _fast_then(study, rate, seed, fast_epochs, run["widths"])
        return _at_widths(study, rate, seed, criterion, run["widths"])
    if name.startswith(THEN):
        return _fast_then(study, rate, seed, fast_epochs,
                          criterion=name[len(THEN):].replace(
                              "ap", "autopruner"))
    fast = name.startswith("fast")
    prune_steps = (max(1, int(fast_epochs * steps)) if fast
                   else c.prune_epochs * steps)
    return _autopruner(study, rate, seed, prune_steps,
                       train_on=name != "stop" and name != "stop_bn",
                       bn=name.endswith("_bn"),
                       controller=CONTROLLER_VARIANTS.get(name),
                       exclude=cheap_layers if name == "fast_cheap_whole"
                       else None)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import keras

    from keras_autopruner import study as study_lib

    args = flags.FLAGS
    config = study_lib.make_config(
        "demo", methods=("full",), rates=[float(r) for r in args.rates],
        seeds=[int(s) for s in args.seeds],
        train_examples=args.train_examples, full_epochs=args.full_epochs,
        prune_epochs=args.prune_epochs, finetune_epochs=args.finetune_epochs)
    study = study_lib.Study(config, args.out, verbose=0, export=False)
    study.prepare()  # creates the folders, refuses other settings
    for seed in config.seeds:
        study.run_method("full", None, seed)
    results = {}
    path = os.path.join(args.out, "ablation.json")
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    for seed in config.seeds:
        for rate in config.rates:
            for name in args.variants:
                key = f"{name}|{rate}|{seed}"
                if key in results:
                    continue
                keras.utils.set_random_seed(1000 * seed + 7)
                t = time.time()
                r = run_variant(study, name, rate, seed, args.fast_epochs,
                                kd=(args.kd_alpha, args.kd_temperature),
                                results=results)
                r["s"] = round(time.time() - t, 1)
                results[key] = r
                print(key, json.dumps(r), flush=True)
                with open(path + ".tmp", "w") as f:
                    json.dump(results, f, indent=1)
                os.replace(path + ".tmp", path)
                keras.backend.clear_session()
    print("\n| rate | variant | after choice/cut % | final % (per seed) "
          "| mean % | minus l1 (pt, per seed) |")
    print("|---:|---|---:|---|---:|---|")
    for rate in config.rates:
        ref = {s: results.get(f"l1|{rate}|{s}") for s in config.seeds}
        for name in args.variants:
            rows = [results.get(f"{name}|{rate}|{s}") for s in config.seeds]
            if any(r is None for r in rows):
                continue
            accs = [r["accuracy"] for r in rows]
            diffs = [100 * (r["accuracy"] - ref[s]["accuracy"])
                     for r, s in zip(rows, config.seeds) if ref[s]]
            print(f"| {rate} | {name} | "
                  f"{100 * np.mean([r['cut'] for r in rows]):.2f} | "
                  + ", ".join(f"{100 * a:.2f}" for a in accs)
                  + f" | {100 * np.mean(accs):.2f} | "
                  + ", ".join(f"{d:+.2f}" for d in diffs) + " |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
