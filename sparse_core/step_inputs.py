"""What a pipeline step reads from the folders earlier steps wrote, and its parameters as KFP passes them.

Shared by every module of steps (``sparse_core.steps``, ``sensitivity.steps``), so none of them imports another
for these: a fetch_checkpoint or training output names its model here (``model_source``), a missing or broken
JSON file is one UserError naming it (``read_json``), and a KFP boolean that arrives as text is read once
(``as_bool``).
"""

from __future__ import annotations

import json
from pathlib import Path

from sparse_core.errors import UserError
from sparse_core.tracking.lineage import file_sha256


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: missing; expected the {what} written by the previous step")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def training_summary(folder: Path) -> dict:
    """A training output's summary.json ({} when the folder has none)."""
    return read_json(folder / "summary.json", "training summary") if (folder / "summary.json").is_file() else {}


def as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def model_source(checkpoint: str) -> tuple[str, str, str]:
    """(model argument for train, its sha256 or name, base lineage) from a fetch_checkpoint / training output."""
    folder = Path(checkpoint)
    if (folder / "fetch.json").is_file():
        info = read_json(folder / "fetch.json", "fetch_checkpoint output")
        if info["kind"] == "none":
            raise UserError(f"{checkpoint}: no model was fetched (empty 'model' parameter)")
        model = str(folder / info["model"]) if (folder / info["model"]).is_file() else info["model"]
        return model, info.get("sha256") or info["model"], info.get("source") or info["model"]
    if (folder / "model.pt").is_file():
        return str(folder / "model.pt"), file_sha256(folder / "model.pt"), training_summary(folder).get("base", "")
    raise UserError(f"{checkpoint}: neither fetch.json nor model.pt; expected a fetch_checkpoint or training output")


def nothing_fetched(folder: str) -> bool:
    """True for a fetch_checkpoint output of an empty ``model`` (the optional teacher left out)."""
    f = Path(folder) / "fetch.json"
    return f.is_file() and read_json(f, "fetch_checkpoint output").get("kind") == "none"
