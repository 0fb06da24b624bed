"""The Once-for-All ResNet50-D elastic supernet (ofa's ``OFAResNets``, its published space).

The supernet holds the largest network; a sub-network uses a prefix of it:

- **stem** (ResNet50-D): conv 3x3/2 -> [conv 3x3 + identity] -> conv 3x3, then max-pool. The
  middle conv is the one skippable layer: it runs only when ``d0`` is the largest depth (2);
  ``d0`` 0 and 1 both skip it, as in ofa. ``w0`` picks the width of the first two convs,
  ``w1`` that of the third.
- **stages**: four stages of bottleneck blocks, ``2 + d`` of ``(2, 2, 4, 2) + 2`` blocks active
  (the first ones). ``w2..w5`` pick each stage's output width, ``e0..e17`` each block's expand
  ratio; its middle width is ``make_divisible(round(out * e), 8)``. The first block of a stage
  has an avg-pool (ceil mode) + 1x1 conv + BN shortcut; the others the identity.
- every layer takes the **first** ``n`` output channels of the full weights and the first
  channels of its input, BatchNorm the first ``n`` entries of its affine weights and statistics.

Module names equal ofa's, so an ofa state_dict loads unchanged (older checkpoints with ofa's
legacy names are renamed by :meth:`OFAResNet50.convert_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.compress.arch import ConvBNAct, LayerSpec, Network, Preprocessing
from nas.supernets.elastic import Choice, ElasticSupernet

DEPTHS: tuple[int, ...] = (0, 1, 2)
EXPAND_RATIOS: tuple[float, ...] = (0.2, 0.25, 0.35)
WIDTH_MULTS: tuple[float, ...] = (0.65, 0.8, 1.0)
BASE_DEPTHS: tuple[int, ...] = (2, 2, 4, 2)
STAGE_WIDTHS: tuple[int, ...] = (256, 512, 1024, 2048)
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2)
N_BLOCKS = sum(BASE_DEPTHS) + len(BASE_DEPTHS) * max(DEPTHS)  # 18


def _make_divisible(v: float, divisor: int = 8) -> int:
    """``v`` rounded to a multiple of ``divisor``, never below it nor 10% below ``v``."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


# -- dynamic ops (private): full-size weights, sliced on every call ----------------------------
class _SlicedConv(nn.Module):
    """A full-size bias-free conv (``.conv``) run with its first ``out`` filters."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor, out: int) -> torch.Tensor:
        weight = self.conv.weight[:out, : x.size(1)]
        return F.conv2d(x, weight, None, self.conv.stride, self.conv.padding)


class _SlicedBN(nn.Module):
    """A full-size BatchNorm2d (``.bn``) applied to the first ``x.size(1)`` channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, n = self.bn, x.size(1)
        assert bn.running_mean is not None and bn.running_var is not None
        momentum = bn.momentum
        if self.training and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        return F.batch_norm(
            x,
            bn.running_mean[:n],  # views: training updates the stored statistics in place
            bn.running_var[:n],
            bn.weight[:n],
            bn.bias[:n],
            self.training,
            momentum or 0.0,
            bn.eps,
        )


