"""Run a study's runs in several local processes (`--jobs N`).

A study is a set of runs that depend on each other only through the files
they store: every method of a (seed, rate) cuts or times itself against
the seed's full model and AutoPruner's run, and `full_equal` reuses the
model of an earlier rate with the same epochs. `tasks` writes those
dependencies down; `run_in_processes` starts each run in a pool of worker
processes as soon as the runs it reads are stored. Each run seeds itself
from its key (`Study.run_method`), so a worker trains the run a single
process with the same number of threads trains; another thread count
rounds differently, and a long run drifts as far as another seed would.

Small networks on a CPU use about one core per training process, so on
a machine with C cores, N = C workers of C // N threads each finish a
study sooner than one process of C threads. The thread count is set for
TensorFlow and PyTorch; JAX keeps its own thread pool in each worker.

Example:

>>> from keras_autopruner.study import Study, make_config
>>> study = Study(make_config("tiny", methods=("full", "autopruner",
...                                            "l1")), "/tmp/unused")
>>> [(t.key, t.needs) for t in tasks(study)][:3]
[('full_s0', ()), ('autopruner_r0.5_s0', ('full_s0',)), ('l1_r0.5_s0', ('full_s0', 'autopruner_r0.5_s0'))]
"""

import collections
import concurrent.futures
import multiprocessing
import os
import time

from keras_autopruner.study.config import log, run_key

Task = collections.namedtuple("Task", "key method rate seed needs")


def tasks(study):
    """The study's runs in sequential order, each with the runs it reads.

    Args:
        study: a `Study` (its config and shard decide which runs).

    Returns:
        A list of `Task(key, method, rate, seed, needs)`; `needs` are the
        keys of the runs that must be stored before this one starts.
    """
    from keras_autopruner.study.methods import RUNNERS

    out, seen = [], set()
    equal_before = collections.defaultdict(list)

    def add(method, rate, seed, needs):
        key = run_key(method, rate, seed)
        if key not in seen:
            seen.add(key)
            out.append(Task(key, method, rate, seed, tuple(needs)))

    for seed, rate in study.units():
        full = run_key("full", None, seed)
        add("full", None, seed, ())
        ap = run_key("autopruner", rate, seed)
        for method in RUNNERS:
            if method == "full" or (method != "autopruner"
                                    and method not in study.config.methods):
                continue
            needs = [full] if method == "autopruner" else [full, ap]
            if method == "full_equal":
                # An earlier rate's run of the same epochs is reused, not
                # trained again, once it is stored.
                needs += equal_before[seed]
                equal_before[seed].append(run_key(method, rate, seed))
            add(method, rate, seed, needs)
    return out


def worker_threads(jobs, cores=None):
    """Threads per worker so that `jobs` workers share the machine's cores."""
    if cores is None:
        cores = (len(os.sched_getaffinity(0))
                 if hasattr(os, "sched_getaffinity") else os.cpu_count())
    return max(1, int(cores or 1) // int(jobs))


def run_in_processes(study, jobs):
    """Train the study's missing runs in `jobs` worker processes.

    The caller (`Study.run`) has prepared the folder; this writes only runs
    and models, each when its run ends, so an interrupted study resumes
    like a sequential one.

    Args:
        study: a prepared `Study` whose data the workers can load from its
            config (not one built with `data=`).
        jobs: worker processes, at least 2.

    Raises:
        RuntimeError: a run failed; runs stored before it are kept.
    """
    todo = [t for t in tasks(study) if study.load_run(t.key) is None]
    study.skipped.extend(t.key for t in tasks(study) if t not in todo)
    done = {t.key for t in tasks(study)} - {t.key for t in todo}
    threads = worker_threads(jobs)
    log(f"{len(todo)} runs to train in {jobs} processes of {threads} "
        f"thread{'s' if threads > 1 else ''} each")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, mp_context=context, initializer=_start_worker,
            initargs=(study.config, study.out, study.verbose,
                      threads)) as pool:
        running = {}
        while todo or running:
            for task in [t for t in todo if set(t.needs) <= done]:
                todo.remove(task)
                running[pool.submit(_run, task.method, task.rate,
                                    task.seed)] = task
            if not running:
                missing = sorted({n for t in todo for n in t.needs} - done)
                raise RuntimeError(
                    f"runs {[t.key for t in todo]} wait for {missing}, "
                    "which no run of this study makes.")
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                try:
                    future.result()
                except Exception as error:
                    for other in running:
                        other.cancel()
                    why = f"{type(error).__name__}: {error}"
                    if isinstance(error, concurrent.futures.process
                                  .BrokenProcessPool):
                        why = ("its worker process ended abruptly: killed, "
                               "out of memory, or started from a script "
                               "without an `if __name__ == \"__main__\":` "
                               "guard (each worker imports the script "
                               "that started it again)")
                    raise RuntimeError(
                        f"run {task.key} failed ({why}). The runs stored "
                        f"in {study.path('runs')} are kept; running the "
                        "study again continues from them.") from error
                done.add(task.key)
                study.ran.append(task.key)


# -- inside a worker process --
_worker = {}


def _start_worker(config, out, verbose, threads):
    # Before the backend starts its thread pools.
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
    from keras_autopruner.study.runner import Study

    _worker["study"] = Study(config, out, verbose=verbose, export=False)


def _run(method, rate, seed):
    start = time.time()
    _worker["study"].run_method(method, rate, seed)
    return time.time() - start
