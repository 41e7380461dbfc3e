"""AutoPrunerCallback: drives lambda, mu and alpha during `model.fit`."""

import numbers
import warnings

import keras
import numpy as np

from keras_autopruner import schedules as S
from keras_autopruner.checks import NonFiniteError, describe, nonfinite_weights
from keras_autopruner.gate import gates_of, set_hard_masks
from keras_autopruner.objective import (PruningObjective, binary_share,
                                        kept_fraction)

# The fewest control updates a step budget gets (see `control_every`).
MIN_CONTROLS = 30


@keras.saving.register_keras_serializable(package="keras_autopruner")
class AutoPrunerCallback(keras.callbacks.Callback):
    """Runs AutoPruner's training loop around `fit`, in optimizer steps.

    The model's loss becomes `L_cla + mu * lambda * L_pru`:
    - `L_pru` comes from the objective. By default the global budget of
      MACs (`PruningObjective("global", weighting="flops")`): `add_gates(
      model, 0.3)` then means "keep 30% of the MACs", and the layers keep
      different fractions, the cheapest to lose going first; this is what
      users budget. `objective="layer"` is the published method (each
      layer keeps `round(r * units)` filters): use it to reproduce the
      paper or when every layer must keep the same rate;
    - `mu` is `L_cla / max(L_pru, tolerance**2)` measured on the batch
      where pushing starts, so lambda = 1 weighs the two terms equally;
    - `lambda` follows the schedule: the adaptive `LambdaController`
      (default) or the published `StepLambda`;
    - `alpha` sharpens the codes until they are binary (`AlphaSchedule`).

    Everything counts optimizer steps: pushing starts after `warmup_steps`
    (0 by default, for a model trained before gating: pushing starts after
    the first batch, whose loss sets mu), and lambda, alpha and the global
    budget's per-gate terms are updated every `control_every` steps. So a
    run behaves the same whatever the epoch length.

    The run ends with an exact choice: when at least `binary_target` of the
    codes are binary, when `prune_steps` pushing steps are spent, or (with
    `finish_on_train_end`) when `fit` returns, the objective chooses the
    kept channels by gate score so that the budget holds exactly (per layer
    `round(r * units)`, or the global cost share within `tolerance` of the
    target and never above it), never fewer than `min_units` per layer.
    The gates then hold that 0/1 choice, in training too: fitting on is
    fine-tuning the network `strip` builds, and `strip` needs no `force`.
    Ending with soft codes warns.

    Each epoch adds to the logs: `kept` (hard kept fraction of filters),
    `cost_share` (global budget: kept share of MACs/params/filters),
    `pruning_loss`, `lambda`, `mu`, `alpha`, `binary` and `prune_step`, and
    per gate `kept_<gate>` when `per_gate_logs=True`. Validation runs with
    hard 0/1 masks, so `val_*` metrics are those of the network `strip`
    would build. The state (phase, step, lambda, mu, alpha, the controller's
    last miss) lives in the gates' weights, so a model saved and loaded
    mid-run resumes where it was, with a new callback. It is read at the
    first training batch of each `fit`, after `keras.callbacks.
    BackupAndRestore` has restored the weights, and the step count is kept
    current in the gates at every epoch end, before any callback saves: a
    run killed at any step and restarted under `BackupAndRestore` (in
    either callback order) continues exactly as if never stopped.

    Safety: a `fit` that trains no step (empty data) leaves the gates as
    they were, and warns; the exact choice is only made after at least one
    pushed step. At every control step the loss and every trainable weight
    are checked: on a NaN or an Inf training stops with `NonFiniteError`
    (a ValueError) naming the step and the layer, and the gates are put
    back to their last finite state.

    It runs on the TensorFlow, JAX and PyTorch backends, inside
    `tf.distribute.MirroredStrategy` and under `keras.distribution`
    (`DataParallel`, on one host or several); every process of a
    multi-host job runs its own copy and they make the same choice.

    Args:
        schedule: `"controller"` (default), `"step"`, or a `Schedule`.
        objective: `"global"` (default: the MAC budget,
            `PruningObjective("global", weighting="flops")`), `"layer"`
            (the published per-layer budget), or a `PruningObjective`.
        alpha: an `AlphaSchedule` (default `AlphaSchedule()`).
        control_every: optimizer steps between control updates. With a
            step budget the interval is shortened to give the budget at
            least `MIN_CONTROLS` control updates (`prune_steps // 30`
            steps apart, at least 1): the controller's pace is set per
            control update, and a short budget must still get enough of
            them to reach the target and binary codes.
        warmup_steps: optimizer steps without pruning pressure first (for
            gates added to a network that is not trained yet).
        prune_steps: the most pushing steps; then the exact choice is made
            whatever the codes are. None: no step budget. A budget also
            sets the pace: the control interval (see `control_every`) and
            how fast alpha sharpens (`AlphaSchedule.finish_by`).
        tolerance: accepted distance of the kept fraction (or cost share)
            from the target while pushing; relative distance of the final
            global choice.
        binary_tolerance: a code within this of 0 or 1 counts as binary;
            in (0, 0.5).
        binary_target: share of binary codes at which pruning is done.
        stop_when_done: end training once the choice is made.
        finish_on_train_end: make the exact choice when `fit` returns with
            pruning unfinished (default True: a `fit` that returns ends the
            run). Pass False to prune across several `fit` calls (chunked
            fitting); the run then ends when the codes are binary or
            `prune_steps` are spent.
        per_gate_logs: add `kept_<gate name>` to the logs.
        hard_validation: validate with hard masks (default True).

    Example:

        gated = add_gates(model, target_rate=0.25)   # keep 25% of the MACs
        gated.compile("adam", "sparse_categorical_crossentropy")
        # Push for at most one of the 5 epochs, then the chosen network
        # trains on (the gates hold the choice): the procedure the study
        # measured at or above one-shot cuts at equal epochs.
        gated.fit(x, y, epochs=5, callbacks=[
            AutoPrunerCallback(prune_steps=steps_per_epoch),
            keras.callbacks.BackupAndRestore("backup")])  # survives a kill
        compact = strip(gated)

        # The published per-layer budget: every layer keeps 25%.
        AutoPrunerCallback(objective="layer")
    """

    def __init__(self, schedule="controller", objective="global", alpha=None,
                 control_every=10, warmup_steps=0, prune_steps=None,
                 tolerance=0.02, binary_tolerance=0.01, binary_target=0.99,
                 stop_when_done=False, finish_on_train_end=True,
                 per_gate_logs=False, hard_validation=True):
        super().__init__()
        self.schedule = S.lambda_schedule(schedule)
        if isinstance(objective, str):
            objective = PruningObjective(budget=objective)
        if not isinstance(objective, PruningObjective):
            raise TypeError(
                "objective must be 'layer', 'global' or a PruningObjective; "
                f"got {objective!r}."
            )
        self.objective = objective
        self.alpha_schedule = alpha or S.AlphaSchedule()
        if not isinstance(self.alpha_schedule, S.AlphaSchedule):
            raise TypeError(
                f"alpha must be an AlphaSchedule, got {alpha!r}.")
        _steps_arg("control_every", control_every, 1)
        _steps_arg("warmup_steps", warmup_steps, 0)
        if prune_steps is not None:
            _steps_arg("prune_steps", prune_steps, 1, none_ok=True)
        _range_arg("tolerance", tolerance, 0, 1, "(0, 1)",
                   "e.g. 0.02 for 2%")
        _range_arg("binary_tolerance", binary_tolerance, 0, 0.5, "(0, 0.5)",
                   "e.g. 0.01: a code below 0.01 or above 0.99 is binary")
        _range_arg("binary_target", binary_target, 0, 1, "(0, 1]",
                   "e.g. 0.99", hi_closed=True)
        self.control_every = int(control_every)
        self.warmup_steps = int(warmup_steps)
        self.prune_steps = None if prune_steps is None else int(prune_steps)
        self.interval = self.control_every
        if self.prune_steps:
            self.interval = max(1, min(self.control_every,
                                       self.prune_steps // MIN_CONTROLS))
        self.tolerance = float(tolerance)
        self.binary_tolerance = float(binary_tolerance)
        self.binary_target = float(binary_target)
        self.stop_when_done = bool(stop_when_done)
        self.finish_on_train_end = bool(finish_on_train_end)
        self.per_gate_logs = bool(per_gate_logs)
        self.hard_validation = bool(hard_validation)
        self.state = None
        self.gates = []
        self.result = None
        self._started = False
        self._fit_steps = 0
        self._finite = None

    # -- the state kept in the gates -------------------------------------
    def _read_state(self):
        g = self.gates[0]

        def read(v):
            return float(v.numpy())

        self._steps = int(round(read(g.step)))
        self.state = S.PruneState(
            phase=int(round(read(g.phase))), lam=read(g.lam),
            alpha=read(g.alpha), tolerance=self.tolerance,
            interval=self.interval, ref_miss=read(g.ref_miss),
            budget_steps=self.prune_steps or 0)
        self._mu = read(g.mu)

    def _write_state(self):
        st = self.state
        for g in self.gates:
            g.phase.assign(float(st.phase))
            g.lam.assign(st.lam)
            g.mu.assign(self._mu)
            g.alpha.assign(st.alpha)
            g.step.assign(float(self._steps))
            g.ref_miss.assign(st.ref_miss)

    def _push(self, codes=None):
        """Set each gate's loss term for the current mu * lambda."""
        pushing = self.state.phase == S.PUSHING
        self.objective.assign(
            self.gates, self._mu * self.state.lam if pushing else 0.0, codes)

    @property
    def _push_start(self):
        # The first batch is never pushed: its loss, without the pruning
        # term, sets mu.
        return max(self.warmup_steps, 1)

    # -- Keras hooks -----------------------------------------------------
    def on_train_begin(self, logs=None):
        self.gates = gates_of(self.model)
        if not self.gates:
            raise ValueError(
                "AutoPrunerCallback: the model has no AutoPrunerGate. Call "
                "keras_autopruner.add_gates(model, target_rate) and train the "
                "model it returns."
            )
        done = [g.name for g in self.gates
                if float(keras.ops.convert_to_numpy(g.phase)) > 1.5]
        if done and len(done) < len(self.gates):
            # The callback drives all gates as one run (it reads the first
            # gate's phase): a mix would either undo the fixed masks or
            # leave the other gates undriven.
            raise ValueError(
                "AutoPrunerCallback: the masks of some gates are fixed "
                f"(set_mask: {', '.join(done)}) and the others are not. "
                "Call set_mask on every gate (then fit fine-tunes with "
                "those masks), or gate only the layers to learn: "
                "add_gates(model, rate, exclude=[...]).")
        self.objective.bind(self.model)
        if self.objective.budget == "global":
            # Refuse a budget below the min_units floor now, not at the end.
            self.objective.choose(self.gates, self.tolerance)
        # The run's state is read at the first batch, not here: callbacks
        # listed after this one (BackupAndRestore) restore the weights in
        # their own on_train_begin.
        self._started = False
        self._fit_steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        if not self._started:
            self._started = True
            self._sync()
            self._read_state()
            # The pushing terms (coef, center) live in the gates with the
            # rest, saved and restored with them: they are not recomputed
            # here, so a resumed run trains on the terms the uninterrupted
            # one had.
            self._finite = self._snapshot()

    def on_train_batch_end(self, batch, logs=None):
        st = self.state
        if st is None:
            return
        self._fit_steps += 1
        if st.phase == S.DONE:
            return
        self._steps += 1
        if st.phase == S.WARMUP:
            if self._steps >= self._push_start:
                self._sync()
                self._check_finite(logs)
                self._begin_pushing(logs or {})
                self._finite = self._snapshot()
            elif self._epoch_may_end(batch):
                self._write_step()
            return
        st.step = self._steps - self._push_start
        st.budget_used = (st.step / self.prune_steps if self.prune_steps
                          else 0.0)
        final = bool(self.prune_steps) and st.step >= self.prune_steps
        if final or st.step % self.interval == 0:
            self._sync()
            self._check_finite(logs)
            self._control(final=final)
            self._finite = self._snapshot()
        elif self._epoch_may_end(batch):
            self._write_step()

    def _epoch_may_end(self, batch):
        """Whether this batch may be the epoch's last.

        Keras saves (`BackupAndRestore`, `ModelCheckpoint`) in
        `on_epoch_end`, maybe before this callback's own `on_epoch_end`
        runs, so the step count must be in the gates by then. It is written
        at the epoch's last batch when Keras knows the epoch length, and at
        every batch when it does not.
        """
        steps = (self.params or {}).get("steps")
        return not steps or batch + 1 >= steps

    def _write_step(self):
        self._sync()
        for g in self.gates:
            g.step.assign(float(self._steps))

    # -- non-finite values -------------------------------------------------
    def _snapshot(self):
        """The gates' variables as NumPy copies: their last finite state."""
        # `Variable.numpy()` copies; it is about half the cost of going
        # through `ops.convert_to_tensor` per variable, at every control step.
        return [[v.numpy() for v in g.weights] for g in self.gates]

    def _check_finite(self, logs):
        """Stop the run on a NaN or Inf loss or weight, naming it.

        The gates are put back to their last finite state (as the previous
        control step left them) before raising, so that the model's pruning state
        stays usable and saved checkpoints are not overwritten with NaN
        gates by a later save.
        """
        loss = (logs or {}).get("loss")
        bad_loss = loss is not None and not np.isfinite(float(loss))
        bad = nonfinite_weights(self.model, trainable_only=True)
        if not bad and not bad_loss:
            return
        for g, values in zip(self.gates, self._finite or []):
            for v, value in zip(g.weights, values):
                v.assign(value)
        self.model.stop_training = True
        what = (f"the weights of {describe(bad)} are" if bad
                else "the loss is")
        raise NonFiniteError(
            f"AutoPrunerCallback: at optimizer step {self._steps} of the "
            f"pruning run (loss {loss}), {what} NaN or Inf; training "
            "stopped. The "
            "gates were put back to their last finite state (the previous "
            "control step), but the other weights diverged: restore the "
            "model from a checkpoint (BackupAndRestore or ModelCheckpoint), "
            "then lower the learning rate or clip gradients (e.g. "
            "clipnorm=1.0) and fit again."
        )

    def _sync(self):
        """Make the gates' variables hold the training step's values.

        On JAX, `fit` keeps the model state outside the variables between
        steps and only writes it back when a callback reads `self.model`;
        it then reloads the variables before the next step, so the values
        written here are the ones the next step trains with. Other backends
        train the variables in place and need nothing.
        """
        self.model  # noqa: B018 (the property syncs on JAX)

    def _begin_pushing(self, logs):
        st = self.state
        codes = [g.scores() for g in self.gates]
        l_pru = self.objective.value(self.gates, codes)
        l_cla = float(logs.get("loss", 1.0))
        if not np.isfinite(l_cla):
            l_cla = 1.0
        self._mu = float(np.clip(l_cla / max(l_pru, self.tolerance ** 2),
                                 1e-6, 1e6))
        st.phase = S.PUSHING
        st.lam = self.schedule.initial()
        st.alpha = self.alpha_schedule.initial()
        st.ref_miss = -1.0
        self._write_state()
        self._push(codes)

    def _control(self, final=False):
        st = self.state
        codes = [g.scores() for g in self.gates]
        st.miss = self.objective.miss(self.gates)
        st.soft_miss = self.objective.soft_miss(self.gates, codes)
        st.binary = binary_share(self.gates, self.binary_tolerance)
        if final or st.binary >= self.binary_target:
            self._finish("budget of steps spent" if final and
                         st.binary < self.binary_target else "done")
            return
        allocating = (self.objective.budget == "global"
                      and self.objective.allocated(self.gates) is None)
        if allocating and (
                st.soft_miss <= self.alpha_schedule.release_or(self.tolerance)
                or st.budget_used >= 0.4
                or st.lam >= getattr(self.schedule, "max_lambda", np.inf)):
            # The layers' shares are decided: each gate now settles on its
            # own, while alpha sharpens.
            self.objective.allocate(self.gates, codes)
            st.ref_miss = -1.0
            st.miss = self.objective.miss(self.gates)
            st.soft_miss = self.objective.soft_miss(self.gates, codes)
            allocating = False
        st.lam = float(self.schedule.update(st))
        if not allocating:
            st.alpha = float(self.alpha_schedule.update(st, self.schedule))
        self._write_state()
        self._push(codes)

    def _finish(self, reason):
        """Apply the exact choice and fix it in the gates."""
        st = self.state
        st.binary = binary_share(self.gates, self.binary_tolerance)
        hard = [g.mask() for g in self.gates]
        masks = self.objective.choose(self.gates, self.tolerance)
        if st.binary < self.binary_target:
            hint = (" A fit that returns ends the run "
                    "(finish_on_train_end=True); to prune across several fit "
                    "calls, pass AutoPrunerCallback(finish_on_train_end="
                    "False) and fit again to go on." if reason == "fit ended"
                    else "")
            warnings.warn(
                f"AutoPrunerCallback: pruning ended ({reason}) with soft "
                f"codes: {st.binary:.1%} binary, below binary_target "
                f"{self.binary_target:.0%}. The exact choice was made from "
                "the gates' scores; the network had not yet adapted to it, "
                "so fine-tune after strip (or give it more steps)." + hint,
                stacklevel=2)
        floors = [g.name for g, m in zip(self.gates, masks)
                  if m.sum() <= max(g.min_units, 1) < g.units]
        for g, m in zip(self.gates, masks):
            g.set_mask(m)
        st.phase = S.DONE
        self._write_state()
        self.result = {
            "reason": reason,
            "steps": st.step,
            "binary": st.binary,
            # How far the gates' own hard masks were from the exact choice.
            "changed_by_choice": int(sum(np.sum(h != m)
                                         for h, m in zip(hard, masks))),
            "kept": {g.name: int(m.sum()) for g, m in zip(self.gates, masks)},
            "units": {g.name: int(g.units) for g in self.gates},
            "at_min_units": floors,
        }
        if self.objective.budget == "global":
            self.result["cost_share_before_choice"] = self.objective.share(
                self.gates, hard)
            self.result["cost_share"] = self.objective.share(self.gates)
        if self.stop_when_done:
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        if self.hard_validation and self.gates:
            set_hard_masks(self.model, True)

    def on_test_end(self, logs=None):
        if self.hard_validation and self.gates and not self.done:
            set_hard_masks(self.model, False)

    def on_epoch_end(self, epoch, logs=None):
        st = self.state
        if st is None or not self._started:
            return  # No batch yet: nothing to report, nothing to write.
        logs = logs if logs is not None else {}
        st.binary = binary_share(self.gates, self.binary_tolerance)
        logs.update(kept=kept_fraction(self.gates)["overall"],
                    pruning_loss=self.objective.value(self.gates),
                    mu=self._mu, alpha=st.alpha, binary=st.binary,
                    prune_step=float(max(0, self._steps - self._push_start)))
        logs["lambda"] = st.lam
        if self.objective.budget == "global":
            logs["cost_share"] = self.objective.share(self.gates)
        if self.per_gate_logs:
            for g in self.gates:
                logs[f"kept_{g.name}"] = float(g.mask().mean())
        if st.phase != S.DONE and self._fit_steps:
            self._write_state()

    def on_train_end(self, logs=None):
        if self._fit_steps == 0 and not self.done:
            # Empty data, or initial_epoch >= epochs: Keras may still call
            # on_train_batch_begin, never on_train_batch_end.
            warnings.warn(
                "AutoPrunerCallback: fit trained no step (is the data empty?"
                "); the gates are left as they were and no choice was made.",
                stacklevel=2)
            return
        if self.state is None or self.state.phase == S.DONE or (
                not self.finish_on_train_end):
            return
        pushed = self._steps - self._push_start
        if self.state.phase != S.PUSHING or pushed < 1:
            warnings.warn(
                f"AutoPrunerCallback: fit ended after {self._steps} step(s),"
                " before any step was trained with the pruning term (the "
                f"first {self._push_start} set mu or warm up); no choice "
                "was made from untrained gates and the run is not finished. "
                "Fit again (with more data or epochs) to prune.",
                stacklevel=2)
            return
        self._sync()
        self._check_finite(None)
        self._finish("fit ended")

    @property
    def done(self):
        return self.state is not None and self.state.phase == S.DONE

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "objective": self.objective.get_config(),
            "alpha": self.alpha_schedule.get_config(),
            "control_every": self.control_every,
            "warmup_steps": self.warmup_steps,
            "prune_steps": self.prune_steps,
            "tolerance": self.tolerance,
            "binary_tolerance": self.binary_tolerance,
            "binary_target": self.binary_target,
            "stop_when_done": self.stop_when_done,
            "finish_on_train_end": self.finish_on_train_end,
            "per_gate_logs": self.per_gate_logs,
            "hard_validation": self.hard_validation,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(
            schedule=keras.saving.deserialize_keras_object(
                config.pop("schedule")),
            objective=PruningObjective(**config.pop("objective")),
            alpha=S.AlphaSchedule(**config.pop("alpha")), **config)


def _steps_arg(name, value, low, none_ok=False):
    """Refuse a step count that is not a whole number >= `low`."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or int(value) != value or value < low):
        raise ValueError(
            f"{name} must be a whole number of optimizer steps (>= {low})"
            f"{' or None' if none_ok else ''}, got {value!r}.")


def _range_arg(name, value, low, high, shown, example, hi_closed=False):
    """Refuse a tolerance or share that is not a number in its range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        ok = low < value < high or (hi_closed and value == high)
    if not ok:
        raise ValueError(
            f"{name} must be a number in {shown} ({example}), got {value!r}.")
