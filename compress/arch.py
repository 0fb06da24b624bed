"""Self-describing architectures: a JSON layer spec and the standalone network it builds.

A sub-network extracted from a supernet, or a compressed model, is described by a small JSON
tree of layers. :func:`build` turns the tree into a :class:`Network` (plain torch modules, no
plugin code needed), so a model saved as safetensors + JSON is rebuilt by
:func:`nas.compress.load_model` alone.

Layer types (every key not marked optional is required)::

    {"type": "conv", "in": C, "out": C', "kernel": k, "stride": s,
     "groups": 1, "bias": false, "bn": true, "act": null, "padding": k // 2}   # optional keys
    {"type": "linear", "in": C, "out": C', "bias": true}
    {"type": "act", "fn": "relu" | "relu6" | "hswish" | "hsigmoid" | "sigmoid" | "prelu"
     | "softmax", "channels": C}                   # channels only for prelu; softmax over dim 1
    {"type": "se", "channels": C, "mid": M}        # squeeze-excite: gap, 1x1 conv + relu,
                                                   # 1x1 conv + hard sigmoid, scale
    {"type": "maxpool" | "avgpool", "kernel": k, "stride": s, "padding": 0, "ceil_mode": false,
     "count_include_pad": true}                    # the last key only for avgpool
    {"type": "bn", "channels": C, "affine": true}  # a BatchNorm2d on its own
    {"type": "gap"}                                # global average pool, keeps (N, C, 1, 1)
    {"type": "flatten"}
    {"type": "permute", "dims": [0, 3, 2, 1]}      # dims include the batch, which stays first
    {"type": "dropout", "p": 0.1}
    {"type": "seq", "layers": [...]}
    {"type": "residual", "body": [...], "shortcut": [...], "act": null}
                                                   # act(body(x) + shortcut(x)); an empty
                                                   # shortcut is the identity
    {"type": "cell", "nodes": n, "edges": [{"from": i, "to": j, "layers": [...]}, ...]}
                                                   # a DAG cell (NAS-Bench-201): node 0 is the
                                                   # input, node j (0 < j < n) the sum of its
                                                   # in-edges' layers applied to node i < j,
                                                   # zeros when it has none; the output is node
                                                   # n - 1. Every edge keeps the input's shape
    {"type": "normact", "channels": C, "graph": {...}}
                                                   # a normalization-activation layer given
                                                   # as a graph (nas.compress.normact, EvoNorm)
    {"type": "kan", "in": F, "out": F', ...}       # a Kolmogorov-Arnold layer (nas.compress.kan)
    {"type": "convkan", "in": C, "out": C', "kernel": k, "stride": s, ...}
                                                   # a KAN convolution (nas.compress.kan)
    {"type": "heads", "names": ["box", "prob"], "heads": [[...], [...]]}
                                                   # several outputs from one input: a tuple,
                                                   # one tensor per head; last layer only

Module names follow the tree (``layers.3.body.0.conv.weight``), so a state_dict saved from a
built network loads into the network rebuilt from the same spec.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

LayerSpec = dict[str, Any]

#: activation name -> module factory (channels only matters for prelu)
ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda c: nn.ReLU(inplace=False),
    "relu6": lambda c: nn.ReLU6(inplace=False),
    "hswish": lambda c: nn.Hardswish(),
    "hsigmoid": lambda c: nn.Hardsigmoid(),
    "sigmoid": lambda c: nn.Sigmoid(),
    "prelu": lambda c: nn.PReLU(c),
    "softmax": lambda c: nn.Softmax(dim=1),
}


class SpecError(ValueError):
    """An architecture spec that cannot be built."""


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects as input: size, channels, normalisation and its classes."""

    input_size: tuple[int, int] = (224, 224)
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    classes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Preprocessing:
        try:
            return cls(
                input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
                channels=int(d["channels"]),
                mean=tuple(float(x) for x in d["mean"]),
                std=tuple(float(x) for x in d["std"]),
                classes=tuple(str(c) for c in d.get("classes", ())),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SpecError(f"bad preprocessing block: {e}") from None


class ConvBNAct(nn.Module):
    """Conv2d, optional BatchNorm2d, optional activation (names: conv, bn, act)."""

    def __init__(self, s: LayerSpec):
        super().__init__()
        k = int(s["kernel"])
        self.conv = nn.Conv2d(
            int(s["in"]),
            int(s["out"]),
            k,
            stride=int(s["stride"]),
            padding=int(s.get("padding", k // 2)),
            groups=int(s.get("groups", 1)),
            bias=bool(s.get("bias", False)),
        )
        self.bn = nn.BatchNorm2d(int(s["out"])) if s.get("bn", True) else None
        act = s.get("act")
        self.act = _activation(str(act), int(s["out"])) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x) if self.act is not None else x


class SqueezeExcite(nn.Module):
    """x * hsigmoid(expand(relu(reduce(mean(x))))), as MobileNetV3 uses it."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True)
        self.expand = nn.Conv2d(mid, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        y = self.expand(torch.relu(self.reduce(y)))
        return x * nn.functional.hardsigmoid(y)


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class Residual(nn.Module):
    """act(body(x) + shortcut(x)); an empty shortcut is the identity."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential, act: nn.Module | None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x) + (self.shortcut(x) if len(self.shortcut) else x)
        return self.act(y) if self.act is not None else y


class Cell(nn.Module):
    """A DAG cell: node j is the sum of ``edges[k](node i)`` over the edges (i, j) into it.

    Node 0 is the input; a node without an in-edge is zeros of the input's shape; the output is
    the last node. Edge ``k`` runs from ``links[k][0]`` to ``links[k][1]``; links are sorted by
    (target, source), so module ``edges.k`` of a spec's cell is its k-th edge in that order.
    """

    def __init__(self, nodes: int, links: Sequence[tuple[int, int]], edges: Sequence[nn.Module]):
        super().__init__()
        ordered = sorted(links, key=lambda link: (link[1], link[0]))
        if nodes < 2 or list(links) != ordered or any(not 0 <= i < j < nodes for i, j in links):
            raise SpecError(f"a cell of {nodes} nodes cannot hold the edges {list(links)}")
        self.nodes = nodes
        self.links = [(int(i), int(j)) for i, j in links]
        self.edges = nn.ModuleList(edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: list[torch.Tensor | None] = [x] + [None] * (self.nodes - 1)
        for (i, j), edge in zip(self.links, self.edges, strict=True):
            # links are sorted by target, so node i is complete when an edge reads it
            source = values[i] if values[i] is not None else torch.zeros_like(x)
            y = edge(source)
            values[j] = y if values[j] is None else values[j] + y
        out = values[-1]
        return out if out is not None else torch.zeros_like(x)


class Permute(nn.Module):
    """``x.permute(*dims)`` (MTCNN flattens its features in (N, W, H, C) order)."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        if sorted(self.dims) != list(range(len(self.dims))) or self.dims[:1] != (0,):
            raise SpecError(f"permute dims {list(dims)} must reorder 0..n-1 with 0 first")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class Heads(nn.Module):
    """Several outputs of one input: ``tuple(head(x) for head in heads)``."""

    def __init__(self, names: Sequence[str], heads: Sequence[nn.Sequential]):
        super().__init__()
        if len(names) != len(heads) or len(set(names)) != len(names) or not names:
            raise SpecError(f"heads need one distinct name per head, got {list(names)}")
        self.names = [str(n) for n in names]
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(head(x) for head in self.heads)


class Network(nn.Module):
    """A standalone model built from a spec; carries the spec and its preprocessing.

    The output is one tensor (logits), or a tuple when the last layer is ``heads``
    (:attr:`output_names` names them).
    """

    def __init__(self, spec: Sequence[LayerSpec], preprocessing: Preprocessing | None = None):
        super().__init__()
        self.spec: list[LayerSpec] = [dict(s) for s in spec]
        self.preprocessing = preprocessing or Preprocessing()
        #: where the model came from (supernet, params, study, trial), as saved with it
        self.origin: dict[str, Any] = {}
        self.layers = _sequential(self.spec, "layers")
        if any(s.get("type") == "heads" for s in self.spec[:-1]):
            raise SpecError("a heads layer must be the last layer")

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs: ``["logits"]``, or those of a final ``heads`` layer."""
        last = self.layers[-1] if len(self.layers) else None
        return list(last.names) if isinstance(last, Heads) else ["logits"]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        y: torch.Tensor | tuple[torch.Tensor, ...] = self.layers(x)
        return y

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A random input of the size and channels this model expects."""
        h, w = self.preprocessing.input_size
        return torch.randn(batch, self.preprocessing.channels, h, w)


def _activation(name: str, channels: int) -> nn.Module:
    if name not in ACTIVATIONS:
        raise SpecError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name](channels)


def _sequential(specs: Sequence[LayerSpec], where: str) -> nn.Sequential:
    if not isinstance(specs, list | tuple):
        raise SpecError(f"{where}: expected a list of layers")
    return nn.Sequential(*[build_layer(s, f"{where}.{i}") for i, s in enumerate(specs)])


def build_layer(s: LayerSpec, where: str = "layer") -> nn.Module:
    """The module of one layer spec.

    Raises:
        SpecError: unknown type or a missing / malformed key (the message names where).
    """
    if not isinstance(s, Mapping) or "type" not in s:
        raise SpecError(f"{where}: a layer must be an object with a 'type'")
    kind = s["type"]
    try:
        return _BUILDERS[kind](s, where)
    except KeyError as e:
        if kind not in _BUILDERS:
            raise SpecError(f"{where}: unknown layer type {kind!r}") from None
        raise SpecError(f"{where}: {kind} layer lacks key {e}") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError(f"{where}: bad {kind} layer: {e}") from None


def _pool(s: LayerSpec, where: str) -> nn.Module:
    k, stride, pad = int(s["kernel"]), int(s["stride"]), int(s.get("padding", 0))
    ceil = bool(s.get("ceil_mode", False))
    if s["type"] == "maxpool":
        return nn.MaxPool2d(k, stride=stride, padding=pad, ceil_mode=ceil)
    include = bool(s.get("count_include_pad", True))
    return nn.AvgPool2d(k, stride=stride, padding=pad, ceil_mode=ceil, count_include_pad=include)


def _cell(s: LayerSpec, where: str) -> nn.Module:
    edges = sorted(s["edges"], key=lambda e: (int(e["to"]), int(e["from"])))
    return Cell(
        int(s["nodes"]),
        [(int(e["from"]), int(e["to"])) for e in edges],
        [_sequential(e["layers"], f"{where}.edges.{k}") for k, e in enumerate(edges)],
    )


def _residual(s: LayerSpec, where: str) -> nn.Module:
    act = s.get("act")
    out = _out_channels(s["body"])
    return Residual(
        _sequential(s["body"], f"{where}.body"),
        _sequential(s.get("shortcut", []), f"{where}.shortcut"),
        _activation(str(act), out or 1) if act else None,
    )


def _heads(s: LayerSpec, where: str) -> nn.Module:
    heads = s["heads"]
    if not isinstance(heads, list | tuple):
        raise SpecError(f"{where}: heads must be a list of layer lists")
    return Heads(
        list(s["names"]), [_sequential(h, f"{where}.heads.{i}") for i, h in enumerate(heads)]
    )


def _out_channels(specs: Sequence[LayerSpec]) -> int | None:
    for s in reversed(specs):
        if "out" in s:
            return int(s["out"])
        if "channels" in s:
            return int(s["channels"])
    return None


def _normact(s: LayerSpec, where: str) -> nn.Module:
    from nas.compress.normact import build_normact  # layer types of their own modules

    return build_normact(s, where)


def _kan(s: LayerSpec, where: str) -> nn.Module:
    from nas.compress.kan import build_kan

    return build_kan(s, where)


_BUILDERS: dict[str, Callable[[LayerSpec, str], nn.Module]] = {
    "conv": lambda s, w: ConvBNAct(s),
    "linear": lambda s, w: nn.Linear(int(s["in"]), int(s["out"]), bias=bool(s.get("bias", True))),
    "act": lambda s, w: _activation(str(s["fn"]), int(s.get("channels", 1))),
    "se": lambda s, w: SqueezeExcite(int(s["channels"]), int(s["mid"])),
    "maxpool": _pool,
    "avgpool": _pool,
    "gap": lambda s, w: GlobalAvgPool(),
    "flatten": lambda s, w: nn.Flatten(1),
    "permute": lambda s, w: Permute(s["dims"]),
    "dropout": lambda s, w: nn.Dropout(float(s.get("p", 0.0))),
    "seq": lambda s, w: _sequential(s["layers"], f"{w}.layers"),
    "residual": _residual,
    "bn": lambda s, w: nn.BatchNorm2d(int(s["channels"]), affine=bool(s.get("affine", True))),
    "cell": _cell,
    "heads": _heads,
    "normact": _normact,
    "kan": _kan,
    "convkan": _kan,
}


def build(spec: Sequence[LayerSpec], preprocessing: Preprocessing | None = None) -> Network:
    """Build the standalone network of ``spec`` (random weights)."""
    return Network(spec, preprocessing)


Shape = tuple[int, ...]


def layer_output_shape(s: LayerSpec, shape: Shape) -> Shape:
    """Output shape (without batch) of layer ``s`` on an input of ``shape`` (C, H, W or F).

    Pure arithmetic on the spec, no modules built: lookup tables key blocks by it.
    """
    kind = s["type"]
    if kind in ("conv", "convkan", "maxpool", "avgpool"):
        c, h, w = shape
        k, st = int(s["kernel"]), int(s["stride"])
        pad = int(s.get("padding", k // 2 if kind in ("conv", "convkan") else 0))
        rnd = math.ceil if s.get("ceil_mode", False) else math.floor
        h2, w2 = (int(rnd((n + 2 * pad - k) / st)) + 1 for n in (h, w))
        return (int(s["out"]) if kind in ("conv", "convkan") else c, h2, w2)
    if kind == "gap":
        return (shape[0], 1, 1)
    if kind == "flatten":
        return (math.prod(shape),)
    if kind in ("linear", "kan"):
        return (*shape[:-1], int(s["out"]))
    if kind == "permute":
        full = (0, *shape)
        return tuple(full[int(d)] for d in s["dims"])[1:]
    if kind == "heads":  # the shape of the first head's output
        return sequence_output_shape(s["heads"][0], shape)
    if kind == "seq":
        return sequence_output_shape(s["layers"], shape)
    if kind == "residual":
        return sequence_output_shape(s["body"], shape)
    return shape  # act, se, dropout, bn and cell keep the shape


def sequence_output_shape(specs: Sequence[LayerSpec], shape: Shape) -> Shape:
    """Output shape of layers applied in order."""
    for s in specs:
        shape = layer_output_shape(s, shape)
    return shape


def input_shapes(specs: Sequence[LayerSpec], shape: Shape) -> list[Shape]:
    """The input shape of each layer of ``specs`` applied in order to ``shape``."""
    shapes = []
    for s in specs:
        shapes.append(shape)
        shape = layer_output_shape(s, shape)
    return shapes


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``x`` through ``model``'s Conv2d and Linear.

    Counted per sample (divided by the batch size). BatchNorm, activations, pooling and
    element-wise additions are not counted, as in Once-for-All's counter.
    """
    total = 0

    def conv_hook(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out[0].numel() * k

    def linear_hook(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return total


def count_params(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
