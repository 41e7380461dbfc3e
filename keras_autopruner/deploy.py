"""deploy: write a stripped model for serving (SavedModel or ONNX), with its
pruning report.

Both formats are written by Keras's own `model.export`, so the artifacts
need neither this package nor Keras to run: a SavedModel loads with
`tf.saved_model.load`, an ONNX file with `onnxruntime`.
"""

import json
import os
import shutil
import tempfile
import time
import uuid

from keras_autopruner import tracing
from keras_autopruner.checks import check_finite
from keras_autopruner.gate import gates_of
# Imported here so that importing keras_autopruner registers PrunedModel
# with Keras before any `.keras` file is loaded.
from keras_autopruner.pruned_model import (  # noqa: F401
    PrunedModel, attach_report)
from keras_autopruner.surgery import PruningReport, summary

REPORT_JSON = "pruning_report.json"
REPORT_MARKDOWN = "pruning_report.md"
# Key of the report (JSON) in an ONNX file's metadata_props.
ONNX_REPORT_KEY = "keras_autopruner.pruning_report"
FORMATS = ("tf_saved_model", "onnx")
# Staging folders are `.export-<pid>-<random>` beside the target; the marker
# inside says this package made them, for whom, and where they were going,
# so that a later export can remove the ones a killed process left behind.
STAGING_PREFIX = ".export-"
STAGING_MARKER = ".keras_autopruner_export.json"
# Tells this process's staging folders from those of an earlier process
# that had the same pid.
_PROCESS_TOKEN = uuid.uuid4().hex
_IN_USE = set()


def export(model, path, *, format="tf_saved_model", overwrite=False,
           report=None, verbose=False):
    """Write `model` for serving, with its pruning report.

    `format="tf_saved_model"` (default) writes a TensorFlow SavedModel
    directory through `model.export(path, format="tf_saved_model")`: it has
    a `serve` endpoint and a `serving_default` signature and loads with
    `tf.saved_model.load` in a process that has neither Keras nor
    keras_autopruner. The report goes inside the same directory, as
    `pruning_report.json` and `pruning_report.md` (TensorFlow ignores files
    it does not know).

    `format="onnx"` writes one ONNX file through `model.export(path,
    format="onnx")` (which needs the `onnx` and `tf2onnx` packages:
    `pip install keras_autopruner[deploy]`). The report's JSON is stored in
    the file's metadata, under the key `ONNX_REPORT_KEY`; onnxruntime shows
    it in `session.get_modelmeta().custom_metadata_map`.

    Either way the artifact is written beside `path` first (in a hidden
    `.export-*` staging folder) and moved into place when complete, so a
    failed export never leaves half a model, nor destroys the one already
    at `path`. A staging folder left by a process that was killed is
    removed by the next export into the same folder.

    `export` never deletes what it did not write: `overwrite=True` only
    replaces an earlier export of this package, recognised by its report
    (a SavedModel directory holding `pruning_report.json`, an ONNX file
    whose metadata holds `ONNX_REPORT_KEY`), or an empty directory. Any
    other existing path is refused, and so are the working directory, its
    parents, the home directory and `/`.

    A model that was never called (straight from `strip` or `load_model`)
    is called once on zeros of its input shape first, which Keras's ONNX
    export needs.

    Args:
        model: the stripped model (from `strip`); a model that still has
            gates, or has NaN or Inf weights, is refused.
        path: the directory (SavedModel) or file (ONNX, e.g.
            `"pruned.onnx"`) to create: a `str` or `os.PathLike`.
        format: one of `FORMATS`: `"tf_saved_model"` or `"onnx"`.
        overwrite: replace an earlier export of this package at `path`.
            Default False: an existing export is an error.
        report: a `PruningReport` to write. Default: the one the model
            carries (`model.pruning_report`, set by `strip` and kept through
            `.keras` save and load by `PrunedModel`); failing that, a report
            of the model alone, without "before" figures.
        verbose: let Keras print what it exports.

    Returns:
        The `PruningReport` written.

    Raises:
        TypeError: `path` is not a str or path (None, say).
        ValueError: unknown `format`; the model still has gates; its
            weights are not finite (`NonFiniteError`); `path` is a folder
            that must not be replaced (working directory, home, `/`), lies
            under a file, or cannot be written; or a SavedModel asked for
            on the PyTorch backend (use ONNX, or save `.keras` and export
            under TensorFlow).
        FileExistsError: `path` holds an export and `overwrite` is False,
            or holds anything else (which is never replaced).
        ImportError: `format="onnx"` without the `onnx` package (or, on
            the JAX backend, without `jax2onnx`).

    Example:

        compact = strip(gated)
        export(compact, "out/pruned")                  # SavedModel
        export(compact, "out/pruned.onnx", format="onnx")
        # elsewhere, with TensorFlow only:
        served = tf.saved_model.load("out/pruned")
        y = served.serve(x)
    """
    if format not in FORMATS:
        raise ValueError(
            f"export: unknown format {format!r}. Choose one of "
            f"{', '.join(repr(f) for f in FORMATS)}."
        )
    path = _check_path(path)
    tracing.check_traceable(model, "export")
    if gates_of(model):
        raise ValueError(
            f"export: model {model.name!r} still has AutoPrunerGate layers. "
            "Export the stripped model: export(strip(gated), path)."
        )
    check_finite(model, "export")
    _check_backend(format)
    if format == "onnx":
        _require_onnx()
    _check_existing(path, format, overwrite)
    report = _report_of(model, report)

    parent = os.path.dirname(path)
    staging = _make_staging(parent, path)
    try:
        _ensure_called(model)
        target = os.path.join(staging, "model")
        if format == "onnx":
            target += ".onnx"
            model.export(target, format="onnx", verbose=verbose)
            _store_onnx_report(target, report)
        else:
            model.export(target, format="tf_saved_model", verbose=verbose)
            with open(os.path.join(target, REPORT_JSON), "w") as f:
                f.write(report.to_json() + "\n")
            with open(os.path.join(target, REPORT_MARKDOWN), "w") as f:
                f.write(report.to_markdown())
        _move_into_place(target, path, staging)
    finally:
        _IN_USE.discard(staging)
        shutil.rmtree(staging, ignore_errors=True)
    return report


