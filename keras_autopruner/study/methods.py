"""The methods the study compares, one function each, and `RUNNERS`.

Each method is a function `(study, rate, seed, prefix) -> result dict`
that trains one model through the public helpers of `Study` and returns at
least `accuracy`, `loss`, `params`, `flops`, `widths`, `epochs` and
`own_epochs`. `RUNNERS` maps each name of `METHODS` to its function; the
study runs them in that order. Every method but `magnitude` is built
through the package for any architecture (`Study.new_model`, `kap.prune`,
`strip(model, keep=...)`, `keras.models.clone_model`), never from a
builder's widths.

- `full`: the unpruned network, trained for `full_epochs`;
- `autopruner`: the trained full network of the same seed, gated, pruned
  with `AutoPrunerCallback` for at most `prune_epochs` (as a step budget:
  the run always ends with the exact choice, and the epoch in which it is
  made is finished with the chosen network), stripped, then fine-tuned for
  `finetune_epochs` at `finetune_learning_rate`;
- `full_equal`: the unpruned network trained from scratch for AutoPruner's
  total epochs, its last `finetune_epochs` at `finetune_learning_rate`:
  the fair upper reference;
- `l1`, `l2`, `bn`, `taylor`, `random`: the trained full network of the
  same seed cut once by that criterion (`kap.prune`, the study's objective
  and AutoPruner's rate), then fine-tuned for AutoPruner's epochs after
  full training (pruning epochs used + fine-tuning), the last
  `finetune_epochs` at `finetune_learning_rate`;
- `l1_iterative`: the same cut by L1 norm in `ITERATIVE_ROUNDS` rounds
  (`kap.prune_iteratively`, down to AutoPruner's rate on a geometric
  path), AutoPruner's epochs at the training rate shared out between the
  rounds and after the last, then its fine-tuning epochs;
- `scratch`: AutoPruner's stripped network re-initialised and trained
  from scratch;
- `uniform`: one width factor for every gated layer (the first
  `round(f * units)` channels kept, `strip(model, keep=...)`), `f` found
  by bisection so that the MACs (MAC budget) or else the parameters match
  AutoPruner's model, re-initialised and trained from scratch;
- `magnitude`: unstructured magnitude pruning with
  tensorflow-model-optimization on the `tf_keras` twin of the full network,
  to the same number of non-zero parameters (builders only).

`scratch`, `uniform` and `full_equal` train for as many epochs as went
into AutoPruner's model in total (full training + pruning epochs actually
used + fine-tuning); every method's last `finetune_epochs` run at
`finetune_learning_rate`, as AutoPruner's fine-tuning does: no method wins
by its epochs or its schedule. Methods that cut a trained network record
the accuracy right after the cut (`accuracy_cut`; AutoPruner's is right
after strip).
"""

import shutil
import zlib

import numpy as np

from keras_autopruner.study.config import CRITERIA, log, run_key


def run_full(study, rate, seed, prefix):
    """The full network, trained from scratch for `full_epochs`."""
    c = study.config
    model = study.new_model()
    history = study.train(model, c.full_epochs, seed, prefix)
    return study.finish(model, run_key("full", None, seed), history,
                        epochs=c.full_epochs, own_epochs=c.full_epochs)


def run_full_equal(study, rate, seed, prefix):
    """The full network from scratch for AutoPruner's total epochs.

    AutoPruner's total is the same at most rates (pruning takes all of
    `prune_epochs`); a run of another rate of the same seed and the same
    epochs is then reused instead of trained again. Its random seed
    depends on the seed and the epochs only, so reused or trained, the
    run is the same.
    """
    import keras

    c = study.config
    ap = study.autopruner_run(rate, seed)
    epochs = int(ap["epochs"])
    key = run_key("full_equal", rate, seed)
    for other in c.rates:
        done = study.load_run(run_key("full_equal", other, seed))
        if done is not None and done["epochs"] == epochs:
            log(f"{prefix}: same epochs ({epochs}) as {done['key']}; "
                "reusing its model")
            shutil.copyfile(study.model_file(done),
                            study.path("models", f"{key}.keras"))
            result = {k: v for k, v in done.items()
                      if k not in ("key", "rate", "train_s")}
            result["notes"] = [f"same training as {done['key']}"]
            return result
    keras.utils.set_random_seed(
        (1000003 * int(seed) + zlib.crc32(f"full_equal_e{epochs}".encode()))
        % (2 ** 31))
    model = study.new_model()
    history = study.train(model, epochs, seed, prefix, c.finetune_epochs)
    return study.finish(model, key, history, epochs=epochs,
                        own_epochs=epochs)


