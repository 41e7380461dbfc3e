"""The study's settings: `StudyConfig`, the presets and run names."""

import dataclasses

# The methods in the order a study runs them: "full" first, then
# "autopruner", whose results the baselines after it depend on.
CRITERIA = ("l1", "l2", "bn", "taylor", "random")
METHODS = ("full", "autopruner", "full_equal", "autopruner_stop",
           "autopruner_folded") + (
    CRITERIA + ("l1_iterative", "scratch", "uniform", "magnitude"))
IMAGE_MODELS = ("vgg_small", "vgg16_cub")
# The builder a study uses when --model is not given: by the data's kind.
DEFAULT_IMAGE_MODEL = "vgg_small"
DEFAULT_TABULAR_MODEL = "fc_dnn"
METHOD_LABELS = {
    "full": "full model",
    "autopruner": "AutoPruner (pruned + fine-tuned)",
    "full_equal": "full model, AutoPruner's total epochs",
    "autopruner_stop": "AutoPruner stopped at its choice (before issue 17)",
    "autopruner_folded": "AutoPruner with folded gates",
    "l1": "L1 filter norm cut + fine-tuned",
    "l2": "L2 filter norm cut + fine-tuned",
    "bn": "BN scale (gamma) cut + fine-tuned",
    "taylor": "Taylor cut + fine-tuned",
    "random": "random cut + fine-tuned",
    "l1_iterative": "L1 cut in 3 rounds, fine-tuned between and after",
    "scratch": "AutoPruner's widths, from scratch",
    "uniform": "uniform width, matched cost, from scratch",
    "magnitude": "magnitude pruning (tfmot, unstructured)",
}


@dataclasses.dataclass
class StudyConfig:
    """Everything that decides the study's numbers.

    Args:
        model: the network: a builder name of `keras_autopruner.models`
            (`"vgg_small"`, `"vgg16_cub"` (32x32 or larger), `"fc_dnn"`),
            a `.keras` file, or `"module:function"` naming a function that
            returns an uncompiled model. A `.keras` file or a function
            gives the architecture only: every run re-initialises it
            (`keras.models.clone_model`). None: `vgg_small` for images,
            `fc_dnn` for tabular data.
        dataset: `"fashion_mnist"` (the subset shipped with the package, or
            the files at `data_path`), a `.csv`/`.csv.gz` file (with
            `label`), an `.npz` file holding `x_train`, `y_train`,
            `x_test`, `y_test`, or any `tensorflow_datasets` image set name
            (`"cifar10"`, `"caltech_birds2011"`, ...).
        label: the label column of a CSV `dataset`.
        widths: `{layer_name: width}` overriding a builder's default
            widths of the full network (None: the defaults).
        data_path: Fashion-MNIST directory of IDX files or `.npz`.
        image_size: side of the images for tfds data sets.
        train_examples: use only the first this many training examples.
        test_examples: use only the first this many test examples.
        rates: target kept fractions.
        seeds: random seeds; each gives one full model and one run per rate
            and method.
        methods: which of `METHODS` to run; `"full"` and `"autopruner"` are
            always run because the others depend on them.
        full_epochs: epochs for the full model.
        prune_epochs: epochs of AutoPruner's pruning phase at the training
            rate: pushing, the exact choice, then the chosen network
            trained on (the criteria's cuts get the same epochs).
        prune_share: the most of the pruning phase's steps the callback
            may push for (`prune_steps`); the choice is made by then, so
            at least the rest trains the chosen network.
        finetune_epochs: epochs of fine-tuning after `strip`.
        batch_size: training batch size.
        learning_rate: Adam's learning rate for training and pruning.
        finetune_learning_rate: Adam's learning rate for the last
            `finetune_epochs` of every method.
        schedule: `"controller"` or `"step"` (AutoPrunerCallback schedule).
        objective: `"layer"` or `"global"` budget.
        weighting: what the global budget counts: `"flops"` (the rate is
            the share of MACs the stripped model keeps), `"params"` or
            `"filters"`.
        latency_runs: timed batch-1 calls per model (batch-256 throughput
            takes a tenth as many, at least 3).
        jit_compile: passed to `compile`. Off by default: every stage
            compiles a new model, and on CPU XLA's compile time for networks
            this small outweighs what it saves per epoch.
    """

    model: str = None
    widths: dict = None
    dataset: str = "fashion_mnist"
    label: str = None
    data_path: str = None
    image_size: int = 32
    train_examples: int = None
    test_examples: int = None
    rates: tuple = (0.5, 0.25, 0.12)
    seeds: tuple = (0, 1, 2)
    methods: tuple = ("full", "autopruner", "full_equal") + CRITERIA + (
        "scratch", "uniform")
    full_epochs: int = 15
    prune_epochs: int = 8
    prune_share: float = 0.2
    finetune_epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    schedule: str = "controller"
    objective: str = "global"
    weighting: str = "flops"
    latency_runs: int = 200
    jit_compile: bool = False

    # Fields that may change between runs sharing an output folder: more
    # rates, seeds or methods extend a study, they do not change its runs.
    EXTENSIBLE = ("rates", "seeds", "methods", "latency_runs")

    def fingerprint(self):
        """The fields that must match for two studies to share runs."""
        d = dataclasses.asdict(self)
        for key in self.EXTENSIBLE:
            d.pop(key)
        return d


