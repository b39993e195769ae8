"""Make ultralytics run fully offline and write only inside a folder of ours.

ultralytics reads its configuration folder, offline switch and auto-install switch from the
environment *when it is first imported*, tries to download ``Arial.ttf`` when a dataset check
needs a font, and ships telemetry/logger integrations that are on by default. Every user of
ultralytics in this project (``pipelines.tasks.ggo``, ``training``, tests) goes through
:func:`prepare_ultralytics` so that none of that ever reaches the network or ``$HOME``
(see STACK.md, "ultralytics fully offline").
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_PREPARED_DIR: Path | None = None

# Any TTF will do: ultralytics only needs a file named Arial.ttf to exist (STACK.md).
_FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
)

# Logger integrations ultralytics turns on by default; each could import a client that phones home.
_INTEGRATIONS_OFF = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


def default_state_dir() -> Path:
    """``$CXR_NODE_STATE_DIR``, else ``$XDG_CACHE_HOME/cxr-node``, else ``~/.cache/cxr-node``."""
    explicit = os.environ.get("CXR_NODE_STATE_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cxr-node"


def _font_source() -> Path | None:
    for candidate in _FONT_CANDIDATES:
        if candidate.is_file():
            return candidate
    try:  # matplotlib ships DejaVuSans; it is installed as an ultralytics dependency
        import matplotlib

        bundled = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if bundled.is_file():
            return bundled
    except ImportError:
        pass
    return None


def prepare_ultralytics(state_dir: Path | str | None = None) -> ModuleType:
    """Configure and import ultralytics offline; return the ``ultralytics`` module.

    ``state_dir`` (default :func:`default_state_dir`) receives ``ultralytics/`` with the config
    folder, weights, runs and datasets folders. Calling again is cheap; a second call with another
    folder keeps the first (ultralytics has read its environment already) and logs a warning.
    """
    global _PREPARED_DIR
    root = Path(state_dir) if state_dir is not None else default_state_dir()
    base = (root / "ultralytics").resolve()
    with _LOCK:
        if _PREPARED_DIR is not None:
            if _PREPARED_DIR != base:
                log.warning("ultralytics already configured with %s; ignoring %s", _PREPARED_DIR, base)
            return sys.modules["ultralytics"]
        config_dir = base / "config"
        font_dir = config_dir / "Ultralytics"
        font_dir.mkdir(parents=True, exist_ok=True)
        arial = font_dir / "Arial.ttf"
        if not arial.is_file():
            source = _font_source()
            if source is None:
                log.warning("no TTF font to stand in for Arial.ttf; ultralytics may try a download")
            else:
                shutil.copyfile(source, arial)
        if "ultralytics" in sys.modules and os.environ.get("YOLO_CONFIG_DIR") != str(config_dir):
            log.warning("ultralytics imported before prepare_ultralytics(): config dir may be elsewhere")
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "0"
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
        os.environ.setdefault("YOLO_VERBOSE", "False")
        import ultralytics
        from ultralytics.utils import SETTINGS

        update = {
            "sync": False,
            "datasets_dir": str(base / "datasets"),
            "weights_dir": str(base / "weights"),
            "runs_dir": str(base / "runs"),
        }
        update.update({name: False for name in _INTEGRATIONS_OFF})
        SETTINGS.update(update)
        _PREPARED_DIR = base
        return ultralytics
