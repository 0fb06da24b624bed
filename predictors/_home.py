"""Where per-user state lives: ``$NAS_HOME``, default ``~/.local/share/nas``."""

from __future__ import annotations

import os
from pathlib import Path


def nas_home() -> Path:
    """The folder for hardware profiles, cached tables and locks (read from the environment).

    ``$NAS_HOME`` when set and non-empty, else ``~/.local/share/nas``. Nothing is created here.
    """
    env = os.environ.get("NAS_HOME", "")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "nas"