PRESETS = {
    # `make demo`: keep 25% and 12% of the MACs, 3 seeds, on 2,000 images
    # of the shipped Fashion-MNIST subset (all 2,000 test images), batch 32
    # (63 optimizer steps an epoch), small enough for 2 CPU cores in 15
    # minutes (BUILD_NOTES.md, issue 17 part 2, says how that was sized).
    # Every method after the full model spends AutoPruner's epochs after
    # full training with the same learning-rate shape; full_equal trains
    # the full network for AutoPruner's total. The controller needs about
    # 170-190 pushing steps to reach binary codes on this network, so the
    # pushing may take 60% of the 315 steps of the pruning phase (the
    # default 20%, 63 steps, ended every demo run with a forced choice).
    "demo": dict(rates=(0.25, 0.12), seeds=(0, 1, 2), train_examples=2000,
                 full_epochs=7, prune_epochs=5, prune_share=0.6,
                 finetune_epochs=2,
                 methods=("full", "autopruner", "full_equal", "l1",
                          "random", "uniform"),
                 latency_runs=50),
    # The same study at a quality worth quoting (3 seeds, 10,000 images).
    "full": dict(rates=(0.5, 0.25, 0.12), seeds=(0, 1, 2), full_epochs=15,
                 prune_epochs=8, finetune_epochs=5),
    # Seconds: for tests of the plumbing, not for numbers.
    "tiny": dict(rates=(0.5,), seeds=(0,), train_examples=512,
                 test_examples=256, batch_size=32, full_epochs=1,
                 prune_epochs=4, finetune_epochs=1, latency_runs=5,
                 methods=("full", "autopruner", "full_equal",
                          "autopruner_stop", "l1", "random", "l1_iterative",
                          "scratch", "uniform"),
                 widths={"block1_conv1": 4, "block1_conv2": 4,
                         "block2_conv1": 8, "block2_conv2": 8, "fc1": 16}),
}


def make_config(preset=None, **overrides):
    """A `StudyConfig` from a preset name and field overrides (None = keep).

    Example:

    >>> config = make_config("demo", seeds=[3])
    >>> config.seeds, config.full_epochs
    ((3,), 7)
    """
    values = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(
                f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}."
            )
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("rates", "seeds", "methods"):
        if key in values:
            values[key] = tuple(values[key])
    config = StudyConfig(**values)
    check_model_spec(config.model)
    unknown = sorted(set(config.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {METHODS}.")
    from keras_autopruner.gate import check_rate

    for rate in config.rates:
        check_rate(rate, "each of rates")
    share = config.prune_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or (
            not 0.0 < share <= 1.0):
        raise ValueError(
            f"prune_share is the most share of the pruning phase's steps "
            f"spent pushing, a number in (0, 1] (e.g. 0.2); got {share!r}.")
    return config


def check_model_spec(spec):
    """Refuse a `model` that is none of: None, a builder name, a `.keras`
    file, `module:function`."""
    from keras_autopruner.models import BUILDERS

    if spec is None or spec in BUILDERS:
        return
    if not isinstance(spec, str):
        raise ValueError(
            f"model must be a string, got {type(spec).__name__} {spec!r:.60}.")
    if spec.endswith(".keras"):
        import os

        if not os.path.isfile(spec):
            raise ValueError(f"model file {spec!r} does not exist.")
        return
    module, _, function = spec.partition(":")
    if module and function:
        return
    raise ValueError(
        f"model {spec!r} is none of: a builder name {sorted(BUILDERS)}, a "
        "'.keras' file, or 'module:function' (a function returning an "
        "uncompiled model, e.g. 'my_models:small_cnn').")


def is_tabular_path(dataset):
    """Whether `dataset` names a CSV file (tabular data)."""
    return str(dataset).lower().endswith((".csv", ".csv.gz"))


def rate_tag(rate):
    """`rate` as it appears in file names: `0.5`, `0.25`."""
    return f"{float(rate):g}"


def run_key(method, rate, seed):
    """The file stem of a run: `full_s0`, `autopruner_r0.5_s0`, ..."""
    if method == "full":
        return f"full_s{seed}"
    return f"{method}_r{rate_tag(rate)}_s{seed}"


def log(message):
    """Print one progress line of the study."""
    print(f"[study] {message}", flush=True)
