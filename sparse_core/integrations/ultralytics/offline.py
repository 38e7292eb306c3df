"""Keep Ultralytics offline: no update checks, hub/telemetry calls, weight or font downloads.

Must be imported before ``ultralytics`` (it reads YOLO_OFFLINE at import time).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def make_offline() -> None:
    """Disable Ultralytics' networked settings and give it a local font so plots never download Arial.ttf."""
    import matplotlib
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    wanted = {"sync": False, "hub": False, "mlflow": False, "wandb": False, "clearml": False, "comet": False,
              "neptune": False, "dvc": False, "raytune": False, "tensorboard": False}
    changed = {k: v for k, v in wanted.items() if k in SETTINGS and SETTINGS[k] != v}
    if changed:
        SETTINGS.update(changed)
    # Ultralytics labels plots with Arial.ttf, downloaded on first use; DejaVuSans ships with matplotlib.
    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists() and dejavu.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(dejavu, target)
            except OSError:
                pass
