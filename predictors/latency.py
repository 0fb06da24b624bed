"""``latency_ms`` of supernet sub-networks for a ``--hw`` name: which predictor, from where.

- ``cpu``: the lookup table of this CPU, built on first use (minutes) and cached under
  ``$NAS_HOME/tables/``;
- ``gpu``: with a CUDA device, the table of that device, built and cached the same way; else a
  table shipped in the package for the supernet and a named card (built by
  ``bench/profile_gpu.sh``); else a roofline estimate for an H100 from FLOPs and memory traffic,
  with a warning: it is an estimate, not a measurement;
- a profile saved by ``nas hw profile --name NAME --supernet S``: the table made with it;
- ``--measure`` (:func:`measured_latency`): every candidate is timed on this machine instead, under
  the machine-wide measurement lock, with each local worker's share of the cores.

The source is always said: ``predicted`` (a lookup table, with its device), ``measured`` or
``roofline``.
This module imports torch alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.predictors._home import nas_home
from nas.predictors.hardware import HardwareProfile, ProfileError, get_hardware, measured_profile
from nas.predictors.lut import LookupTable, TableError, build_table, table_digest
from nas.supernets.elastic import ElasticSupernet

log = logging.getLogger("nas")

#: the card the roofline estimate assumes when no GPU table exists
ROOFLINE_GPU = "h100"
Progress = Callable[[int, int], None]


@dataclass
class SubnetLatency:
    """How ``latency_ms`` is obtained for one supernet on one hardware name."""

    hardware: str
    source: str  # "predicted" (lookup table), "measured" or "roofline"
    label: str
    batch_size: int = 1
    table: LookupTable | None = None
    gpu: str | None = None
    #: measure_latency arguments when every candidate is timed (source "measured")
    measure: dict[str, Any] | None = None

    def __call__(
        self, net: ElasticSupernet, params: Mapping[str, Any], model: nn.Module | None = None
    ) -> float:
        """Latency (ms) of sub-network ``params`` (``model``: its extracted network, if built)."""
        if self.table is not None:
            return self.table.predict(net, params)
        r = int(params["r"])
        m = model if model is not None else net.extract(params)
        shape = (net.preprocessing.channels, r, r)
        if self.measure is not None:
            from nas.predictors.measure import measure_latency

            return measure_latency(m, shape, **self.measure).median_ms
        from nas.predictors.roofline import roofline_ms

        return roofline_ms(m, shape, gpu=self.gpu or ROOFLINE_GPU, batch_size=self.batch_size).ms


def tables_dir() -> Path:
    """Where built tables are cached: ``$NAS_HOME/tables``."""
    return nas_home() / "tables"


def table_identity(net: ElasticSupernet, profile: HardwareProfile) -> dict[str, Any]:
    """What a cached table must agree on to be reused."""
    return {
        "supernet": net.name,
        "n_classes": net.n_classes,
        "resolutions": list(net.resolutions),
        "channels": net.preprocessing.channels,
        "device": profile.device,
        "batch_size": profile.batch_size,
        "backend": profile.backend,
        "threads": profile.threads,
        "cpu_model": profile.cpu_model,
        "gpu_model": profile.gpu_model,
        "torch_version": profile.torch_version,
    }


def table_path(net: ElasticSupernet, profile: HardwareProfile) -> Path:
    """The cache file of ``net``'s table for ``profile``."""
    digest = table_digest(table_identity(net, profile))
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", profile.name)
    return tables_dir() / f"{net.name}-{safe}-{digest}.json.gz"


def measure_kwargs(profile: HardwareProfile) -> dict[str, Any]:
    """The measure_latency arguments a profile stands for."""
    return {
        "device": "cuda" if profile.device == "cuda" else "cpu",
        "batch_size": profile.batch_size,
        "threads": profile.threads,
        "backend": profile.backend or "torch",
    }


def table_for(
    net: ElasticSupernet,
    profile: HardwareProfile,
    *,
    build: bool = True,
    progress: Progress | None = None,
    calibrate: int = 10,
) -> LookupTable:
    """The cached table of ``net`` on ``profile``, built (and cached) when missing.

    Raises:
        TableError: no cached table and ``build`` is False.
    """
    path = table_path(net, profile)
    if path.is_file():
        return LookupTable.load(path)
    shipped = _shipped_dir() / path.name  # measured on a machine identical in every respect
    if shipped.is_file():
        table = LookupTable.load(shipped)
        table.save(path)
        return table
    if not build:
        raise TableError(
            f"no latency table for {net.name} on {profile.name}; build one with "
            f"`nas hw profile --name {profile.name} --supernet {net.name}`"
        )
    log.warning(
        "building the latency lookup table of %s on %s (%s); cached in %s",
        net.name,
        profile.name,
        profile.gpu_model or profile.cpu_model,
        path,
    )
    info = asdict(profile) | {"resolutions": list(net.resolutions)}
    table = build_table(
        net, hardware=info, progress=progress, calibrate=calibrate, **measure_kwargs(profile)
    )
    table.save(path)
    return table


def _shipped_dir() -> Path:
    return Path(str(files("nas.predictors.data").joinpath("lut")))