def onnx_report(path):
    """Read the pruning report that `export(..., format="onnx")` stored.

    Args:
        path: the `.onnx` file.

    Returns:
        The `PruningReport`, or None if the file has none.

    Example:

        export(compact, "pruned.onnx", format="onnx")
        print(onnx_report("pruned.onnx"))
    """
    _require_onnx()
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == ONNX_REPORT_KEY:
            return PruningReport(**json.loads(prop.value))
    return None


def _report_of(model, report):
    if report is None:
        report = getattr(model, "pruning_report", None)
    if report is None:
        report = summary(None, model, notes=[
            "No record of the model before pruning: this report only has "
            "the exported model's figures. Pass report=summary(gated, "
            "compact) to export for a comparison."
        ])
    if not isinstance(report, PruningReport):
        raise TypeError(
            "export: report must be a PruningReport (from strip or "
            f"summary), got {type(report).__name__}."
        )
    return report


def _check_backend(format):
    """Refuse, saying what to do, the backend/format pairs Keras cannot write."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch" and format == "tf_saved_model":
        # Keras's torch path to a SavedModel goes through torch.export,
        # which fails on the input structure of Keras functional models.
        raise ValueError(
            "export: a TensorFlow SavedModel cannot be written from the "
            "PyTorch backend. Either export to ONNX from here "
            "(format='onnx'), or save the model (model.save('m.keras')) and "
            "export it in a process started with KERAS_BACKEND=tensorflow: "
            "export(keras.models.load_model('m.keras'), path)."
        )
    if backend == "jax" and format == "onnx":
        try:
            import jax2onnx  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "export(format='onnx') on the JAX backend needs the jax2onnx "
                "package, which keras_autopruner does not install. Either "
                "export a SavedModel from here (the default format), or save "
                "the model (model.save('m.keras')) and export it to ONNX in a "
                "process started with KERAS_BACKEND=tensorflow."
            ) from e


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "export(format='onnx') needs the onnx and tf2onnx packages "
            f"({e}). Install them with: pip install 'keras_autopruner[deploy]'"
            " (or pip install onnx tf2onnx onnxruntime)."
        ) from e


def _store_onnx_report(path, report):
    import onnx

    model = onnx.load(path)
    props = [p for p in model.metadata_props if p.key != ONNX_REPORT_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_REPORT_KEY, report.to_json()
    onnx.save(model, path)


def _check_path(path):
    """The absolute form of `path`, or a clear error for a path not to use."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "export: path must be a str or os.PathLike naming the directory "
            "(SavedModel) or .onnx file to create, e.g. 'out/pruned'; got "
            f"{path!r} ({type(path).__name__}).")
    text = os.fspath(path)
    if not text.strip():
        raise ValueError(
            "export: path is empty. Name a new directory, e.g. 'out/pruned'.")
    absolute = os.path.abspath(os.path.expanduser(text))
    real = os.path.realpath(absolute)
    cwd = os.path.realpath(os.getcwd())
    protected = {cwd, os.path.realpath(os.path.expanduser("~")),
                 os.path.realpath(os.sep)}
    up = cwd
    while os.path.dirname(up) != up:
        up = os.path.dirname(up)
        protected.add(up)
    if real in protected:
        raise ValueError(
            f"export: refusing to write to {text!r} ({real}): it is the "
            "working directory, one of its parents, the home directory or "
            "the root, and exporting there would replace it. Name a new "
            "directory inside it instead, e.g. 'out/pruned'.")
    # The nearest existing ancestor must be a writable directory.
    ancestor = os.path.dirname(absolute)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(
            f"export: cannot write {text!r}: {ancestor!r} is a file, not a "
            "directory, so nothing can be created under it. Choose a path "
            "whose parents are directories (or do not exist yet).")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(
            f"export: cannot write {text!r}: the directory {ancestor!r} is "
            "not writable by this process. Choose a directory you can "
            "write, e.g. under your home or the working directory.")
    return absolute


