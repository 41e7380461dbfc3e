"""AutoPrunerCallback: drives lambda, mu and alpha during `model.fit`."""

import warnings

import keras
import numpy as np

from keras_autopruner import schedules as S
from keras_autopruner.gate import gates_of, set_hard_masks
from keras_autopruner.objective import (PruningObjective, binary_share,
                                        kept_fraction)


@keras.saving.register_keras_serializable(package="keras_autopruner")
class AutoPrunerCallback(keras.callbacks.Callback):
    """Runs AutoPruner's training loop around `fit`, in optimizer steps.

    The model's loss becomes `L_cla + mu * lambda * L_pru`:
    - `L_pru` comes from the objective: the per-layer budget, or a global
      budget of MACs, parameters or filters (`PruningObjective`);
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
    mid-run resumes where it was, with a new callback.

    It runs on the TensorFlow, JAX and PyTorch backends, inside
    `tf.distribute.MirroredStrategy` and under `keras.distribution`
    (`DataParallel`, on one host or several); every process of a
    multi-host job runs its own copy and they make the same choice.

    Args:
        schedule: `"controller"` (default), `"step"`, or a `Schedule`.
        objective: `"layer"` (default), `"global"` (MACs), or a
            `PruningObjective`.
        alpha: an `AlphaSchedule` (default `AlphaSchedule()`).
        control_every: optimizer steps between control updates.
        warmup_steps: optimizer steps without pruning pressure first (for
            gates added to a network that is not trained yet).
        prune_steps: the most pushing steps; then the exact choice is made
            whatever the codes are. None: no step budget.
        tolerance: accepted distance of the kept fraction (or cost share)
            from the target while pushing; relative distance of the final
            global choice.
        binary_tolerance: a code within this of 0 or 1 counts as binary.
        binary_target: share of binary codes at which pruning is done.
        stop_when_done: end training once the choice is made.
        finish_on_train_end: make the exact choice when `fit` returns with
            pruning unfinished. Pass False to prune across several `fit`
            calls.
        per_gate_logs: add `kept_<gate name>` to the logs.
        hard_validation: validate with hard masks (default True).

    Example:

        gated = add_gates(model, target_rate=0.25)   # keep 25% of the MACs
        gated.compile("adam", "sparse_categorical_crossentropy")
        gated.fit(x, y, epochs=4, callbacks=[AutoPrunerCallback(
            objective="global", stop_when_done=True)])
        compact = strip(gated)
    """

    def __init__(self, schedule="controller", objective="layer", alpha=None,
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
        for name, value in (("control_every", control_every),
                            ("warmup_steps", warmup_steps)):
            if int(value) != value or value < (1 if name[0] == "c" else 0):
                raise ValueError(
                    f"{name} must be a whole number of steps "
                    f"({'>= 1' if name[0] == 'c' else '>= 0'}), got {value!r}.")
        if prune_steps is not None and (
                int(prune_steps) != prune_steps or prune_steps < 1):
            raise ValueError(
                f"prune_steps must be a positive number of steps or None, "
                f"got {prune_steps!r}.")
        if not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}.")
        if not 0 < binary_target <= 1:
            raise ValueError(
                f"binary_target must be in (0, 1], got {binary_target}.")
        self.control_every = int(control_every)
        self.warmup_steps = int(warmup_steps)
        self.prune_steps = None if prune_steps is None else int(prune_steps)
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

    # -- the state kept in the gates -------------------------------------
    def _read_state(self):
        g = self.gates[0]

        def read(v):
            return float(keras.ops.convert_to_numpy(v))

        self._steps = int(round(read(g.step)))
        self.state = S.PruneState(
            phase=int(round(read(g.phase))), lam=read(g.lam),
            alpha=read(g.alpha), tolerance=self.tolerance,
            interval=self.control_every, ref_miss=read(g.ref_miss))
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
        self._read_state()
        if self.state.phase == S.PUSHING:
            self._push()

    def on_train_batch_end(self, batch, logs=None):
        st = self.state
        if st.phase == S.DONE:
            return
        self._steps += 1
        if st.phase == S.WARMUP:
            if self._steps >= self._push_start:
                self._sync()
                self._begin_pushing(logs or {})
            return
        st.step = self._steps - self._push_start
        st.budget_used = (st.step / self.prune_steps if self.prune_steps
                          else 0.0)
        final = bool(self.prune_steps) and st.step >= self.prune_steps
        if final or st.step % self.control_every == 0:
            self._sync()
            self._control(final=final)

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
            warnings.warn(
                f"AutoPrunerCallback: pruning ended ({reason}) with soft "
                f"codes: {st.binary:.1%} binary, below binary_target "
                f"{self.binary_target:.0%}. The exact choice was made from "
                "the gates' scores; the network had not yet adapted to it, "
                "so fine-tune after strip (or give it more steps).",
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
        logs = logs if logs is not None else {}
        st = self.state
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
        if st.phase != S.DONE:
            self._write_state()

    def on_train_end(self, logs=None):
        if self.state is not None and self.state.phase != S.DONE and (
                self.finish_on_train_end):
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
