"""Shared fixtures: every test gets its own NAS_HOME and working directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "nas_home"))
    monkeypatch.chdir(tmp_path)
    yield
