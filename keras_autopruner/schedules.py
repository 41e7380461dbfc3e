"""Schedules for lambda (the weight of the pruning term) and alpha (sharpness).

Every schedule is a small object with `update(epoch, state) -> lambda` (or
alpha) and `get_config`. `state` is the `PruneState` the callback keeps:
phase, lambda, alpha, the classification loss history, the miss from the
target, the share of binary codes.

Phases: 0 = warm-up (no pruning pressure), 1 = pushing, 2 = done.
"""

import dataclasses

WARMUP, PUSHING, DONE = 0, 1, 2


@dataclasses.dataclass
class PruneState:
    """What the callback knows at the end of an epoch."""

    phase: int = WARMUP
    lam: float = 0.0
    alpha: float = 1.0
    miss: float = 1.0  # hard (0/1) kept fraction vs target: decides "done"
    soft_miss: float = 1.0  # mean soft code vs target: what lambda moves
    binary: float = 0.0
    tolerance: float = 0.02
    task_losses: list = dataclasses.field(default_factory=list)
    choice_misses: list = dataclasses.field(default_factory=list)
    raised: bool = False  # lambda was raised at the last update
    stuck: bool = False  # a raise bought no progress: lambda is done

    @property
    def choice_miss(self):
        """How far the gates are from having chosen the target.

        Lambda moves the soft means and alpha turns soft codes into hard
        ones, and either miss can close first: soft means on target while
        codes near 0.5 round the wrong way, or a hard count on target while
        kept codes sit at 0.8. Once either is close, lambda has done its
        part and sharpening finishes the job; waiting for one specific miss
        deadlocks (seen on the Fashion-MNIST benchmark both ways).
        """
        return min(self.miss, self.soft_miss)


