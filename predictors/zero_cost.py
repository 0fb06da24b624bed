"""Training-free accuracy proxies ("zero-cost" metrics): a score from one batch, no training.

A proxy is a function ``(model, x, y) -> float`` registered by name; higher scores are meant
to predict higher accuracy after training. Scoring never changes the model: weights, buffers
(BatchNorm statistics included), train/eval modes, dtype, device and ``requires_grad`` are as
before. Every proxy runs on the device of the model's parameters (``x`` is moved there).

- ``naswot`` (Mellor et al. 2021, "Neural Architecture Search without Training"): the binary
  code of every ReLU-like unit (output > 0) over the batch; the kernel
  K = C·Cᵀ + (1−C)·(1−C)ᵀ summed over all hooked activation calls; score = log det K.
  Hooked modules: :data:`ACTIVATION_TYPES` (ReLU-like units, for which output > 0 exactly when
  input > 0); functional calls such as ``torch.relu`` inside a ``forward`` are not seen. As in
  the authors' code (networks at initialisation, in train mode) BatchNorm normalises with the
  batch's statistics, but here without updating its running statistics; dropout and everything
  else run in eval mode. K is a Gram matrix of 0/1 vectors, so det K is a whole number and
  log det K ≥ 0 unless K is singular (two inputs with identical codes everywhere, e.g. dead
  units or duplicate images): a singular K scores :data:`NASWOT_SINGULAR` (−1), below every
  non-singular kernel. Needs a batch of at least 2 (the paper uses 128; 16 ranks well enough
  for a search).
- ``synflow`` (Tanaka et al. 2020, "Pruning neural networks without any data by iteratively
  conserving synaptic flow"): data-free, only ``x``'s shape is used. On a copy of the model in
  float64 and eval mode, every parameter replaced by its absolute value and every
  normalisation layer (BatchNorm, InstanceNorm, GroupNorm, LayerNorm) bypassed, as the
  zero-cost-proxies reference code does (``bn=False``), R = sum of the outputs for an all-ones
  input of one sample; score = log Σ |θ ⊙ ∂R/∂θ| over the weights of the Conv and Linear layers
  (natural log, as NASLib reports it: raw sums of large networks exceed float32). A network
  with no path from input to output (sum 0) scores 0.0, as NASLib does.

A NaN or infinite score raises :class:`ProxyError`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeGuard

import torch
from torch import nn

from nas.search.errors import UserError

#: a proxy: model, a batch of inputs, optional labels -> score (higher is better)
Proxy = Callable[[nn.Module, torch.Tensor, torch.Tensor | None], float]

#: registered proxies by name; fill with :func:`register_proxy`
PROXIES: dict[str, Proxy] = {}

#: the modules whose outputs give NASWOT's binary codes (output > 0 iff input > 0 for all)
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)

#: NASWOT's score for a singular kernel (every non-singular kernel scores >= 0)
NASWOT_SINGULAR = -1.0

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)


class ProxyError(ValueError):
    """A proxy that cannot score this model or input (no activations, NaN, overflow, ...)."""


# -- registry ------------------------------------------------------------------------------------
def register_proxy(name: str) -> Callable[[Proxy], Proxy]:
    """Decorator: register ``fn(model, x, y) -> float`` as proxy ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def deco(fn: Proxy) -> Proxy:
        if name in PROXIES:
            raise ValueError(f"proxy {name!r} is already registered")
        PROXIES[name] = fn
        return fn

    return deco


def list_proxies() -> list[str]:
    """Names of the registered proxies, sorted."""
    return sorted(PROXIES)


def score(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """The score of ``model`` under proxy ``name`` for the batch ``x`` (labels ``y`` if used).

    Args:
        name: a registered proxy (:func:`list_proxies`).
        model: the network; left exactly as it was.
        x: a batch of inputs (N, ...) as the model takes them (preprocessed).
        y: labels (N,), for proxies that use them.

    Raises:
        UserError: unknown proxy name (the message lists the known ones).
        ProxyError: the proxy cannot score this model, or its score is NaN or infinite.
    """
    if name not in PROXIES:
        raise UserError(f"unknown proxy {name!r}; known: {', '.join(list_proxies()) or '(none)'}")
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] < 1:
        raise ProxyError(f"proxy {name}: x must be a batch tensor (N, ...)")
    value = float(PROXIES[name](model, x, y))
    if not math.isfinite(value):
        raise ProxyError(f"proxy {name} gave {value} for this model")
    return value


