"""Gradient-based zero-cost proxies, as the zero-cost-proxies reference code and NASLib define them.

From Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS", the definitions NASLib
reports for NAS-Bench-201. Each proxy takes the cross-entropy loss L of the model's logits
(the output must be one (N, classes) tensor) on the batch ``x`` with labels ``y``; without
labels every proxy here uses the fixed rule ``y = arange(N) % classes``, so that scores stay
defined and deterministic. "Weights" are those of the Conv and Linear layers, frozen ones
included.

- ``grad_norm``: Σ over weights W of ‖∂L/∂W‖₂ (per layer, then summed).
- ``snip`` (Lee et al. 2019): Σ |W ⊙ ∂L/∂W|.
- ``grasp`` (Wang et al. 2020): −Σ W ⊙ (H g), with g = ∂L/∂W held fixed and H g the
  Hessian-gradient product ∂(gᵀ ∂L/∂W)/∂W; temperature 1. NASLib's sign: higher is better.
- ``fisher`` (Theis et al. 2018; Turner et al. 2020): for each Conv / Linear output a and its
  gradient ∂L/∂a, per channel k: ½ · mean over the batch of (Σ over positions a ⊙ ∂L/∂a)²;
  summed over channels, each channel counted once per weight it owns (its fan-in), as
  NASLib's sum over weights does.
- ``jacob_cov`` (Mellor et al. 2021, v1; NASLib's ``jacov``): J = ∂(Σ outputs)/∂x per sample,
  R = correlation matrix of J's rows, score = −Σ over R's eigenvalues λ of
  log(λ + 10⁻⁵) + 1 / (λ + 10⁻⁵). Labels are not used. Needs a batch of at least 2.

Models run as the authors ran them, at initialisation in train mode, except that BatchNorm's
running statistics are not updated and dropout is off (:func:`scoring_mode`). Gradients are
taken with ``torch.autograd.grad``: no ``.grad`` is written, and ``requires_grad`` is set on
the weights only while scoring. A model without Conv / Linear weights, or whose output is not
(N, classes) logits, has no score (NaN from :func:`nas.predictors.zero_cost.score`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.predictors.zero_cost import (
    ProxyError,
    outputs_sum,
    placement,
    register_proxy,
    scoring_mode,
)

#: the layers whose weights and outputs the proxies read
WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
#: jacob_cov's offset of the eigenvalues (as in the reference code)
JACOB_EPS = 1e-5


def _weighted(model: nn.Module) -> list[tuple[nn.Module, torch.Tensor]]:
    """(layer, weight) of every Conv and Linear layer.

    Raises:
        ProxyError: there is none.
    """
    layers = [
        (m, m.weight)
        for m in model.modules()
        if isinstance(m, WEIGHT_TYPES) and isinstance(m.weight, torch.Tensor)
    ]
    if not layers:
        raise ProxyError("the model has no Conv or Linear weights")
    return layers


@contextmanager
def _differentiable(model: nn.Module, weights: Sequence[torch.Tensor]) -> Iterator[None]:
    """:func:`scoring_mode`, gradients on, and ``weights`` requiring grad; all restored."""
    flags = [w.requires_grad for w in weights]
    try:
        with scoring_mode(model), torch.enable_grad():
            for w in weights:
                w.requires_grad_(True)
            yield
    finally:
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of the model's logits on ``x`` (labels ``arange(N) % classes`` by default).

    Raises:
        ProxyError: the output is not one (N, classes) tensor.
    """
    device, dtype = placement(model, x)
    out = model(x.to(device=device, dtype=dtype))
    n = int(x.shape[0])
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
        raise ProxyError("the model's output is not one (N, classes) tensor of logits")
    target = torch.arange(n, device=device) % out.shape[1] if y is None else y.to(device)
    return F.cross_entropy(out, target)


def _grads(
    loss: torch.Tensor, inputs: Sequence[torch.Tensor], create_graph: bool = False
) -> list[torch.Tensor]:
    """∂loss/∂input for each input (zeros where the loss does not depend on it)."""
    if not loss.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]


def _total(values: Sequence[torch.Tensor]) -> float:
    """Sum of scalar tensors in float64, in order."""
    return float(sum(float(v) for v in values))