class StepLambda:
    """The published schedule: lambda = start * factor**(epoch // every).

    Pushing starts at epoch 0; lambda stops growing at `stop`.
    Defaults: x10 every 20 epochs from 1 up to 1e7.

    Args:
        start: lambda at epoch 0.
        factor: multiplier applied every `every` epochs.
        every: epochs between multiplications.
        stop: the largest lambda.
    """

    def __init__(self, start=1.0, factor=10.0, every=20, stop=1e7):
        if start <= 0 or factor < 1 or every < 1 or stop < start:
            raise ValueError(
                "StepLambda needs start > 0, factor >= 1, every >= 1 and "
                f"stop >= start; got start={start}, factor={factor}, "
                f"every={every}, stop={stop}."
            )
        self.start, self.factor = float(start), float(factor)
        self.every, self.stop = int(every), float(stop)

    def begin(self, state):
        state.phase = max(state.phase, PUSHING)
        return self.value(0)

    def value(self, epoch):
        return min(self.stop, self.start * self.factor ** (epoch // self.every))

    def update(self, epoch, state):
        """Lambda for the epoch after `epoch`."""
        return self.value(epoch + 1)

    def get_config(self):
        return {"start": self.start, "factor": self.factor,
                "every": self.every, "stop": self.stop}


class LambdaController:
    """Adaptive lambda with a start and a stop criterion.

    Start: after at least `warmup` epochs, once the classification loss has
    settled, or after `max_warmup` epochs in any case. Settled means either
    past the knee of the loss curve (the last epoch's drop is below `settle`
    times the first epoch's drop: the rule for a network trained from
    scratch) or flat (the last epoch improved the loss by less than `flat`,
    relative: the rule for a network that was trained before gating, whose
    curve has no knee left). A fixed epoch count would ignore the data. Pushing from the first epoch
    prunes filters the network has not yet learned to use; waiting for the
    loss to settle lets the gates pick among trained filters.

    While pushing: when the gates miss the target (`PruneState.choice_miss`,
    the smaller of the soft and hard misses) by more than the callback's
    `tolerance` and that miss shrank by less than `min_progress` (a fraction
    of itself) over the last epoch, lambda is multiplied by `growth`, up to
    `max_lambda`. A miss that is closing at a good pace leaves lambda alone,
    so lambda grows only as far as the task loss makes it necessary.
    Close to the target (choice miss within `stuck_within`), when the epoch
    after a raise made no such progress either, the miss is not one lambda
    can close (seen at rate 0.3 on the Fashion-MNIST benchmark: a 16-filter
    layer whose codes all sat together at 0.37 did not move from lambda = 10
    up to 1e7, while the growing pressure drove the other gates' logits
    into saturation). Lambda is then held for good and the state is marked
    `stuck`, which releases alpha: sharpening is what separates codes that
    sit together. Far from the target a slow epoch only means few optimizer
    steps per epoch, and lambda keeps rising (releasing alpha there froze
    the demo's codes at kept 0.61 for a target of 0.5).

    Stop: once the choice miss is within the callback's `tolerance` lambda
    is held; the callback declares the run done when the hard kept fraction
    is within tolerance and the codes are binary.

    Args:
        start: lambda when pushing starts.
        growth: multiplier applied when progress stalls.
        max_lambda: the largest lambda.
        warmup: fewest epochs before pushing.
        max_warmup: most epochs before pushing.
        settle: fraction of the first epoch's loss drop under which the
            loss counts as settled.
        flat: relative drop per epoch under which the loss counts as flat.
        min_progress: fraction of the miss that must close in an epoch for
            lambda to be left as it is.
        stuck_within: choice miss under which a raise that bought nothing
            ends the raising and releases alpha.
    """

    def __init__(self, start=1.0, growth=10.0, max_lambda=1e7, warmup=1,
                 max_warmup=10, settle=0.25, flat=0.05, min_progress=0.3,
                 stuck_within=0.1):
        if start <= 0 or growth < 1 or max_lambda < start:
            raise ValueError(
                "LambdaController needs start > 0, growth >= 1 and "
                f"max_lambda >= start; got {start}, {growth}, {max_lambda}."
            )
        if not 0 <= warmup <= max_warmup:
            raise ValueError(
                f"Need 0 <= warmup <= max_warmup; got {warmup}, {max_warmup}."
            )
        self.start, self.growth = float(start), float(growth)
        self.max_lambda = float(max_lambda)
        self.warmup, self.max_warmup = int(warmup), int(max_warmup)
        self.settle, self.flat = float(settle), float(flat)
        self.min_progress = float(min_progress)
        self.stuck_within = float(stuck_within)

    def begin(self, state):
        if state.phase == WARMUP and self.max_warmup == 0:
            state.phase = PUSHING
        return self.start if state.phase >= PUSHING else 0.0

    def settled(self, losses):
        if len(losses) < 2:
            return False
        last = losses[-2] - losses[-1]
        flat = last <= self.flat * abs(losses[-2])
        if len(losses) < 3:
            return flat
        return flat or last <= self.settle * max(losses[0] - losses[1], 0.0)

    def update(self, epoch, state):
        if state.phase == WARMUP:
            done_warmup = len(state.task_losses) >= self.warmup
            if (done_warmup and self.settled(state.task_losses)) or \
                    len(state.task_losses) >= self.max_warmup:
                state.phase = PUSHING
                return self.start
            return 0.0
        lam = state.lam
        miss = state.choice_miss
        if miss <= state.tolerance:
            state.raised = False
            return lam  # the constraint holds: stop raising
        if len(state.choice_misses) >= 2:
            before = state.choice_misses[-2]
            stalled = (before - miss) < self.min_progress * before
        else:
            stalled = False
        if stalled and miss <= self.stuck_within and (
                state.raised or lam >= self.max_lambda):
            state.stuck = True  # more lambda did not help, or cannot come
        state.raised = stalled and not state.stuck
        if state.raised:
            lam = min(self.max_lambda, lam * self.growth)
        return lam

    def get_config(self):
        return {"start": self.start, "growth": self.growth,
                "max_lambda": self.max_lambda, "warmup": self.warmup,
                "max_warmup": self.max_warmup, "settle": self.settle,
                "flat": self.flat,
                "min_progress": self.min_progress,
                "stuck_within": self.stuck_within}


class AlphaSchedule:
    """Raises alpha, the sigmoid scale, until every code is binary.

    Alpha is held while the gates are still choosing (`PruneState.choice_miss`
    above `release`, and the lambda controller not `stuck`) and multiplied
    by `factor` each epoch once the choice is made. Sharpening earlier
    saturates the sigmoid at "keep" before the pruning term has acted: in float32
    `sigmoid(30) == 1.0` exactly, its gradient is exactly zero, and no lambda
    can prune any more (the failure the VGG16/CUB study ran into). The
    pruning term stays on while alpha grows, so the hard kept fraction that
    emerges keeps matching the target.

    `release=None` sharpens on a clock from the first pushing epoch,
    whatever the gates have chosen: the setting of the VGG16/CUB study, kept
    so that `bench/schedule_comparison.py` can show what the hold buys.

    Args:
        start: initial alpha.
        factor: multiplier per epoch once released.
        release: the choice miss under which sharpening starts, or None to
            sharpen from the start.
        max_alpha: the largest alpha.
    """

    def __init__(self, start=1.0, factor=2.0, release=0.05, max_alpha=256.0):
        if start <= 0 or factor < 1 or max_alpha < start or (
                release is not None and release < 0):
            raise ValueError(
                "AlphaSchedule needs start > 0, factor >= 1, release >= 0 and "
                f"max_alpha >= start; got {start}, {factor}, {release}, "
                f"{max_alpha}."
            )
        self.start, self.factor = float(start), float(factor)
        self.release = None if release is None else float(release)
        self.max_alpha = float(max_alpha)

    def update(self, epoch, state):
        if state.phase != PUSHING or state.binary >= 1.0:
            return state.alpha
        if (self.release is not None and state.choice_miss > self.release
                and not state.stuck):
            return state.alpha
        return min(self.max_alpha, state.alpha * self.factor)

    def get_config(self):
        return {"start": self.start, "factor": self.factor,
                "release": self.release, "max_alpha": self.max_alpha}


def lambda_schedule(spec):
    """`"controller"`, `"step"` or a schedule object -> a schedule object."""
    if spec == "controller":
        return LambdaController()
    if spec == "step":
        return StepLambda()
    if hasattr(spec, "update") and hasattr(spec, "begin"):
        return spec
    raise ValueError(
        f"schedule must be 'controller', 'step' or an object with begin() and "
        f"update(); got {spec!r}."
    )

