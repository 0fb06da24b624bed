"""The model zoo: named architectures, each built as a layer spec (:mod:`nas.compress.arch`).

Every zoo model is a :class:`~nas.compress.arch.Network`, so it saves as safetensors + JSON,
reloads with :func:`nas.compress.load_model` and exports to ONNX without this module.

- ``vgg11``: VGG-11 with BatchNorm; four max-pools (28 → 1 pixel), global average pooling and a
  small classifier (``hidden`` units, dropout 0.5).
- ``resnet20`` / ``resnet32``: the CIFAR ResNets of He et al. (3 stages of 3 / 5 basic blocks,
  16 / 32 / 64 channels times ``width``); a 1×1 convolution + BN shortcut where the shape changes.
- ``mobilenetv2``: inverted residual blocks (expand 1×1, depthwise 3×3, project 1×1), width
  multiplier ``width``; the stem and the first 24-channel stage keep the resolution (small inputs).
- ``mtcnn_rnet`` / ``mtcnn_onet``: MTCNN's refinement (24×24 RGB → box (N, 4), face probability
  (N, 2)) and output networks (48×48 RGB → box (N, 4), landmarks (N, 10), probability (N, 2)),
  computing what facenet-pytorch's ``RNet`` / ``ONet`` compute; their state_dicts (facenet-pytorch's
  key names: ``conv1``, ``prelu1``, ``dense4``, ...) load through :data:`KEY_ALIASES`; the
  trained ones ship in ``nas/compress/data/weights/`` (:data:`MTCNN_WEIGHTS`).

The classification models take ``num_classes``, ``in_channels`` (1 for MNIST), ``width`` and
``input_size`` (the side the preprocessing resizes to; 28 by default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from nas.compress.arch import LayerSpec, Network, Preprocessing, build
from nas.search.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")

#: model name -> {checkpoint module prefix: our module prefix}, for foreign key names
KEY_ALIASES: dict[str, dict[str, str]] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register a factory ``(**kwargs) -> nn.Module`` as ``name``."""
    return MODELS.register(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` (random weights); unknown names raise ``ValueError``."""
    return MODELS.get(name)(**kwargs)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return MODELS.names()


def rename_keys(name: str, sd: Mapping[str, Any]) -> dict[str, Any]:
    """``sd`` with the foreign key names of model ``name`` (:data:`KEY_ALIASES`) made ours.

    Keys that match no alias are kept as they are, so our own checkpoints pass unchanged.
    """
    aliases = KEY_ALIASES.get(name, {})
    out: dict[str, Any] = {}
    for key, value in sd.items():
        module, _, leaf = key.rpartition(".")
        out[f"{aliases[module]}.{leaf}" if module in aliases else key] = value
    return out


# -- building blocks -----------------------------------------------------------------------------
def _check(num_classes: int, in_channels: int, width: float, input_size: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, not {in_channels}")
    if not width > 0:
        raise ValueError(f"width must be positive, not {width}")
    if input_size < 8:
        raise ValueError(f"input_size must be at least 8, not {input_size}")


def _scaled(channels: int, width: float, divisor: int = 1) -> int:
    """``channels * width`` rounded to a multiple of ``divisor`` (at least one, as MobileNet)."""
    v = channels * width
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, act: str | None = "relu") -> LayerSpec:
    return {"type": "conv", "in": c_in, "out": c_out, "kernel": k, "stride": stride, "act": act}


def _preprocessing(in_channels: int, input_size: int, num_classes: int) -> Preprocessing:
    return Preprocessing(
        input_size=(input_size, input_size),
        channels=in_channels,
        mean=(0.5,) * in_channels,
        std=(0.5,) * in_channels,
        classes=tuple(str(i) for i in range(num_classes)),
    )


def _classifier(spec: list[LayerSpec], num_classes: int, in_channels: int, size: int) -> Network:
    return build(spec, _preprocessing(in_channels, size, num_classes))


# -- VGG -----------------------------------------------------------------------------------------
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)


@register_model("vgg11")
def vgg11(
    num_classes: int = 10,
    in_channels: int = 1,
    width: float = 1.0,
    input_size: int = 28,
    hidden: int = 256,
) -> Network:
    """VGG-11 with BatchNorm, four max-pools and a small classifier (for 28×28 inputs)."""
    _check(num_classes, in_channels, width, input_size)
    spec: list[LayerSpec] = []
    c = in_channels
    for v in VGG11:
        if v == "M":
            spec.append({"type": "maxpool", "kernel": 2, "stride": 2})
        else:
            out = _scaled(int(v), width)
            spec.append(_conv(c, out, 3))
            c = out
    spec += [
        {"type": "gap"},
        {"type": "flatten"},
        {"type": "linear", "in": c, "out": hidden},
        {"type": "act", "fn": "relu"},
        {"type": "dropout", "p": 0.5},
        {"type": "linear", "in": hidden, "out": num_classes},
    ]
    return _classifier(spec, num_classes, in_channels, input_size)


# -- CIFAR ResNets -------------------------------------------------------------------------------
def _basic_block(c_in: int, c_out: int, stride: int) -> LayerSpec:
    body = [_conv(c_in, c_out, 3, stride), _conv(c_out, c_out, 3, 1, act=None)]
    shortcut = [] if stride == 1 and c_in == c_out else [_conv(c_in, c_out, 1, stride, act=None)]
    return {"type": "residual", "body": body, "shortcut": shortcut, "act": "relu"}


def cifar_resnet(
    blocks: int, num_classes: int, in_channels: int, width: float, input_size: int
) -> Network:
    """A CIFAR ResNet of ``6 * blocks + 2`` layers (16 / 32 / 64 channels times ``width``)."""
    _check(num_classes, in_channels, width, input_size)
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, not {blocks}")
    stages = [_scaled(c, width) for c in (16, 32, 64)]
    spec: list[LayerSpec] = [_conv(in_channels, stages[0], 3)]
    c = stages[0]
    for i, out in enumerate(stages):
        for b in range(blocks):
            spec.append(_basic_block(c, out, 2 if i > 0 and b == 0 else 1))
            c = out
    spec += [{"type": "gap"}, {"type": "flatten"}, {"type": "linear", "in": c, "out": num_classes}]
    return _classifier(spec, num_classes, in_channels, input_size)


@register_model("resnet20")
def resnet20(
    num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28
) -> Network:
    """CIFAR ResNet-20: 3 stages × 3 basic blocks, 16 / 32 / 64 channels."""
    return cifar_resnet(3, num_classes, in_channels, width, input_size)


@register_model("resnet32")
def resnet32(
    num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28
) -> Network:
    """CIFAR ResNet-32: 3 stages × 5 basic blocks, 16 / 32 / 64 channels."""
    return cifar_resnet(5, num_classes, in_channels, width, input_size)


# -- MobileNetV2 ---------------------------------------------------------------------------------
#: (expand ratio, channels, blocks, first stride); strides 1 where ImageNet's are 2 in the stem
#: and the 24-channel stage, for 28×28 inputs
MBV2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _inverted_residual(c_in: int, c_out: int, stride: int, expand: int) -> LayerSpec:
    hidden = c_in * expand
    body = [_conv(c_in, hidden, 1, act="relu6")] if expand != 1 else []
    dw = _conv(hidden, hidden, 3, stride, act="relu6") | {"groups": hidden}
    body += [dw, _conv(hidden, c_out, 1, act=None)]
    if stride == 1 and c_in == c_out:
        return {"type": "residual", "body": body, "shortcut": [], "act": None}
    return {"type": "seq", "layers": body}


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int = 10,
    in_channels: int = 1,
    width: float = 1.0,
    input_size: int = 28,
    dropout: float = 0.2,
) -> Network:
    """MobileNetV2 (inverted residuals, width multiplier ``width``) for small inputs."""
    _check(num_classes, in_channels, width, input_size)
    c = _scaled(32, width, 8)
    spec: list[LayerSpec] = [_conv(in_channels, c, 3, act="relu6")]
    for t, channels, n, s in MBV2_SETTINGS:
        out = _scaled(channels, width, 8)
        for i in range(n):
            spec.append(_inverted_residual(c, out, s if i == 0 else 1, t))
            c = out
    last = _scaled(1280, max(1.0, width), 8)
    spec += [
        _conv(c, last, 1, act="relu6"),
        {"type": "gap"},
        {"type": "flatten"},
        {"type": "dropout", "p": dropout},
        {"type": "linear", "in": last, "out": num_classes},
    ]
    return _classifier(spec, num_classes, in_channels, input_size)


# -- MTCNN (facenet-pytorch's RNet and ONet) -------------------------------------------------------
#: the trained MTCNN state_dicts shipped with the package (facenet-pytorch's, MIT; see NOTICE)
MTCNN_WEIGHTS = {
    "mtcnn_rnet": Path(__file__).resolve().parent / "data" / "weights" / "rnet.pt",
    "mtcnn_onet": Path(__file__).resolve().parent / "data" / "weights" / "onet.pt",
}
#: facenet-pytorch's MTCNN input scaling, (pixel - 127.5) / 128, on 0..1 pixels
MTCNN_MEAN, MTCNN_STD = (0.5,) * 3, (round(128 / 255, 6),) * 3


def _prelu_conv(c_in: int, c_out: int, k: int) -> LayerSpec:
    return _conv(c_in, c_out, k, act="prelu") | {"padding": 0, "bias": True, "bn": False}


def _pool(k: int) -> LayerSpec:
    return {"type": "maxpool", "kernel": k, "stride": 2, "ceil_mode": True}


def _mtcnn(
    name: str, body: list[LayerSpec], features: int, hidden: int, size: int, heads: list[str]
) -> Network:
    """Convolutions, then (N, C, H, W) → (N, W, H, C) → flatten, a PReLU dense layer, heads."""
    outs = {"box": 4, "landmarks": 10, "prob": 2}
    spec = [
        *body,
        {"type": "permute", "dims": [0, 3, 2, 1]},
        {"type": "flatten"},
        {"type": "linear", "in": features, "out": hidden},
        {"type": "act", "fn": "prelu", "channels": hidden},
        {
            "type": "heads",
            "names": heads,
            "heads": [
                [{"type": "linear", "in": hidden, "out": outs[h]}]
                + ([{"type": "act", "fn": "softmax"}] if h == "prob" else [])
                for h in heads
            ],
        },
    ]
    pre = Preprocessing(input_size=(size, size), channels=3, mean=MTCNN_MEAN, std=MTCNN_STD)
    net = build(spec, pre)
    net.origin = {"zoo": name, "reference": "facenet-pytorch (MIT)"}
    return net


def _aliases(convs: list[int], dense: int, last: int, heads: list[str]) -> dict[str, str]:
    """facenet-pytorch module names -> ours (``convs``: the spec indices of the PReLU convs)."""
    out: dict[str, str] = {}
    for i, at in enumerate(convs, 1):
        out |= {f"conv{i}": f"layers.{at}.conv", f"prelu{i}": f"layers.{at}.act"}
    n = len(convs) + 1
    out |= {f"dense{n}": f"layers.{dense}", f"prelu{n}": f"layers.{dense + 1}"}
    # facenet's heads: _1 probability, _2 box, _3 landmarks
    order = {"prob": 1, "box": 2, "landmarks": 3}
    for k, h in enumerate(heads):
        out[f"dense{n + 1}_{order[h]}"] = f"layers.{last}.heads.{k}.0"
    return out


RNET_HEADS = ["box", "prob"]
ONET_HEADS = ["box", "landmarks", "prob"]
KEY_ALIASES["mtcnn_rnet"] = _aliases([0, 2, 4], 7, 9, RNET_HEADS)
KEY_ALIASES["mtcnn_onet"] = _aliases([0, 2, 4, 6], 9, 11, ONET_HEADS)


@register_model("mtcnn_rnet")
def mtcnn_rnet() -> Network:
    """MTCNN R-Net: 24×24 RGB → (box (N, 4), face probability (N, 2))."""
    body = [_prelu_conv(3, 28, 3), _pool(3), _prelu_conv(28, 48, 3), _pool(3)]
    body += [_prelu_conv(48, 64, 2)]
    return _mtcnn("mtcnn_rnet", body, 576, 128, 24, RNET_HEADS)


@register_model("mtcnn_onet")
def mtcnn_onet() -> Network:
    """MTCNN O-Net: 48×48 RGB → (box (N, 4), landmarks (N, 10), face probability (N, 2))."""
    body = [_prelu_conv(3, 32, 3), _pool(3), _prelu_conv(32, 64, 3), _pool(3)]
    body += [_prelu_conv(64, 64, 3), _pool(2), _prelu_conv(64, 128, 2)]
    return _mtcnn("mtcnn_onet", body, 1152, 256, 48, ONET_HEADS)