def _criterion_runner(name):
    def run(study, rate, seed, prefix):
        import keras_autopruner as kap

        c = study.config
        ap = study.autopruner_run(rate, seed)
        full = study.full_model(seed)
        extra, notes = {}, []
        if name == "bn":
            # |gamma| cannot rank a layer with no batch norm behind it:
            # such layers stay whole and the others meet the budget.
            bare = without_batch_norm(full, study.prunable_units(full))
            if bare:
                extra["exclude"] = bare
                notes.append(f"bn: {', '.join(bare)} kept whole (no "
                             "batch norm behind them)")
        compact = kap.prune(
            full, importance=name, target_rate=rate,
            objective=kap.PruningObjective(c.objective, weighting=c.weighting),
            data=study.sample_batches() if name == "taylor" else None,
            **extra)
        study.compile(compact)
        _, cut_acc = study.evaluate(compact)
        epochs = int(ap["own_epochs"])
        log(f"{prefix}: cut by {name}, accuracy before fine-tuning "
            f"{cut_acc:.4f}; fine-tuning {epochs} epochs (AutoPruner's after "
            "full training)...")
        history = study.train(compact, epochs, seed, prefix,
                              min(c.finetune_epochs, epochs))
        return study.finish(
            compact, run_key(name, rate, seed), history,
            epochs=c.full_epochs + epochs, own_epochs=epochs,
            accuracy_cut=cut_acc,
            notes=notes + list(compact.pruning_report.notes))

    run.__name__ = f"run_{name}"
    run.__doc__ = (f"The trained full model cut by the {name!r} criterion "
                   "at AutoPruner's budget, fine-tuned for AutoPruner's "
                   "epochs after full training.")
    return run


# Cuts of `l1_iterative`.
ITERATIVE_ROUNDS = 3


def run_l1_iterative(study, rate, seed, prefix):
    """The trained full model cut by L1 norm in `ITERATIVE_ROUNDS`
    rounds, trained at the training rate between them; the epochs, and
    their learning-rate shape, are those of a one-shot cut.

    Of AutoPruner's epochs after full training, the last `finetune_epochs`
    run at the fine-tuning rate after the last cut; the others, at the
    training rate, are shared out evenly over the gaps after each cut
    (earlier gaps get the remainder).
    """
    import keras_autopruner as kap

    c = study.config
    ap = study.autopruner_run(rate, seed)
    full = study.full_model(seed)
    epochs = int(ap["own_epochs"])
    low = min(c.finetune_epochs, epochs)
    rounds = ITERATIVE_ROUNDS
    gaps = [len(part) for part in np.array_split(
        np.arange(epochs - low), rounds)]

    def fine_tune(model, k):
        study.compile(model)
        log(f"{prefix}: round {k}, training {gaps[k - 1]} epochs...")
        study.fit(model, gaps[k - 1], seed, prefix)

    compact = kap.prune_iteratively(
        full, "l1", rate,
        objective=kap.PruningObjective(c.objective, weighting=c.weighting),
        rounds=rounds, fine_tune=fine_tune)
    study.compile(compact)
    _, cut_acc = study.evaluate(compact)
    last = gaps[-1] + low
    log(f"{prefix}: last cut, accuracy {cut_acc:.4f}; training {last} "
        f"epochs ({low} at the fine-tuning rate)...")
    history = study.train(compact, last, seed, prefix, low)
    return study.finish(
        compact, run_key("l1_iterative", rate, seed), history,
        epochs=c.full_epochs + epochs, own_epochs=epochs,
        accuracy_cut=cut_acc, rounds=rounds, epochs_between=gaps,
        notes=list(compact.pruning_report.notes))


