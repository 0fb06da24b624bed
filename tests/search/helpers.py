"""Helpers shared by the runner and CLI tests: run ``nas`` in a subprocess with the test plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "data" / "plugin"


def nas_env(**extra: str) -> dict[str, str]:
    """Environment for a ``nas`` subprocess that sees the test plugin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_DIR), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def nas_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas.cli.main", *args]


def run_nas(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``nas ARGS`` to completion and return the result (text)."""
    return subprocess.run(
        nas_cmd(*args), capture_output=True, text=True, timeout=timeout, env=nas_env(**env)
    )
