"""Pruning primitives the compression methods share.

- :func:`prune_channels`: structured pruning of output channels by L1 magnitude with
  torch-pruning's dependency graph (residual additions, depthwise convolutions and the layers
  that read a pruned tensor stay consistent), then the layer spec rewritten to the new widths,
  so the result is again a self-describing :class:`~nas.compress.arch.Network`.
- :func:`prune_unstructured`: global magnitude pruning of every Conv2d / Linear weight with
  ``torch.nn.utils.prune`` (the smallest ``amount`` of all weights, pooled across layers, set to
  zero), made permanent.
- :func:`count_nonzero`: dense and non-zero parameters and multiply-accumulates.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas.compress.arch import (
    Cell,
    ConvBNAct,
    Heads,
    LayerSpec,
    Network,
    Residual,
    SqueezeExcite,
    build,
)


def prune_channels(net: Network, ratio: float) -> Network:
    """A copy of ``net`` with ``ratio`` of the output channels of each prunable group removed.

    The channels with the smallest L1 norm go (torch-pruning's ``MagnitudeImportance``, the
    same ratio in every group). Not pruned: the outputs of the network (each final linear
    layer) and convolutions whose output is permuted before it is flattened (MTCNN), where the
    channel order of the flattened features is not the plain one torch-pruning assumes.

    Raises:
        ValueError: ``ratio`` outside [0, 1).
    """
    import torch_pruning as tp

    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"channel ratio must be in [0, 1), not {ratio}")
    out = copy.deepcopy(net).eval()
    if ratio == 0.0:
        return out
    ignored = _unprunable(out)
    example = out.example_input(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            out,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=ignored,
        )
        pruner.step()
    return respec(out)


def _unprunable(net: Network) -> list[nn.Module]:
    """Layers whose output channels must stay: final linear layers, convs before a permute."""
    keep: list[nn.Module] = []
    last = net.layers[-1]
    for part in list(last.heads) if isinstance(last, Heads) else [net]:
        layers = [m for m in part.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
        keep.extend(layers[-1:])
    seen_conv: nn.Conv2d | None = None
    for spec, module in zip(net.spec, net.layers, strict=True):
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if convs:
            seen_conv = convs[-1]
        if spec.get("type") == "permute" and seen_conv is not None:
            keep.append(seen_conv)
    return keep


def respec(net: Network) -> Network:
    """A fresh :class:`Network` whose spec has ``net``'s current layer widths, with its weights.

    After channel surgery the modules are narrower than the spec says; this rewrites every
    ``in`` / ``out`` / ``channels`` / ``groups`` / ``mid`` from the modules and checks the result
    by loading the state_dict strictly.
    """
    spec = [_sync(s, m) for s, m in zip(net.spec, net.layers, strict=True)]
    fresh = build(spec, net.preprocessing)
    fresh.load_state_dict(net.state_dict(), strict=True)
    fresh.origin = dict(net.origin)
    return fresh.eval()


def _sync(s: LayerSpec, m: nn.Module) -> LayerSpec:
    s = dict(s)
    kind = s["type"]
    if kind == "conv" and isinstance(m, ConvBNAct):
        s.update(**{"in": m.conv.in_channels, "out": m.conv.out_channels, "groups": m.conv.groups})
    elif kind == "linear" and isinstance(m, nn.Linear):
        s.update(**{"in": m.in_features, "out": m.out_features})
    elif kind == "act" and isinstance(m, nn.PReLU):
        s["channels"] = m.num_parameters
    elif kind == "bn" and isinstance(m, nn.BatchNorm2d):
        s["channels"] = m.num_features
    elif kind == "se" and isinstance(m, SqueezeExcite):
        s.update(channels=m.reduce.in_channels, mid=m.reduce.out_channels)
    elif kind == "seq":
        s["layers"] = _sync_list(s["layers"], m)
    elif kind == "residual" and isinstance(m, Residual):
        s["body"] = _sync_list(s["body"], m.body)
        s["shortcut"] = _sync_list(s.get("shortcut", []), m.shortcut)
    elif kind == "heads" and isinstance(m, Heads):
        s["heads"] = [_sync_list(h, hm) for h, hm in zip(s["heads"], m.heads, strict=True)]
    elif kind == "cell" and isinstance(m, Cell):
        edges = sorted(s["edges"], key=lambda e: (int(e["to"]), int(e["from"])))
        s["edges"] = [
            {**e, "layers": _sync_list(e["layers"], em)}
            for e, em in zip(edges, m.edges, strict=True)
        ]
    return s


def _sync_list(specs: Sequence[LayerSpec], seq: Any) -> list[LayerSpec]:
    return [_sync(s, m) for s, m in zip(specs, seq, strict=True)]


def prunable_weights(net: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every Conv2d and Linear weight, as ``(module, "weight")`` pairs."""
    return [(m, "weight") for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def prune_unstructured(net: Network, amount: float) -> Network:
    """A copy of ``net`` with the ``amount`` smallest-magnitude Conv2d / Linear weights zeroed,
    ranked globally across layers (``torch.nn.utils.prune.global_unstructured`` with L1).

    Raises:
        ValueError: ``amount`` outside [0, 1).
    """
    from torch.nn.utils import prune

    if not 0.0 <= amount < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), not {amount}")
    out = copy.deepcopy(net).eval()
    if amount == 0.0:
        return out
    targets = prunable_weights(out)
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return out