def run_autopruner(study, rate, seed, prefix, train_on=True, fold=False):
    """Gate the full model of `seed`, prune to `rate`, train the chosen
    network on, strip, fine-tune.

    The pruning phase is `prune_epochs` long at the training rate. The
    callback pushes for at most `prune_share` of its steps and makes the
    exact choice when the codes are binary (or the step budget is spent);
    the rest of the phase trains the chosen network at the training rate
    (the gates hold the 0/1 masks), then `strip`, then `finetune_epochs`
    at the fine-tuning rate. So AutoPruner spends exactly the epochs, and
    the learning-rate shape, a criterion's cut is fine-tuned with.

    With `train_on=False` (the method `autopruner_stop`, the study's
    procedure before this was measured, kept for comparison) fitting
    stops at the end of the epoch in which the choice is made, and the
    pruning phase is as long as that.

    With `fold=True` (the method `autopruner_folded`) the gates are
    folded into the layers behind them where that is cheaper at the
    study's batch size (`add_gates(..., fold=True)`); the procedure is
    otherwise the same, so the two methods' paired difference shows what
    folding does to the choice.
    """
    import keras_autopruner as kap
    from keras_autopruner import folding
    from keras_autopruner.metrics import count_flops

    c = study.config
    full = study.full_model(seed)
    gated = kap.add_gates(full, target_rate=rate, fold=fold,
                          fold_batch_size=c.batch_size)
    folded_gates = len(folding.folded_layers(gated))
    study.compile(gated)
    steps = study.steps_per_epoch()
    phase = c.prune_epochs * steps
    prune_steps = (max(1, int(round(c.prune_share * phase))) if train_on
                   else phase)
    callback = kap.AutoPrunerCallback(
        schedule=c.schedule,
        objective=kap.PruningObjective(c.objective, weighting=c.weighting),
        prune_steps=prune_steps)
    log(f"{prefix}: pruning (at most {prune_steps} of the {phase} steps of "
        f"{c.prune_epochs} epochs"
        + (", the rest training the chosen network)..." if train_on
           else "; stopping at the end of the choice's epoch)..."))
    extra = [] if train_on else [_stop_at_epoch_end(callback)]
    prune_history = study.fit(
        gated, c.prune_epochs, seed, prefix, lines=True,
        callbacks=[callback] + extra)
    prune_epochs = len(next(iter(prune_history.values()), []))
    done = callback.result
    kept = kap.kept_fraction(gated)
    # After the exact choice the gated model computes what strip
    # builds; its accuracy is the stripped model's (checked below).
    _, hard_acc = study.evaluate(gated)
    compact = kap.strip(gated)
    notes = list(compact.pruning_report.notes)
    if done["reason"] != "done":
        notes.append(f"pruning ended by {done['reason']} after "
                     f"{done['steps']} steps with "
                     f"{done['binary']:.1%} binary codes")
    study.compile(compact)
    _, stripped_acc = study.evaluate(compact)
    # For the report's "after the cut" column, like the criteria's.
    cut_acc = stripped_acc
    mac_share = count_flops(compact).total / count_flops(full).total
    trained_on = max(0, prune_epochs * steps - int(done["steps"]) - 1)
    log(f"{prefix}: {done['reason']} after {done['steps']} steps, then "
        f"{trained_on} steps on the chosen network; stripped to "
        f"{mac_share:.3f} of the MACs (kept {kept['overall']:.2f} of "
        f"filters), accuracy before fine-tuning {stripped_acc:.4f}; "
        f"fine-tuning {c.finetune_epochs} epochs...")
    ft_history = study.fit(compact, c.finetune_epochs, seed, prefix,
                           low_from=0)
    method = ("autopruner_folded" if fold else
              "autopruner" if train_on else "autopruner_stop")
    key = run_key(method, rate, seed)
    return study.finish(
        compact, key, {"prune": prune_history, "finetune": ft_history},
        epochs=c.full_epochs + prune_epochs + c.finetune_epochs,
        own_epochs=prune_epochs + c.finetune_epochs,
        prune_epochs=prune_epochs, prune_steps=int(done["steps"]),
        steps_after_choice=trained_on,
        converged=done["reason"] == "done",
        kept_overall=kept["overall"], mac_share=mac_share,
        at_min_units=done["at_min_units"],
        changed_by_choice=done["changed_by_choice"],
        full_widths={k: study.default_widths[k]
                     for k in study.default_widths},
        accuracy_gated_hard=hard_acc, accuracy_stripped=stripped_acc,
        accuracy_cut=cut_acc, folded_gates=folded_gates, notes=notes)


