"""Pruning under `keras.distribution.DataParallel` on JAX, against one device.

Run by `tests/test_distribution.py` in subprocesses, because JAX's devices
and processes are fixed before JAX starts:

    # two CPU devices in one process: one-device run, then DataParallel
    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \\
        python tests/distribution_checks.py --out /tmp/one_host.json

    # two processes on localhost, one CPU device each (run both)
    KERAS_BACKEND=jax python tests/distribution_checks.py --num_processes=2 \\
        --process_id=0 --coordinator=localhost:12345 --out /tmp/p0.json

Every process writes the gates' masks and the lambda/alpha logs as JSON.
"""

import json
import warnings

from absl import app, flags

flags.DEFINE_string("out", None, "Where to write the JSON result.")
flags.DEFINE_integer("num_processes", 1, "Processes in the jax.distributed "
                     "job; 1 runs both runs in this process.")
flags.DEFINE_integer("process_id", 0, "This process's index in the job.")
flags.DEFINE_string("coordinator", "localhost:12345",
                    "host:port of process 0, for jax.distributed.")
FLAGS = flags.FLAGS

GLOBAL_BATCH = 64
STEPS = 20


def data():
    from keras_autopruner.datasets import load_tabular

    (x, y), _, _ = load_tabular()
    n = GLOBAL_BATCH * STEPS
    return x[:n].astype("float32"), y[:n]


def local_share(array, process_id, num_processes):
    """This process's part of every global batch, batch after batch.

    Keras on JAX builds each global batch from the processes' local
    batches in process order, so these local arrays, fitted with
    `batch_size=GLOBAL_BATCH // num_processes`, make the same global
    batches as the whole array with `batch_size=GLOBAL_BATCH`.
    """
    per = GLOBAL_BATCH // num_processes
    batches = array.reshape((STEPS, num_processes, per) + array.shape[1:])
    return batches[:, process_id].reshape((-1,) + array.shape[1:])


def prune(x, y, batch_size):
    import keras

    import keras_autopruner as kap
    from keras_autopruner.gate import gates_of

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu", name="h1"),
        keras.layers.Dense(32, activation="relu", name="h2"),
        keras.layers.Dense(26, activation="softmax", name="out"),
    ])
    gated = kap.add_gates(model, target_rate=0.5)
    gated.compile(keras.optimizers.Adam(3e-3),
                  "sparse_categorical_crossentropy")
    cb = kap.AutoPrunerCallback(objective="layer", control_every=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "AutoPrunerCallback")
        history = gated.fit(x, y, batch_size=batch_size, epochs=3,
                            shuffle=False, verbose=0, callbacks=[cb])
    return {
        "masks": {g.name: g.mask().astype(int).tolist()
                  for g in gates_of(gated)},
        "lambda": history.history["lambda"],
        "alpha": history.history["alpha"],
        "loss": history.history["loss"],
        # Devices holding a copy of the weights: 2 when DataParallel is on.
        "weight_devices": len(gated.trainable_weights[0].value.sharding
                              .device_set),
    }


def main(argv):
    del argv
    import jax
    import keras

    out = {}
    x, y = data()
    if FLAGS.num_processes == 1:
        out["devices"] = len(jax.devices())
        out["one_device"] = prune(x, y, GLOBAL_BATCH)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices()))
        out["data_parallel"] = prune(x, y, GLOBAL_BATCH)
    else:
        keras.distribution.initialize(
            job_addresses=FLAGS.coordinator,
            num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
        out["devices"] = len(jax.devices())
        # Each process feeds its own share of every batch (local_share), so
        # Keras must not shard the data again.
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=jax.devices(), auto_shard_dataset=False))
        out["data_parallel"] = prune(
            local_share(x, FLAGS.process_id, FLAGS.num_processes),
            local_share(y, FLAGS.process_id, FLAGS.num_processes),
            GLOBAL_BATCH // FLAGS.num_processes)
    with open(FLAGS.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    flags.mark_flag_as_required("out")
    app.run(main)
