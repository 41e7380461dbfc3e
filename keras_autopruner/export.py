"""export: write a stripped model as a TensorFlow SavedModel, with a report."""

import os
import shutil
import tempfile

from keras_autopruner import tracing
from keras_autopruner.gate import gates_of
from keras_autopruner.surgery import PruningReport, summary

REPORT_JSON = "pruning_report.json"
REPORT_MARKDOWN = "pruning_report.md"


def export(model, path, *, overwrite=False, report=None, verbose=False):
    """Write `model` as a TensorFlow SavedModel, with a pruning report.

    The SavedModel is written by Keras's own `model.export(path,
    format="tf_saved_model")`: it has a `serve` endpoint and a
    `serving_default` signature, and loads with `tf.saved_model.load` in a
    process that has neither Keras nor keras_autopruner. The report goes
    inside the same directory, as `pruning_report.json` and
    `pruning_report.md` (TensorFlow ignores files it does not know), so the
    model and the account of its pruning travel together.

    The export is written to a temporary directory beside `path` and moved
    into place when complete, so a failed export never leaves half a model,
    nor destroys the one already at `path`.

    Args:
        model: the stripped model (from `strip`); a model that still has
            gates is refused.
        path: the directory to create.
        overwrite: replace whatever is at `path`. Default False: an
            existing path is an error.
        report: a `PruningReport` to write. Default: the one `strip`
            attached to the model (`model.pruning_report`); failing that, a
            report of the model alone, without "before" figures.
        verbose: let Keras print the endpoints it exports.

    Returns:
        The `PruningReport` written.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
        ValueError: the model still has gates.

    Example:

    >>> compact = strip(gated)
    >>> export(compact, "out/vgg16_pruned")
    >>> # elsewhere, with TensorFlow only:
    >>> served = tf.saved_model.load("out/vgg16_pruned")
    >>> y = served.serve(x)
    """
    tracing.check_traceable(model, "export")
    if gates_of(model):
        raise ValueError(
            f"export: model {model.name!r} still has AutoPrunerGate layers. "
            "Export the stripped model: export(strip(gated), path)."
        )
    path = os.fspath(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"export: {path!r} already exists. Choose another path, or pass "
            "overwrite=True to replace it."
        )
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

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        target = os.path.join(staging, "model")
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


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