def run_autopruner_stop(study, rate, seed, prefix):
    """AutoPruner as the study ran it before issue 17's ablation: fitting
    stops at the end of the epoch of the choice, then strip and the
    fine-tuning epochs; fewer epochs in all when the choice comes early."""
    return run_autopruner(study, rate, seed, prefix, train_on=False)


def run_autopruner_folded(study, rate, seed, prefix):
    """AutoPruner with folded gates (`add_gates(..., fold=True)`): the
    same procedure as `autopruner`, gates folded where cheaper."""
    return run_autopruner(study, rate, seed, prefix, fold=True)


def _stop_at_epoch_end(pruner):
    """A callback that ends `fit` at the end of the epoch in which `pruner`
    (an AutoPrunerCallback) made its final choice."""
    import keras

    class StopAtEpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if pruner.done:
                self.model.stop_training = True

    return StopAtEpochEnd()


def without_batch_norm(model, layers):
    """The names in `layers` whose output feeds no BatchNormalization."""
    import keras

    from keras_autopruner import tracing

    trace = tracing.trace(model)
    fed = {trace.producer[id(t)].operation.name
           for call in trace.nodes
           if isinstance(call.operation, keras.layers.BatchNormalization)
           for t in call.input_tensors if id(t) in trace.producer}
    return [name for name in layers if name not in fed]


def run_scratch(study, rate, seed, prefix):
    """AutoPruner's stripped network re-initialised, for AutoPruner's
    epochs."""
    import keras

    ap = study.autopruner_run(rate, seed)
    compact = keras.saving.load_model(study.model_file(ap), compile=False)
    model = keras.models.clone_model(compact)
    history = study.train(model, ap["epochs"], seed, prefix,
                          study.config.finetune_epochs)
    return study.finish(model, run_key("scratch", rate, seed), history,
                        epochs=ap["epochs"], own_epochs=ap["epochs"])


def uniform_masks(units, factor):
    """`{layer: mask}` keeping the first `round(factor * units)` (at least
    1) channels of each layer of `units` (`{layer: channel count}`)."""
    return {layer: np.arange(n) < max(1, int(round(factor * n)))
            for layer, n in units.items()}


def match_uniform(model, target_share, weighting="flops", steps=40):
    """The one width factor whose uniform masks keep `target_share` of
    `model`'s cost (`"flops"` or `"params"`), by bisection.

    The cost is `kap.cost_share` of the masks (no strip per step); it grows
    with the factor in steps (rounding), so the result is the closest
    share reached.

    Returns:
        `(factor, masks, share)`.
    """
    import keras_autopruner as kap
    from keras_autopruner.gate import gates_of

    gated = kap.add_gates(model, 1.0)
    units = {g.name.removesuffix("_gate"): int(g.units)
             for g in gates_of(gated)}
    if not units:
        raise ValueError(
            f"uniform: {model.name!r} has no layer add_gates can gate, so "
            "there is no width to scale. Leave 'uniform' out of --methods.")
    lo, hi, best = 0.0, 1.0, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        masks = uniform_masks(units, mid)
        share = kap.cost_share(gated, weighting, masks={
            f"{layer}_gate": m for layer, m in masks.items()})
        if best is None or abs(share - target_share) < abs(
                best[2] - target_share):
            best = (mid, masks, share)
        if abs(share - target_share) <= 1e-3 * target_share:
            break
        lo, hi = (mid, hi) if share < target_share else (lo, mid)
    return best


def run_uniform(study, rate, seed, prefix):
    """Every gated layer narrowed by one factor to AutoPruner's MACs or
    params, re-initialised, for AutoPruner's epochs."""
    import keras

    import keras_autopruner as kap
    from keras_autopruner.metrics import count_flops, count_params

    ap = study.autopruner_run(rate, seed)
    full = study.full_model(seed)
    measure = study.uniform_measure
    counter = {"flops": lambda m: count_flops(m).total,
               "params": count_params}[measure]
    target = ap[measure] / counter(full)
    factor, masks, share = match_uniform(full, target, measure)
    log(f"{prefix}: width factor {factor:.3f} keeps {share:.4f} of the "
        f"{measure} (AutoPruner: {target:.4f})")
    cut = kap.strip(full, keep=masks)
    model = keras.models.clone_model(cut)
    history = study.train(model, ap["epochs"], seed, prefix,
                          study.config.finetune_epochs)
    return study.finish(model, run_key("uniform", rate, seed), history,
                        epochs=ap["epochs"], own_epochs=ap["epochs"],
                        factor=factor)


