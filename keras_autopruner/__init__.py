"""keras_autopruner: learn which filters a Keras model can lose, remove them, export.

The public API lives here; the modules behind it are:
- gate.py        AutoPrunerGate, the learned channel code
- instrument.py  add_gates, the graph rewrite that inserts gates
- objective.py   the pruning term and kept_fraction
- schedules.py   lambda and alpha schedules (step schedule, controller)
- callbacks.py   AutoPrunerCallback, which drives them during fit
"""

from keras_autopruner.callbacks import AutoPrunerCallback
from keras_autopruner.gate import AutoPrunerGate, set_hard_masks
from keras_autopruner.instrument import add_gates, register_prunable
from keras_autopruner.objective import PruningObjective, kept_fraction
from keras_autopruner.schedules import AlphaSchedule, LambdaController, StepLambda

__version__ = "0.1.0"
