"""Tabular classification data from CSV, `.npz` or `.npy`, split, scaled."""

import os

import numpy as np

from keras_autopruner.datasets.fashion_mnist import DATA_DIR

LETTER_RECOGNITION_CSV = os.path.join(DATA_DIR, "letterrecognition.csv.gz")


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
