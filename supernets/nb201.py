"""NAS-Bench-201 as a table-backed search space.

A candidate is the operation on each of the six edges of the cell. Evaluating one looks up the
200-epoch test accuracy (CIFAR-10 or CIFAR-100) and a device's measured latency in the vendored
table (see NOTICE for its sources and licences). :meth:`NB201Task.build` gives the candidate's
torch network (:mod:`nas.supernets.nb201_net`, untrained: the benchmark ships no weights), and
:func:`cell_classes` groups the 15,625 cells that compute the same function.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from optuna.distributions import CategoricalDistribution
from torch import nn

from nas.compress.arch import Network
from nas.predictors.hardware import NB201_DEVICES
from nas.search.errors import UserError
from nas.search.space import Measurement, Params, Space
from nas.supernets._registry import register_supernet
from nas.supernets.nb201_net import EDGES, OPS, nb201_network

if TYPE_CHECKING:
    from nas.search.task import TrainingFree

#: device columns with their batch size (one list, kept with the hardware profiles)
DEVICES: dict[str, int] = NB201_DEVICES
ALIASES = {"gpu": "1080ti_1"}
DATASETS = ("cifar10", "cifar100")
#: images of Gaussian noise that set an untrained network's BatchNorm statistics
CALIBRATION_BATCH = 16
#: zero-cost scores of every class of cells, written by ``bench/zc_nb201.py --ship``
ZERO_COST_FILE = "nb201_zero_cost.csv.gz"
#: without that file, robot's pool is this many random cells, scored when the search starts
ROBOT_POOL = 200


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

    def training_free(self, seed: int) -> TrainingFree:
        """RoBoT's knowledge: every cell not cut off, with the shipped zero-cost scores of its
        class; without them, :data:`ROBOT_POOL` random cells scored on first use."""
        from nas.search.task import TrainingFree

        classes = cell_classes()
        live = np.flatnonzero(classes >= 0)
        shipped = zero_cost_scores()
        if shipped is not None:
            names, scores = shipped
            pool = [self.table.params(int(i)) for i in live]

            def lookup(candidates: Sequence[Params]) -> np.ndarray:
                return scores[[self.table.row(c) for c in candidates]]

            return TrainingFree(pool=pool, metrics=lookup, names=names)
        rng = np.random.default_rng(seed)
        chosen = rng.choice(live, size=min(ROBOT_POOL, len(live)), replace=False)
        return TrainingFree(
            pool=[self.table.params(int(i)) for i in sorted(chosen)],
            metrics=_score_cells,
            names=ZERO_COST_METRICS,
        )

    def arch_str(self, params: Params) -> str:
        """The benchmark's own architecture string of ``params``."""
        return self.table.arch[self.table.row(params)]

    def build(self, params: Params) -> Network:
        """The candidate's NAS-Bench-201 network (10 or 100 classes), untrained.

        The benchmark ships no trained weights: the network has torch's initialisation drawn
        from seed 0 (the same weights every call), and its BatchNorm statistics are those of
        one batch of Gaussian noise (seed 0), so that in eval mode its activations keep the
        scale of its inputs instead of growing cell after cell (and its ONNX export checks).
        Its ``origin`` says it is untrained.

        Raises:
            UserError: ``params`` is not a NAS-Bench-201 candidate.
        """
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                net = nb201_network(params, num_classes=100 if self.dataset == "cifar100" else 10)
                _noise_statistics(net, torch.randn(CALIBRATION_BATCH, 3, 32, 32))
        except ValueError as e:
            raise UserError(str(e)) from None
        net.origin |= {"data": self.dataset, "weights": "untrained (seed 0)"}
        return net.eval()


