"""Image classification sets of `tensorflow_datasets` as `tf.data` pipelines.

TensorFlow and tensorflow-datasets are imported only when a pipeline is
built, so importing this module stays cheap.
"""

import numpy as np

# Per-channel RGB statistics of ImageNet, for `normalization="imagenet"`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    ...                          training=True, normalization="imagenet",
    ...                          download=False)  # doctest: +SKIP
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
