"""The methods the study compares, one function each, and `RUNNERS`.

Each method is a function `(study, rate, seed, prefix) -> result dict`
that trains one model through the public helpers of `Study` and returns at
least `accuracy`, `loss`, `params`, `flops`, `widths`, `epochs` and
`own_epochs`. `RUNNERS` maps each name of `METHODS` to its function; the
study runs them in that order.

- `full`: the unpruned network, trained for `full_epochs`;
- `autopruner`: the trained full network of the same seed, gated, pruned
  with `AutoPrunerCallback` for at most `prune_epochs` (as a step budget:
  the run always ends with the exact choice, and the epoch in which it is
  made is finished with the chosen network), stripped, then fine-tuned for
  `finetune_epochs` at `finetune_learning_rate`;
- `scratch`: the architecture AutoPruner selected (same per-layer widths),
  from a fresh random init;
- `uniform`: every prunable layer narrowed by one factor, chosen by
  bisection so that the MACs (global MAC budget) or else the parameter
  count match AutoPruner's model;
- `magnitude`: unstructured magnitude pruning with
  tensorflow-model-optimization on the `tf_keras` twin of the full network,
  to the same number of non-zero parameters.

`scratch` and `uniform` train for as many epochs as went into AutoPruner's
model in total (full training + pruning epochs actually used +
fine-tuning), and their last `finetune_epochs` run at
`finetune_learning_rate`, as AutoPruner's fine-tuning does: no method wins
by its schedule. `magnitude` starts from the trained full network, like
AutoPruner, and prunes and fine-tunes for as many epochs as AutoPruner did.
"""

import numpy as np

from keras_autopruner.study.config import log, run_key


def run_full(study, rate, seed, prefix):
    """The full network, trained from scratch for `full_epochs`."""
    c = study.config
    model, history = study.train_new(study.default_widths, c.full_epochs,
                                     seed, prefix)
    return study.finish(model, run_key("full", None, seed), history,
                        epochs=c.full_epochs, own_epochs=c.full_epochs)


def run_autopruner(study, rate, seed, prefix):
    """Gate the full model of `seed`, prune to `rate`, strip, fine-tune."""
    import keras_autopruner as kap
    from keras_autopruner.metrics import count_flops

    c = study.config
    full = study.full_model(seed)
    gated = kap.add_gates(full, target_rate=rate)
    study.compile(gated)
    steps = study.steps_per_epoch()
    callback = kap.AutoPrunerCallback(
        schedule=c.schedule,
        objective=kap.PruningObjective(c.objective, weighting=c.weighting),
        prune_steps=c.prune_epochs * steps)
    log(f"{prefix}: pruning (at most {c.prune_epochs} epochs, "
        f"{c.prune_epochs * steps} steps)...")
    # The epoch in which the choice is made counts whole, so its last
    # steps train the chosen network at the training rate (the gates
    # hold the exact masks) instead of being thrown away.
    prune_history = study.fit(
        gated, c.prune_epochs, seed, prefix, lines=True,
        callbacks=[callback, _stop_at_epoch_end(callback)])
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
    mac_share = count_flops(compact).total / count_flops(full).total
    log(f"{prefix}: {done['reason']} after {done['steps']} steps; "
        f"stripped to {mac_share:.3f} of the MACs (kept "
        f"{kept['overall']:.2f} of filters), accuracy before "
        f"fine-tuning {stripped_acc:.4f}; fine-tuning "
        f"{c.finetune_epochs} epochs...")
    ft_history = study.fit(compact, c.finetune_epochs, seed, prefix,
                           low_from=0)
    key = run_key("autopruner", rate, seed)
    return study.finish(
        compact, key, {"prune": prune_history, "finetune": ft_history},
        epochs=c.full_epochs + prune_epochs + c.finetune_epochs,
        own_epochs=prune_epochs + c.finetune_epochs,
        prune_epochs=prune_epochs, prune_steps=int(done["steps"]),
        converged=done["reason"] == "done",
        kept_overall=kept["overall"], mac_share=mac_share,
        at_min_units=done["at_min_units"],
        changed_by_choice=done["changed_by_choice"],
        full_widths={k: study.default_widths[k]
                     for k in study.default_widths},
        accuracy_gated_hard=hard_acc, accuracy_stripped=stripped_acc,
        notes=notes)


def _stop_at_epoch_end(pruner):
    """A callback that ends `fit` at the end of the epoch in which `pruner`
    (an AutoPrunerCallback) made its final choice."""
    import keras

    class StopAtEpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if pruner.done:
                self.model.stop_training = True

    return StopAtEpochEnd()


def run_scratch(study, rate, seed, prefix):
    """AutoPruner's widths from a fresh init, for AutoPruner's epochs."""
    ap = study.autopruner_run(rate, seed)
    model, history = study.train_new(ap["widths"], ap["epochs"], seed,
                                     prefix, study.config.finetune_epochs)
    return study.finish(model, run_key("scratch", rate, seed), history,
                        epochs=ap["epochs"], own_epochs=ap["epochs"])


def run_uniform(study, rate, seed, prefix):
    """Every layer narrowed by one factor to AutoPruner's MACs or params."""
    from keras_autopruner import models

    ap = study.autopruner_run(rate, seed)
    measure = study.uniform_measure
    factor, widths, cost = models.match_cost(
        study.builder, ap[measure], measure, widths=study.default_widths,
        **study.build_kwargs())
    log(f"{prefix}: width factor {factor:.3f} gives {cost:,} {measure} "
        f"(AutoPruner: {ap[measure]:,})")
    model, history = study.train_new(widths, ap["epochs"], seed, prefix,
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
    "scratch": run_scratch,
    "uniform": run_uniform,
    "magnitude": run_magnitude,
}
