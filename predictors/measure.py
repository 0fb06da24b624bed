"""Measure a model's latency on this machine, one measurement at a time.

The protocol: the model in eval mode under ``torch.inference_mode()``, a random input of
``(batch_size, *input_shape)``, ``warmup`` untimed runs, then ``runs`` timed runs, each timed on
its own (``time.perf_counter_ns`` on the CPU, CUDA events on a GPU); the garbage collector is
off while timing. The result is the median with the 10th and 90th percentiles.

Isolation: several local workers must never time at once, or each slows the others. Every
measurement takes :func:`measurement_lock` (an ``flock`` on ``$NAS_HOME/locks/measure.lock``,
machine-wide) and uses a fixed thread count (``threads``; :func:`worker_threads` gives each of
``n`` workers its share of the cores). torch's thread count is restored afterwards.

Backends: ``torch`` (eager) and ``onnxruntime`` (the model exported with torch's legacy
TorchScript-based exporter, opset 17, as :func:`nas.compress.model_io.export_onnx` does; the
timed call is ``InferenceSession.run`` with ``intra_op_num_threads = threads``, inputs and
outputs on the host). onnx and onnxruntime are imported only when that backend is used.
"""

from __future__ import annotations

import fcntl
import gc
import itertools
import math
import os
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from nas.predictors._home import nas_home

Backend = Literal["torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")
#: the ONNX opset of the exported model (the same as nas.compress.model_io.export_onnx)
ONNX_OPSET = 17


class MeasureError(ValueError):
    """A measurement that cannot be made as asked (bad argument, no such device)."""


@dataclass(frozen=True)
class Timing:
    """The result of one measurement; all times in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs_ms: tuple[float, ...]  # every timed run, in order
    backend: str
    device: str
    batch_size: int
    threads: int

    @property
    def spread_pct(self) -> float:
        """The 10–90 percentile range as a percentage of the median."""
        return 100.0 * (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0


@dataclass(frozen=True)
class NoiseFloor:
    """How much the median of one model moves between repeated measurements.

    ``spread_pct`` is *the* noise floor figure: (max − min) / median of the repeated medians,
    in percent. Two latencies closer than this cannot be told apart under the same protocol.
    ``cv_pct`` (sample standard deviation / mean, in percent) is the gentler, outlier-tolerant
    figure, for comparison with published numbers.
    """

    medians_ms: tuple[float, ...]
    median_ms: float
    spread_pct: float
    cv_pct: float


def available_cores() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_threads(n_workers: int) -> int:
    """Threads each of ``n_workers`` local workers should use: its share of the cores, ≥ 1."""
    if n_workers < 1:
        raise MeasureError(f"n_workers must be at least 1, got {n_workers}")
    return max(1, available_cores() // n_workers)


def lock_path() -> Path:
    """The machine-wide measurement lock file, ``$NAS_HOME/locks/measure.lock``."""
    return nas_home() / "locks" / "measure.lock"


_held = threading.local()


@contextmanager
def measurement_lock(timeout: float | None = None) -> Iterator[Path]:
    """Hold the machine-wide measurement lock (``flock``) for the ``with`` block.

    Re-entrant within one thread: a caller may hold it across many measurements (building a
    lookup table, say) and :func:`measure_latency` inside will not wait for itself. Other
    threads and processes wait.

    Args:
        timeout: seconds to wait at most; None waits for ever.

    Raises:
        TimeoutError: the lock was not free within ``timeout`` seconds.
    """
    path = lock_path()
    held: set[Path] = getattr(_held, "paths", set())
    if path in held:
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        _flock(fh.fileno(), path, timeout)
        _held.paths = held | {path}
        try:
            yield path
        finally:
            _held.paths = held
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _flock(fd: int, path: Path, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"measurement lock {path} still held after {timeout}s") from None
            time.sleep(0.01)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_args(
    backend: str, device: str, batch_size: int, threads: int | None, warmup: int, runs: int
) -> None:
    if backend not in BACKENDS:
        raise MeasureError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if batch_size < 1 or runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise MeasureError(
            f"need batch_size >= 1, runs >= 1, warmup >= 0, threads >= 1 or None; got "
            f"batch_size={batch_size}, runs={runs}, warmup={warmup}, threads={threads}"
        )
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise MeasureError(f"cannot measure on device {device!r}; use cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise MeasureError(f"device {device!r} asked for, but torch sees no CUDA device")


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    backend: Backend = "torch",
    batch_size: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 30,
    lock: bool = True,
) -> Timing:
    """Time ``model`` on a random input of shape ``(batch_size, *input_shape)``.

    The model's train/eval mode and device are as before afterwards (it is moved to ``device``
    for the torch backend while timing), and so is torch's thread count.

    Args:
        model: the network; its first floating parameter's dtype is the input dtype.
        input_shape: one sample's shape, without the batch dimension, e.g. ``(3, 224, 224)``.
        backend: ``torch`` (eager) or ``onnxruntime``.
        batch_size: the leading dimension of the input.
        device: ``cpu`` or ``cuda[:N]``.
        threads: intra-op CPU threads; None uses every core this process may run on.
        warmup: untimed runs first.
        runs: timed runs.
        lock: take :func:`measurement_lock` for the warm-up and timed runs.

    Returns:
        The :class:`Timing`.

    Raises:
        MeasureError: a bad argument, or a device that is not there.
    """
    _check_args(backend, device, batch_size, threads, warmup, runs)
    n_threads = threads if threads is not None else available_cores()
    was_training = model.training
    model.eval()
    try:
        with (
            _torch_threads(n_threads),
            _prepared(model, input_shape, backend, batch_size, device, n_threads) as runner,
            measurement_lock() if lock else _nothing(),
        ):
            times = _time_runs(runner, warmup, runs)
    finally:
        model.train(was_training)
    return _timing(times, backend, device, batch_size, n_threads)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@dataclass(frozen=True)
class _Runner:
    run: Callable[[], object]  # one forward pass
    sync: Callable[[], None]  # wait for the device
    cuda: torch.device | None = None  # time with CUDA events on this device, else host clock


def _no_sync() -> None:
    return None


@contextmanager
def _prepared(
    model: nn.Module,
    input_shape: tuple[int, ...],
    backend: str,
    batch_size: int,
    device: str,
    threads: int,
) -> Iterator[_Runner]:
    """A runner for the model on its input; the model is back on its device afterwards."""
    dtype = _input_dtype(model)
    if backend == "onnxruntime":
        x = torch.randn(batch_size, *input_shape, dtype=dtype, device=_model_device(model))
        yield _Runner(_onnx_runner(model, x, device, threads), _no_sync)
        return
    home = _model_device(model)
    target = torch.device(device)
    model.to(target)
    try:
        x = torch.randn(batch_size, *input_shape, dtype=dtype, device=target)

        def run() -> object:
            with torch.inference_mode():
                return model(x)

        if target.type == "cuda":
            yield _Runner(run, lambda: torch.cuda.synchronize(target), cuda=target)
        else:
            yield _Runner(run, _no_sync)
    finally:
        model.to(home)


def _model_device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _input_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _onnx_runner(
    model: nn.Module, x: torch.Tensor, device: str, threads: int
) -> Callable[[], object]:
    """Export ``model`` to a temporary ONNX file and return a run of an onnxruntime session."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MeasureError("this onnxruntime has no CUDAExecutionProvider; use device=cpu")
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="nas-measure-") as tmp:
        path = str(Path(tmp) / "model.onnx")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (x,), path, input_names=["input"], opset_version=ONNX_OPSET, dynamo=False
            )
        session = ort.InferenceSession(path, sess_options=opts, providers=providers)
    feed: dict[str, Any] = {"input": x.detach().cpu().numpy()}
    return lambda: session.run(None, feed)


