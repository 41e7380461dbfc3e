"""keras_autopruner: learn which filters a Keras model can lose, remove them, export.

The public API lives here; the modules behind it are:
- gate.py        AutoPrunerGate, the learned channel code
- tracing.py     the one traced graph of a model; the only reader of
                 Keras's graph internals
- planner.py     plan: which layers get a gate, and why the others do not
- instrument.py  add_gates, the graph rewrite that inserts gates
- folding.py     folded gates: the next layer scales its kernel by the code
- objective.py   the pruning term (per-layer or global budget) and kept_fraction
- budget.py      CostModel (the stripped model's MACs/params for any masks)
                 and the exact final choice
- schedules.py   lambda and alpha schedules in optimizer steps
- callbacks.py   AutoPrunerCallback, which drives them during fit
- graph.py       channel dependency groups of a gated model
- surgery.py     strip (graph surgery), summary
- deploy.py      export: SavedModel or ONNX, with the pruning report
- pruned_model.py PrunedModel, a model that keeps its report in .keras files
- loading.py     load_model: keras.models.load_model with this package's classes
- checks.py      NonFiniteError: models with NaN/Inf weights are refused
- metrics.py     count_params, count_flops
- importance.py  importance criteria (AutoPruner, L1/L2, BN scale, Taylor,
                 random) and the Importance base class
- pruning.py     prune: one-shot pruning by a criterion to an exact budget;
                 prune_iteratively: the same in rounds with fine-tuning between
- masks.py       strip(model, keep=...) without gates, cost_share
- calibration.py recalibrate_batch_norm: statistics of the chosen network
- datasets.py    the embedded real data and loaders for user data and tfds
"""

from keras_autopruner.budget import CostModel
from keras_autopruner.calibration import recalibrate_batch_norm
from keras_autopruner.callbacks import AutoPrunerCallback
from keras_autopruner.checks import NonFiniteError
from keras_autopruner.deploy import export
from keras_autopruner.gate import AutoPrunerGate, set_hard_masks
from keras_autopruner.importance import (AutoPrunerImportance, BatchNormScale,
                                         Importance, L1Norm, L2Norm,
                                         RandomImportance, Taylor)
from keras_autopruner.instrument import add_gates, register_prunable
from keras_autopruner.loading import load_model
from keras_autopruner.masks import cost_share
from keras_autopruner.planner import Plan, PlanRow, plan
from keras_autopruner.metrics import count_flops, count_params
from keras_autopruner.objective import PruningObjective, kept_fraction
from keras_autopruner.pruning import prune, prune_iteratively
from keras_autopruner.schedules import (AlphaSchedule, LambdaController,
                                        Schedule, StepLambda)
from keras_autopruner.surgery import PruningReport, strip, summary
from keras_autopruner.surgery import SoftCodesError
from keras_autopruner.registry import LayerType

__version__ = "0.1.0"
