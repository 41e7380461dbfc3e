"""PrunedModel: a functional model that carries its pruning report.

`strip` builds a plain functional model. Wrapping it with `attach_report`
gives the same graph, with the same layers and weights, as a `PrunedModel`:
its `get_config` holds the `PruningReport`, so the report is written into a
`.keras` file by `model.save` and comes back with `keras.models.load_model`.
The class is registered with Keras under `keras_autopruner>PrunedModel`;
importing `keras_autopruner` before `load_model` is all a reader needs.
"""

import keras


@keras.saving.register_keras_serializable(package="keras_autopruner")
class PrunedModel(keras.Model):
    """A functional `keras.Model` with a `pruning_report` attribute.

    It is built like any functional model, `PrunedModel(inputs, outputs)`,
    plus the report; it computes, trains and exports exactly as
    `keras.Model(inputs, outputs)` would.

    Args:
        *args: `inputs`, `outputs` and the rest, as for
            `keras.Model(inputs, outputs, name=...)`.
        pruning_report: a `PruningReport`, its `to_dict()`, or None.
        **kwargs: passed to `keras.Model`.

    Example:

        compact = attach_report(strip(gated), report)
        compact.save("pruned.keras")
        again = keras.models.load_model("pruned.keras")
        print(again.pruning_report)
    """

    def __init__(self, *args, pruning_report=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.pruning_report = _as_report(pruning_report)

    def get_config(self):
        config = super().get_config()
        report = self.pruning_report
        config["pruning_report"] = None if report is None else report.to_dict()
        return config


def attach_report(model, report):
    """Return `model` as a `PrunedModel` carrying `report`.

    The result shares `model`'s layers (and so its weights): nothing is
    copied or retrained. `model` itself is left as it was.

    Args:
        model: a functional or Sequential `keras.Model`, typically the
            result of `strip`.
        report: the `PruningReport` to carry (from `strip` or `summary`).

    Returns:
        A `PrunedModel` with `model`'s inputs, outputs and name, whose
        `pruning_report` is `report`.

    Example:

        compact = attach_report(compact, summary(gated, compact))
        compact.save("pruned.keras")  # the report is inside the file
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "outputs"):
        raise TypeError(
            "attach_report expects a built functional or Sequential "
            f"keras.Model, got {type(model).__name__}."
        )
    if isinstance(model, PrunedModel):
        model.pruning_report = _as_report(report)
        return model
    # `input`/`output` rather than `inputs`/`outputs`: they keep the
    # structure the model was built with (one tensor, a list or a dict),
    # which the exported serving signatures follow.
    return PrunedModel(model.input, model.output, name=model.name,
                       trainable=model.trainable, pruning_report=report)


def _as_report(report):
    # Imported here: surgery may import this module to attach its report.
    from keras_autopruner.surgery import PruningReport

    if report is None or isinstance(report, PruningReport):
        return report
    if isinstance(report, dict):
        return PruningReport(**report)
    raise TypeError(
        "pruning_report must be a PruningReport (from strip or summary), "
        f"its to_dict(), or None; got {type(report).__name__}."
    )
