"""Loaders for the real data sets the examples, tests and benchmarks use.

Three families are covered:

* Fashion-MNIST, as NumPy arrays, from the subset shipped with the package
  (the default, so everything works offline), from a directory holding the
  official IDX files, or from an `.npz`.
* Tabular classification data from a CSV (optionally gzipped), `.npz` or
  `.npy`, split into stratified train/test parts and standardised. The
  default is the shipped UCI Letter Recognition file.
* Any image classification set of `tensorflow_datasets`, as a batched
  `tf.data.Dataset` with the usual crop/flip augmentation.

TensorFlow and tensorflow-datasets are imported only by `load_tfds_images`,
so the NumPy loaders stay cheap to import.
"""

import gzip
import os

import numpy as np

__all__ = [
    "FASHION_MNIST_CLASS_NAMES",
    "default_fashion_mnist_path",
    "load_fashion_mnist",
    "load_tabular",
    "load_tfds_images",
    "read_idx",
]

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FASHION_MNIST_SUBSET = os.path.join(DATA_DIR, "fashion_mnist_subset.npz")
LETTER_RECOGNITION_CSV = os.path.join(DATA_DIR, "letterrecognition.csv.gz")
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Official file stems; each may be stored gzipped (".gz") or not.
_FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# IDX type codes (third byte of the magic number) to NumPy big-endian types.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Per-channel RGB statistics of ImageNet, for `normalization="imagenet"`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_fashion_mnist_path():
    """Returns the full Fashion-MNIST directory of Debian, if installed.

    Debian's `dataset-fashion-mnist` package puts the four official IDX
    files in `/usr/share/datasets/fashion-mnist`. This helper exists for
    scripts that offer a "use the full data" option; `load_fashion_mnist`
    never falls back to it on its own, so results do not silently depend on
    what happens to be installed.

    Returns:
        The directory path as a string, or `None` when it does not exist.

    Example:

    >>> path = default_fashion_mnist_path()
    >>> data = load_fashion_mnist(path)  # full set if found, else subset
    """
    if os.path.isdir(DEBIAN_FASHION_MNIST_DIR):
        return DEBIAN_FASHION_MNIST_DIR
    return None


