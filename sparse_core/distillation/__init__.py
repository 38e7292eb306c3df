"""Knowledge distillation for recipes: output KD (DistillationModifier / OutputDistillationModifier) and feature
imitation (PerLayerDistillationModifier), from the teacher named by ``--teacher`` (path, zoo: stub, self, disable).

Not Ultralytics' own ``distill_model`` (8.4): it wraps the model as ``student_model``, which renames every parameter
and module (recipes and pruning masks address them by name) and fixes the loss to its head-feature L2; SparseML
recipes pair named layers and use KL output KD. See ``handler`` for the formulas.
"""

from sparse_core.distillation.handler import (
    DistillCriterion,
    Distiller,
    OutputDistillationHandler,
    PerLayerDistillationHandler,
)
from sparse_core.distillation.teacher import load_teacher, resolve_spec
from sparse_core.modifiers.registry import register_executor

for _name in ("DistillationModifier", "OutputDistillationModifier"):
    register_executor(_name, OutputDistillationHandler)
register_executor("PerLayerDistillationModifier", PerLayerDistillationHandler)

__all__ = ["DistillCriterion", "Distiller", "OutputDistillationHandler", "PerLayerDistillationHandler",
           "load_teacher", "resolve_spec"]
