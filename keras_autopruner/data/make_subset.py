"""Rebuild the embedded Fashion-MNIST subset from the official IDX files.

The package ships `fashion_mnist_subset.npz`, a stratified, seeded sample of
Fashion-MNIST small enough to live in the repository. This script is how
that file was made, so anyone can regenerate it and check it bit for bit.

Args (command line):
    --source: directory holding the four official IDX files, gzipped or
        not. Defaults to `/usr/share/datasets/fashion-mnist`, where Debian's
        `dataset-fashion-mnist` package installs them.
    --out: where to write the `.npz` (default: next to this script).
    --train-per-class: images per class drawn from the official train split.
    --test-per-class: images per class drawn from the official test split.
    --seed: seed of the sampler; the same seed gives the same file.

Example:

```
python -m keras_autopruner.data.make_subset \
    --source /usr/share/datasets/fashion-mnist \
    --train-per-class 1000 --test-per-class 200 --seed 0
```
"""

import argparse
import os

import numpy as np

from keras_autopruner.datasets import DEBIAN_FASHION_MNIST_DIR
from keras_autopruner.datasets import load_fashion_mnist

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_subset.npz"
)


def stratified_indices(labels, per_class, rng):
    """Picks `per_class` indices of every class, without replacement.

    Args:
        labels: 1-D integer array of class ids.
        per_class: how many indices to keep for each class.
        rng: a `numpy.random.Generator`.

    Returns:
        Sorted 1-D int64 array of indices into `labels`. Sorting keeps the
        official order of the source split, which is already shuffled, so
        the classes stay interleaved without a second shuffle.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> stratified_indices(np.array([0, 1, 0, 1, 0]), 1, rng).shape
    (2,)
    """
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise ValueError(
                f"Class {cls} has only {len(members)} examples but "
                f"{per_class} per class were requested; lower the count."
            )
        picked.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def make_subset(source, out, train_per_class, test_per_class, seed):
    """Writes the stratified subset of `source` to `out` and returns `out`.

    Args:
        source: directory with the official IDX files (or an `.npz`).
        out: path of the `.npz` to write.
        train_per_class: images per class taken from the train split.
        test_per_class: images per class taken from the test split.
        seed: integer seed of the sampler.

    Returns:
        The path written.

    Example:

    >>> make_subset("/usr/share/datasets/fashion-mnist", "/tmp/s.npz",
    ...             10, 2, seed=0)  # doctest: +SKIP
    '/tmp/s.npz'
    """
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(source)
    rng = np.random.default_rng(seed)
    train_idx = stratified_indices(y_train, train_per_class, rng)
    test_idx = stratified_indices(y_test, test_per_class, rng)
    np.savez_compressed(
        out,
        x_train=x_train[train_idx].astype(np.uint8),
        y_train=y_train[train_idx].astype(np.uint8),
        x_test=x_test[test_idx].astype(np.uint8),
        y_test=y_test[test_idx].astype(np.uint8),
    )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=DEBIAN_FASHION_MNIST_DIR)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_subset(
        args.source,
        args.out,
        args.train_per_class,
        args.test_per_class,
        args.seed,
    )
    size_mb = os.path.getsize(out) / 2**20
    print(f"wrote {out} ({size_mb:.2f} MiB)")


if __name__ == "__main__":
    main()
