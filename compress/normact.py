"""Normalization-activation layers as computation graphs (EvoNorm, Liu et al. 2020).

A layer is a small DAG. Its four *initial* nodes are the input ``x`` (0), a zero tensor (1) and
two per-channel learnable vectors ``v0`` (2, initialised 0) and ``v1`` (3, initialised 1); each
intermediate node applies one primitive of :data:`OPS` to one or two earlier nodes; the output
node is followed by a per-channel affine transform ``y * weight + bias``. As JSON::

    {"nodes": [{"op": "std_batch", "in": [0]}, {"op": "div", "in": [0, 4]}], "output": 5}

(``output`` defaults to the last node). Primitives: element-wise ``add``, ``mul``, ``div``,
``max``, ``neg``, ``sigmoid``, ``tanh``, ``exp``, ``slog`` (``sign(a) * log(1 + |a|)``),
``abs``, ``square``, ``ssqrt`` (``sign(a) * sqrt(|a| + eps)``); aggregates ``mean_*`` and
``std_*`` (``sqrt(var + eps)``) over the batch (N, H, W), instance (H, W) and group
(H, W, C/g) axes. ``div`` adds no epsilon: a layer that divides by zero produces inf or NaN and
is rejected by the search's stability protocol, not silently repaired.

Every *batch* aggregate node keeps running statistics, as BatchNorm does: in training it uses
the batch moments (biased variance) and updates ``stat<i>`` (the mean, or the unbiased variance)
with momentum 0.1; in eval mode it uses the running value, so a model runs at batch 1 and
exports to ONNX. Groups: ``gcd(channels, groups)`` groups (``groups`` defaults to 4).

This module imports only torch: :mod:`nas.compress.arch` builds ``{"type": "normact", ...}``
layers through :func:`build_normact` without any search code. Besides a graph, ``graph`` may be
the name of a fixed layer (:data:`FIXED`), implemented as its own module: ``bn-relu``,
``gn-relu``, ``b0`` (EvoNorm-B0) and ``s0`` (EvoNorm-S0), and ``gn`` (GroupNorm without
activation, for the BNs that no activation follows; see :mod:`nas.compress.evonorm_train`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5
MOMENTUM = 0.1
DEFAULT_GROUPS = 4
#: names of the initial nodes 0..3
INITIAL = ("x", "zero", "v0", "v1")
BINARY = ("add", "mul", "div", "max")
UNARY = ("neg", "sigmoid", "tanh", "exp", "slog", "abs", "square", "ssqrt")
AXES = ("batch", "instance", "group")
AGGREGATES = tuple(f"{k}_{a}" for a in AXES for k in ("mean", "std"))
#: every primitive, in the order the search space lists them
OPS = BINARY + UNARY + AGGREGATES
#: the fixed layers a spec may name instead of a graph
FIXED = ("bn-relu", "gn-relu", "b0", "s0", "gn")

Tensor = torch.Tensor
Graph = dict[str, Any]


class GraphError(ValueError):
    """A layer graph that is not well formed."""


_BINARY_FN: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add,
    "mul": torch.mul,
    "div": torch.div,
    "max": torch.maximum,
}
_UNARY_FN: dict[str, Callable[[Tensor], Tensor]] = {
    "neg": torch.neg,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "slog": lambda a: torch.sign(a) * torch.log1p(torch.abs(a)),
    "abs": torch.abs,
    "square": torch.square,
    "ssqrt": lambda a: torch.sign(a) * torch.sqrt(torch.abs(a) + EPS),
}


def arity(op: str) -> int:
    """Number of inputs of primitive ``op`` (1 or 2)."""
    return 2 if op in BINARY else 1


def check_graph(graph: Any) -> Graph:
    """A validated, normalised copy of ``graph`` (``nodes`` and ``output``).

    Raises:
        GraphError: not an object with a node list, an unknown op, a wrong number of inputs,
            an input that is not an earlier node, or an output that is no node.
    """
    if not isinstance(graph, Mapping) or not isinstance(graph.get("nodes"), list):
        raise GraphError('a layer graph must be an object with a "nodes" list')
    nodes: list[dict[str, Any]] = []
    for k, node in enumerate(graph["nodes"]):
        i = len(INITIAL) + k
        if not isinstance(node, Mapping) or "op" not in node or "in" not in node:
            raise GraphError(f'node {i}: expected {{"op": ..., "in": [...]}}')
        op, ins = node["op"], node["in"]
        if op not in OPS:
            raise GraphError(f"node {i}: unknown op {op!r}; known: {', '.join(OPS)}")
        if not isinstance(ins, list) or len(ins) != arity(op):
            raise GraphError(f"node {i}: {op} takes {arity(op)} input(s), got {ins!r}")
        if not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < i for j in ins):
            raise GraphError(f"node {i}: inputs {ins!r} must be earlier nodes (0..{i - 1})")
        nodes.append({"op": op, "in": list(ins)})
    last = len(INITIAL) + len(nodes) - 1
    out = graph.get("output", last)
    if not isinstance(out, int) or isinstance(out, bool) or not 0 <= out <= last:
        raise GraphError(f"output {out!r} is not a node (0..{last})")
    return {"nodes": nodes, "output": out}


def live_nodes(graph: Graph) -> list[int]:
    """Indices of the nodes the output depends on (itself included), ascending."""
    nodes, seen, stack = graph["nodes"], set(), [graph["output"]]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if i >= len(INITIAL):
            stack.extend(nodes[i - len(INITIAL)]["in"])
    return sorted(seen)


def depends_on_input(graph: Graph) -> bool:
    """Whether the output depends on ``x`` at all."""
    return 0 in live_nodes(graph)


def has_statistics(graph: Graph) -> bool:
    """Whether the output depends on an aggregate (mean or std) of a value that depends on
    ``x``: whether the layer normalises at all, rather than being a pure activation."""
    nodes = graph["nodes"]
    stats = [
        nodes[i - len(INITIAL)]["in"][0]
        for i in live_nodes(graph)
        if i >= len(INITIAL) and nodes[i - len(INITIAL)]["op"] in AGGREGATES
    ]
    return any(0 in live_nodes(dict(graph, output=j)) for j in stats)


def elementwise_on_input(graph: Graph) -> bool:
    """Whether ``x`` reaches the output along a path through no aggregate. If not, the output
    is constant over space (and over the batch or groups): the layer discards its feature map."""
    reach = {0}
    for k, n in enumerate(graph["nodes"]):
        if n["op"] not in AGGREGATES and any(j in reach for j in n["in"]):
            reach.add(len(INITIAL) + k)
    return int(graph["output"]) in reach


def normalises(graph: Graph) -> bool:
    """Whether the graph is a normalization-activation layer at all: the output depends on
    ``x`` element-wise (:func:`elementwise_on_input`) and on a statistic of it
    (:func:`has_statistics`)."""
    return elementwise_on_input(graph) and has_statistics(graph)


def effective_groups(channels: int, groups: int) -> int:
    """Groups actually used: ``gcd(channels, groups)`` (so every group has equal size)."""
    return math.gcd(int(channels), max(1, int(groups)))


def _view(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def group_moments(a: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over (C/g, H, W) per sample and group, broadcast per channel."""
    _, c, h, w = a.shape
    g = a.reshape(-1, groups, c // groups, h, w)
    var, mean = torch.var_mean(g, dim=(2, 3, 4), unbiased=False, keepdim=True)
    size = (-1, -1, c // groups, -1, -1)
    return mean.expand(size).reshape(-1, c, 1, 1), var.expand(size).reshape(-1, c, 1, 1)


class BatchMoment(nn.Module):
    """A batch aggregate node: batch moments in training (updating a running value), the running
    value in eval mode. ``kind`` is ``mean`` or ``std``."""

    def __init__(self, channels: int, kind: str, momentum: float = MOMENTUM):
        super().__init__()
        self.kind = kind
        self.momentum = momentum
        init = torch.zeros(channels) if kind == "mean" else torch.ones(channels)
        self.running: Tensor
        self.register_buffer("running", init)

    def forward(self, a: Tensor) -> Tensor:
        if not self.training:
            run = _view(self.running)
            return run if self.kind == "mean" else torch.sqrt(run + EPS)
        var, mean = torch.var_mean(a, dim=(0, 2, 3), unbiased=False)
        n = a.numel() / a.shape[1]
        with torch.no_grad():
            value = mean if self.kind == "mean" else var * (n / max(n - 1, 1))
            self.running.mul_(1 - self.momentum).add_(self.momentum * value)
        return _view(mean) if self.kind == "mean" else torch.sqrt(_view(var) + EPS)


class GraphNormAct(nn.Module):
    """The executor of a layer graph: initial nodes, live intermediate nodes, output affine.

    Only nodes the output depends on are computed; each live batch aggregate node ``i`` owns a
    :class:`BatchMoment` ``stats.<i>``. Parameters ``v0``, ``v1``, ``weight``, ``bias`` are
    per channel.
    """

    def __init__(self, graph: Graph, channels: int, groups: int = DEFAULT_GROUPS):
        super().__init__()
        self.graph = check_graph(graph)
        self.channels = int(channels)
        self.groups = effective_groups(channels, groups)
        self.v0 = nn.Parameter(torch.zeros(channels))
        self.v1 = nn.Parameter(torch.ones(channels))
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.live = [i for i in live_nodes(self.graph) if i >= len(INITIAL)]
        self.stats = nn.ModuleDict()
        for i in self.live:
            op = self._node(i)["op"]
            if op.endswith("_batch"):
                self.stats[str(i)] = BatchMoment(channels, op.split("_")[0])

    def _node(self, i: int) -> dict[str, Any]:
        node: dict[str, Any] = self.graph["nodes"][i - len(INITIAL)]
        return node

    def forward(self, x: Tensor) -> Tensor:
        values: dict[int, Tensor] = {0: x, 1: torch.zeros_like(x), 2: _view(self.v0)}
        values[3] = _view(self.v1)
        for i in self.live:
            node = self._node(i)
            args = [values[j] for j in node["in"]]
            values[i] = self._op(i, node["op"], args)
        # an output made of aggregates (N, C, 1, 1) or constants is broadcast to x's shape
        y = values[self.graph["output"]].expand_as(x)
        return y * _view(self.weight) + _view(self.bias)

    def _op(self, i: int, op: str, args: list[Tensor]) -> Tensor:
        if op in _BINARY_FN:
            return _BINARY_FN[op](args[0], args[1])
        if op in _UNARY_FN:
            return _UNARY_FN[op](args[0])
        a = args[0]
        kind, axis = op.split("_")
        if axis == "batch":
            out: Tensor = self.stats[str(i)](a)
            return out
        if axis == "instance":
            var, mean = torch.var_mean(a, dim=(2, 3), unbiased=False, keepdim=True)
        else:
            mean, var = group_moments(a, self.groups)
        return mean if kind == "mean" else torch.sqrt(var + EPS)


# -- the fixed layers as modules ---------------------------------------------------------------
class _Affine(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def affine(self, y: Tensor) -> Tensor:
        return y * _view(self.weight) + _view(self.bias)


class EvoNormB0(_Affine):
    """EvoNorm-B0: ``x / max(sqrt(var_batch(x) + eps), v1 * x + sqrt(var_instance(x) + eps))
    * weight + bias``; the batch variance is a running statistic in eval mode (``running_var``,
    unbiased, momentum 0.1), ``v1`` is initialised to ones."""

    def __init__(self, channels: int, momentum: float = MOMENTUM):
        super().__init__(channels)
        self.v1 = nn.Parameter(torch.ones(channels))
        self.batch_std = BatchMoment(channels, "std", momentum)

    def forward(self, x: Tensor) -> Tensor:
        inst_var = torch.var(x, dim=(2, 3), unbiased=False, keepdim=True)
        right = _view(self.v1) * x + torch.sqrt(inst_var + EPS)
        return self.affine(x / torch.maximum(self.batch_std(x), right))


class EvoNormS0(_Affine):
    """EvoNorm-S0: ``x * sigmoid(v1 * x) / sqrt(var_group(x) + eps) * weight + bias``;
    ``gcd(channels, groups)`` groups, ``v1`` initialised to ones. No batch statistics."""

    def __init__(self, channels: int, groups: int = DEFAULT_GROUPS):
        super().__init__(channels)
        self.groups = effective_groups(channels, groups)
        self.v1 = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        _, var = group_moments(x, self.groups)
        return self.affine(x * torch.sigmoid(_view(self.v1) * x) / torch.sqrt(var + EPS))


class NormReLU(nn.Module):
    """BatchNorm2d or GroupNorm (affine), then ReLU (unless ``relu`` is False): the usual
    layers, as references."""

    def __init__(self, channels: int, kind: str, groups: int = DEFAULT_GROUPS, relu: bool = True):
        super().__init__()
        self.relu = relu
        if kind == "bn":
            self.norm: nn.Module = nn.BatchNorm2d(channels, eps=EPS, momentum=MOMENTUM)
        else:
            self.norm = nn.GroupNorm(effective_groups(channels, groups), channels, eps=EPS)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x)
        return F.relu(y) if self.relu else y


def fixed_layer(name: str, channels: int, groups: int = DEFAULT_GROUPS) -> nn.Module:
    """The module of fixed layer ``name`` (:data:`FIXED`)."""
    if name == "bn-relu":
        return NormReLU(channels, "bn")
    if name == "gn-relu":
        return NormReLU(channels, "gn", groups)
    if name == "gn":
        return NormReLU(channels, "gn", groups, relu=False)
    if name == "b0":
        return EvoNormB0(channels)
    if name == "s0":
        return EvoNormS0(channels, groups)
    raise GraphError(f"unknown layer {name!r}; known: {', '.join(FIXED)} or a graph")


def build_normact(spec: Mapping[str, Any], where: str = "layer") -> nn.Module:
    """The module of a ``{"type": "normact", "channels": C, "graph": G, "groups": g}`` spec.

    ``G`` is a graph (see the module docstring) or a fixed layer's name; ``groups`` is
    optional (default 4).

    Raises:
        ValueError: a malformed graph or an unknown layer name (the message names ``where``).
    """
    channels = int(spec["channels"])
    groups = int(spec.get("groups", DEFAULT_GROUPS))
    if channels < 1 or groups < 1:
        raise GraphError(f"{where}: channels and groups must be at least 1")
    graph = spec["graph"]
    try:
        if isinstance(graph, str):
            return fixed_layer(graph, channels, groups)
        return GraphNormAct(graph, channels, groups)
    except GraphError as e:
        raise GraphError(f"{where}: {e}") from None


def layer_spec(graph: Graph | str, channels: int, groups: int = DEFAULT_GROUPS) -> dict[str, Any]:
    """The arch spec of a normact layer (a copy of ``graph`` when it is one)."""
    g: Graph | str = graph if isinstance(graph, str) else check_graph(graph)
    return {"type": "normact", "channels": int(channels), "graph": g, "groups": int(groups)}


def node(op: str, *inputs: int) -> dict[str, Any]:
    """One graph node (for writing graphs by hand)."""
    return {"op": op, "in": list(inputs)}


def graph_of(nodes: Sequence[dict[str, Any]], output: int | None = None) -> Graph:
    """A checked graph of ``nodes`` (output: the last node unless given)."""
    g: dict[str, Any] = {"nodes": list(nodes)}
    if output is not None:
        g["output"] = output
    return check_graph(g)