def _noise_statistics(net: nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of the batch ``x`` (one pass)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    net.train()
    with torch.no_grad():
        net(x)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    net.eval()


def _canonical(ops: tuple[int, ...]) -> tuple[Any, ...] | None:
    """The function a cell computes, as a hashable key; None when its output is always zero.

    A node is the multiset of the terms it sums: the cell's input, or (operation, the node it
    is applied to) for a convolution or pooling edge. A ``skip_connect`` edge adds its source's
    terms (x + (y + z) is the same sum as (x + y) + z), a ``none`` edge adds nothing, and a
    node with no term is zero, so edges out of it add nothing either. Sorting the terms makes
    the key the same for every numbering of equivalent nodes (an isomorphism of the cell).
    """
    op = dict(zip(EDGES, (OPS[i] for i in ops), strict=True))
    nodes: list[tuple[Any, ...]] = [("input",)]
    for j in (1, 2, 3):
        terms: list[Any] = []
        for i in range(j):
            name, source = op[f"e{i}{j}"], nodes[i]
            if name == "none" or not source:
                continue
            terms += source if name == "skip_connect" else [(name, source)]
        nodes.append(tuple(sorted(terms, key=repr)))
    return nodes[3] or None


@lru_cache(maxsize=1)
def cell_classes() -> np.ndarray:
    """The class of every cell (NAS-Bench-201 row order): cells that compute the same function.

    Classes are numbered in the order of their lowest row; a cell whose output is cut off from
    its input (always zero) gets -1. See :func:`_canonical` for when two cells are the same.
    There are 4,929 classes and 341 cut-off cells. NAS-Bench-201's own ``to_unique_str``
    finds 6,466 because it keeps some zero terms (``#+#``) and operations on zero nodes apart;
    without merging skip connections into their source there would be 8,764. The cells of a
    class compute the same function, but their networks may differ in parameters and MACs (and
    so in ``params``, ``flops`` and ``naswot``): an operation whose result never reaches the
    output (one on a node without input, or out of a node nothing reads) still runs.

    Returns:
        (15625,) int64 class ids.
    """
    ids: dict[tuple[Any, ...], int] = {}
    out = np.full(len(load_table().ops), -1, dtype=np.int64)
    for row, ops in enumerate(load_table().ops):
        key = _canonical(tuple(int(o) for o in ops))
        if key is not None:
            out[row] = ids.setdefault(key, len(ids))
    out.flags.writeable = False
    return out


@lru_cache(maxsize=1)
def class_representatives() -> np.ndarray:
    """The lowest row of each class of :func:`cell_classes`, indexed by class id: (classes,)."""
    classes = cell_classes()
    rows = np.flatnonzero(classes >= 0)
    _, first = np.unique(classes[rows], return_index=True)
    out = rows[first]
    out.flags.writeable = False
    return out


#: the metrics of the shipped scores and of on-the-fly scoring, in column order
ZERO_COST_METRICS: tuple[str, ...] = (
    "synflow",
    "params",
    "flops",
    "naswot",
    "jacob_cov",
    "grad_norm",
    "snip",
    "grasp",
    "fisher",
)


@lru_cache(maxsize=1)
def zero_cost_scores() -> tuple[tuple[str, ...], np.ndarray] | None:
    """``(names, scores (15625, M))`` from the shipped file (NaN for cut-off cells), or None.

    Each class of cells (:func:`cell_classes`) was scored once, on its representative, by
    ``bench/zc_nb201.py`` (batch 16 of MNIST digits, 10-class head, seed 0).
    """
    path = files("nas.supernets.data").joinpath(ZERO_COST_FILE)
    if not path.is_file():
        return None
    with path.open("rb") as raw, gzip.open(raw, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = tuple(c for c in rows[0] if c != "index")
    classes = cell_classes()
    by_class = {int(classes[int(r["index"])]): [float(r[m] or "nan") for m in names] for r in rows}
    blank = [float("nan")] * len(names)
    scores = np.array([by_class.get(int(c), blank) for c in classes], dtype=float)
    return names, scores


def _score_cells(candidates: Sequence[Params]) -> np.ndarray:
    """Zero-cost scores of NB201 cells (10-class networks, seed 0, MNIST digits, batch 16)."""
    from nas.predictors.zero_cost import reference_batch, score_all

    x, y = reference_batch(16, 32, seed=0)
    out = []
    for c in candidates:
        torch.manual_seed(0)
        net = nb201_network(dict(c), num_classes=10)
        s = score_all(net, x, y, ZERO_COST_METRICS)
        out.append([s[m] for m in ZERO_COST_METRICS])
    return np.array(out, dtype=float).reshape(len(candidates), len(ZERO_COST_METRICS))


@register_supernet("nb201")
def nb201(
    hw: str = "gpu",
    data: str | None = None,
    batch_size: int | None = None,
    weights: str | None = None,
    accuracy: str = "auto",
    measure: bool = False,
    **_: Any,
) -> NB201Task:
    """NAS-Bench-201 (15,625 cells): CIFAR-10/100 accuracy and device latency from tables."""
    if measure:
        raise UserError(
            "nb201 latency comes from its table of measured devices; --measure does not apply"
        )
    if weights is not None:
        raise UserError("nb201 is a table of trained results; --weights does not apply")
    if accuracy not in ("auto", "table"):
        raise UserError(
            f"nb201 accuracy comes from its table; --accuracy {accuracy} does not apply"
        )
    return NB201Task(hw=hw, data=data, batch_size=batch_size)
