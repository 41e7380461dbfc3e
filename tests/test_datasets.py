"""Tests for `keras_autopruner.datasets`; all run offline.

The full Fashion-MNIST files are never required: IDX directories are
written into `tmp_path`, and tfds data sets are mocked from their code.
"""

import gzip
import os
import struct

import numpy as np
import pandas as pd
import pytest

from keras_autopruner import datasets
from keras_autopruner.datasets import load_fashion_mnist
from keras_autopruner.datasets import load_tabular
from keras_autopruner.datasets import load_tfds_images


def write_idx(path, array):
    """Writes `array` (uint8) in IDX format, gzipped if `path` ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "y_train": np.arange(20, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "y_test": np.arange(10, dtype=np.uint8),
    }


def test_embedded_subset_shapes_and_balance():
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    assert x_train.shape == (10000, 28, 28) and x_train.dtype == np.uint8
    assert x_test.shape == (2000, 28, 28) and x_test.dtype == np.uint8
    assert y_train.shape == (10000,) and y_test.shape == (2000,)
    assert np.issubdtype(y_train.dtype, np.integer)
    assert np.bincount(y_train).tolist() == [1000] * 10
    assert np.bincount(y_test).tolist() == [200] * 10
    # Real images, not blanks: pixels span the full range.
    assert x_train.min() == 0 and x_train.max() == 255
    assert len(datasets.FASHION_MNIST_CLASS_NAMES) == 10


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory(tmp_path, gz):
    arrays = fake_fashion_arrays()
    for key, stem in datasets.fashion_mnist._FASHION_MNIST_FILES.items():
        write_idx(tmp_path / (stem + (".gz" if gz else "")), arrays[key])
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    np.testing.assert_array_equal(y_train, arrays["y_train"])
    np.testing.assert_array_equal(x_test, arrays["x_test"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert x_train.dtype == np.uint8


def test_idx_truncated_file_is_rejected(tmp_path):
    path = tmp_path / "t.gz"
    write_idx(path, np.zeros((3, 4, 4), np.uint8))
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        datasets.read_idx(path)


def test_npz_round_trip(tmp_path):
    arrays = fake_fashion_arrays(1)
    np.savez_compressed(tmp_path / "f.npz", **arrays)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(
        str(tmp_path / "f.npz")
    )
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path)  # empty directory
    with pytest.raises(FileNotFoundError, match="IDX"):
        load_fashion_mnist(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((1, 28, 28)))
    with pytest.raises(ValueError, match="y_train"):
        load_fashion_mnist(tmp_path / "bad.npz")


def test_default_fashion_mnist_path_finds_debians_folder(tmp_path,
                                                        monkeypatch):
    module = datasets.fashion_mnist
    arrays = fake_fashion_arrays(2)
    for key, stem in module._FASHION_MNIST_FILES.items():
        write_idx(tmp_path / (stem + ".gz"), arrays[key])
    monkeypatch.setattr(module, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path))
    path = datasets.default_fashion_mnist_path()
    assert path == str(tmp_path)
    (x_train, _), _ = load_fashion_mnist(path)
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    monkeypatch.setattr(module, "DEBIAN_FASHION_MNIST_DIR",
                        str(tmp_path / "not_installed"))
    assert datasets.default_fashion_mnist_path() is None


def test_tabular_embedded_letters():
    (x_train, y_train), (x_test, y_test), names = load_tabular()
    assert x_train.shape == (16000, 16) and x_test.shape == (4000, 16)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert names == [chr(ord("A") + i) for i in range(26)]
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(x_train.std(axis=0), 1.0, atol=1e-3)
    # Stratified: every letter keeps its share of the test split.
    train_share = np.bincount(y_train, minlength=26) / len(y_train)
    test_share = np.bincount(y_test, minlength=26) / len(y_test)
    np.testing.assert_allclose(train_share, test_share, atol=0.002)


def write_small_csv(path):
    rng = np.random.default_rng(3)
    labels = np.array(["cat"] * 30 + ["ant"] * 20 + ["bee"] * 10)
    frame = pd.DataFrame(
        {
            "a": rng.normal(5.0, 2.0, 60),
            "b": np.arange(60, dtype=np.int64),
            "const": np.ones(60),
            "kind": labels,
        }
    )
    frame.to_csv(path, index=False)
    return frame


@pytest.mark.parametrize("name", ["small.csv", "small.csv.gz"])
def test_tabular_small_csv(tmp_path, name):
    frame = write_small_csv(tmp_path / name)
    (x_train, y_train), (x_test, y_test), names = load_tabular(
        tmp_path / name, label="kind", test_fraction=0.2, seed=1
    )
    assert names == ["ant", "bee", "cat"]
    assert x_train.shape == (48, 3) and x_test.shape == (12, 3)
    assert np.bincount(y_test).tolist() == [4, 2, 6]
    assert np.bincount(y_train).tolist() == [16, 8, 24]
    # Standardised with train statistics only: train is exactly centred,
    # test is mapped with the same affine transform.
    np.testing.assert_allclose(x_train[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_train[:, :2].std(axis=0), 1.0, atol=1e-5)
    # Column "b" is the row number. Standardising is increasing and affine
    # and the two splits hold every row once, so sorting pairs each value
    # with its row and a line fit recovers the mean and std that were used.
    x_all = np.sort(np.concatenate([x_train[:, 1], x_test[:, 1]]))
    std, mean = np.polyfit(x_all, np.arange(60.0), 1)
    train_rows = np.rint(x_train[:, 1] * std + mean).astype(int)
    test_rows = np.rint(x_test[:, 1] * std + mean).astype(int)
    assert sorted(train_rows.tolist() + test_rows.tolist()) == list(range(60))
    np.testing.assert_allclose(mean, train_rows.mean(), rtol=1e-5)
    np.testing.assert_allclose(std, train_rows.std(), rtol=1e-5)
    np.testing.assert_array_equal(x_train[:, 2], 0.0)  # constant column
    # Labels follow the rows they came from.
    kinds = frame["kind"].to_numpy()
    assert [names[i] for i in y_train] == kinds[train_rows].tolist()
    # Same seed, same split; other seed, other split.
    again = load_tabular(tmp_path / name, label="kind", test_fraction=0.2, seed=1)
    np.testing.assert_array_equal(again[0][0], x_train)
    other = load_tabular(tmp_path / name, label="kind", test_fraction=0.2, seed=2)
    assert not np.array_equal(other[0][0], x_train)


def test_tabular_npz_and_npy(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.repeat([3, 7], 10)
    np.savez(tmp_path / "t.npz", x=x, y=y)
    (x_train, y_train), (x_test, _), names = load_tabular(tmp_path / "t.npz")
    assert names == [3, 7] and set(y_train.tolist()) == {0, 1}
    assert x_train.shape == (16, 2) and x_test.shape == (4, 2)
    np.save(tmp_path / "t.npy", np.column_stack([x, y]))
    (x_train, y_train), _, names = load_tabular(tmp_path / "t.npy")
    assert names == [3.0, 7.0] and x_train.shape == (16, 2)


def test_tabular_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tabular(tmp_path / "nope.csv", label="y")
    write_small_csv(tmp_path / "s.csv")
    with pytest.raises(KeyError, match="available columns.*kind"):
        load_tabular(tmp_path / "s.csv", label="species")
    with pytest.raises(ValueError, match="label="):
        load_tabular(tmp_path / "s.csv")
    pd.DataFrame({"f": ["x", "y"] * 5, "g": range(10), "y": [0, 1] * 5}).to_csv(
        tmp_path / "text.csv", index=False
    )
    with pytest.raises(ValueError, match=r"\['f'\] .* not numeric"):
        load_tabular(tmp_path / "text.csv", label="y")
    with pytest.raises(ValueError, match="test_fraction"):
        load_tabular(test_fraction=1.0)


def test_shipped_data_files_exist():
    for name in ("fashion_mnist_subset.npz", "letterrecognition.csv.gz", "README.md"):
        path = os.path.join(datasets.DATA_DIR, name)
        assert os.path.isfile(path), path
    assert os.path.getsize(datasets.FASHION_MNIST_SUBSET) < 8 * 2**20


@pytest.fixture(scope="module")
def tfds_mock():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(
        num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        yield


@pytest.mark.parametrize("training", [True, False])
def test_tfds_birds_mocked(tfds_mock, training):
    ds = load_tfds_images(
        "caltech_birds2011", "train", 32, batch_size=4, training=training, seed=0
    )
    images, labels = next(iter(ds))
    assert images.shape == (4, 32, 32, 3)
    assert images.dtype.name == "float32" and labels.dtype.name == "int64"
    assert float(images.numpy().min()) >= 0.0
    assert float(images.numpy().max()) <= 1.0
    assert labels.numpy().min() >= 0 and labels.numpy().max() < 200
    assert sum(int(b[0].shape[0]) for b in ds) == 6


def test_tfds_fashion_mnist_mocked_channels_and_norm(tfds_mock):
    ds = load_tfds_images(
        "fashion_mnist",
        "test",
        (24, 20),
        batch_size=3,
        training=False,
        channels=3,
        normalization="imagenet",
    )
    images, labels = next(iter(ds))
    assert images.shape == (3, 24, 20, 3)
    values = images.numpy()
    # (x - mean) / std with x in [0, 1] bounds every channel.
    assert values.min() >= (0 - 0.485) / 0.229 - 1e-5
    assert values.max() <= (1 - 0.406) / 0.225 + 1e-5
    grey = load_tfds_images("fashion_mnist", "train", 28, 2, training=True)
    images, _ = next(iter(grey))
    assert images.shape == (2, 28, 28, 1)
    per_image = load_tfds_images(
        "fashion_mnist", "test", 16, 2, training=False, normalization="per_image"
    )
    images, _ = next(iter(per_image))
    np.testing.assert_allclose(images.numpy().mean(axis=(1, 2, 3)), 0.0, atol=1e-4)


def test_tfds_argument_errors(tfds_mock):
    with pytest.raises(ValueError, match="imagenet"):
        load_tfds_images(
            "fashion_mnist", "test", 8, 2, False, normalization="imagenet"
        )
    with pytest.raises(ValueError, match="channels"):
        load_tfds_images("fashion_mnist", "test", 8, 2, False, channels=2)
    with pytest.raises(ValueError, match="normalization"):
        load_tfds_images("fashion_mnist", "test", 8, 2, False, normalization="z")



def test_study_data_from_tfds_counts_its_steps(tfds_mock):
    from keras_autopruner import study

    config = study.make_config("tiny", dataset="caltech_birds2011",
                               image_size=32, batch_size=4,
                               train_examples=5, test_examples=4)
    data = datasets.load_study_data(config)
    assert data.input_shape == (32, 32, 3)
    assert data.num_classes == 200
    # 5 examples in batches of 4: a full batch and a remainder.
    assert data.steps_per_epoch(config.batch_size) == 2
    (train,), kwargs = data.fit_args(seed=0, batch_size=4)
    assert kwargs == {"shuffle": False}
    images, labels = next(iter(train))
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4,)
    assert sum(1 for _ in train) == 2
    (test,), _ = data.eval_args(batch_size=4)
    images, _ = next(iter(test))
    assert images.shape == (4, 32, 32, 3)


def test_study_data_steps_per_epoch():
    import tensorflow as tf

    x, y = np.zeros((100, 2), "float32"), np.zeros(100, "int64")
    arrays = datasets.StudyData("arrays", (2,), 2, (x, y), (x, y),
                                train_size=100)
    assert arrays.steps_per_epoch(32) == 4
    assert arrays.steps_per_epoch(100) == 1

    def unknown_length(seed):
        # filter hides the length from tf.data: 5 kept, batches of 2.
        return tf.data.Dataset.range(10).filter(
            lambda v: v % 2 == 0).batch(2)

    assert int(unknown_length(0).cardinality()) == (
        tf.data.UNKNOWN_CARDINALITY)
    piped = datasets.StudyData("pipe", (), 2, unknown_length, lambda: None)
    assert piped.steps_per_epoch(batch_size=999) == 3

    forever = datasets.StudyData(
        "forever", (), 2, lambda seed: tf.data.Dataset.range(3).repeat(),
        lambda: None)
    with pytest.raises(ValueError, match="repeats forever"):
        forever.steps_per_epoch(batch_size=1)
    empty = datasets.StudyData(
        "empty", (), 2, lambda seed: tf.data.Dataset.range(0).batch(2),
        lambda: None)
    with pytest.raises(ValueError, match="no batch"):
        empty.steps_per_epoch(batch_size=1)
