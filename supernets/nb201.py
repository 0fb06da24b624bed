"""NAS-Bench-201 as a table-backed search space.

A candidate is the operation on each of the six edges of the cell. Evaluating one looks up the
200-epoch test accuracy (CIFAR-10 or CIFAR-100) and a device's measured latency in the vendored
table (see NOTICE for its sources and licences). Candidates have no torch network yet.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from nas.predictors.hardware import NB201_DEVICES
from nas.search.errors import UserError
from nas.search.space import Measurement, Params, Space
from nas.supernets._registry import register_supernet

#: operation names, in the table's id order
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: the cell's edges (i -> j) in the order of the architecture string
EDGES = ("e01", "e02", "e12", "e03", "e13", "e23")
#: device columns with their batch size (one list, kept with the hardware profiles)
DEVICES: dict[str, int] = NB201_DEVICES
ALIASES = {"gpu": "1080ti_1"}
DATASETS = ("cifar10", "cifar100")


@dataclass(frozen=True)
class Table:
    """The whole benchmark as arrays, one row per architecture (NAS-Bench-201 index order)."""

    ops: np.ndarray  # (15625, 6) int, op id per edge in EDGES order
    arch: tuple[str, ...]
    accuracy: Mapping[str, np.ndarray]  # dataset -> (15625,) percent
    latency: Mapping[str, np.ndarray]  # device -> (15625,) ms
    row_of: Mapping[tuple[int, ...], int]

    def row(self, params: Params) -> int:
        """Row of the architecture ``params`` (edge name -> op name)."""
        return self.row_of[tuple(OPS.index(str(params[e])) for e in EDGES)]

    def params(self, row: int) -> Params:
        """The candidate of row ``row``."""
        return {e: OPS[int(i)] for e, i in zip(EDGES, self.ops[row], strict=True)}


@lru_cache(maxsize=1)
def load_table() -> Table:
    """Read the vendored table (about 0.1 s; cached)."""
    path = files("nas.supernets.data").joinpath("nb201.csv.gz")
    with path.open("rb") as raw, gzip.open(raw, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ops = np.array([[int(r[f"op_{e}"]) for e in EDGES] for r in rows], dtype=np.int64)
    acc = {d: np.array([float(r[f"{d}_test_acc"]) for r in rows]) for d in DATASETS}
    lat = {d: np.array([float(r[f"lat_{d}"]) for r in rows]) for d in DEVICES}
    return Table(
        ops=ops,
        arch=tuple(r["arch_str"] for r in rows),
        accuracy=acc,
        latency=lat,
        row_of={tuple(int(x) for x in o): i for i, o in enumerate(ops)},
    )


def resolve_device(hw: str, batch_size: int | None = None) -> str:
    """Map a ``--hw`` value (``raspi4``, ``nb201:raspi4``, ``gpu``) to a table column.

    Raises:
        UserError: unknown device, or a batch size the column was not measured at.
    """
    name = hw.split(":", 1)[1] if hw.startswith("nb201:") else hw
    name = ALIASES.get(name, name)
    if name not in DEVICES:
        known = ", ".join([*DEVICES, *ALIASES])
        raise UserError(f"unknown hardware {hw!r} for nb201; known: {known}")
    want = 1 if batch_size is None else batch_size
    if DEVICES[name] != want:
        raise UserError(
            f"nb201:{name} was measured at batch size {DEVICES[name]}; "
            f"pass --batch-size {DEVICES[name]} to use it"
        )
    return name


class NB201Task:
    """The NAS-Bench-201 search task: six categorical edges, table lookups."""

    name = "nb201"
    #: the strategy used when --strategy is not given: linas had the lowest regret at 100
    #: evaluations and the best hypervolume in bench/results/search_nb201.md (10 seeds)
    default_strategy = "linas"

    def __init__(self, hw: str = "gpu", data: str | None = None, batch_size: int | None = None):
        dataset = data or "cifar10"
        if dataset not in DATASETS:
            raise UserError(f"unknown dataset {dataset!r} for nb201; known: {', '.join(DATASETS)}")
        self.dataset = dataset
        self.device = resolve_device(hw, batch_size)
        self.table = load_table()
        self._space: Space = {e: CategoricalDistribution(OPS) for e in EDGES}

    def space(self) -> Space:
        return self._space

    def evaluate(self, params: Params) -> Measurement:
        row = self.table.row(params)
        return {
            "top1": float(self.table.accuracy[self.dataset][row]),
            "latency_ms": float(self.table.latency[self.device][row]),
        }

    def sources(self) -> Mapping[str, str]:
        return {"top1": "table", "latency_ms": "table"}

    def describe(self) -> dict[str, Any]:
        return {
            "supernet": "nb201",
            "data": self.dataset,
            "hw": f"nb201:{self.device}",
            "batch_size": DEVICES[self.device],
        }

    def arch_str(self, params: Params) -> str:
        """The benchmark's own architecture string of ``params``."""
        return self.table.arch[self.table.row(params)]

    def build(self, params: Params) -> Any:
        """nb201 candidates have no torch network yet; export says so."""
        raise UserError(
            "nb201 candidates are table entries without a torch network yet; "
            "export is not available for --supernet nb201"
        )


@register_supernet("nb201")
def nb201(
    hw: str = "gpu",
    data: str | None = None,
    batch_size: int | None = None,
    weights: str | None = None,
    accuracy: str = "auto",
    **_: Any,
) -> NB201Task:
    """NAS-Bench-201 (15,625 cells): CIFAR-10/100 accuracy and device latency from tables."""
    if weights is not None:
        raise UserError("nb201 is a table of trained results; --weights does not apply")
    if accuracy not in ("auto", "table"):
        raise UserError(
            f"nb201 accuracy comes from its table; --accuracy {accuracy} does not apply"
        )
    return NB201Task(hw=hw, data=data, batch_size=batch_size)
