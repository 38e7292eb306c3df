"""Coming from SparseML 1.x: read its checkpoints without SparseML, import them as sparsepipe checkpoints, and turn
SparseZoo-layout folders into entries of our zoo (``zoo_import.zoo_import``).

``resolve_sparseml(path)`` (``is_sparseml_checkpoint`` + ``import_sparseml``, cached by sha256) is the hook behind
``--model`` / ``--weights`` in train, val and export.
"""

from sparse_core.sparseml_compat.importer import import_sparseml, resolve_sparseml
from sparse_core.sparseml_compat.reader import SparseMLCheckpoint, is_sparseml_checkpoint, read_checkpoint

__all__ = ["SparseMLCheckpoint", "import_sparseml", "is_sparseml_checkpoint", "read_checkpoint", "resolve_sparseml"]
