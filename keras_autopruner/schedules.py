"""Schedules for lambda (the weight of the pruning term) and alpha (sharpness).

Every schedule counts optimizer steps, not epochs, so a run behaves the
same at 20 or 5,000 steps an epoch. `AutoPrunerCallback` calls them every
`control_every` steps of the pushing phase with a `PruneState`, the
callback's view of the run at that moment.

Phases: 0 = warm-up (no pruning pressure), 1 = pushing, 2 = done (the
exact choice is made and fixed).
"""

import dataclasses
import math

import keras

WARMUP, PUSHING, DONE = 0, 1, 2


@dataclasses.dataclass
class PruneState:
    """What the callback knows at a control step.

    Attributes:
        phase: `WARMUP`, `PUSHING` or `DONE`.
        lam: the current lambda.
        alpha: the current sigmoid scale.
        step: optimizer steps since pushing started.
        interval: optimizer steps between two control steps.
        miss: hard (0/1) kept fraction or cost share against the target.
        soft_miss: the same for the soft codes: what lambda moves.
        binary: share of codes within the binary tolerance of 0 or 1.
        tolerance: the miss that counts as on target.
        ref_miss: the choice miss at the previous control step (-1: none).
        budget_used: share of the callback's `prune_steps` spent (0 when
            there is no step budget).
        budget_steps: the callback's `prune_steps` (0: no step budget).
    """

    phase: int = WARMUP
    lam: float = 0.0
    alpha: float = 1.0
    step: int = 0
    interval: int = 1
    miss: float = 1.0
    soft_miss: float = 1.0
    binary: float = 0.0
    tolerance: float = 0.02
    ref_miss: float = -1.0
    budget_used: float = 0.0
    budget_steps: int = 0

    @property
    def choice_miss(self):
        """How far the gates are from having chosen the target.

        Lambda moves the soft means and alpha turns soft codes into hard
        ones, and either miss can close first: soft means on target while
        codes near 0.5 round the wrong way, or a hard count on target while
        kept codes sit at 0.8. Once either is close, lambda has done its
        part and sharpening finishes the job.
        """
        return min(self.miss, self.soft_miss)


class Schedule:
    """Base class of lambda and alpha schedules.

    Subclasses implement `initial()` (the value when pushing starts) and
    `update(state)` (the value after a control step), and list their
    constructor arguments in `get_config()`.
    """

    def initial(self):
        raise NotImplementedError

    def update(self, state):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_autopruner")
class StepLambda(Schedule):
    """The published schedule: lambda = start * factor**(step // every).

    `every` counts optimizer steps of the pushing phase. To multiply lambda
    by 10 every 20 epochs, from 1 up to 1e7 (the published VGG16/CUB
    setting), use `StepLambda(every=20 * steps_per_epoch)`.

    The step count lives in the gates (with lambda itself), so a model
    saved mid-run and fitted again, with or without `initial_epoch`, goes on
    with the lambda the uninterrupted run would have had.

    Args:
        start: lambda when pushing starts.
        factor: multiplier applied every `every` steps.
        every: optimizer steps between multiplications.
        stop: the largest lambda.
    """

    def __init__(self, start=1.0, factor=10.0, every=2000, stop=1e7):
        if start <= 0 or factor < 1 or every < 1 or stop < start:
            raise ValueError(
                "StepLambda needs start > 0, factor >= 1, every >= 1 and "
                f"stop >= start; got start={start}, factor={factor}, "
                f"every={every}, stop={stop}."
            )
        self.start, self.factor = float(start), float(factor)
        self.every, self.stop = int(every), float(stop)

    def initial(self):
        return self.start

    def value(self, step):
        k = step // self.every
        if self.factor > 1:  # past `stop` the power would only overflow
            k = min(k, math.ceil(math.log(self.stop / self.start)
                                 / math.log(self.factor)))
        return min(self.stop, self.start * self.factor ** k)

    def update(self, state):
        return self.value(state.step)

    def get_config(self):
        return {"start": self.start, "factor": self.factor,
                "every": self.every, "stop": self.stop}


@keras.saving.register_keras_serializable(package="keras_autopruner")
class LambdaController(Schedule):
    """Adaptive lambda: raised while the gates stall short of the target.

    At each control step the choice miss (`PruneState.choice_miss`) is
    compared with the one of the previous control step. Within the
    callback's `tolerance` lambda is held. Otherwise, when the miss shrank
    by less than `min_progress` (a fraction of itself) since then, lambda
    is multiplied by `growth`, up to `max_lambda`. A miss closing at a good
    pace leaves lambda alone, so lambda grows only as far as the task loss
    makes it necessary. The callback sets `mu` so that lambda = 1 weighs
    the two terms equally when pushing starts.

    Args:
        start: lambda when pushing starts.
        growth: multiplier applied at a control step that saw too little
            progress.
        max_lambda: the largest lambda.
        min_progress: fraction of the miss that must close between two
            control steps for lambda to be left as it is.
    """

    def __init__(self, start=1.0, growth=1.5, max_lambda=1e4,
                 min_progress=0.05):
        if start <= 0 or growth < 1 or max_lambda < start:
            raise ValueError(
                "LambdaController needs start > 0, growth >= 1 and "
                f"max_lambda >= start; got {start}, {growth}, {max_lambda}."
            )
        if not 0 <= min_progress < 1:
            raise ValueError(
                f"min_progress must be in [0, 1), got {min_progress}.")
        self.start, self.growth = float(start), float(growth)
        self.max_lambda = float(max_lambda)
        self.min_progress = float(min_progress)

    def initial(self):
        return self.start

    def update(self, state):
        miss, before = state.choice_miss, state.ref_miss
        state.ref_miss = miss
        if miss <= state.tolerance or before < 0:
            return state.lam
        if before - miss < self.min_progress * before:
            return min(self.max_lambda, state.lam * self.growth)
        return state.lam

    def get_config(self):
        return {"start": self.start, "growth": self.growth,
                "max_lambda": self.max_lambda,
                "min_progress": self.min_progress}


