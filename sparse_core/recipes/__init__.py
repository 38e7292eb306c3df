"""Recipes shipped with sparsepipe (``sparse_core.recipes.path(name)``).

- ``yolov8_sparse_transfer_quant.yaml``: SparseML's YOLOv8 sparse-transfer recipe, verbatim (seed 000): hold the
  zoo checkpoint's zeros (ConstantPruning) and finish with QAT.
- ``gmp_prune.yaml``: gradual magnitude pruning of every prunable layer to ``final_sparsity``.
- ``structured_prune.yaml``: structured GMP (``mask_type: filter``): whole coupled channels, thinned after training.
- ``structured_kd_50.yaml`` / ``structured_kd_75.yaml``: structured GMP to 50% / 75% of the channels distilled from
  the dense model (``--teacher``), LR held while channels go then annealed; stage 1 of 2.
- ``structured_kd_qat.yaml``: stage 2, INT8 QAT of the thinned model, distilled from the dense model.
"""

from pathlib import Path


def path(name: str) -> Path:
    return Path(__file__).with_name(name)