def shipped_tables(supernet: str) -> list[Path]:
    """GPU tables in the package for ``supernet`` (``<supernet>-<card>-b<batch>.json.gz``)."""
    folder = _shipped_dir()
    if not folder.is_dir():
        return []
    return sorted(
        f
        for f in folder.iterdir()
        if re.fullmatch(rf"{re.escape(supernet)}-[a-z0-9_]+-b\d+\.json\.gz", f.name)
    )


def resolve_latency(
    net: ElasticSupernet,
    hw: str,
    *,
    batch_size: int = 1,
    build: bool = True,
    progress: Progress | None = None,
) -> SubnetLatency:
    """The latency source of ``net`` on hardware ``hw`` (see the module docstring).

    Raises:
        ProfileError: an unknown hardware name.
        TableError: a saved profile without a table for this supernet on another machine.
    """
    if hw == "gpu":
        return _gpu(net, batch_size, build, progress)
    if hw == "cpu":
        profile = measured_profile("cpu", device="cpu", batch_size=batch_size)
    else:
        profile = get_hardware(hw)
        if profile.kind != "measured":
            raise ProfileError(f"hardware {hw!r} is a {profile.kind} profile of another space")
        if profile.batch_size != batch_size:
            raise ProfileError(
                f"{hw} was measured at batch size {profile.batch_size}; pass --batch-size "
                f"{profile.batch_size} to use it"
            )
    table = table_for(net, profile, build=build and _is_here(profile), progress=progress)
    return SubnetLatency(hw, "predicted", _label(table, profile), batch_size, table=table)


def measured_latency(hw: str, *, batch_size: int = 1, workers: int = 1) -> SubnetLatency:
    """Time every candidate on this machine (``--measure``): ``hw`` is ``cpu`` or ``gpu``.

    Timings follow :func:`nas.predictors.measure.measure_latency`'s protocol (median of 30 runs
    after 10 warm-ups, CUDA events on a GPU) under the machine-wide lock; with ``workers``
    local workers each uses its share of the cores (:func:`worker_threads`).

    Raises:
        ProfileError: ``hw`` is not this machine's cpu or gpu, or gpu without a CUDA device.
    """
    from nas.predictors.measure import worker_threads

    if hw not in ("cpu", "gpu"):
        raise ProfileError(
            f"--measure times candidates on this machine: use --hw cpu or --hw gpu, not {hw!r}"
        )
    if hw == "gpu" and not torch.cuda.is_available():
        raise ProfileError("--measure --hw gpu: no CUDA device is available here")
    device = "cuda" if hw == "gpu" else "cpu"
    profile = measured_profile(hw, device=device, batch_size=batch_size)
    threads = worker_threads(workers) if workers > 1 else profile.threads
    where = profile.gpu_model if device == "cuda" else profile.cpu_model
    label = (
        f"measured on {where} for every candidate (torch eager, batch {batch_size}, "
        f"{threads} threads, median of 30 runs after 10 warm-ups)"
    )
    kwargs = {"device": device, "batch_size": batch_size, "threads": threads, "lock": True}
    return SubnetLatency(hw, "measured", label, batch_size, measure=kwargs)


def _gpu(
    net: ElasticSupernet, batch_size: int, build: bool, progress: Progress | None
) -> SubnetLatency:
    if torch.cuda.is_available():
        profile = measured_profile("gpu", device="cuda", batch_size=batch_size)
        table = table_for(net, profile, build=build, progress=progress)
        return SubnetLatency("gpu", "predicted", _label(table, profile), batch_size, table=table)
    for path in shipped_tables(net.name):
        table = LookupTable.load(path)
        hw = table.hardware
        if (
            int(hw.get("batch_size", 1)) == batch_size
            and table.n_classes == net.n_classes
            and list(hw.get("resolutions", [])) == list(net.resolutions)
        ):
            label = (
                f"lookup table measured on {hw.get('gpu_model')} (shipped, batch {batch_size}, "
                f"torch {hw.get('torch_version')})"
            )
            return SubnetLatency("gpu", "predicted", label, batch_size, table=table)
    label = (
        f"roofline estimate for an {ROOFLINE_GPU.upper()} from FLOPs and memory traffic "
        f"(no CUDA device here and no table shipped for {net.name}): an estimate, not measured"
    )
    log.warning("latency_ms: %s", label)
    return SubnetLatency("gpu", "roofline", label, batch_size, gpu=ROOFLINE_GPU)


def _is_here(profile: HardwareProfile) -> bool:
    """Whether ``profile`` describes this machine (so a missing table may be built here)."""
    here = measured_profile(profile.name, device=profile.device)
    return here.cpu_model == profile.cpu_model and here.gpu_model == profile.gpu_model


def _label(table: LookupTable, profile: HardwareProfile) -> str:
    where = profile.gpu_model if profile.device == "cuda" else profile.cpu_model
    return (
        f"lookup table of {len(table.entries)} blocks measured on {where} ({profile.name}, "
        f"batch {profile.batch_size}, {profile.threads} threads, constant "
        f"{table.constant_ms:+.3f} ms)"
    )
