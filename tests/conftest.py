"""Shared fixtures: every test gets its own NAS_HOME and working directory, and the ``nas``
logger as it found it (an in-process CLI call attaches handlers to streams that close)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "nas_home"))
    monkeypatch.chdir(tmp_path)
    log = logging.getLogger("nas")
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    yield
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate = propagate