def run_magnitude(study, rate, seed, prefix):
    """Magnitude pruning with tfmot on the `tf_keras` twin of the full model.

    The twin receives the trained full model's weights; its kernels are
    pruned (unstructured, polynomial schedule over AutoPruner's pruning
    epochs, then held while it fine-tunes) to leave as many non-zero
    parameters as AutoPruner's compact model has. The zeros are stored and
    multiplied like any other weight, so dense execution saves no FLOPs and
    no time: the reported FLOPs are the full model's.
    """
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as err:
        raise ImportError(
            "The magnitude baseline needs tensorflow-model-optimization and "
            "tf_keras (pip install -e '.[baselines]'), or leave 'magnitude' "
            "out of --methods."
        ) from err
    from keras_autopruner import models
    from keras_autopruner.metrics import count_params

    if study.builder is None:
        raise ValueError(
            f"The magnitude baseline needs the tf_keras twin of a builder; "
            f"model {study.model_spec!r} is not one. Leave 'magnitude' out "
            "of --methods.")
    ap = study.autopruner_run(rate, seed)
    full = study.full_model(seed)
    twin = models.with_widths(study.builder, study.default_widths)(
        keras_module=tf_keras, **study.build_kwargs())
    weights = full.get_weights()
    if [w.shape for w in weights] != [w.shape for w in twin.get_weights()]:
        raise ValueError(
            f"The tf_keras twin of {study.config.model} does not hold its "
            "weights in the Keras 3 model's order; the magnitude baseline "
            "cannot copy them."
        )
    twin.set_weights(weights)
    full_params = count_params(full)
    kernels = sum(int(np.prod(layer.kernel.shape)) for layer in twin.layers
                  if isinstance(layer, (tf_keras.layers.Conv2D,
                                        tf_keras.layers.Dense)))
    sparsity = (full_params - ap["params"]) / kernels
    sparsity = float(np.clip(sparsity, 0.0, 0.98))
    steps = study.steps_per_epoch()
    prune_epochs = max(1, ap["prune_epochs"])
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
        end_step=max(1, steps * prune_epochs), frequency=max(1, steps // 4))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        twin, pruning_schedule=schedule)
    pruned.compile(
        optimizer=tf_keras.optimizers.Adam(study.config.learning_rate),
        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    epochs = prune_epochs + study.config.finetune_epochs
    log(f"{prefix}: pruning {sparsity:.1%} of the kernel weights over "
        f"{prune_epochs} epochs, {epochs} epochs in all...")
    args, kwargs = study.data.fit_args(seed, study.config.batch_size)
    history = pruned.fit(*args, epochs=epochs, verbose=0,
                         callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
                         **kwargs)
    final = tfmot.sparsity.keras.strip_pruning(pruned)
    final.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    args, kwargs = study.data.eval_args(study.config.batch_size)
    loss, acc = final.evaluate(*args, verbose=0, **kwargs)[:2]
    key = run_key("magnitude", rate, seed)
    final.save(study.path("models", f"{key}.h5"))
    nonzero = int(sum(np.count_nonzero(w) for w in final.get_weights()))
    described = study.describe(full)
    return {
        "accuracy": float(acc), "loss": float(loss),
        "params": nonzero, "flops": described["flops"],
        "widths": described["widths"], "params_stored": int(full_params),
        "sparsity": sparsity,
        "epochs": study.config.full_epochs + epochs, "own_epochs": epochs,
        "history": {k: [float(v) for v in vals]
                    for k, vals in history.history.items()},
        "notes": ["unstructured: params counts non-zero weights; FLOPs "
                  "are those of dense execution (no reduction)"],
    }


# What each method name runs, in the order the study runs them.
RUNNERS = {
    "full": run_full,
    "autopruner": run_autopruner,
    "full_equal": run_full_equal,
    "autopruner_stop": run_autopruner_stop,
    "autopruner_folded": run_autopruner_folded,
    **{name: _criterion_runner(name) for name in CRITERIA},
    "l1_iterative": run_l1_iterative,
    "scratch": run_scratch,
    "uniform": run_uniform,
    "magnitude": run_magnitude,
}