# -- helpers -------------------------------------------------------------------------------------
def _placement(model: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (or buffer), else ``x``'s."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return x.device, x.dtype if x.is_floating_point() else torch.float32


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag and BatchNorm's ``track_running_stats`` on exit."""
    modes = [(m, m.training) for m in model.modules()]
    bns = [(m, m.track_running_stats) for m in model.modules() if _is_bn(m)]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for m, track in bns:
            m.track_running_stats = track


def _is_bn(m: nn.Module) -> TypeGuard[nn.modules.batchnorm._BatchNorm]:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _outputs_sum(out: Any) -> torch.Tensor:
    """Sum of every tensor in a model's output (a tensor, or nested tuples / lists / dicts)."""
    sums = [t.sum() for t in _tensors(out)]
    if not sums:
        raise ProxyError("the model's output holds no tensor")
    return torch.stack(sums).sum()


def _tensors(out: Any) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, list | tuple):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


# -- NASWOT --------------------------------------------------------------------------------------
@register_proxy("naswot")
def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """NASWOT: log det of the Hamming-agreement kernel of the ReLU codes over the batch ``x``.

    Raises:
        ProxyError: a batch below 2, or no activation module to hook.
    """
    n = int(x.shape[0])
    if n < 2:
        raise ProxyError("naswot needs a batch of at least 2 inputs")
    acts = [m for m in model.modules() if isinstance(m, ACTIVATION_TYPES)]
    if not acts:
        raise ProxyError("naswot: the model has no ReLU-like activation modules to hook")
    device, dtype = _placement(model, x)
    kernel = torch.zeros(n, n, dtype=torch.float64, device=device)

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.shape[:1] == (n,):
            kernel.add_(_agreement(output))

    handles = [m.register_forward_hook(hook) for m in acts]
    try:
        with preserved_modes(model), torch.no_grad():
            model.eval()
            for m in model.modules():
                if _is_bn(m):
                    m.train()
                    m.track_running_stats = False
            model(x.to(device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return _logdet(kernel)


def _agreement(output: torch.Tensor) -> torch.Tensor:
    """C·Cᵀ + (1−C)·(1−C)ᵀ for the codes C = output > 0, as float64 (N, N), exact.

    With s the codes' row sums and u the number of units, (1−C)(1−C)ᵀ = u − sᵢ − sⱼ + CCᵀ.
    float32 sums of 0/1 products are exact below 2**24 units, float64 beyond.
    """
    codes = output.detach().flatten(1) > 0
    units = codes.shape[1]
    c = codes.to(torch.float32 if units < 2**24 else torch.float64)
    both = (c @ c.T).double()
    s = c.sum(1).double()
    return 2 * both + units - s[:, None] - s[None, :]


def _logdet(kernel: torch.Tensor) -> float:
    sign, logdet = torch.linalg.slogdet(kernel.cpu())
    value = float(logdet)
    if float(sign) <= 0 or not math.isfinite(value) or value < -0.5:
        return NASWOT_SINGULAR
    return max(value, 0.0)


# -- synflow -------------------------------------------------------------------------------------
@register_proxy("synflow")
def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """synflow: log Σ |θ ⊙ ∂R/∂θ| of the linearised network on an all-ones input of ``x``'s shape.

    Raises:
        ProxyError: no Conv / Linear weights, or the flow overflows float64.
    """
    device, _ = _placement(model, x)
    net = _linearised_copy(model)
    weights = [
        m.weight for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
    ]
    if not weights:
        raise ProxyError("synflow: the model has no Conv or Linear weights")
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=device)
    with torch.enable_grad():
        flow = _outputs_sum(net(ones))
        if not torch.isfinite(flow):
            raise ProxyError("synflow: the network's flow overflows float64")
        flow.backward()
    total = sum(float((w.detach() * w.grad).abs().sum()) for w in weights if w.grad is not None)
    if not math.isfinite(total):
        raise ProxyError("synflow: the score overflows float64")
    return math.log(total) if total > 0 else 0.0


def _linearised_copy(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy with |θ| for every parameter and normalisation bypassed."""
    try:
        net = copy.deepcopy(model)
    except Exception as e:
        raise ProxyError(f"synflow: cannot copy the model ({e})") from None
    for name, m in list(net.named_modules()):
        if name and isinstance(m, _NORM_TYPES):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, nn.Identity())
    net.eval().double()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
            p.requires_grad_(True)
            p.grad = None
    return net
