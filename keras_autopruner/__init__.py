"""keras_autopruner: learn which filters a Keras model can lose, remove them, export.

The public API lives here; the modules behind it are:
- gate.py        AutoPrunerGate, the learned channel code
- instrument.py  add_gates, the graph rewrite that inserts gates
- objective.py   the pruning term and kept_fraction
- schedules.py   lambda and alpha schedules (step schedule, controller)
- callbacks.py   AutoPrunerCallback, which drives them during fit
- graph.py       channel dependency groups of a gated model
- surgery.py     strip (graph surgery), summary
- export.py      export: SavedModel and pruning report
- metrics.py     count_params, count_flops
- datasets.py    the embedded real data and loaders for user data and tfds
"""

from keras_autopruner.callbacks import AutoPrunerCallback
from keras_autopruner.export import export
from keras_autopruner.gate import AutoPrunerGate, set_hard_masks
from keras_autopruner.instrument import add_gates, register_prunable
from keras_autopruner.metrics import count_flops, count_params
from keras_autopruner.objective import PruningObjective, kept_fraction
from keras_autopruner.schedules import AlphaSchedule, LambdaController, StepLambda
from keras_autopruner.surgery import PruningReport, strip, summary

__version__ = "0.1.0"