def _time_runs(runner: _Runner, warmup: int, runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        runner.run()
    runner.sync()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if runner.cuda is not None:
            return _time_cuda(runner.run, runner.cuda, runs)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            runner.run()
            runner.sync()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        return times
    finally:
        if gc_was_enabled:
            gc.enable()


def _time_cuda(run: Callable[[], object], device: torch.device, runs: int) -> list[float]:
    """Each run between two CUDA events on ``device``'s current stream, read after one sync."""
    pairs = []
    with torch.cuda.device(device):
        for _ in range(runs):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
    return [float(s.elapsed_time(e)) for s, e in pairs]


def _timing(times: list[float], backend: str, device: str, batch_size: int, threads: int) -> Timing:
    p10, med, p90 = (float(v) for v in np.percentile(times, [10, 50, 90]))
    return Timing(
        median_ms=med,
        p10_ms=p10,
        p90_ms=p90,
        runs_ms=tuple(times),
        backend=backend,
        device=device,
        batch_size=batch_size,
        threads=threads,
    )


def measure_onnx_file(
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1,
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 30,
    lock: bool = True,
) -> Timing:
    """Time an ONNX file with onnxruntime on this CPU (same protocol as
    :func:`measure_latency`): a random float32 input of ``(batch_size, *input_shape)`` fed to
    its first input.

    Raises:
        MeasureError: a bad argument, or a file onnxruntime cannot load.
    """
    import onnxruntime as ort

    _check_args("onnxruntime", "cpu", batch_size, threads, warmup, runs)
    n = threads if threads is not None else available_cores()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise MeasureError(f"{path}: onnxruntime cannot load it ({e})") from None
    feed = {session.get_inputs()[0].name: np.random.rand(batch_size, *input_shape).astype("f4")}
    runner = _Runner(lambda: session.run(None, feed), _no_sync)
    with measurement_lock() if lock else _nothing():
        times = _time_runs(runner, warmup, runs)
    return _timing(times, "onnxruntime", "cpu", batch_size, n)


def noise_floor(
    model: nn.Module, input_shape: tuple[int, ...], repeats: int = 10, **measure_kwargs: Any
) -> NoiseFloor:
    """Measure ``model`` ``repeats`` times under one protocol and report how the median moves.

    Each repeat is a whole :func:`measure_latency` call (with ``measure_kwargs``), set-up
    included, so the figure covers everything that differs between two measurements.

    Raises:
        MeasureError: ``repeats`` < 2, or a bad argument for :func:`measure_latency`.
    """
    if repeats < 2:
        raise MeasureError(f"repeats must be at least 2, got {repeats}")
    medians = [
        measure_latency(model, input_shape, **measure_kwargs).median_ms for _ in range(repeats)
    ]
    mid = statistics.median(medians)
    mean = statistics.fmean(medians)
    spread = 100.0 * (max(medians) - min(medians)) / mid if mid > 0 else math.inf
    cv = 100.0 * statistics.stdev(medians) / mean if mean > 0 else math.inf
    return NoiseFloor(medians_ms=tuple(medians), median_ms=mid, spread_pct=spread, cv_pct=cv)