@keras.saving.register_keras_serializable(package="keras_autopruner")
class AlphaSchedule(Schedule):
    """Raises alpha, the sigmoid scale, until the codes are binary.

    Alpha is held while the gates are still choosing and then doubled every
    `double_every` optimizer steps. Sharpening starts at the first of:
    the choice miss is under `release`; lambda is at the controller's
    largest value; half of the callback's step budget (`prune_steps`) is
    spent. When the miss grows past `release` again alpha is held until
    the pruning term has brought it back: sharpening codes whose count is
    off freezes the wrong count.
    Sharpening earlier saturates the sigmoid at "keep" before the pruning
    term has acted: in float32 `sigmoid(30) == 1.0` exactly, its gradient is
    exactly zero, and no lambda can prune any more.

    `release=None` sharpens from the first pushing step, whatever the gates
    have chosen, as the published VGG16/CUB setting does.

    With a step budget, doubling every `double_every` steps may not reach
    binary codes before the budget runs out, and the exact choice is then
    made from soft codes the network never trained under. So once released
    the doubling is quickened where needed to reach `max_alpha` when
    `finish_by` of the budget is spent; the steps after that let the codes
    settle and the callback see them binary. A budget long enough for
    `double_every` leaves the pace as it is.

    Args:
        start: initial alpha.
        double_every: optimizer steps per doubling once released (the
            slowest pace).
        release: the choice miss under which sharpening starts, or None.
        max_alpha: the largest alpha.
        finish_by: share of the callback's `prune_steps` by which alpha
            reaches `max_alpha`, in (0, 1]; ignored without a step budget.
    """

    def __init__(self, start=1.0, double_every=12, release=0.05,
                 max_alpha=256.0, finish_by=0.85):
        if start <= 0 or double_every <= 0 or max_alpha < start or (
                release is not None and release < 0):
            raise ValueError(
                "AlphaSchedule needs start > 0, double_every > 0, "
                "release >= 0 and max_alpha >= start; got "
                f"{start}, {double_every}, {release}, {max_alpha}."
            )
        if isinstance(finish_by, bool) or not isinstance(
                finish_by, (int, float)) or not 0 < finish_by <= 1:
            raise ValueError(
                "AlphaSchedule's finish_by is the share of the step budget "
                "by which alpha reaches max_alpha, a number in (0, 1] (e.g. "
                f"0.85); got {finish_by!r}.")
        self.start, self.double_every = float(start), float(double_every)
        self.release = None if release is None else float(release)
        self.max_alpha = float(max_alpha)
        self.finish_by = float(finish_by)

    def initial(self):
        return self.start

    def release_or(self, default):
        """`release`, or `default` when sharpening runs on a clock."""
        return default if self.release is None else self.release

    def released(self, state, lambda_schedule=None):
        if self.release is None:
            return True
        top = getattr(lambda_schedule, "max_lambda", None)
        return (state.choice_miss <= self.release
                or (top is not None and state.lam >= top)
                or state.budget_used >= 0.5)

    def update(self, state, lambda_schedule=None):
        if state.phase != PUSHING or state.binary >= 1.0:
            return state.alpha
        if not self.released(state, lambda_schedule):
            return state.alpha
        grown = state.alpha * 2.0 ** (state.interval / self.period(state))
        return min(self.max_alpha, grown)

    def period(self, state):
        """Optimizer steps per doubling from this control step on.

        `double_every`, or less when that pace would not reach `max_alpha`
        by `finish_by` of the step budget: the steps left to that point
        shared over the doublings left.
        """
        if state.budget_steps <= 0:
            return self.double_every
        left = self.finish_by * state.budget_steps - state.step
        doublings = math.log2(self.max_alpha / max(state.alpha, 1e-12))
        if doublings <= 0:
            return self.double_every
        if left <= 0:  # past `finish_by`: straight to max_alpha
            return state.interval / doublings
        # The growth applied now covers the interval just trained, so the
        # interval counts towards the steps left.
        return min(self.double_every,
                   (left + state.interval) / doublings)

    def get_config(self):
        return {"start": self.start, "double_every": self.double_every,
                "release": self.release, "max_alpha": self.max_alpha,
                "finish_by": self.finish_by}


def lambda_schedule(spec):
    """`"controller"`, `"step"` or a `Schedule` -> a `Schedule`."""
    if spec == "controller":
        return LambdaController()
    if spec == "step":
        return StepLambda()
    if isinstance(spec, Schedule):
        return spec
    raise ValueError(
        f"schedule must be 'controller', 'step' or a Schedule instance "
        f"(StepLambda, LambdaController or your own subclass); got {spec!r}."
    )