def _is_our_export(path, format):
    """Whether `path` holds an earlier export of this package (`format`)."""
    if os.path.islink(path):
        return False
    if format == "tf_saved_model":
        return (os.path.isdir(path)
                and os.path.isfile(os.path.join(path, REPORT_JSON)))
    if not os.path.isfile(path):
        return False
    try:
        import onnx

        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 (not an ONNX file: not ours)
        return False
    return any(p.key == ONNX_REPORT_KEY for p in model.metadata_props)


def _describe(path):
    if os.path.islink(path):
        return f"a symbolic link to {os.readlink(path)!r}"
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return f"a directory with {len(names)} entries ({shown})"
    return f"a file of {os.path.getsize(path)} bytes"


def _check_existing(path, format, overwrite):
    """Refuse an existing `path` unless it is an export of ours to replace."""
    if not os.path.lexists(path):
        return
    empty_dir = (os.path.isdir(path) and not os.path.islink(path)
                 and not os.listdir(path))
    if empty_dir and format == "tf_saved_model":
        return  # Nothing to lose.
    if _is_our_export(path, format):
        if not overwrite:
            raise FileExistsError(
                f"export: {path!r} already holds an export. Choose another "
                "path, or pass overwrite=True to replace it.")
        return
    kind = ("a SavedModel directory with pruning_report.json"
            if format == "tf_saved_model" else
            "an ONNX file carrying this package's report")
    raise FileExistsError(
        f"export: {path!r} exists and is {_describe(path)}, not {kind} "
        "written by export, so it is left alone"
        f"{' (overwrite=True only replaces an earlier export)' if overwrite else ''}."
        " Choose a new path, or move it away yourself.")


def _make_staging(parent, path):
    """Create a marked staging folder in `parent`, first removing stale ones."""
    try:
        os.makedirs(parent, exist_ok=True)
        _clean_stale_staging(parent)
        staging = tempfile.mkdtemp(
            prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=parent)
        _IN_USE.add(staging)
        with open(os.path.join(staging, STAGING_MARKER), "w") as f:
            json.dump({"pid": os.getpid(), "process": _PROCESS_TOKEN,
                       "created": time.time(), "target": path}, f)
    except OSError as e:
        raise ValueError(
            f"export: cannot write in {parent!r} ({e.strerror or e}). Choose "
            "a directory this process can write.") from e
    return staging


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # Someone else's live process.
    return True


def _clean_stale_staging(parent):
    """Remove staging folders that a dead export process left in `parent`.

    Only folders named `.export-*` holding this package's marker are
    touched, and only when the process that made them is gone (or is an
    earlier process with this one's pid). If a kill came between moving an
    earlier export aside and moving the new one in, the earlier export is
    put back first.
    """
    for name in os.listdir(parent):
        folder = os.path.join(parent, name)
        if (not name.startswith(STAGING_PREFIX) or folder in _IN_USE
                or os.path.islink(folder) or not os.path.isdir(folder)):
            continue
        try:
            with open(os.path.join(folder, STAGING_MARKER)) as f:
                marker = json.load(f)
            pid = int(marker["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # Not provably ours: left alone.
        ours_now = pid == os.getpid() and marker.get(
            "process") == _PROCESS_TOKEN
        if ours_now or (pid != os.getpid() and _pid_alive(pid)):
            continue
        previous = os.path.join(folder, "previous")
        target = marker.get("target")
        if (isinstance(target, str) and os.path.lexists(previous)
                and not os.path.lexists(target)):
            try:
                os.replace(previous, target)
            except OSError:
                pass
        shutil.rmtree(folder, ignore_errors=True)


def _move_into_place(target, path, staging):
    """Move the finished export to `path`, replacing an earlier export."""
    if not os.path.lexists(path):
        os.replace(target, path)
        return
    # An earlier export (checked by _check_existing) or an empty directory:
    # moved aside into the staging folder first, put back if the move in
    # fails, deleted with the staging folder once the new one is in place.
    previous = os.path.join(staging, "previous")
    os.replace(path, previous)
    try:
        os.replace(target, path)
    except OSError:
        os.replace(previous, path)
        raise


def _ensure_called(model):
    """Call a never-called model once on zeros of its input shape.

    Keras's ONNX export refuses a model that was built but never called
    (straight from `strip` or `load_model`). Inference on zeros changes no
    weight (batch-norm statistics move only in training).
    """
    if getattr(model, "_called", True):
        return
    import keras
    import numpy as np

    def zeros(spec):
        shape = [1 if d is None else d for d in spec.shape]
        return np.zeros(shape, dtype=spec.dtype or "float32")

    # A functional model's inputs keep their structure (a dict of named
    # inputs, say) in `_inputs_struct`; a Sequential one has one input.
    structure = getattr(model, "_inputs_struct", None)
    if structure is None:
        inputs = getattr(model, "inputs", None) or []
        if len(inputs) != 1:
            return  # Nothing to build from: Keras says what it needs.
        structure = inputs[0]
    model(keras.tree.map_structure(zeros, structure), training=False)
