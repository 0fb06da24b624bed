"""Putting a normalization-activation layer into a model, and training it briefly.

**Which layers are replaced.** :func:`replace_norm_act` turns every convolution with a
BatchNorm and an activation into ``{"type": "seq", "layers": [conv without BN or activation,
normact]}``: the BN-activation pair becomes the layer. A BN that *no* activation follows (the
second BN of a ResNet block, a 1×1 shortcut's BN, MobileNetV2's linear projection; standalone
``bn`` layers too) is handled by ``plain``:

- ``"gn"`` (the default): it becomes a GroupNorm without activation, whichever layer is
  compared. Measured here: putting the layer there too (``"layer"``) stops EvoNorm-B0 from
  learning at all in a ResNet-20 (loss stuck at 2.30 over 100 steps, while keeping those BNs
  lets it reach 50 % in 40), because a normalisation-*activation* at the end of a residual
  branch is not what B0 was made for — the published B0/S0 code uses a normalisation-only
  variant there. Keeping them as BatchNorm (``"keep"``) would leave batch dependence in every
  network, which is what a small-batch comparison of layers must vary. GroupNorm is
  batch-independent and the same for every layer compared, so only the layer differs.
- ``"layer"``: the layer replaces it as well; ``"keep"``: it stays a BatchNorm.

Activations that do not follow a BN (ResNet's ReLU after the residual addition) are kept. So
with ``layer="bn-relu"`` a ResNet block is conv-BN-ReLU-conv-GN, add, ReLU.

The wrapping keeps module names predictable: the weights of ``P.conv`` move to ``P.0.conv``
and BN ``P.bn`` becomes the layer ``P.1`` (:func:`transfer`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from nas.compress.arch import LayerSpec, Network, build
from nas.compress.normact import DEFAULT_GROUPS, Graph, layer_spec
from nas.search.task import Rejected

Layer = Graph | str


def mobilenet_tiny(
    num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28
) -> Network:
    """A small MobileNetV2-style net for the proxy task: a 3×3 stem and four inverted residual
    blocks (expand 4, depthwise 3×3, linear projection), 16 / 24 / 24 / 32 channels times
    ``width`` (at least 8), two of stride 2, then a 1×1 conv to 64, pooling and a classifier.
    (The zoo's ``mobilenetv2`` has 17 blocks: about 9 s for 40 training steps on one thread.)
    """
    from nas.compress.zoo import _preprocessing

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    def conv(i: int, o: int, k: int, s: int = 1, act: str | None = "relu6", g: int = 1) -> Any:
        return {"type": "conv", "in": i, "out": o, "kernel": k, "stride": s, "act": act} | (
            {"groups": g} if g > 1 else {}
        )

    c = ch(16)
    spec: list[LayerSpec] = [conv(in_channels, c, 3)]
    for out, stride in ((ch(16), 1), (ch(24), 2), (ch(24), 1), (ch(32), 2)):
        hid = 4 * c
        body = [conv(c, hid, 1), conv(hid, hid, 3, stride, g=hid), conv(hid, out, 1, act=None)]
        if stride == 1 and c == out:
            spec.append({"type": "residual", "body": body, "shortcut": [], "act": None})
        else:
            spec.append({"type": "seq", "layers": body})
        c = out
    spec += [conv(c, 64, 1), {"type": "gap"}, {"type": "flatten"}]
    spec.append({"type": "linear", "in": 64, "out": num_classes})
    return build(spec, _preprocessing(in_channels, input_size, num_classes))


def convnet5(
    num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28
) -> Network:
    """A plain five-layer CNN (the benchmark's held-back network): 3×3 convolutions of 16,
    32 (stride 2), 32, 64 (stride 2) and 64 channels times ``width``, each with BN-ReLU, then a
    linear classifier on the flattened map (7×7 at 28×28). No residual connections and no
    global pooling, unlike the search's ResNet-20 and MobileNet: in those, GN-ReLU learns
    several times more slowly than BN-ReLU in a few epochs (global pooling after a per-sample
    normalisation), here every reference layer reaches about 92 % in five epochs."""
    from nas.compress.zoo import _preprocessing

    spec: list[LayerSpec] = []
    c, side = in_channels, input_size
    for out, stride in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
        o = max(4, int(out * width))
        spec.append(
            {"type": "conv", "in": c, "out": o, "kernel": 3, "stride": stride, "act": "relu"}
        )
        c, side = o, -(-side // stride)
    spec += [{"type": "flatten"}, {"type": "linear", "in": c * side * side, "out": num_classes}]
    return build(spec, _preprocessing(in_channels, input_size, num_classes))


#: the proxy task's own small architectures (besides the zoo's)
PROXY_ARCHS: dict[str, Callable[..., Network]] = {
    "mobilenet_tiny": mobilenet_tiny,
    "convnet5": convnet5,
}
Tensors = tuple[torch.Tensor, torch.Tensor]


PLAIN = ("gn", "layer", "keep")


def replace_norm_act(
    spec: Sequence[LayerSpec],
    layer: Layer,
    groups: int = DEFAULT_GROUPS,
    plain: str = "gn",
    where: str = "layers",
) -> tuple[list[LayerSpec], dict[str, str]]:
    """``spec`` with every BN-activation replaced by ``layer`` and every BN without activation
    handled by ``plain`` (module docstring).

    Returns:
        The new spec and the renames ``{old module prefix: new prefix}`` for :func:`transfer`.
    """
    if plain not in PLAIN:
        raise ValueError(f"plain must be one of {', '.join(PLAIN)}, not {plain!r}")
    renames: dict[str, str] = {}
    rep = _Replacer(layer, groups, plain, renames)
    return [rep(s, f"{where}.{i}") for i, s in enumerate(spec)], renames


def _prefix(layer: Layer) -> str:
    return "norm." if layer in ("bn-relu", "gn-relu", "gn") else ""


class _Replacer:
    def __init__(self, layer: Layer, groups: int, plain: str, renames: dict[str, str]):
        self.layer, self.groups, self.plain, self.ren = layer, groups, plain, renames

    def _pick(self, has_act: bool) -> Layer | None:
        if has_act or self.plain == "layer":
            return self.layer
        return None if self.plain == "keep" else "gn"

    def __call__(self, s: LayerSpec, w: str) -> LayerSpec:
        kind = s.get("type")
        if kind == "conv" and s.get("bn", True):
            lay = self._pick(bool(s.get("act")))
            if lay is None:
                return dict(s)
            self.ren[f"{w}.conv."] = f"{w}.0.conv."
            self.ren[f"{w}.bn."] = f"{w}.1." + _prefix(lay)
            conv = dict(s) | {"bn": False, "act": None}
            return {"type": "seq", "layers": [conv, layer_spec(lay, int(s["out"]), self.groups)]}
        if kind == "bn":
            lay = self._pick(False)
            if lay is None:
                return dict(s)
            self.ren[f"{w}."] = f"{w}." + _prefix(lay)
            return layer_spec(lay, int(s["channels"]), self.groups)
        return self._recurse(s, w)

    def _recurse(self, s: LayerSpec, w: str) -> LayerSpec:
        out = dict(s)
        for key in ("layers", "body", "shortcut"):
            if key in s:
                out[key] = [self(c, f"{w}.{key}.{i}") for i, c in enumerate(s[key])]
        if s.get("type") == "heads":
            out["heads"] = [
                [self(c, f"{w}.heads.{k}.{i}") for i, c in enumerate(h)]
                for k, h in enumerate(s["heads"])
            ]
        if s.get("type") == "cell":
            edges = sorted(s["edges"], key=lambda e: (int(e["to"]), int(e["from"])))
            out["edges"] = [
                dict(e)
                | {"layers": [self(c, f"{w}.edges.{k}.{i}") for i, c in enumerate(e["layers"])]}
                for k, e in enumerate(edges)
            ]
        return out


def with_layer(
    net: Network, layer: Layer, groups: int = DEFAULT_GROUPS, plain: str = "gn"
) -> Network:
    """A new network: ``net``'s spec with ``layer`` in place of its BN-activations, with the
    weights of ``net`` copied where they still fit (:func:`transfer`)."""
    spec, renames = replace_norm_act(net.spec, layer, groups, plain)
    new = build(spec, net.preprocessing)
    new.origin = copy.deepcopy(net.origin)
    transfer(net.state_dict(), new, renames)
    return new


def transfer(old: Mapping[str, torch.Tensor], new: torch.nn.Module, renames: dict[str, str]) -> int:
    """Copy the tensors of ``old`` into ``new`` under their renamed keys where the shapes agree
    (a replaced BN's scale and shift become the layer's output affine; BN-ReLU keeps the
    running statistics too). Returns the number of tensors copied."""
    target = new.state_dict()
    prefixes = sorted(renames, key=len, reverse=True)
    copied = 0
    for key, value in old.items():
        src = next((p for p in prefixes if key.startswith(p)), None)
        name = key if src is None else renames[src] + key[len(src) :]
        if name in target and target[name].shape == value.shape:
            target[name] = value.clone()
            copied += 1
    new.load_state_dict(target)
    return copied


def zoo_model(
    arch: str, layer: Layer, *, groups: int = DEFAULT_GROUPS, plain: str = "gn", **kw: Any
) -> Network:
    """Model ``arch`` (a zoo name or :data:`PROXY_ARCHS`; built with ``kw``: width,
    input_size, ...) with ``layer`` in it."""
    from nas.compress.zoo import create_model

    net = PROXY_ARCHS[arch](**kw) if arch in PROXY_ARCHS else create_model(arch, **kw)
    assert isinstance(net, Network)
    spec, _ = replace_norm_act(net.spec, layer, groups, plain)
    return build(spec, net.preprocessing)


def tensors(data: str, split: str, net: Network, limit: int | None = None) -> Tensors:
    """A whole split, preprocessed for ``net`` once (images, labels)."""
    from nas.compress.datasets import batches, load_data

    d = load_data(data, split, limit=limit)
    x, y = next(iter(batches(d, net.preprocessing, len(d))))
    return x, y


def accuracy(net: torch.nn.Module, data: Tensors, batch: int = 250) -> float:
    """Top-1 (percent) in eval mode; NaN when the outputs are not finite."""
    x, y = data
    was = net.training
    net.eval()
    right = 0
    try:
        with torch.no_grad():
            for i in range(0, len(y), batch):
                logits = net(x[i : i + batch])
                if not torch.isfinite(logits).all():
                    return math.nan
                right += int((logits.argmax(1) == y[i : i + batch]).sum())
    finally:
        net.train(was)
    return 100.0 * right / max(len(y), 1)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(net: torch.nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum 0.9) or Adam; weight decay 5e-5 on weights (ndim > 1) only."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": 5e-5}, {"params": rest}]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")


def lr_at(step: int, steps: int, lr: float, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def fit(
    net: torch.nn.Module,
    data: Tensors,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    every: int = 0,
    callback: Callable[[int], None] | None = None,
    optimizer: str = "sgd",
    warmup: int = 0,
    clip: float | None = None,
) -> None:
    """``steps`` steps of ``batch`` samples drawn in epochs of a seeded order, with
    :func:`make_optimizer` and :func:`lr_at` (warm-up, cosine), the gradient norm clipped to
    ``clip`` when given; ``callback(step)`` after every ``every`` steps (it may raise to stop).

    Raises:
        Diverged: a NaN or infinite loss.
    """
    x, y = data
    opt = make_optimizer(net, optimizer, lr)
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(y), generator=gen), 0
    net.train()
    for step in range(steps):
        if pos + batch > len(y):
            order, pos = torch.randperm(len(y), generator=gen), 0
        idx = order[pos : pos + batch]
        pos += batch
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        if not torch.isfinite(loss):
            raise Diverged(f"loss {loss.item()} at step {step + 1}")
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if callback is not None and every and (step + 1) % every == 0 and step + 1 < steps:
            callback(step + 1)


def stability_check(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 3,
    perturb: float = 0.05,
    limit: float = 1e3,
) -> float:
    """The largest gradient norm seen under ``steps`` steps of adversarial weight perturbation.

    Raises:
        Rejected: ``nan: ...`` for a non-finite loss or gradient norm, ``stability: ...`` when
            the gradient norm exceeds ``limit``.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    net.train()
    worst = 0.0
    for step in range(steps):
        loss = F.cross_entropy(net(x), y)
        if not torch.isfinite(loss):
            raise Rejected(f"nan: loss {loss.item()} at perturbation step {step}")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        norm = torch.sqrt(sum((g**2).sum() for g in grads if g is not None))  # type: ignore[arg-type]
        value = float(norm.detach())
        if not math.isfinite(value):
            raise Rejected(f"nan: gradient norm {value} at perturbation step {step}")
        worst = max(worst, value)
        if value > limit:
            raise Rejected(f"stability: gradient norm {value:.3g} > {limit:g} at step {step}")
        if step == steps - 1:
            break
        ascent = torch.autograd.grad(norm, params, allow_unused=True)
        with torch.no_grad():
            for p, h in zip(params, ascent, strict=True):
                if h is not None and float(h.norm()) > 0:
                    p.add_(perturb * (p.norm() + 1e-3) * h / h.norm())
    return worst
