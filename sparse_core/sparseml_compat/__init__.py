"""Coming from SparseML 1.x: read its checkpoints without SparseML, import them as sparsepipe checkpoints, and turn
SparseZoo-layout folders into entries of our zoo.

Public API: ``is_sparseml_checkpoint(path)``, ``read_checkpoint(path)``, ``import_sparseml(path, out)`` and
``zoo_import(folder, stub)``. ``is_sparseml_checkpoint`` + ``import_sparseml`` are the hook ``--model CKPT`` uses.
"""

from sparse_core.sparseml_compat.importer import import_sparseml
from sparse_core.sparseml_compat.reader import SparseMLCheckpoint, is_sparseml_checkpoint, read_checkpoint

__all__ = ["SparseMLCheckpoint", "import_sparseml", "is_sparseml_checkpoint", "read_checkpoint"]
