"""The comparison study's data: `StudyData` and `load_study_data`.

`load_study_data` turns a `StudyConfig`'s data fields (`dataset`,
`data_path`, `image_size`, `train_examples`, `test_examples`,
`batch_size`) into a `StudyData`: NumPy arrays for Fashion-MNIST, `tf.data`
pipelines for `tensorflow_datasets` image sets.
"""

import math


class StudyData:
    """The train and test data of a study, as NumPy arrays or tf.data.

    Args:
        name: a label for reports.
        input_shape: shape of one example.
        num_classes: number of classes.
        train: `(x, y)` arrays, or a function `seed -> tf.data.Dataset` of
            `(images, labels)` batches.
        test: `(x, y)` arrays, or a function `() -> tf.data.Dataset`.
        train_size: number of training examples (None if unknown).

    Example:

    >>> import numpy as np
    >>> x, y = np.zeros((10, 4, 4, 1), "float32"), np.zeros(10, "int64")
    >>> data = StudyData("zeros", (4, 4, 1), 2, (x, y), (x, y),
    ...                  train_size=10)
    >>> data.steps_per_epoch(batch_size=4)
    3
    """

    def __init__(self, name, input_shape, num_classes, train, test,
                 train_size=None):
        self.name = name
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self._train = train
        self._test = test
        self.train_size = train_size
        self._steps = None

    def steps_per_epoch(self, batch_size):
        """Optimizer steps in one epoch of the training data.

        For arrays: `ceil(train_size / batch_size)`. For a `tf.data`
        pipeline (already batched): its number of batches, from its
        cardinality or, when that is unknown, by going through it once.

        Args:
            batch_size: examples per step (arrays only).

        Returns:
            A positive int.

        Raises:
            ValueError: the pipeline repeats forever or holds no batch.
        """
        if not callable(self._train):
            size = len(self._train[0]) if self.train_size is None else (
                self.train_size)
            return max(1, math.ceil(size / batch_size))
        if self._steps is None:
            self._steps = count_batches(self._train(0), self.name)
        return self._steps

    def fit_args(self, seed, batch_size):
        """Positional args and kwargs for `fit` on the training data."""
        if callable(self._train):
            # The pipeline shuffles; Keras's shuffle only warns on datasets.
            return (self._train(seed),), {"shuffle": False}
        x, y = self._train
        return (x, y), {"shuffle": True, "batch_size": batch_size}

    def eval_args(self, batch_size):
        """Positional args and kwargs for `evaluate` on the test data."""
        if callable(self._test):
            return (self._test(),), {}
        x, y = self._test
        return (x, y), {"batch_size": batch_size}


def count_batches(dataset, name="the training data"):
    """The number of batches in one pass over a finite `tf.data.Dataset`.

    Uses the dataset's cardinality when TensorFlow knows it, and otherwise
    iterates over the dataset once.

    Raises:
        ValueError: the dataset is infinite (e.g. ends in `.repeat()`) or
            empty.
    """
    import tensorflow as tf

    steps = int(dataset.cardinality())
    if steps == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            f"{name} repeats forever, so an epoch has no length. Pass a "
            "finite dataset (drop the .repeat()): the study counts pruning "
            "in epochs of optimizer steps."
        )
    if steps == tf.data.UNKNOWN_CARDINALITY:
        steps = int(dataset.reduce(0, lambda count, _: count + 1))
    if steps < 1:
        raise ValueError(
            f"{name} holds no batch; check the split and train_examples."
        )
    return steps


