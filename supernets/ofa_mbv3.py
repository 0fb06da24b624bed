"""The Once-for-All MobileNetV3 elastic supernet (ofa's ``OFAMobileNetV3``, its published space).

The supernet holds the largest network; a sub-network uses a part of it. At width 1.0
(width 1.2 scales every width below, rounded by ``make_divisible(w * 1.2, 8)``):

- **fixed stem**: conv 3x3/2 3->16 + BN + h-swish; a fixed first block: depthwise 3x3 + BN +
  ReLU, pointwise 16->16 + BN, plus the identity (no expansion, no SE).
- **five elastic stages** of up to four inverted-residual blocks, the first ``d`` of them
  active: (out 24, stride 2, ReLU), (40, 2, ReLU, SE), (80, 2, h-swish), (112, 1, h-swish, SE),
  (160, 2, h-swish, SE). A block: 1x1 expand to ``mid = make_divisible(round(cin * e), 8)``
  channels + BN + act; depthwise ``k x k`` (the stage's stride on the first block) + BN + act;
  SE (``make_divisible(mid // 4, 8)`` hidden channels, ReLU, hard-sigmoid gate) where the stage
  has it; 1x1 project + BN. Every block but the first of a stage adds the identity.
- **fixed head**: 1x1 conv 160->960 + BN + h-swish, global average pool, 1x1 conv 960->1280 with
  neither BN nor bias + h-swish, dropout, linear.

Elastic expand keeps the **first** ``mid`` channels (and BN entries). Elastic kernel: the
depthwise weights are 7x7; a 5x5 kernel is each channel's centre 5x5 mapped through the learned
25x25 ``7to5_matrix``, a 3x3 kernel the centre 3x3 of that mapped through ``5to3_matrix`` (both
start as the identity) — ofa's default ``KERNEL_TRANSFORM_MODE = 1``. Extraction bakes the
transformed kernels into plain depthwise convs.

Module names equal ofa's, so an ofa state_dict loads unchanged (legacy names of older ofa
checkpoints are renamed by :meth:`OFAMobileNetV3.convert_state_dict`).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nas.compress.arch import ConvBNAct, LayerSpec, Network, Preprocessing, SqueezeExcite
from nas.supernets.elastic import Choice, ElasticSupernet

KERNELS: tuple[int, ...] = (3, 5, 7)
EXPAND_RATIOS: tuple[int, ...] = (3, 4, 6)
DEPTHS: tuple[int, ...] = (2, 3, 4)
#: (base output width, stride of the first block, activation, squeeze-excite) of each stage
STAGES: tuple[tuple[int, int, str, bool], ...] = (
    (24, 2, "relu", False),
    (40, 2, "relu", True),
    (80, 2, "hswish", False),
    (112, 1, "hswish", True),
    (160, 2, "hswish", True),
)
N_SLOTS = len(STAGES) * max(DEPTHS)  # 20 elastic block slots
_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "hswish": F.hardswish}


def _divisible(v: float, divisor: int = 8) -> int:
    """``v`` rounded to a multiple of ``divisor``, never below it nor 10% below ``v``."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def _se_mid(mid: int) -> int:
    return _divisible(mid // 4)


# -- dynamic ops (private): full-size weights, sliced on every call ----------------------------
class _SlicedBN(nn.Module):
    """A full-size BatchNorm2d (``.bn``) applied to the first ``x.size(1)`` channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, n = self.bn, x.size(1)
        if n == bn.num_features:
            y: torch.Tensor = bn(x)
            return y
        assert bn.running_mean is not None and bn.running_var is not None
        momentum = bn.momentum
        if self.training and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative average, as nn.BatchNorm2d
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


class _Holder(nn.Module):
    """A bias-free 1x1 conv under ``.conv`` (ofa's DynamicConv2d naming)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)


class _Pointwise(nn.Module):
    """1x1 conv with its first ``out`` filters, sliced BN, optional activation."""

    def __init__(self, cin: int, cout: int, act: str | None):
        super().__init__()
        self.conv = _Holder(cin, cout)
        self.bn = _SlicedBN(cout)
        self.act = act

    def forward(self, x: torch.Tensor, out: int) -> torch.Tensor:
        y = self.bn(F.conv2d(x, self.conv.conv.weight[:out, : x.size(1)]))
        return _ACTS[self.act](y) if self.act else y


class _ElasticKernel(nn.Module):
    """A 7x7 depthwise conv (``.conv``) whose smaller kernels are learned maps of its centre."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        big = max(KERNELS)
        self.conv = nn.Conv2d(channels, channels, big, stride, groups=channels, bias=False)
        for small, large in itertools.pairwise(KERNELS):
            self.register_parameter(f"{large}to{small}_matrix", nn.Parameter(torch.eye(small**2)))

    def kernel(self, channels: int, k: int) -> torch.Tensor:
        """The ``(channels, 1, k, k)`` kernel of the first ``channels`` channels."""
        w = self.conv.weight[:channels]
        size = w.shape[-1]
        while size > k:
            small = KERNELS[KERNELS.index(size) - 1]
            lo = (size - small) // 2
            centre = w[:, :, lo : lo + small, lo : lo + small].reshape(channels, small * small)
            w = F.linear(centre, self.get_parameter(f"{size}to{small}_matrix"))
            w = w.view(channels, 1, small, small)
            size = small
        return w

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        c = x.size(1)
        return F.conv2d(x, self.kernel(c, k), None, self.conv.stride, k // 2, 1, c)


class _SEConvs(nn.Module):
    """The two 1x1 convs (with bias) of a squeeze-excite (ofa's ``fc.reduce``, ``fc.expand``)."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.expand = nn.Conv2d(mid, channels, 1)

    def sliced(self, c: int, m: int) -> dict[str, dict[str, torch.Tensor]]:
        """State dicts of the ``reduce`` and ``expand`` convs for ``c`` channels, ``m`` hidden."""
        r, e = self.reduce, self.expand
        assert r.bias is not None and e.bias is not None
        return {
            "reduce": {"weight": r.weight[:m, :c], "bias": r.bias[:m]},
            "expand": {"weight": e.weight[:c, :m], "bias": e.bias[:c]},
        }


class _ElasticSE(nn.Module):
    """Squeeze-excite on the first channels; hidden width ``make_divisible(c // 4, 8)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = _SEConvs(channels, _se_mid(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc.sliced(x.size(1), _se_mid(x.size(1)))
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(F.conv2d(y, w["reduce"]["weight"], w["reduce"]["bias"]))
        y = F.conv2d(y, w["expand"]["weight"], w["expand"]["bias"])
        return x * F.hardsigmoid(y)


class _Depthwise(nn.Module):
    """Elastic-kernel depthwise conv, sliced BN, activation, optional SE."""

    def __init__(self, channels: int, stride: int, act: str, se: bool):
        super().__init__()
        self.conv = _ElasticKernel(channels, stride)
        self.bn = _SlicedBN(channels)
        self.act = act
        self.se = _ElasticSE(channels) if se else None

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        y = _ACTS[self.act](self.bn(self.conv(x, k)))
        return self.se(y) if self.se is not None else y


class _MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, depthwise, [SE], 1x1 project (ofa's names)."""

    def __init__(self, cin: int, cout: int, stride: int, act: str, se: bool):
        super().__init__()
        mid = _divisible(round(cin * max(EXPAND_RATIOS)))
        self.inverted_bottleneck = _Pointwise(cin, mid, act)
        self.depth_conv = _Depthwise(mid, stride, act, se)
        self.point_linear = _Pointwise(mid, cout, None)
        self.cout = cout

    def forward(self, x: torch.Tensor, mid: int, k: int) -> torch.Tensor:
        y = self.depth_conv(self.inverted_bottleneck(x, mid), k)
        return self.point_linear(y, self.cout)


class _Block(nn.Module):
    """``conv(x) [+ x]`` (key ``conv``, as ofa's ResidualBlock)."""

    def __init__(self, conv: nn.Module, identity: bool):
        super().__init__()
        self.conv = conv
        self.identity = identity

    def forward(self, x: torch.Tensor, *active: int) -> torch.Tensor:
        y: torch.Tensor = self.conv(x, *active)
        return y + x if self.identity else y


def _first_block(cin: int, cout: int) -> _Block:
    """The fixed first block: depthwise 3x3 + BN + ReLU, 1x1 + BN, [+ x] (ofa's names)."""
    dw, pw = _conv(cin, cin, 3, groups=cin, act="relu"), _conv(cin, cout, 1)
    conv = nn.Sequential(OrderedDict(depth_conv=ConvBNAct(dw), point_linear=ConvBNAct(pw)))
    return _Block(conv, cin == cout)


# -- specs -----------------------------------------------------------------------------------
class _Active(NamedTuple):
    """One active elastic block: its index in ``blocks``, channels, kernel, stride, shape."""

    block: int
    cin: int
    mid: int
    out: int
    kernel: int
    stride: int
    act: str
    se: bool
    identity: bool


def _conv(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = None
) -> LayerSpec:
    spec: LayerSpec = {"type": "conv", "in": cin, "out": cout, "kernel": kernel, "stride": stride}
    if groups != 1:
        spec["groups"] = groups
    if act:
        spec["act"] = act
    return spec


def _block_spec(b: _Active) -> LayerSpec:
    body = [
        _conv(b.cin, b.mid, 1, act=b.act),
        _conv(b.mid, b.mid, b.kernel, b.stride, groups=b.mid, act=b.act),
    ]
    if b.se:
        body.append({"type": "se", "channels": b.mid, "mid": _se_mid(b.mid)})
    body.append(_conv(b.mid, b.out, 1))
    if b.identity:
        return {"type": "residual", "body": body, "shortcut": []}
    return {"type": "seq", "layers": body}


def _copy_bn(full: nn.BatchNorm2d, part: nn.BatchNorm2d) -> None:
    n = part.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(part, name).copy_(getattr(full, name)[:n])
    if part.num_batches_tracked is not None and full.num_batches_tracked is not None:
        part.num_batches_tracked.copy_(full.num_batches_tracked)


def _copy_block(src: _MBConv, body: nn.Module, b: _Active) -> None:
    layers = list(body.children())
    expand, depthwise, project = layers[0], layers[1], layers[-1]
    assert isinstance(expand, ConvBNAct) and isinstance(depthwise, ConvBNAct)
    assert isinstance(project, ConvBNAct)
    assert expand.bn is not None and depthwise.bn is not None and project.bn is not None
    expand.conv.weight.copy_(src.inverted_bottleneck.conv.conv.weight[: b.mid, : b.cin])
    _copy_bn(src.inverted_bottleneck.bn.bn, expand.bn)
    depthwise.conv.weight.copy_(src.depth_conv.conv.kernel(b.mid, b.kernel))
    _copy_bn(src.depth_conv.bn.bn, depthwise.bn)
    if src.depth_conv.se is not None:
        se = layers[2]
        assert isinstance(se, SqueezeExcite)
        sliced = src.depth_conv.se.fc.sliced(b.mid, _se_mid(b.mid))
        se.reduce.load_state_dict(sliced["reduce"])
        se.expand.load_state_dict(sliced["expand"])
    project.conv.weight.copy_(src.point_linear.conv.conv.weight[:, : b.mid])
    _copy_bn(src.point_linear.bn.bn, project.bn)


#: stem, first block, stages and head widths of ofa's MobileNetV3 at width 1.0
BASE_WIDTHS: tuple[int, ...] = (16, 16, *(s[0] for s in STAGES), 960, 1280)
#: registry name of each width multiplier with a family of its own
FAMILY_OF_WIDTH: dict[float, str] = {1.0: "mobilenetv3", 1.2: "mobilenetv3_w12"}


class OFAMobileNetV3(ElasticSupernet):
    """Once-for-All's elastic MobileNetV3 (kernel 3/5/7, expand 3/4/6, depth 2/3/4 per stage).

    An instance's :attr:`name` follows its width (``mobilenetv3_w12`` at 1.2), so a checkpoint's
    metadata names the family that rebuilds it.
    """

    name = "mobilenetv3"

    def __init__(
        self,
        n_classes: int = 1000,
        width_mult: float = 1.0,
        preprocessing: Preprocessing | None = None,
        dropout: float = 0.1,
    ):
        super().__init__(n_classes, preprocessing)
        vars(self)["name"] = FAMILY_OF_WIDTH.get(width_mult, type(self).name)
        self.width_mult = width_mult
        self.dropout = dropout
        self.widths = tuple(_divisible(w * width_mult) for w in BASE_WIDTHS)
        stem, first, *_, last_stage, final, last = self.widths
        self.first_conv = ConvBNAct(_conv(3, stem, 3, 2, act="hswish"))
        #: (cin, out, stride, activation, SE) of every elastic block slot
        self._layout = self._make_layout()
        elastic = [
            _Block(_MBConv(cin, out, stride, act, se), stride == 1 and cin == out)
            for cin, out, stride, act, se in self._layout
        ]
        self.blocks = nn.ModuleList([_first_block(stem, first), *elastic])
        self.final_expand_layer = ConvBNAct(_conv(last_stage, final, 1, act="hswish"))
        self.feature_mix_layer = ConvBNAct(self._mix_spec())
        self.classifier = nn.Sequential(  # ofa's LinearLayer: dropout, then linear
            OrderedDict(dropout=nn.Dropout(dropout), linear=nn.Linear(last, n_classes))
        )
        self._active = self._plan(self.largest())

    def _make_layout(self) -> tuple[tuple[int, int, int, str, bool], ...]:
        layout = []
        cin = self.widths[1]
        for stage, (_, stride, act, se) in enumerate(STAGES):
            out = self.widths[2 + stage]
            for i in range(max(DEPTHS)):
                layout.append((cin, out, stride if i == 0 else 1, act, se))
                cin = out
        return tuple(layout)

    def _mix_spec(self) -> LayerSpec:
        final, last = self.widths[-2:]
        return _conv(final, last, 1, act="hswish") | {"bn": False}

    # -- the space -------------------------------------------------------------------------
    def choices(self) -> dict[str, tuple[Choice, ...]]:
        """``k0..k19`` (kernel), ``e0..e19`` (expand ratio) per block slot, ``d0..d4`` (depth)."""
        out: dict[str, tuple[Choice, ...]] = {f"k{i}": KERNELS for i in range(N_SLOTS)}
        out.update({f"e{i}": EXPAND_RATIOS for i in range(N_SLOTS)})
        out.update({f"d{i}": DEPTHS for i in range(len(STAGES))})
        return out

    def _plan(self, params: Mapping[str, Any]) -> tuple[_Active, ...]:
        p = self.check(params)
        active: list[_Active] = []
        for stage in range(len(STAGES)):
            for slot in range(stage * max(DEPTHS), stage * max(DEPTHS) + int(p[f"d{stage}"])):
                cin, out, stride, act, se = self._layout[slot]
                mid = _divisible(round(cin * float(p[f"e{slot}"])))
                identity = stride == 1 and cin == out
                k = int(p[f"k{slot}"])
                active.append(_Active(slot + 1, cin, mid, out, k, stride, act, se, identity))
        return tuple(active)

    # -- the active sub-network ------------------------------------------------------------
    def set_active(self, params: Mapping[str, Any]) -> None:
        """Make ``params`` the sub-network that :meth:`forward` runs.

        Raises:
            ValueError: ``params`` lacks a dimension or has a value outside the space.
        """
        self._active = self._plan(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the active sub-network (differentiable; BN statistics update in train)."""
        x = self.blocks[0](self.first_conv(x))
        for b in self._active:
            x = self.blocks[b.block](x, b.mid, b.kernel)
        x = self.final_expand_layer(x).mean((2, 3), keepdim=True)
        y: torch.Tensor = self.classifier(self.feature_mix_layer(x).flatten(1))
        return y

    def arch_spec(self, params: Mapping[str, Any]) -> list[LayerSpec]:
        """The layer spec of sub-network ``params`` (conv / residual / seq / se / linear)."""
        plan = self._plan(params)
        stem, first, *_, last_stage, final, last = self.widths
        first_body = [_conv(stem, stem, 3, groups=stem, act="relu"), _conv(stem, first, 1)]
        spec: list[LayerSpec] = [_conv(3, stem, 3, 2, act="hswish")]
        if stem == first:
            spec.append({"type": "residual", "body": first_body, "shortcut": []})
        else:
            spec.append({"type": "seq", "layers": first_body})
        spec.extend(_block_spec(b) for b in plan)
        spec += [_conv(last_stage, final, 1, act="hswish"), {"type": "gap"}, self._mix_spec()]
        spec.append({"type": "flatten"})
        if self.dropout > 0:
            spec.append({"type": "dropout", "p": self.dropout})
        spec.append({"type": "linear", "in": last, "out": self.n_classes})
        return spec

    def copy_weights(self, net: Network, params: Mapping[str, Any]) -> None:
        """Copy sub-network ``params`` into ``net``: first-channel slices, BN statistics, and
        the transformed depthwise kernels.

        Raises:
            ValueError: ``net`` was not built from ``arch_spec(params)``.
        """
        plan = self._plan(params)
        layers = list(net.layers)
        n = len(plan)
        if len(layers) != n + 7 + (self.dropout > 0):
            raise ValueError(f"{self.name}: the network was not built from this sub-network")
        first: Any = self.blocks[0]
        try:
            with torch.no_grad():
                layers[0].load_state_dict(self.first_conv.state_dict())
                depthwise, pointwise = getattr(layers[1], "body", layers[1]).children()
                depthwise.load_state_dict(first.conv.depth_conv.state_dict())
                pointwise.load_state_dict(first.conv.point_linear.state_dict())
                for b, layer in zip(plan, layers[2 : 2 + n], strict=True):
                    block: Any = self.blocks[b.block]
                    _copy_block(block.conv, getattr(layer, "body", layer), b)
                layers[2 + n].load_state_dict(self.final_expand_layer.state_dict())
                layers[4 + n].load_state_dict(self.feature_mix_layer.state_dict())
                layers[-1].load_state_dict(self.classifier[1].state_dict())
        except (RuntimeError, AssertionError, IndexError, TypeError) as e:
            raise ValueError(f"{self.name}: the network does not fit this sub-network ({e})") from e

    # -- Once-for-All compatibility --------------------------------------------------------
    def to_ofa(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``{"ks": [20], "e": [20], "d": [5]}`` for ofa's ``OFAMobileNetV3.set_active_subnet``."""
        p = self.check(params)
        return {
            "ks": [int(p[f"k{i}"]) for i in range(N_SLOTS)],
            "e": [p[f"e{i}"] for i in range(N_SLOTS)],
            "d": [int(p[f"d{i}"]) for i in range(len(STAGES))],
        }

    def convert_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys of an ofa ``OFAMobileNetV3`` state_dict, ours already; legacy names renamed.

        Older ofa checkpoints name a block's layer ``mobile_inverted_conv`` and may lack (or
        carry extra) dynamic wrappers (``bn.bn.``, ``conv.conv.``, ``linear.linear.``); ofa's
        own ``load_state_dict`` renames them the same way. Unknown keys are kept (the loader
        reports them).
        """
        own = set(self.state_dict())
        return {_ofa_key(key, own): value for key, value in sd.items()}

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments."""
        return {"n_classes": self.n_classes, "width_mult": self.width_mult, "dropout": self.dropout}


class OFAMobileNetV3W12(OFAMobileNetV3):
    """Once-for-All's elastic MobileNetV3 at width 1.2."""

    name = "mobilenetv3_w12"

    def __init__(self, n_classes: int = 1000, width_mult: float = 1.2, **kw: Any):
        super().__init__(n_classes, width_mult, **kw)


#: ofa's renames of legacy keys, tried in this order (as its ``load_state_dict``)
_LEGACY: tuple[tuple[str, str], ...] = (
    (".bn.bn.", ".bn."),
    (".conv.conv.weight", ".conv.weight"),
    (".linear.linear.", ".linear."),
    (".linear.", ".linear.linear."),
    ("bn.", "bn.bn."),
    ("conv.weight", "conv.conv.weight"),
)


def _ofa_key(key: str, own: set[str]) -> str:
    key = key.replace(".mobile_inverted_conv.", ".conv.")
    if key in own:
        return key
    for old, new in _LEGACY:
        if old in key:
            renamed = key.replace(old, new)
            if renamed in own:
                return renamed
    return key
