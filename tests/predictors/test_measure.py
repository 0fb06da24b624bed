"""Latency measurement: timing fields, both backends, no side effects, the machine-wide lock."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nas.predictors.measure import (
    MeasureError,
    Timing,
    available_cores,
    lock_path,
    measure_latency,
    measurement_lock,
    noise_floor,
    worker_threads,
)

SHAPE = (3, 16, 16)
QUICK = {"warmup": 2, "runs": 5, "threads": 1}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _check(t: Timing, runs: int) -> None:
    assert len(t.runs_ms) == runs
    assert all(r > 0 for r in t.runs_ms)
    assert min(t.runs_ms) <= t.p10_ms <= t.median_ms <= t.p90_ms <= max(t.runs_ms)
    assert t.spread_pct >= 0


def test_timing_fields() -> None:
    t = measure_latency(_net(), SHAPE, batch_size=2, **QUICK)
    _check(t, 5)
    assert (t.backend, t.device, t.batch_size, t.threads) == ("torch", "cpu", 2, 1)


def test_onnxruntime_backend() -> None:
    t = measure_latency(_net(), SHAPE, backend="onnxruntime", **QUICK)
    _check(t, 5)
    assert t.backend == "onnxruntime"


def test_no_side_effects() -> None:
    torch.set_num_threads(1)
    net = _net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    t = measure_latency(net, SHAPE, warmup=1, runs=2, threads=2)
    assert t.threads == 2
    assert torch.get_num_threads() == 1
    assert net.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_threads_default_to_all_cores() -> None:
    assert measure_latency(_net(), SHAPE, warmup=0, runs=1).threads == available_cores()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "tvm"}, "unknown backend 'tvm'"),
        ({"runs": 0}, "runs >= 1"),
        ({"threads": 0}, "threads >= 1"),
        ({"device": "mps"}, "cannot measure on device"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MeasureError, match=match):
        measure_latency(_net(), SHAPE, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_missing_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        measure_latency(_net(), SHAPE, device="cuda")


def test_worker_threads() -> None:
    cores = available_cores()
    assert worker_threads(1) == cores
    assert worker_threads(cores * 4) == 1
    with pytest.raises(MeasureError, match="n_workers"):
        worker_threads(0)


def test_lock_lives_in_nas_home(tmp_path: Path) -> None:
    with measurement_lock() as path:
        assert path == lock_path() == tmp_path / "nas_home" / "locks" / "measure.lock"
        assert path.exists()


_TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a+b") as fh:
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(3)
"""


def _other_process_gets_lock() -> bool:
    code = subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, str(lock_path())], timeout=30
    ).returncode
    assert code in (0, 3)
    return code == 0


def test_lock_excludes_other_processes() -> None:
    with measurement_lock():
        assert not _other_process_gets_lock()
    assert _other_process_gets_lock()


def test_lock_excludes_other_threads_and_is_reentrant() -> None:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with measurement_lock(timeout=0.2):
                pass
        except BaseException as e:
            errors.append(e)

    with measurement_lock(), measurement_lock():  # the same thread may take it again
        worker = threading.Thread(target=other)
        worker.start()
        worker.join(10)
        # measuring while holding the lock does not wait for itself
        measure_latency(_net(), SHAPE, warmup=0, runs=1, threads=1)
    assert len(errors) == 1 and isinstance(errors[0], TimeoutError)
    with measurement_lock(timeout=1):  # released on exit
        pass


def test_noise_floor() -> None:
    nf = noise_floor(_net(), SHAPE, repeats=10, **QUICK)
    assert len(nf.medians_ms) == 10
    assert min(nf.medians_ms) <= nf.median_ms <= max(nf.medians_ms)
    assert nf.spread_pct >= 0 and nf.cv_pct >= 0
    with pytest.raises(MeasureError, match="repeats"):
        noise_floor(_net(), SHAPE, repeats=1)