def load_study_data(config):
    """The data named by `config.dataset`, sliced as the config says.

    `"fashion_mnist"`, a `.csv`/`.csv.gz` file (label column
    `config.label`, split 80/20 by class and standardised by
    `load_tabular`), an `.npz` with `x_train`, `y_train`, `x_test`,
    `y_test`, or a `tensorflow_datasets` image set name.
    """
    dataset = str(config.dataset)
    if dataset.lower().endswith((".csv", ".csv.gz")):
        return _load_csv_data(config)
    if dataset.lower().endswith(".npz"):
        return _load_npz_data(config)
    if config.dataset == "fashion_mnist":
        from keras_autopruner.datasets.fashion_mnist import load_fashion_mnist

        (x, y), (xt, yt) = load_fashion_mnist(config.data_path)
        x, y = x[:config.train_examples], y[:config.train_examples]
        xt, yt = xt[:config.test_examples], yt[:config.test_examples]
        prep = lambda a: (a[..., None].astype("float32") / 255.0)  # noqa
        source = config.data_path or "shipped subset"
        return StudyData(f"Fashion-MNIST ({source}, {len(x)} train / "
                         f"{len(xt)} test)", (28, 28, 1), 10,
                         (prep(x), y), (prep(xt), yt), train_size=len(x))
    return _load_tfds_data(config)


def _load_csv_data(config):
    import os

    from keras_autopruner.datasets.tabular import load_tabular

    label = getattr(config, "label", None)
    if label is None:
        raise ValueError(
            f"dataset {config.dataset!r} is a CSV file; name its label "
            "column with --label COLUMN (StudyConfig.label).")
    (x, y), (xt, yt), names = load_tabular(config.dataset, label=label)
    x, y = x[:config.train_examples], y[:config.train_examples]
    xt, yt = xt[:config.test_examples], yt[:config.test_examples]
    return StudyData(f"{os.path.basename(config.dataset)} (label {label!r}, "
                     f"{len(x)} train / {len(xt)} test)", x.shape[1:],
                     len(names), (x, y), (xt, yt), train_size=len(x))


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _load_npz_data(config):
    import os

    import numpy as np

    if not os.path.isfile(config.dataset):
        raise FileNotFoundError(f"dataset file {config.dataset!r} does not "
                                "exist.")
    with np.load(config.dataset, allow_pickle=False) as f:
        missing = [k for k in _NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(
                f"{config.dataset} lacks the keys {missing}; a study .npz "
                f"holds {list(_NPZ_KEYS)} (found {f.files}).")
        x, y, xt, yt = (f[k] for k in _NPZ_KEYS)

    def prep(a):
        # 8-bit images are scaled to [0, 1]; (N, H, W) gets a channel axis.
        scaled = a.astype("float32") / (255.0 if a.dtype == np.uint8
                                         else 1.0)
        return scaled[..., None] if a.ndim == 3 else scaled

    y, yt = y.astype("int64").reshape(-1), yt.astype("int64").reshape(-1)
    x, y = prep(x)[:config.train_examples], y[:config.train_examples]
    xt, yt = prep(xt)[:config.test_examples], yt[:config.test_examples]
    classes = int(max(y.max(), yt.max())) + 1
    return StudyData(f"{os.path.basename(config.dataset)} ({len(x)} train / "
                     f"{len(xt)} test)", x.shape[1:], classes, (x, y),
                     (xt, yt), train_size=len(x))


def _load_tfds_data(config):
    import tensorflow_datasets as tfds

    from keras_autopruner.datasets.images import load_tfds_images

    builder = tfds.builder(config.dataset)
    features = builder.info.features
    label = features["label"] if "label" in features else None
    if not hasattr(label, "num_classes"):
        raise ValueError(
            f"tfds data set {config.dataset!r} has no class label feature "
            "named 'label'; the study needs an image classification set."
        )
    num_classes = features["label"].num_classes
    channels = features["image"].shape[-1] or 3
    splits = builder.info.splits
    test_split = "test" if "test" in splits else "validation"

    def sliced(split, n):
        return split if n is None else f"{split}[:{int(n)}]"

    size = int(config.image_size)

    def train(seed):
        return load_tfds_images(
            config.dataset, sliced("train", config.train_examples), size,
            config.batch_size, training=True, seed=seed)

    def test():
        return load_tfds_images(
            config.dataset, sliced(test_split, config.test_examples), size,
            config.batch_size, training=False)

    return StudyData(f"{config.dataset} (tfds, {size}x{size})",
                     (size, size, channels), num_classes, train, test)
