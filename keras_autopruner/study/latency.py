"""Batch-1 CPU latency of stored models, timed side by side."""

import time

import numpy as np


def measure_latencies(model_files, input_shape, runs=100, warmup=10):
    """Median batch-1 CPU latency of each model, in milliseconds.

    All models are loaded in this process and timed in interleaved rounds
    (one call of each model per round), so that load on the machine
    affects them alike and the numbers can be compared with each other.

    Args:
        model_files: `{key: path}` of `.keras` (Keras 3) or `.h5` (tf_keras)
            files.
        input_shape: shape of one example.
        runs: timed calls per model.
        warmup: untimed calls per model first (tracing, caches).

    Returns:
        `{key: milliseconds}`.
    """
    import keras
    import tensorflow as tf

    x = tf.zeros((1,) + tuple(input_shape))
    calls = {}
    for key, path in model_files.items():
        if path.endswith(".h5"):
            import tf_keras

            model = tf_keras.models.load_model(path, compile=False)
        else:
            model = keras.saving.load_model(path, compile=False)
        calls[key] = _serving_call(model)
    for call in calls.values():
        for _ in range(warmup):
            call(x)
    times = {key: [] for key in calls}
    for _ in range(max(1, runs)):
        for key, call in calls.items():
            start = time.perf_counter()
            call(x).numpy()
            times[key].append(time.perf_counter() - start)
    return {key: round(1000 * float(np.median(t)), 4)
            for key, t in times.items()}


def _serving_call(model):
    import tensorflow as tf

    @tf.function
    def call(x):
        return model(x, training=False)

    return call
