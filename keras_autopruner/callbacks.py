"""AutoPrunerCallback: drives lambda, mu and alpha during `model.fit`."""

import keras
import numpy as np

from keras_autopruner import schedules as S
from keras_autopruner.gate import gates_of, set_hard_masks
from keras_autopruner.objective import (PruningObjective, binary_share,
                                        kept_fraction)


@keras.saving.register_keras_serializable(package="keras_autopruner")
class AutoPrunerCallback(keras.callbacks.Callback):
    """Runs AutoPruner's training loop around `fit`.

    The model's loss becomes `L_cla + mu * lambda * L_pru`:
    - `L_pru` comes from the objective (`"layer"` or `"global"` budget);
    - `mu` is a running estimate of `L_cla / L_pru`, updated at each epoch
      end outside the gradient, so that lambda weighs terms of equal size;
    - `lambda` follows the schedule: the adaptive `LambdaController`
      (default) or the published `StepLambda` (x10 every 20 epochs);
    - `alpha` sharpens the codes until they are binary (`AlphaSchedule`).

    Each epoch adds to the logs: `kept` (hard kept fraction of filters),
    `pruning_loss`, `lambda`, `mu`, `alpha` and `binary` (share of codes
    within `binary_tolerance` of 0 or 1), and per gate `kept_<gate>` when
    `per_gate_logs=True`. Validation inside `fit` runs with hard 0/1 masks,
    so `val_*` metrics are those of the network `strip` would build.

    The run is done when the kept fraction is within `tolerance` of the
    target and at least `binary_target` of the codes are binary; then
    lambda and alpha are frozen and, with `stop_when_done=True`, training
    stops. The state lives in the gates' weights, so a model saved and
    loaded mid-run resumes with a new callback.

    Args:
        schedule: `"controller"` (default), `"step"`, or a schedule object.
        objective: `"layer"` (default), `"global"`, or a `PruningObjective`.
        alpha: an `AlphaSchedule` (default `AlphaSchedule()`).
        tolerance: accepted distance between kept fraction and target.
        binary_tolerance: a code within this of 0 or 1 counts as binary.
        binary_target: share of binary codes needed to call the run done.
        mu_momentum: momentum of mu's running average.
        stop_when_done: end training once done.
        per_gate_logs: add `kept_<gate name>` to the logs.
        hard_validation: validate with hard masks (default True).
        update_every: batches between refreshes of the global budget's
            per-gate terms (the layer budget needs none).

    Example:

    >>> gated = add_gates(model, target_rate=0.5)
    >>> gated.compile("adam", "sparse_categorical_crossentropy")
    >>> gated.fit(x, y, epochs=30, callbacks=[AutoPrunerCallback(
    ...     stop_when_done=True)])
    """

    def __init__(self, schedule="controller", objective="layer", alpha=None,
                 tolerance=0.02, binary_tolerance=0.01, binary_target=0.99,
                 mu_momentum=0.5, stop_when_done=False, per_gate_logs=False,
                 hard_validation=True, update_every=1):
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
        if not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}.")
        self.tolerance = float(tolerance)
        self.binary_tolerance = float(binary_tolerance)
        self.binary_target = float(binary_target)
        self.mu_momentum = float(mu_momentum)
        self.stop_when_done = bool(stop_when_done)
        self.per_gate_logs = bool(per_gate_logs)
        self.hard_validation = bool(hard_validation)
        self.update_every = max(1, int(update_every))
        self.state = None
        self.gates = []

    # -- the state kept in the gates -------------------------------------
    def _read_state(self):
        g = self.gates[0]
        self.state = S.PruneState(
            phase=int(round(float(g.phase.numpy()))),
            lam=float(g.lam.numpy()),
            alpha=float(g.alpha.numpy()),
            tolerance=self.tolerance,
        )
        self._mu = float(g.mu.numpy())
        self._mu_known = self.state.phase > S.WARMUP or self._mu != 1.0

    def _write_state(self):
        for g in self.gates:
            g.phase.assign(float(self.state.phase))
            g.lam.assign(self.state.lam)
            g.mu.assign(self._mu)
            g.alpha.assign(self.state.alpha)

    def _push(self):
        """Set each gate's loss term for the current mu * lambda."""
        weight = self._mu * self.state.lam if self.state.phase == S.PUSHING else 0.0
        self.objective.assign(self.gates, weight)

    # -- Keras hooks -----------------------------------------------------
    def on_train_begin(self, logs=None):
        self.gates = gates_of(self.model)
        if not self.gates:
            raise ValueError(
                "AutoPrunerCallback: the model has no AutoPrunerGate. Call "
                "keras_autopruner.add_gates(model, target_rate) and train the "
                "model it returns."
            )
        self._read_state()
        if self.state.phase == S.WARMUP or self.state.lam == 0.0:
            self.state.lam = self.schedule.begin(self.state)
        self._write_state()
        self._penalties = []
        self._push()

    def on_epoch_begin(self, epoch, logs=None):
        self._penalties = []
        self._batch = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batch += 1
        if self.state.phase != S.PUSHING or self._batch % self.update_every:
            return
        # The penalty this step added, read back from the gates: the epoch's
        # mean of it separates L_cla from the logged total loss for mu.
        self._penalties.append(self._applied_penalty())
        if self.objective.budget == "global":
            self._push()

    def on_test_begin(self, logs=None):
        if self.hard_validation and self.gates:
            set_hard_masks(self.model, True)

    def on_test_end(self, logs=None):
        if self.hard_validation and self.gates:
            set_hard_masks(self.model, False)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        st = self.state
        l_pru = self.objective.value(self.gates)
        penalty = float(np.mean(self._penalties)) if self._penalties else 0.0
        l_cla = float(logs.get("loss", np.nan)) - penalty
        if np.isfinite(l_cla):
            # Below the tolerance the two terms need no balancing: flooring
            # L_pru there keeps mu (and the loss) from exploding as L_pru -> 0.
            ratio = l_cla / max(l_pru, self.tolerance ** 2)
            ratio = float(np.clip(ratio, 1e-6, 1e6))
            if not self._mu_known:
                self._mu, self._mu_known = ratio, True
            else:
                m = self.mu_momentum
                self._mu = m * self._mu + (1 - m) * ratio
            st.task_losses.append(l_cla)
        st.miss = self.objective.miss(self.gates)
        st.soft_miss = self.objective.soft_miss(self.gates)
        st.choice_misses.append(st.choice_miss)
        st.binary = binary_share(self.gates, self.binary_tolerance)
        done = (st.phase == S.PUSHING and st.miss <= self.tolerance
                and st.binary >= self.binary_target)
        kept = kept_fraction(self.gates)["overall"]

        logs.update(kept=kept, pruning_loss=l_pru, mu=self._mu,
                    alpha=st.alpha, binary=st.binary)
        logs["lambda"] = st.lam
        if self.per_gate_logs:
            for g in self.gates:
                logs[f"kept_{g.name}"] = float(g.mask().mean())

        if done:
            st.phase = S.DONE
            if self.stop_when_done:
                self.model.stop_training = True
        elif st.phase != S.DONE:
            st.lam = float(self.schedule.update(epoch, st))
            st.alpha = float(self.alpha_schedule.update(epoch, st))
        self._write_state()
        self._push()

    def _applied_penalty(self):
        return float(sum(
            float(g.coef.numpy()) * (float(np.mean(g.code.numpy()))
                                     - float(g.center.numpy())) ** 2
            for g in self.gates))

    @property
    def done(self):
        return self.state is not None and self.state.phase == S.DONE

    def get_config(self):
        return {
            "schedule": {"class": type(self.schedule).__name__,
                         "config": self.schedule.get_config()},
            "objective": self.objective.get_config(),
            "alpha": self.alpha_schedule.get_config(),
            "tolerance": self.tolerance,
            "binary_tolerance": self.binary_tolerance,
            "binary_target": self.binary_target,
            "mu_momentum": self.mu_momentum,
            "stop_when_done": self.stop_when_done,
            "per_gate_logs": self.per_gate_logs,
            "hard_validation": self.hard_validation,
            "update_every": self.update_every,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        sched = config.pop("schedule")
        sched_cls = {"StepLambda": S.StepLambda,
                     "LambdaController": S.LambdaController}[sched["class"]]
        return cls(schedule=sched_cls(**sched["config"]),
                   objective=PruningObjective(**config.pop("objective")),
                   alpha=S.AlphaSchedule(**config.pop("alpha")), **config)