def read_idx(path):
    """Reads one IDX file (gzipped or not) into a NumPy array.

    The IDX header is parsed rather than skipped by a fixed offset, so
    image files (3-D) and label files (1-D) go through the same code and a
    truncated download fails loudly instead of yielding garbage.

    Args:
        path: path of an IDX file; a name ending in `.gz` is decompressed.

    Returns:
        A NumPy array with the shape and element type the header declares.

    Example:

    >>> labels = read_idx("train-labels-idx1-ubyte.gz")  # doctest: +SKIP
    >>> labels.shape
    (60000,)
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file (bad magic number). Expected the "
            "official Fashion-MNIST/MNIST files such as "
            "'train-images-idx3-ubyte.gz'."
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}.")
    dtype = _IDX_DTYPES[code]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} bytes) but "
            f"the file holds {len(raw) - header} bytes of data; the file is "
            "probably truncated, so download or copy it again."
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    # Convert to native byte order so callers never see '>' dtypes.
    return data.astype(dtype.newbyteorder("="))


def _find_idx(directory, stem):
    for name in (stem + ".gz", stem):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _load_fashion_mnist_npz(path):
    with np.load(path) as data:
        missing = [k for k in _NPZ_KEYS if k not in data.files]
        if missing:
            raise ValueError(
                f"{path} lacks the keys {missing}. A Fashion-MNIST .npz "
                f"must hold {list(_NPZ_KEYS)} (found {data.files})."
            )
        return {k: data[k] for k in _NPZ_KEYS}


def load_fashion_mnist(path=None):
    """Loads Fashion-MNIST as NumPy arrays.

    Args:
        path: where to read from. `None` (the default) loads the subset
            shipped with the package: 1,000 train and 200 test images per
            class, drawn from the official splits (see
            `keras_autopruner/data/README.md`). A directory must hold the
            four official IDX files (`train-images-idx3-ubyte`,
            `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
            `t10k-labels-idx1-ubyte`, each optionally ending in `.gz`). A
            file must be an `.npz` with the keys `x_train`, `y_train`,
            `x_test` and `y_test`.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: images as `uint8` arrays of
        shape `(N, 28, 28)` and labels as `int64` arrays of shape `(N,)`
        with values in `[0, 10)`; `FASHION_MNIST_CLASS_NAMES` names them.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    >>> x_train.shape, x_test.shape
    ((10000, 28, 28), (2000, 28, 28))
    >>> full = load_fashion_mnist("/usr/share/datasets/fashion-mnist")
    """
    if path is None:
        path = FASHION_MNIST_SUBSET
    path = os.fspath(path)
    if os.path.isdir(path):
        found = {k: _find_idx(path, stem) for k, stem in _FASHION_MNIST_FILES.items()}
        missing = [_FASHION_MNIST_FILES[k] for k, v in found.items() if v is None]
        if missing:
            raise FileNotFoundError(
                f"{path} is a directory but lacks the IDX files {missing} "
                "(with or without '.gz'). Point `path` at a directory with "
                "the four official Fashion-MNIST files, at an .npz with "
                f"keys {list(_NPZ_KEYS)}, or pass None for the shipped "
                "subset."
            )
        arrays = {k: read_idx(v) for k, v in found.items()}
    elif os.path.isfile(path) and path.endswith(".npz"):
        arrays = _load_fashion_mnist_npz(path)
    else:
        raise FileNotFoundError(
            f"Cannot load Fashion-MNIST from {path!r}: expected a directory "
            "holding the four official IDX files (e.g. "
            "'train-images-idx3-ubyte.gz') or an existing .npz file with "
            f"keys {list(_NPZ_KEYS)}. Pass None to use the shipped subset."
        )
    for split in ("train", "test"):
        x, y = arrays["x_" + split], arrays["y_" + split]
        if x.ndim != 3 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{path}: {split} images have shape {x.shape} and labels "
                f"{y.shape}; expected (N, 28, 28) images and N labels."
            )
    return (
        (arrays["x_train"].astype(np.uint8), arrays["y_train"].astype(np.int64)),
        (arrays["x_test"].astype(np.uint8), arrays["y_test"].astype(np.int64)),
    )


def _read_table(path, label):
    """Returns (features DataFrame, label Series) from a CSV/npz/npy file."""
    import pandas as pd

    lower = path.lower()
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            key = "y" if label is None else label
            if key not in data.files or "x" not in data.files:
                raise ValueError(
                    f"{path} must hold a feature array under key 'x' and a "
                    f"label array under key {key!r} (found {data.files}); "
                    "set `label` to the name of the label array."
                )
            x, y = data["x"], data[key]
        if x.ndim != 2:
            raise ValueError(
                f"{path}: 'x' has shape {x.shape}; expected (rows, features)."
            )
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
        return frame, pd.Series(y, name=key)
    if lower.endswith(".npy"):
        table = np.load(path, allow_pickle=False)
        if table.ndim != 2 or table.shape[1] < 2:
            raise ValueError(
                f"{path}: array has shape {table.shape}; a .npy table must "
                "be 2-D with the label in one column."
            )
        column = -1 if label is None else label
        if not isinstance(column, (int, np.integer)):
            raise ValueError(
                f"For a .npy table `label` must be a column index, got "
                f"{label!r}."
            )
        frame = pd.DataFrame(table)
        y = frame.pop(frame.columns[column])
        frame.columns = [f"f{i}" for i in range(frame.shape[1])]
        return frame, y
    # Anything else is treated as CSV; pandas infers gzip from '.gz'.
    frame = pd.read_csv(path)
    columns = list(frame.columns)
    if label is None:
        raise ValueError(
            f"Pass `label=` naming the label column of {path}; available "
            f"columns: {columns}."
        )
    if isinstance(label, (int, np.integer)) and label not in columns:
        if not -len(columns) <= label < len(columns):
            raise ValueError(
                f"Label index {label} is out of range for {path}, which "
                f"has {len(columns)} columns: {columns}."
            )
        label = columns[label]
    if label not in columns:
        raise KeyError(
            f"Label column {label!r} not found in {path}; available "
            f"columns: {columns}."
        )
    y = frame.pop(label)
    return frame, y


def _test_counts(class_sizes, test_fraction):
    """Per-class test sizes that add up to the overall test fraction."""
    exact = class_sizes * test_fraction
    counts = np.floor(exact).astype(np.int64)
    # Rounding each class on its own can miss the requested total by a
    # few rows; hand the leftover rows to the largest remainders instead.
    missing = int(round(class_sizes.sum() * test_fraction)) - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:missing]] += 1
    # Every class keeps a training example, so the model never meets a
    # test class it has not seen.
    return np.minimum(counts, np.maximum(class_sizes - 1, 0))


def _stratified_split(y, test_fraction, rng):
    classes = np.unique(y)
    sizes = np.array([np.sum(y == c) for c in classes])
    train, test = [], []
    for cls, n_test in zip(classes, _test_counts(sizes, test_fraction)):
        members = rng.permutation(np.flatnonzero(y == cls))
        test.append(members[:n_test])
        train.append(members[n_test:])
    # Shuffle across classes so consecutive rows are not all one class.
    return rng.permutation(np.concatenate(train)), rng.permutation(
        np.concatenate(test)
    )


def load_tabular(path=None, label=None, test_fraction=0.2, seed=0):
    """Loads a tabular classification set, split and standardised.

    Labels are always mapped to `0..K-1` in the sorted order of the
    distinct label values, so string labels work and numeric labels such
    as `1..7` become valid sparse targets. Features are standardised with
    the mean and standard deviation of the train split only, so no test
    statistics leak into training; constant columns are left centred.

    Args:
        path: a CSV file (optionally `.gz`), an `.npz` holding features
            under `x` and labels under `label` (default `"y"`), or a 2-D
            `.npy` whose label is the column at index `label` (default the
            last). `None` loads the shipped UCI Letter Recognition file.
        label: the label column: a name (or an index) for CSV files. Must
            be given for CSV files other than the shipped default, whose
            label is `"lettr"`.
        test_fraction: share of each class held out for testing, in
            `[0, 1)`.
        seed: seed of the stratified shuffle; the same seed gives the same
            split.

    Returns:
        `(x_train, y_train), (x_test, y_test), class_names`: features as
        `float32` arrays `(N, F)`, labels as `int64` arrays `(N,)`, and the
        list of original label values, where `class_names[i]` is the value
        encoded as `i`.

    Example:

    >>> (x_tr, y_tr), (x_te, y_te), names = load_tabular()
    >>> x_tr.shape, len(names)
    ((16000, 16), 26)
    >>> load_tabular("shuttle.csv.gz", label="Class")  # doctest: +SKIP
    """
    if path is None:
        path = LETTER_RECOGNITION_CSV
        label = "lettr" if label is None else label
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Tabular file {path!r} does not exist. Pass a CSV (optionally "
            ".gz), .npz or .npy path, or None for the shipped Letter "
            "Recognition data."
        )
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be in [0, 1), got {test_fraction}."
        )
    frame, y = _read_table(path, label)

    import pandas as pd

    non_numeric = [
        str(c)
        for c in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[c])
    ]
    if non_numeric:
        raise ValueError(
            f"Feature columns {non_numeric} of {path} are not numeric. "
            "Encode them as numbers (e.g. one-hot) or drop them before "
            "loading."
        )
    with_missing = [str(c) for c in frame.columns if frame[c].isna().any()]
    if with_missing or y.isna().any():
        raise ValueError(
            f"{path} has missing values in {with_missing or [y.name]}; "
            "fill or drop those rows before loading."
        )

    class_values, y_encoded = np.unique(y.to_numpy(), return_inverse=True)
    y_encoded = y_encoded.reshape(-1).astype(np.int64)
    class_names = [v.item() if hasattr(v, "item") else v for v in class_values]

    x = frame.to_numpy(dtype=np.float64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = _stratified_split(y_encoded, test_fraction, rng)
    x_train, x_test = x[train_idx], x[test_idx]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    x_train = ((x_train - mean) / std).astype(np.float32)
    x_test = ((x_test - mean) / std).astype(np.float32)
    return (
        (x_train, y_encoded[train_idx]),
        (x_test, y_encoded[test_idx]),
        class_names,
    )


def _as_hw(image_size):
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


def load_tfds_images(
    name,
    split,
    image_size,
    batch_size,
    training,
    channels=None,
    normalization="unit",
    crop_fraction=0.875,
    random_flip=True,
    shuffle_buffer=1024,
    seed=None,
    data_dir=None,
    download=True,
    drop_remainder=False,
):
    """Builds a batched image pipeline from a `tensorflow_datasets` set.

    Training images are resized so that their shorter side leaves a margin
    around the target (`image_size / crop_fraction`, aspect ratio kept),
    randomly cropped to `image_size` and randomly flipped left-right.
    Evaluation images get the same resize followed by a central crop, so
    both see objects at the same scale.

    Args:
        name: tfds dataset name, e.g. `"caltech_birds2011"` or
            `"fashion_mnist"`. It must offer `as_supervised` pairs.
        split: tfds split string, e.g. `"train"` or `"test[:10%]"`.
        image_size: output size, an int for squares or `(height, width)`.
        batch_size: examples per batch.
        training: whether to shuffle and augment (random crop and flip).
        channels: `None` keeps the stored channels; `1` or `3` converts
            between greyscale and RGB.
        normalization: `"unit"` scales pixels to `[0, 1]`; `"imagenet"`
            then standardises with ImageNet RGB statistics (needs 3
            channels); `"per_image"` standardises every image on its own;
            a `(mean, std)` pair of per-channel tuples applies those.
        crop_fraction: share of the resized image kept by the crop, in
            `(0, 1]`; `1.0` disables the margin.
        random_flip: whether training images are flipped left-right; turn
            it off for data where orientation carries the label.
        shuffle_buffer: shuffle buffer size used when `training`.
        seed: seed for shuffling and augmentation.
        data_dir: tfds data directory; `None` uses the tfds default.
        download: whether tfds may download and prepare the data.
        drop_remainder: whether to drop the last incomplete batch.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: `float32` images of
        shape `(batch, height, width, channels)` and `int64` labels.

    Example:

    >>> train = load_tfds_images("caltech_birds2011", "train", 224, 32,
    ...                          training=True, normalization="imagenet")
    >>> test = load_tfds_images("caltech_birds2011", "test", 224, 32,
    ...                         training=False, normalization="imagenet")
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    height, width = _as_hw(image_size)
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels}.")

    ds = tfds.load(
        name,
        split=split,
        as_supervised=True,
        data_dir=data_dir,
        download=download,
        shuffle_files=bool(training),
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )
    stored = ds.element_spec[0].shape[-1]
    out_channels = channels or stored
    if channels is not None and stored is None:
        raise ValueError(
            f"{name} does not declare its number of channels, so it cannot "
            "be converted; pass channels=None."
        )
    if channels is not None and stored not in (1, 3):
        raise ValueError(
            f"{name} images have {stored} channels; only 1 and 3 can be "
            "converted. Pass channels=None to keep them."
        )

    per_image = False
    if isinstance(normalization, str):
        per_image = normalization == "per_image"
        if normalization == "imagenet":
            if out_channels != 3:
                raise ValueError(
                    "normalization='imagenet' needs RGB images; pass "
                    "channels=3 or use 'unit' or 'per_image'."
                )
            mean_std = (IMAGENET_MEAN, IMAGENET_STD)
        elif normalization in ("unit", "per_image"):
            mean_std = None
        else:
            raise ValueError(
                f"Unknown normalization {normalization!r}; use 'unit', "
                "'imagenet', 'per_image' or a (mean, std) pair."
            )
    else:
        mean_std = tuple(normalization)
        if len(mean_std) != 2:
            raise ValueError(
                "A custom normalization must be a (mean, std) pair of "
                f"per-channel values, got {normalization!r}."
            )
    if mean_std is not None:
        mean = tf.constant(mean_std[0], tf.float32)
        std = tf.constant(mean_std[1], tf.float32)

    margin_h = int(round(height / crop_fraction))
    margin_w = int(round(width / crop_fraction))

    def preprocess(image, label):
        if channels == 3 and stored == 1:
            image = tf.image.grayscale_to_rgb(image)
        elif channels == 1 and stored == 3:
            image = tf.image.rgb_to_grayscale(image)
        image = tf.image.convert_image_dtype(image, tf.float32)
        # Resize so both sides cover the margin while keeping the aspect
        # ratio; stretching would distort shapes such as birds' bodies.
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.maximum(margin_h / shape[0], margin_w / shape[1])
        new_size = tf.cast(tf.math.ceil(shape * scale), tf.int32)
        new_size = tf.maximum(new_size, [margin_h, margin_w])
        image = tf.image.resize(image, new_size, antialias=True)
        if training:
            depth = out_channels if out_channels else tf.shape(image)[-1]
            image = tf.image.random_crop(image, [height, width, depth], seed=seed)
            if random_flip:
                # A different op seed, or flips would follow crop offsets.
                flip_seed = None if seed is None else seed + 1
                image = tf.image.random_flip_left_right(image, seed=flip_seed)
        else:
            top = (new_size[0] - height) // 2
            left = (new_size[1] - width) // 2
            image = tf.image.crop_to_bounding_box(image, top, left, height, width)
        # Antialiased resizing can overshoot slightly; keep [0, 1] exact.
        image = tf.clip_by_value(image, 0.0, 1.0)
        if per_image:
            image = tf.image.per_image_standardization(image)
        elif mean_std is not None:
            image = (image - mean) / std
        image = tf.ensure_shape(image, [height, width, out_channels])
        return image, tf.cast(label, tf.int64)

    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