# -- grad_norm, snip, grasp ----------------------------------------------------------------------
@register_proxy("grad_norm")
def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """grad_norm: Σ ‖∂L/∂W‖₂ over the Conv / Linear weights W.

    Raises:
        ProxyError: no Conv / Linear weights, or the output is not (N, classes) logits.
    """
    weights = [w for _, w in _weighted(model)]
    with _differentiable(model, weights):
        grads = _grads(_loss(model, x, y), weights)
    return _total([g.detach().norm() for g in grads])


@register_proxy("snip")
def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """snip: Σ |W ⊙ ∂L/∂W| over the Conv / Linear weights W.

    Raises:
        ProxyError: no Conv / Linear weights, or the output is not (N, classes) logits.
    """
    weights = [w for _, w in _weighted(model)]
    with _differentiable(model, weights):
        grads = _grads(_loss(model, x, y), weights)
    pairs = zip(weights, grads, strict=True)
    return _total([(w.detach() * g.detach()).abs().sum() for w, g in pairs])


@register_proxy("grasp")
def grasp(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """grasp: −Σ W ⊙ (H g) over the Conv / Linear weights W, g = ∂L/∂W held fixed.

    Raises:
        ProxyError: no Conv / Linear weights, or the output is not (N, classes) logits.
    """
    weights = [w for _, w in _weighted(model)]
    with _differentiable(model, weights):
        grads = _grads(_loss(model, x, y), weights, create_graph=True)
        z = sum(((g.detach() * g).sum() for g in grads if g.requires_grad), torch.tensor(0.0))
        hg = _grads(z, weights)
    return -_total([(w.detach() * h.detach()).sum() for w, h in zip(weights, hg, strict=True)])


# -- fisher --------------------------------------------------------------------------------------
@register_proxy("fisher")
def fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """fisher: Σ over Conv / Linear outputs and channels of ½·mean_n(Σ_pos a·∂L/∂a)² × fan-in.

    Raises:
        ProxyError: no Conv / Linear weights, or the output is not (N, classes) logits.
    """
    layers = _weighted(model)
    weight_of = dict(layers)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (the layer's weight, its output)

    def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            return None
        seen.append((weight_of[module], output))
        return output.clone()  # later in-place operations must not change the stored output

    handles = [m.register_forward_hook(hook) for m, _ in layers]
    try:
        with _differentiable(model, [w for _, w in layers]):
            loss = _loss(model, x, y)
            grads = _grads(loss, [a for _, a in seen])
    finally:
        for h in handles:
            h.remove()
    pairs = zip(seen, grads, strict=True)
    return _total([_channel_fisher(w, a.detach(), g) for (w, a), g in pairs])


def _channel_fisher(weight: torch.Tensor, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Σ_k ½·mean_n(g_nk²) × fan-in for one output: Conv (N, C, ...) or Linear (N, ..., F)."""
    prod = act * grad
    if weight.ndim == 2:  # Linear: features last
        g_nk = prod.reshape(prod.shape[0], -1, prod.shape[-1]).sum(1)
    else:
        g_nk = prod.flatten(2).sum(2)
    return 0.5 * g_nk.double().pow(2).mean(0).sum() * weight[0].numel()


# -- jacob_cov -----------------------------------------------------------------------------------
@register_proxy("jacob_cov")
def jacob_cov(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """jacob_cov: −Σ log(λ + ε) + 1/(λ + ε) over the eigenvalues λ of the input-gradient
    correlation matrix of the batch.

    Raises:
        ProxyError: a batch below 2, an output that does not depend on the input, or a sample
            whose input gradient is constant (its correlation is undefined).
    """
    n = int(x.shape[0])
    if n < 2:
        raise ProxyError("jacob_cov needs a batch of at least 2 inputs")
    device, dtype = placement(model, x)
    inp = x.detach().to(device=device, dtype=dtype).requires_grad_(True)
    with scoring_mode(model), torch.enable_grad():
        (jac,) = _grads(outputs_sum(model(inp)), [inp])
    rows = jac.detach().flatten(1).double().cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.corrcoef(rows)
    if not np.isfinite(corr).all():
        raise ProxyError("jacob_cov: a sample's input gradient is constant")
    eig = np.linalg.eigvalsh(corr) + JACOB_EPS
    if eig.min() <= 0:
        raise ProxyError("jacob_cov: the correlation matrix has a negative eigenvalue")
    return -float(np.sum(np.log(eig) + 1.0 / eig))
