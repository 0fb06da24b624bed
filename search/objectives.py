"""Objectives, constraints, Pareto fronts and hypervolume.

Metric names are one vocabulary across the CLI, studies and exports (see DESIGN.md). Each known
metric has a direction; ``name:min`` / ``name:max`` overrides it. ``top1@<arch>`` is accuracy
measured on one named architecture and is maximised.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Direction = Literal["minimize", "maximize"]

#: Every metric name the project knows, with its direction and unit.
METRICS: dict[str, tuple[Direction, str]] = {
    "top1": ("maximize", "accuracy, percent 0-100"),
    "latency_ms": ("minimize", "milliseconds, batch 1 unless --batch-size"),
    "params_m": ("minimize", "parameters, millions"),
    "macs_m": ("minimize", "multiply-accumulates, millions"),
    "nnz_params_m": ("minimize", "non-zero parameters, millions"),
    "nnz_macs_m": ("minimize", "non-zero multiply-accumulates, millions"),
    "sparsity": ("maximize", "fraction of zero weights, 0-1"),
    "error": ("minimize", "fitting error"),
    "reward": ("maximize", "a plugin's scalar reward"),
    "cosine": ("maximize", "smallest cosine similarity of any output head to the original, 0-1"),
    "max_abs_diff": ("minimize", "largest absolute output difference to the original"),
}

#: the objectives of a task that does not name its own
DEFAULT_OBJECTIVES: tuple[str, ...] = ("top1", "latency_ms")

_ARCH_METRIC = re.compile(r"^top1@[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class Objective:
    """One objective: a metric name and whether to minimise or maximise it."""

    metric: str
    direction: Direction

    def __str__(self) -> str:
        return f"{self.metric}:{'min' if self.direction == 'minimize' else 'max'}"


def known_metric(name: str) -> bool:
    """True for the names in :data:`METRICS` and ``top1@<arch>``."""
    return name in METRICS or bool(_ARCH_METRIC.match(name))


def _unknown(name: str) -> ValueError:
    known = ", ".join([*METRICS, "top1@<arch>"])
    return ValueError(f"unknown metric {name!r}; known metrics: {known}")


def parse_objectives(spec: str | Sequence[str]) -> tuple[Objective, ...]:
    """Parse ``"top1,latency_ms"`` (or a list of such names, ``name:min|max`` allowed).

    Raises:
        ValueError: on an unknown metric, a bad direction, a repeated metric, or no objective.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s]
    if not items:
        raise ValueError("no objective given; example: --objectives top1,latency_ms")
    out: list[Objective] = []
    for item in items:
        name, _, d = item.partition(":")
        if not known_metric(name):
            raise _unknown(name)
        if d in ("", None):
            direction: Direction = METRICS[name][0] if name in METRICS else "maximize"
        elif d in ("min", "max"):
            direction = "minimize" if d == "min" else "maximize"
        else:
            raise ValueError(f"objective {item!r}: direction must be 'min' or 'max'")
        if any(o.metric == name for o in out):
            raise ValueError(f"objective {name!r} is given twice")
        out.append(Objective(name, direction))
    return tuple(out)


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_@.\-]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``metric op bound``, e.g. ``latency_ms<=20``."""

    metric: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    def violation(self, m: Mapping[str, float]) -> float:
        """How far ``m`` is outside the constraint (``<= 0`` means satisfied, optuna's rule)."""
        v = float(m[self.metric])
        if math.isnan(v):
            return math.inf
        if self.op in ("<=", "<"):
            gap = v - self.bound
            return gap if (self.op == "<=" or gap != 0) else 1e-12
        gap = self.bound - v
        return gap if (self.op == ">=" or gap != 0) else 1e-12


def parse_constraint(spec: str) -> Constraint:
    """Parse ``'latency_ms<=20'``.

    Raises:
        ValueError: when the text is not ``metric op number`` or the metric is unknown.
    """
    m = _CONSTRAINT.match(spec)
    if not m:
        raise ValueError(f"constraint {spec!r} must look like 'latency_ms<=20' (ops: <= >= < >)")
    name, op, bound = m.group(1), m.group(2), float(m.group(3))
    if not known_metric(name):
        raise _unknown(name)
    return Constraint(name, op, bound)


def violations(constraints: Sequence[Constraint], m: Mapping[str, float]) -> list[float]:
    """One value per constraint; all ``<= 0`` means feasible."""
    return [c.violation(m) for c in constraints]


def _as_minimisation(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    signs = np.array([1.0 if o.direction == "minimize" else -1.0 for o in objectives])
    return np.asarray(values, dtype=float) * signs


def pareto_mask(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (shape ``(n, len(objectives))``).

    Rows with a NaN are never on the front. Uses pymoo's non-dominated sorting.
    """
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    values = np.asarray(values, dtype=float).reshape(-1, len(objectives))
    mask = np.zeros(len(values), dtype=bool)
    ok = ~np.isnan(values).any(axis=1)
    if not ok.any():
        return mask
    f = _as_minimisation(values[ok], objectives)
    front = NonDominatedSorting().do(f, only_non_dominated_front=True)
    mask[np.flatnonzero(ok)[np.asarray(front, dtype=int)]] = True
    return mask


def hypervolume(
    values: np.ndarray,
    objectives: Sequence[Objective],
    lower: Sequence[float],
    upper: Sequence[float],
) -> float:
    """Hypervolume of ``values`` after normalising each objective to [0, 1] by its range.

    ``lower`` / ``upper`` are each objective's range (in its own units). The reference point is
    the worst value of every objective, so the ideal point has hypervolume 1. Points outside the
    range are clipped. Uses pymoo's exact indicator.
    """
    from pymoo.indicators.hv import HV

    values = np.asarray(values, dtype=float).reshape(-1, len(objectives))
    values = values[~np.isnan(values).any(axis=1)]
    if len(values) == 0:
        return 0.0
    lo, hi = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    z = np.clip((values - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    maximise = np.array([o.direction == "maximize" for o in objectives])
    z[:, maximise] = 1.0 - z[:, maximise]  # now every column is minimised, worst = 1
    return float(HV(ref_point=np.ones(len(objectives)))(z))