@dataclass(frozen=True)
class Counts:
    """Sizes of one model (per sample): dense and non-zero parameters and MACs."""

    params: int
    nnz_params: int
    macs: int
    nnz_macs: int

    @property
    def sparsity(self) -> float:
        """Fraction of the parameters that are zero."""
        return 1.0 - self.nnz_params / self.params if self.params else 0.0

    def metrics(self) -> dict[str, float]:
        """The shared metric names: ``params_m``, ``nnz_params_m``, ``macs_m``, ``nnz_macs_m``,
        ``sparsity``."""
        return {
            "params_m": self.params / 1e6,
            "nnz_params_m": self.nnz_params / 1e6,
            "macs_m": self.macs / 1e6,
            "nnz_macs_m": self.nnz_macs / 1e6,
            "sparsity": self.sparsity,
        }


def count_nonzero(net: Network) -> Counts:
    """Parameters and MACs of ``net`` on one input of its size, dense and non-zero.

    A convolution's MACs are (output positions) x (weights per filter) x (filters); its non-zero
    MACs count only the non-zero weights. Linear layers likewise. BatchNorm, activations,
    pooling and additions are not counted (as :func:`nas.compress.arch.count_macs`).
    """
    macs = nnz_macs = 0

    def hook(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal macs, nnz_macs
        w = m.weight
        assert isinstance(w, torch.Tensor)
        positions = out[0].numel() // out.shape[1] if isinstance(m, nn.Conv2d) else 1
        macs += positions * w.numel()
        nnz_macs += positions * int(torch.count_nonzero(w))

    hooks = [m.register_forward_hook(hook) for m, _ in prunable_weights(net)]
    try:
        with torch.no_grad():
            net.eval()(net.example_input(1))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in net.parameters())
    nnz = sum(int(torch.count_nonzero(p)) for p in net.parameters())
    return Counts(params, nnz, macs, nnz_macs)


def weight_masks(net: nn.Module) -> Mapping[str, torch.Tensor]:
    """Boolean masks of the non-zero entries of every Conv2d / Linear weight that has zeros,
    by parameter name (to keep a sparse model sparse while it is fine-tuned)."""
    masks: dict[str, torch.Tensor] = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            w = module.weight.detach()
            if bool((w == 0).any()):
                masks[f"{name}.weight"] = w != 0
    return masks
