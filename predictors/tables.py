"""Benchmark latency tables as arrays, and the encodings latency predictors learn from.

Two tables ship with nas (see NOTICE):

* ``nb201``: all 15,625 NAS-Bench-201 cells on seven devices (read through
  :func:`nas.supernets.nb201.load_table`); ``ops`` holds the op id per edge.
* ``fbnet``: 5,000 architectures of the FBNet macro space (22 layers, one of :data:`FBNET_BLOCKS`
  each) on four devices; ``ops`` holds the block id per layer.

:func:`encode` turns op ids into feature rows: the one-hot code plus a compact summary. For
NB201 the summary holds structural features. The pixel3 and raspi4 columns were measured with a
runtime that prunes dead code: a cell whose output node gets no input at all measures
0.003–0.06 ms, an op whose result never reaches the cell's output does not run, and one that
computes on a cut-off (constant) input still does. So the rows count the ops per type over all
edges and over the edges that run, and say whether the cell is connected and whether its output
is fed. Measured on the table: a linear model on these 10 features ranks cells better than one
on the 30 one-hot columns (held-out Spearman 0.968 against 0.940 on pixel3, 5,000 training
cells).

For FBNet the summary adds multiply-accumulate counts (in all and per stage, from the macro
architecture in :data:`FBNET_MACRO`) to block counts: with 50 training architectures they lifted
ridge's held-out Spearman on pixel3 from 0.958 to 0.986.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Literal

import numpy as np

__all__ = [
    "FBNET_BLOCKS",
    "FBNET_DEVICES",
    "FBNET_LAYERS",
    "FBNET_MACRO",
    "FBNET_STAGES",
    "NB201_EDGES",
    "ONEHOT_WEIGHT",
    "SPACES",
    "LatencyTable",
    "encode",
    "fbnet_layer_macs",
    "live_edges",
    "load_latency_table",
    "n_summary",
    "running_edges",
]

SpaceName = Literal["nb201", "fbnet"]
#: the spaces with a shipped latency table
SPACES: tuple[SpaceName, ...] = ("nb201", "fbnet")
#: NAS-Bench-201 edges as (from, to) nodes, in the order of the ``ops`` columns
NB201_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
_NB201_OPS = 5  # none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
_NONE = 0
#: FBNet block choices, in the order of their ids
FBNET_BLOCKS = (
    "k3_e1",
    "k3_e1_g2",
    "k3_e3",
    "k3_e6",
    "k5_e1",
    "k5_e1_g2",
    "k5_e3",
    "k5_e6",
    "skip",
)
FBNET_LAYERS = 22
#: FBNet macro-architecture per stage: (output channels, layers, stride of the first layer);
#: the stem (3x3 conv, stride 2, 16 channels) takes 224x224 images to 112x112
FBNET_MACRO = (
    (16, 1, 1),
    (24, 4, 2),
    (32, 4, 2),
    (64, 4, 2),
    (112, 4, 1),
    (184, 4, 2),
    (352, 1, 1),
)
_MACS_UNIT_TOTAL = 15.0  # million MACs per unit of the total-MACs feature
_MACS_UNIT_STAGE = 10.0  # million MACs per unit of the per-stage features
#: layers per FBNet stage; layers after a stage's first share its shapes
FBNET_STAGES = tuple(n for _, n, _ in FBNET_MACRO)
#: scale of the one-hot block of :func:`encode` (ridge then shrinks it 100x more)
ONEHOT_WEIGHT = 0.1
#: FBNet table devices with their batch size
FBNET_DEVICES: dict[str, int] = {"1080ti_1": 1, "gold_6226": 1, "pixel3": 1, "raspi4": 1}


@dataclass(frozen=True)
class LatencyTable:
    """One benchmark's measured latencies.

    Attributes:
        space: ``"nb201"`` or ``"fbnet"``.
        ops: ``(n, d)`` int op ids (per edge for nb201, per layer for fbnet).
        latency: device -> ``(n,)`` latency in ms.
        batch_size: device -> the batch size it was measured at.
    """

    space: str
    ops: np.ndarray
    latency: Mapping[str, np.ndarray]
    batch_size: Mapping[str, int]

    @property
    def devices(self) -> tuple[str, ...]:
        """The device columns, in table order."""
        return tuple(self.latency)

    def features(self) -> np.ndarray:
        """:func:`encode` of every row (cached for the shipped tables)."""
        if self.space in SPACES and self.ops is load_latency_table(self.space).ops:
            return _features(self.space)
        return encode(self.space, self.ops)


@cache
def load_latency_table(space: str) -> LatencyTable:
    """The shipped latency table of ``space`` (``"nb201"`` or ``"fbnet"``), cached.

    Raises:
        ValueError: for an unknown space.
    """
    if space == "nb201":
        from nas.supernets.nb201 import DEVICES, load_table

        t = load_table()
        return LatencyTable("nb201", t.ops, dict(t.latency), dict(DEVICES))
    if space == "fbnet":
        return _load_fbnet()
    raise ValueError(f"no latency table for space {space!r}; known: {', '.join(SPACES)}")


def _load_fbnet() -> LatencyTable:
    path = files("nas.predictors.data").joinpath("fbnet_latency.csv.gz")
    with path.open("rb") as raw, gzip.open(raw, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ops = np.array([[int(r[f"layer{i}"]) for i in range(FBNET_LAYERS)] for r in rows])
    lat = {d: np.array([float(r[f"lat_{d}"]) for r in rows]) for d in FBNET_DEVICES}
    return LatencyTable("fbnet", ops.astype(np.int64), lat, dict(FBNET_DEVICES))


@cache
def _features(space: str) -> np.ndarray:
    features = encode(space, load_latency_table(space).ops)
    features.setflags(write=False)
    return features


def encode(space: str, ops: np.ndarray) -> np.ndarray:
    """Feature rows of architectures given as op ids, shape ``(n, d)`` -> ``(n, f)`` floats.

    The first :func:`n_summary` columns are a compact summary (what small-sample models
    need); then comes the one-hot code per edge or layer, scaled by :data:`ONEHOT_WEIGHT` so
    that ridge shrinks position effects more than the summary's.

    nb201 summary (10): op counts over all edges (skip, 1x1, 3x3, pool), the same counts over
    the edges that run on a pruning runtime (:func:`running_edges`), cell connected
    (:func:`live_edges` not empty), output fed (node 3 has a non-``none`` input).
    fbnet summary (125): multiply-accumulates (:func:`fbnet_layer_macs`) in all (1, unit 15 M)
    and per stage (7, unit 10 M), block counts (9), per stage the block counts of its layers
    after the first (5 x 9: those layers share their shapes), and the one-hot of each stage's
    first layer (7 x 9).

    Raises:
        ValueError: unknown space, wrong width or op ids out of range.
    """
    ops = _check_ops(space, ops)
    n_ops = _NB201_OPS if space == "nb201" else len(FBNET_BLOCKS)
    onehot = _onehot(ops, n_ops)
    return np.hstack([_summary(space, ops, onehot), ONEHOT_WEIGHT * onehot])


def n_summary(space: str) -> int:
    """How many leading columns of :func:`encode` are the compact summary."""
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; known: {', '.join(SPACES)}")
    if space == "nb201":
        return 10
    return 1 + len(FBNET_STAGES) + 9 + 9 * sum(n > 1 for n in FBNET_STAGES) + 9 * len(FBNET_STAGES)


def _check_ops(space: str, ops: np.ndarray) -> np.ndarray:
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; known: {', '.join(SPACES)}")
    ops = np.asarray(ops, dtype=np.int64)
    if ops.ndim == 1:
        ops = ops[None, :]
    width, n_ops = (6, _NB201_OPS) if space == "nb201" else (FBNET_LAYERS, len(FBNET_BLOCKS))
    if ops.ndim != 2 or ops.shape[1] != width:
        raise ValueError(f"{space} architectures have {width} op ids each, got shape {ops.shape}")
    if ops.size and (ops.min() < 0 or ops.max() >= n_ops):
        raise ValueError(f"{space} op ids are 0..{n_ops - 1}, got {ops.min()}..{ops.max()}")
    return ops


def _summary(space: str, ops: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    n = len(ops)
    if space == "fbnet":
        per_layer = onehot.reshape(n, FBNET_LAYERS, len(FBNET_BLOCKS))
        starts = np.cumsum((0, *FBNET_STAGES[:-1]))
        rest = [
            per_layer[:, s + 1 : s + m].sum(axis=1)
            for s, m in zip(starts, FBNET_STAGES, strict=True)
            if m > 1
        ]
        macs = fbnet_layer_macs()[np.arange(FBNET_LAYERS), ops]  # (n, 22) million MACs
        stage = np.column_stack(
            [macs[:, s : s + m].sum(axis=1) for s, m in zip(starts, FBNET_STAGES, strict=True)]
        )
        head = [macs.sum(axis=1, keepdims=True) / _MACS_UNIT_TOTAL, stage / _MACS_UNIT_STAGE]
        return np.hstack([*head, per_layer.sum(axis=1), *rest, *(per_layer[:, s] for s in starts)])
    runs = running_edges(ops)
    counts = [(ops == o).sum(axis=1) for o in range(1, _NB201_OPS)]
    counts += [((ops == o) & runs).sum(axis=1) for o in range(1, _NB201_OPS)]
    connected = live_edges(ops).any(axis=1)
    fed = (ops[:, [3, 4, 5]] != _NONE).any(axis=1)
    return np.column_stack([*counts, connected, fed]).astype(float)


def _onehot(ops: np.ndarray, n_ops: int) -> np.ndarray:
    n, width = ops.shape
    out = np.zeros((n, width * n_ops))
    out[np.repeat(np.arange(n), width), (ops + n_ops * np.arange(width)).ravel()] = 1.0
    return out


def _reach(ops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NB201: per node, reachable from node 0, and reaching node 3, over non-``none`` edges."""
    on = ops != _NONE
    from_in = np.zeros((len(ops), 4), dtype=bool)
    from_in[:, 0] = True
    for e, (i, j) in enumerate(NB201_EDGES):  # edges come in topological order of j
        from_in[:, j] |= from_in[:, i] & on[:, e]
    to_out = np.zeros((len(ops), 4), dtype=bool)
    to_out[:, 3] = True
    for e, (i, j) in reversed(list(enumerate(NB201_EDGES))):  # decreasing order of i
        to_out[:, i] |= to_out[:, j] & on[:, e]
    return from_in, to_out


