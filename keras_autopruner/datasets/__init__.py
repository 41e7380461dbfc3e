"""Loaders for the real data sets the examples, tests, study and benches use.

- `fashion_mnist`: Fashion-MNIST as NumPy arrays, from the subset shipped
  with the package (the default, so everything works offline), from a
  directory holding the official IDX files, or from an `.npz`.
- `tabular`: tabular classification data from a CSV (optionally gzipped),
  `.npz` or `.npy`, split into stratified train/test parts and
  standardised. The default is the shipped UCI Letter Recognition file.
- `images`: any image classification set of `tensorflow_datasets`, as a
  batched `tf.data.Dataset` with the usual crop/flip augmentation.
- `study_data`: the comparison study's data (`StudyData`,
  `load_study_data`), built on the loaders above.

TensorFlow and tensorflow-datasets are imported only when a tfds pipeline
is built, so the NumPy loaders stay cheap to import.
"""

from keras_autopruner.datasets.fashion_mnist import (
    DATA_DIR, DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASS_NAMES,
    FASHION_MNIST_SUBSET, default_fashion_mnist_path,
    load_fashion_mnist, read_idx)
from keras_autopruner.datasets.images import (IMAGENET_MEAN, IMAGENET_STD,
                                              load_tfds_images)
from keras_autopruner.datasets.study_data import StudyData, load_study_data
from keras_autopruner.datasets.tabular import (LETTER_RECOGNITION_CSV,
                                               load_tabular)

__all__ = [
    "DATA_DIR",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASS_NAMES",
    "FASHION_MNIST_SUBSET",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LETTER_RECOGNITION_CSV",
    "StudyData",
    "default_fashion_mnist_path",
    "load_fashion_mnist",
    "load_study_data",
    "load_tabular",
    "load_tfds_images",
    "read_idx",
]
