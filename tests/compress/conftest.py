"""Fixtures the compression tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.compress import save_model
from nas.compress.teacher import TeacherConfig, train_teacher


@pytest.fixture(scope="session")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet20 (width 0.25) trained for 2 epochs on 640 digits, saved by nas (seconds)."""
    cfg = TeacherConfig(
        arch="resnet20", data="digits", arch_kwargs={"width": 0.25}, epochs=2, limit=640
    )
    net, origin = train_teacher(cfg)
    weights, _ = save_model(net, tmp_path_factory.mktemp("teacher") / "r20", origin)
    return weights
