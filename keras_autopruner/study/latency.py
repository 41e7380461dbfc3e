"""CPU speed of stored models, timed side by side: batch-1 latency (what
an online caller waits) and batch-256 throughput (where compute, not
per-call overhead, dominates, so the MACs a pruned model saves show)."""

import time

import numpy as np


def measure_speed(model_files, input_shape, runs=100, warmup=10,
                  batch=256):
    """Batch-1 latency and batch-`batch` throughput of each model.

    Both are timed in interleaved rounds (see `measure_latencies`).

    Args:
        model_files: `{key: path}` of `.keras` or `.h5` files.
        input_shape: shape of one example.
        runs: timed batch-1 calls per model; the large batch takes a tenth
            as many (at least 3).
        warmup: untimed calls per model first.
        batch: the large batch.

    Returns:
        `{key: {"latency_ms": float, "throughput": examples per second}}`.

    Example:

        speed = measure_speed({"full": "full.keras"}, (28, 28, 1), runs=20)
        speed["full"]["throughput"]
    """
    latency = measure_latencies(model_files, input_shape, runs, warmup)
    seconds = _median_seconds(model_files, (batch,) + tuple(input_shape),
                              max(3, runs // 10), max(1, warmup // 5))
    return {key: {"latency_ms": latency[key],
                  "throughput": round(batch / seconds[key], 1)}
            for key in model_files}


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
    seconds = _median_seconds(model_files, (1,) + tuple(input_shape), runs,
                              warmup)
    return {key: round(1000 * s, 4) for key, s in seconds.items()}


def _median_seconds(model_files, shape, runs, warmup):
    import keras
    import tensorflow as tf

    x = tf.zeros(shape)
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
    return {key: float(np.median(t)) for key, t in times.items()}


def _serving_call(model):
    import tensorflow as tf

    @tf.function
    def call(x):
        return model(x, training=False)

    return call
