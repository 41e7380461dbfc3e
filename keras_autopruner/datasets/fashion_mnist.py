"""Fashion-MNIST as NumPy arrays: the shipped subset, IDX files or `.npz`."""

import gzip
import os

import numpy as np

# The package's data folder, next to this subpackage.
DATA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
FASHION_MNIST_SUBSET = os.path.join(DATA_DIR, "fashion_mnist_subset.npz")
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
    >>> (x_train, y_train), _ = load_fashion_mnist(path)  # full set or subset
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
    >>> full = load_fashion_mnist("/data/fashion-mnist")  # doctest: +SKIP
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