_SRC = np.array([i for i, _ in NB201_EDGES])
_DST = np.array([j for _, j in NB201_EDGES])


def running_edges(ops: np.ndarray) -> np.ndarray:
    """NB201: ``(n, 6)`` bool, True where the edge is not ``none`` and its target feeds node 3.

    On the pixel3 and raspi4 columns these are the ops that cost time: a runtime that prunes
    dead code drops ops whose result never reaches the output, but still runs those that
    compute on a cut-off (constant) input.
    """
    ops = _check_ops("nb201", ops)
    _, to_out = _reach(ops)
    return (ops != _NONE) & to_out[:, _DST]


def live_edges(ops: np.ndarray) -> np.ndarray:
    """NB201: ``(n, 6)`` bool, True where the edge's op lies on an input→output path.

    A path follows non-``none`` edges from node 0 to node 3: an edge is live when it is not
    ``none``, node 0 reaches its source and its target reaches node 3. The cell is connected
    when any edge is live.
    """
    ops = _check_ops("nb201", ops)
    from_in, to_out = _reach(ops)
    return (ops != _NONE) & from_in[:, _SRC] & to_out[:, _DST]


@cache
def fbnet_layer_macs() -> np.ndarray:
    """FBNet: ``(22, 9)`` million multiply-accumulates of each block choice in each layer.

    A block is a 1x1 expansion (``e`` times the input channels), a ``k`` x ``k`` depthwise
    convolution (with the layer's stride) and a 1x1 projection; ``g2`` halves the 1x1 convs
    (two groups). ``skip`` costs nothing where shapes match, else a 1x1 projection. BN, ReLU,
    channel shuffle and the stem/head are left out. The figures are a proxy for the work a
    CPU or phone does, not a measurement.
    """
    out = np.zeros((FBNET_LAYERS, len(FBNET_BLOCKS)))
    layer, c_in, res = 0, 16, 112
    for c_out, n, first_stride in FBNET_MACRO:
        for i in range(n):
            stride = first_stride if i == 0 else 1
            out[layer] = [_block_macs(b, c_in, c_out, stride, res) for b in FBNET_BLOCKS]
            layer, c_in, res = layer + 1, c_out, res // stride
    out.setflags(write=False)
    return out


def _block_macs(block: str, c_in: int, c_out: int, stride: int, res: int) -> float:
    """Million MACs of one FBNet block on a ``res`` x ``res`` input."""
    r_out = res // stride
    if block == "skip":
        return 0.0 if c_in == c_out and stride == 1 else c_in * c_out * r_out**2 / 1e6
    k, e = int(block[1]), int(block.split("_")[1][1:])
    groups = 2 if block.endswith("_g2") else 1
    mid = c_in * e
    pointwise = (c_in * mid * res**2 + mid * c_out * r_out**2) / groups
    return (pointwise + mid * k * k * r_out**2) / 1e6
