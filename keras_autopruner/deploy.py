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

from keras_autopruner import tracing
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

    Either way the artifact is written beside `path` first and moved into
    place when complete, so a failed export never leaves half a model, nor
    destroys the one already at `path`.

    Args:
        model: the stripped model (from `strip`); a model that still has
            gates is refused.
        path: the directory (SavedModel) or file (ONNX, e.g.
            `"pruned.onnx"`) to create.
        format: one of `FORMATS`: `"tf_saved_model"` or `"onnx"`.
        overwrite: replace whatever is at `path`. Default False: an
            existing path is an error.
        report: a `PruningReport` to write. Default: the one the model
            carries (`model.pruning_report`, set by `strip` and kept through
            `.keras` save and load by `PrunedModel`); failing that, a report
            of the model alone, without "before" figures.
        verbose: let Keras print what it exports.

    Returns:
        The `PruningReport` written.

    Raises:
        ValueError: unknown `format`; the model still has gates; or a
            SavedModel asked for on the PyTorch backend (use ONNX, or save
            `.keras` and export under TensorFlow).
        FileExistsError: `path` exists and `overwrite` is False.
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
    tracing.check_traceable(model, "export")
    if gates_of(model):
        raise ValueError(
            f"export: model {model.name!r} still has AutoPrunerGate layers. "
            "Export the stripped model: export(strip(gated), path)."
        )
    _check_backend(format)
    if format == "onnx":
        _require_onnx()
    path = os.fspath(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"export: {path!r} already exists. Choose another path, or pass "
            "overwrite=True to replace it."
        )
    report = _report_of(model, report)

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
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
        if os.path.lexists(path):
            _remove(path)
        os.replace(target, path)
    finally:
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


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
