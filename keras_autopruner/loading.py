"""load_model: `keras.models.load_model` that knows this package's classes."""

import keras

from keras_autopruner.callbacks import AutoPrunerCallback
from keras_autopruner.folding import ScaledInputs
from keras_autopruner.gate import AutoPrunerGate
from keras_autopruner.pruned_model import PrunedModel
from keras_autopruner.schedules import (AlphaSchedule, LambdaController,
                                        StepLambda)

# The names Keras writes into a `.keras` file for this package's classes.
CUSTOM_OBJECTS = {
    f"keras_autopruner>{cls.__name__}": cls
    for cls in (AutoPrunerGate, ScaledInputs, PrunedModel,
                AutoPrunerCallback, AlphaSchedule, LambdaController,
                StepLambda)
}


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a `.keras` file holding gates or a `PrunedModel`.

    A thin wrapper of `keras.models.load_model` that passes this package's
    serializable classes (`AutoPrunerGate`, `PrunedModel`, the schedules)
    as `custom_objects`. `keras.models.load_model` alone also works, but
    only once `keras_autopruner` is imported: without it Keras reports only
    that the gate layer "could not be deserialized".

    Args:
        filepath: the `.keras` file.
        custom_objects: more classes for Keras (your own layers); they take
            precedence over this package's.
        compile: compile the model with its saved optimizer and loss.
        safe_mode: Keras's guard against loading lambdas' bytecode.

    Returns:
        The model: a gated model (resumes pruning with a new
        `AutoPrunerCallback`) or a stripped `PrunedModel`, with its report.

    Example:

        gated.save("run.keras")
        again = kap.load_model("run.keras")
        again.fit(x, y, callbacks=[kap.AutoPrunerCallback()])
    """
    objects = dict(CUSTOM_OBJECTS)
    objects.update(custom_objects or {})
    return keras.models.load_model(filepath, custom_objects=objects,
                                   compile=compile, safe_mode=safe_mode)
