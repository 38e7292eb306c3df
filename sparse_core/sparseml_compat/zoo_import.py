"""``zoo_import(folder, stub)``: a folder laid out as SparseZoo downloads are becomes an entry of our zoo.

SparseZoo layout (what ``sparsezoo.Model(stub).download()`` wrote) → our entry file:

================================================  ==========================================================
SparseZoo folder                                  our zoo entry (``sparse_core.zoo``; sha256 in manifest.json)
================================================  ==========================================================
``training/model.pt`` (or the one ``*.pt``)      ``model.pt``: imported with ``import_sparseml`` (our format)
``deployment/model.onnx`` (else ``model.onnx``)  ``model.onnx`` as is
``recipe/recipe_<type>.md`` / ``.yaml``          ``recipe_<type>.md``: ``?recipe_type=<type>`` selects it
``deployment/recipe.yaml`` (no ``recipe/``)      ``recipe.yaml`` (type ``original``)
``model.md``                                     ``model.md`` (model card)
================================================  ==========================================================

The stub is kept as given, so a seed's ``zoo:cv/detection/yolov8-n/pytorch/ultralytics/coco/pruned49-none``
resolves to the imported entry unchanged. A checkpoint that is not SparseML's (a pickled module) is refused: it
could run code when loaded; publish our own runs with ``sparsepipe zoo publish``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sparse_core.errors import UserError
from sparse_core.sparseml_compat.importer import WEIGHTS, import_sparseml
from sparse_core.sparseml_compat.reader import is_sparseml_checkpoint

CHECKPOINTS = ("model.pt", "best.pt", "last.pt")


def _checkpoint(folder: Path) -> Path | None:
    training = folder / "training"
    for name in CHECKPOINTS:
        if (training / name).is_file():
            return training / name
    found = sorted(training.glob("*.pt")) if training.is_dir() else []
    if len(found) > 1:
        raise UserError(f"{training}: several checkpoints ({', '.join(p.name for p in found)}); expected model.pt")
    return found[0] if found else None


def _recipes(folder: Path) -> dict[str, Path]:
    out = {p.name: p for p in sorted((folder / "recipe").glob("recipe*")) if p.suffix in (".md", ".yaml", ".yml")}
    if not out and (folder / "deployment" / "recipe.yaml").is_file():
        out["recipe.yaml"] = folder / "deployment" / "recipe.yaml"
    return out


def stage(folder: str | Path, tmp: Path) -> dict[str, str]:
    """Write the entry files for ``folder`` into ``tmp``; returns entry name → source description."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; expected a SparseZoo download (training/, deployment/, recipe/)")
    plan: dict[str, str] = {}
    ckpt = _checkpoint(folder)
    if ckpt is not None:
        if not is_sparseml_checkpoint(ckpt):
            raise UserError(f"{ckpt}: not a SparseML checkpoint (source: 'sparseml', readable as data); expected the "
                            "training/model.pt SparseZoo serves — publish our own runs with 'sparsepipe zoo publish'")
        import_sparseml(ckpt, tmp / "import")
        shutil.move(str(tmp / "import" / WEIGHTS), tmp / "model.pt")
        shutil.rmtree(tmp / "import")
        plan["model.pt"] = str(ckpt)
    onnx = next((p for p in (folder / "deployment" / "model.onnx", folder / "model.onnx") if p.is_file()), None)
    if onnx is not None:
        shutil.copyfile(onnx, tmp / "model.onnx")
        plan["model.onnx"] = str(onnx)
    for name, src in _recipes(folder).items():
        shutil.copyfile(src, tmp / name)
        plan[name] = str(src)
    if (folder / "model.md").is_file():
        shutil.copyfile(folder / "model.md", tmp / "model.md")
        plan["model.md"] = str(folder / "model.md")
    if not ({"model.pt", "model.onnx"} & set(plan)):
        raise UserError(f"{folder}: no training/model.pt and no deployment/model.onnx; expected a SparseZoo download")
    return plan


def zoo_import(folder: str | Path, stub: str, zoo: str | None = None, overwrite: bool = False) -> dict:
    """Import a SparseZoo-layout ``folder`` as ``stub``; returns the published manifest (+ ``imported_from``)."""
    from sparse_core.zoo import publish

    parent = Path(tempfile.mkdtemp(prefix=".zoo-import-"))
    try:
        plan = stage(folder, parent)
        manifest = publish(parent, stub, zoo=zoo, overwrite=overwrite)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    manifest["imported_from"] = plan
    return manifest