class _ConvBN(nn.Module):
    """Sliced conv, sliced BN, optional ReLU (keys ``conv.conv.*``, ``bn.bn.*`` as ofa)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv = _SlicedConv(cin, cout, kernel, stride)
        self.bn = _SlicedBN(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor, out: int) -> torch.Tensor:
        y = self.bn(self.conv(x, out))
        return F.relu(y) if self.relu else y


class _StemResidual(nn.Module):
    """x + conv(x): the skippable middle stem layer (key ``conv``, as ofa's ResidualBlock)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _ConvBN(channels, channels, 3)

    def forward(self, x: torch.Tensor, out: int) -> torch.Tensor:
        return x + self.conv(x, out)


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 bottleneck; avg-pool + 1x1 shortcut or the identity."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int, projection: bool):
        super().__init__()
        self.stride = stride
        self.conv1 = _ConvBN(cin, mid, 1)
        self.conv2 = _ConvBN(mid, mid, 3, stride)
        self.conv3 = _ConvBN(mid, cout, 1, relu=False)
        self.downsample = _ConvBN(cin, cout, 1, relu=False) if projection else None

    def forward(self, x: torch.Tensor, mid: int, out: int) -> torch.Tensor:
        shortcut = x
        if self.downsample is not None:
            if self.stride > 1:
                shortcut = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
            shortcut = self.downsample(shortcut, out)
        y = self.conv3(self.conv2(self.conv1(x, mid), mid), out)
        return F.relu(y + shortcut)


class _SlicedLinear(nn.Module):
    """A full-size linear layer (``.linear``) run on the first ``x.size(1)`` input features."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.linear.weight[:, : x.size(1)], self.linear.bias)


class _Classifier(nn.Module):
    """Dropout + sliced linear (key ``linear.linear.*``, as ofa's DynamicLinearLayer)."""

    def __init__(self, cin: int, n_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = _SlicedLinear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x))


# -- the active sub-network, resolved ------------------------------------------------------
@dataclass(frozen=True)
class _Block:
    index: int  # in self.blocks
    cin: int
    mid: int
    out: int
    stride: int
    projection: bool


@dataclass(frozen=True)
class _Plan:
    stem_mid: int
    stem_skip: bool
    stem_out: int
    blocks: tuple[_Block, ...]


def _conv_spec(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> LayerSpec:
    spec: LayerSpec = {"type": "conv", "in": cin, "out": cout, "kernel": kernel, "stride": stride}
    if relu:
        spec["act"] = "relu"
    return spec


def _block_spec(b: _Block) -> LayerSpec:
    body = [
        _conv_spec(b.cin, b.mid, 1),
        _conv_spec(b.mid, b.mid, 3, b.stride),
        _conv_spec(b.mid, b.out, 1, relu=False),
    ]
    shortcut: list[LayerSpec] = []
    if b.projection:
        if b.stride > 1:
            pool = {"type": "avgpool", "kernel": b.stride, "stride": b.stride, "ceil_mode": True}
            shortcut.append(pool)
        shortcut.append(_conv_spec(b.cin, b.out, 1, relu=False))
    return {"type": "residual", "body": body, "shortcut": shortcut, "act": "relu"}


def _copy_conv_bn(src: _ConvBN, dst: ConvBNAct) -> None:
    out, cin = dst.conv.weight.shape[:2]
    dst.conv.weight.copy_(src.conv.conv.weight[:out, :cin])
    assert dst.bn is not None
    full, part = src.bn.bn, dst.bn
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(part, name).copy_(getattr(full, name)[:out])
    if part.num_batches_tracked is not None and full.num_batches_tracked is not None:
        part.num_batches_tracked.copy_(full.num_batches_tracked)


class OFAResNet50(ElasticSupernet):
    """Once-for-All's elastic ResNet50-D (depth 0/1/2, expand .2/.25/.35, width .65/.8/1)."""

    name = "resnet50"

    def __init__(
        self,
        n_classes: int = 1000,
        preprocessing: Preprocessing | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(n_classes, preprocessing)
        self.dropout = dropout
        self.stem_out = tuple(_make_divisible(64 * m) for m in WIDTH_MULTS)
        self.stem_mid = tuple(_make_divisible(c // 2) for c in self.stem_out)
        self.stage_widths = tuple(
            tuple(_make_divisible(w * m) for m in WIDTH_MULTS) for w in STAGE_WIDTHS
        )
        mid, out = max(self.stem_mid), max(self.stem_out)
        self.input_stem = nn.ModuleList(
            [_ConvBN(3, mid, 3, 2), _StemResidual(mid), _ConvBN(mid, out, 3)]
        )
        self.max_pooling = nn.MaxPool2d(3, 2, padding=1)
        blocks = self._make_blocks()
        #: (stride, has a projection shortcut) of every block
        self._layout = tuple((b.stride, b.downsample is not None) for b in blocks)
        self.blocks = nn.ModuleList(blocks)
        self.classifier = _Classifier(max(self.stage_widths[-1]), n_classes, dropout)
        self._plan_active = self._plan(self.largest())

    def _make_blocks(self) -> list[_Bottleneck]:
        blocks: list[_Bottleneck] = []
        cin = self.stem_out
        for base, widths, stride in zip(BASE_DEPTHS, self.stage_widths, STAGE_STRIDES, strict=True):
            mid = _make_divisible(round(max(widths) * max(EXPAND_RATIOS)))
            for i in range(base + max(DEPTHS)):
                s = stride if i == 0 else 1
                projection = not (s == 1 and cin == widths)
                blocks.append(_Bottleneck(max(cin), max(widths), mid, s, projection))
                cin = widths
        return blocks

    # -- the space -------------------------------------------------------------------------
    def choices(self) -> dict[str, tuple[Choice, ...]]:
        """``d0..d4`` (stem skip, stage depths), ``e0..e17`` (expand), ``w0..w5`` (width index)."""
        out: dict[str, tuple[Choice, ...]] = {}
        out.update({f"d{i}": DEPTHS for i in range(1 + len(BASE_DEPTHS))})
        out.update({f"e{i}": EXPAND_RATIOS for i in range(N_BLOCKS)})
        widths = tuple(range(len(WIDTH_MULTS)))
        out.update({f"w{i}": widths for i in range(2 + len(BASE_DEPTHS))})
        return out

    def _plan(self, params: Mapping[str, Any]) -> _Plan:
        p = self.check(params)
        stem_out = self.stem_out[int(p["w1"])]
        blocks: list[_Block] = []
        cin, index = stem_out, 0
        for stage, base in enumerate(BASE_DEPTHS):
            out = self.stage_widths[stage][int(p[f"w{stage + 2}"])]
            active = base + int(p[f"d{stage + 1}"])
            for i in range(base + max(DEPTHS)):
                if i < active:
                    mid = _make_divisible(round(out * float(p[f"e{index}"])))
                    blocks.append(_Block(index, cin, mid, out, *self._layout[index]))
                    cin = out
                index += 1
        return _Plan(
            stem_mid=self.stem_mid[int(p["w0"])],
            stem_skip=int(p["d0"]) != max(DEPTHS),
            stem_out=stem_out,
            blocks=tuple(blocks),
        )

    # -- the active sub-network ------------------------------------------------------------
    def set_active(self, params: Mapping[str, Any]) -> None:
        """Make ``params`` the sub-network that :meth:`forward` runs.

        Raises:
            ValueError: ``params`` lacks a dimension or has a value outside the space.
        """
        self._plan_active = self._plan(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the active sub-network (differentiable; BN statistics update in train)."""
        plan = self._plan_active
        x = self.input_stem[0](x, plan.stem_mid)
        if not plan.stem_skip:
            x = self.input_stem[1](x, plan.stem_mid)
        x = self.max_pooling(self.input_stem[2](x, plan.stem_out))
        for b in plan.blocks:
            x = self.blocks[b.index](x, b.mid, b.out)
        return self.classifier(x.mean((2, 3)))

    def arch_spec(self, params: Mapping[str, Any]) -> list[LayerSpec]:
        """The layer spec of sub-network ``params`` (conv / residual / pools / linear)."""
        plan = self._plan(params)
        spec = [_conv_spec(3, plan.stem_mid, 3, 2)]
        if not plan.stem_skip:
            body = [_conv_spec(plan.stem_mid, plan.stem_mid, 3)]
            spec.append({"type": "residual", "body": body, "shortcut": []})
        spec.append(_conv_spec(plan.stem_mid, plan.stem_out, 3))
        spec.append({"type": "maxpool", "kernel": 3, "stride": 2, "padding": 1})
        spec.extend(_block_spec(b) for b in plan.blocks)
        spec += [{"type": "gap"}, {"type": "flatten"}]
        if self.dropout > 0:
            spec.append({"type": "dropout", "p": self.dropout})
        features = plan.blocks[-1].out
        spec.append({"type": "linear", "in": features, "out": self.n_classes})
        return spec

    def _sources(self, plan: _Plan) -> list[_ConvBN]:
        """The supernet's conv+BN layers of ``plan``, in the order of its spec's conv layers."""
        stem: list[Any] = list(self.input_stem)
        out: list[_ConvBN] = [stem[0]] + ([] if plan.stem_skip else [stem[1].conv]) + [stem[2]]
        for b in plan.blocks:
            block: Any = self.blocks[b.index]
            out += [block.conv1, block.conv2, block.conv3]
            if block.downsample is not None:
                out.append(block.downsample)
        return out

    def copy_weights(self, net: Network, params: Mapping[str, Any]) -> None:
        """Copy the first-channel slices of sub-network ``params`` (BN statistics too) to ``net``.

        Raises:
            ValueError: ``net`` was not built from ``arch_spec(params)``.
        """
        sources = self._sources(self._plan(params))
        targets = [m for m in net.modules() if isinstance(m, ConvBNAct)]
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if len(sources) != len(targets) or len(linears) != 1:
            raise ValueError(f"{self.name}: the network was not built from this sub-network")
        with torch.no_grad():
            for src, dst in zip(sources, targets, strict=True):
                _copy_conv_bn(src, dst)
            full, part = self.classifier.linear.linear, linears[0]
            part.weight.copy_(full.weight[:, : part.in_features])
            part.bias.copy_(full.bias)

    # -- Once-for-All compatibility --------------------------------------------------------
    def to_ofa(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``{"d": [5], "e": [18], "w": [6]}`` for ofa's ``OFAResNets.set_active_subnet``."""
        p = self.check(params)
        return {
            "d": [int(p[f"d{i}"]) for i in range(1 + len(BASE_DEPTHS))],
            "e": [float(p[f"e{i}"]) for i in range(N_BLOCKS)],
            "w": [int(p[f"w{i}"]) for i in range(2 + len(BASE_DEPTHS))],
        }

    def convert_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys of an ofa ``OFAResNets`` state_dict, ours already; ofa's legacy names renamed.

        Older ofa checkpoints name ``bn.weight`` / ``conv.weight`` / ``.linear.`` without the
        dynamic wrappers (``bn.bn.``, ``conv.conv.``, ``.linear.linear.``); ofa's own
        ``load_state_dict`` renames them the same way. Unknown keys are kept (the loader
        reports them).
        """
        own = self.state_dict().keys()
        out: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            out[_ofa_key(key, own)] = value
        return out

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments."""
        return {"n_classes": self.n_classes, "dropout": self.dropout}


def _ofa_key(key: str, own: Any) -> str:
    if key in own:
        return key
    for old, new in (
        (".linear.", ".linear.linear."),
        ("bn.", "bn.bn."),
        ("conv.weight", "conv.conv.weight"),
    ):
        if old in key:
            renamed = key.replace(old, new)
            return renamed if renamed in own else key
    return key
