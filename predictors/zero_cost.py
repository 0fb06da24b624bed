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
  conserving synaptic flow"): data-free, only ``x``'s shape is used. On an eval-mode copy of
  the model in float32 (float64 when float32 overflows), every parameter replaced by its
  absolute value and every normalisation layer (BatchNorm, InstanceNorm, GroupNorm,
  LayerNorm) bypassed, as the zero-cost-proxies reference code does (``bn=False``),
  R = sum of the outputs for an all-ones input of one sample; score = log Σ |θ ⊙ ∂R/∂θ| over
  the weights of the Conv and Linear layers (natural log, as NASLib reports it). A network
  with no path from input to output (sum 0) scores 0.0, as NASLib does.
- ``params``: trainable parameters, in millions. Data-free.
- ``flops``: multiply-accumulates of one sample of ``x``'s shape through the Conv2d and Linear
  layers, in millions (:func:`nas.compress.arch.count_macs`, run in eval mode). NASLib's
  ``flops`` also counts pooling and normalisation, so its values are a little higher.
- ``grad_norm``, ``snip``, ``grasp``, ``fisher``, ``jacob_cov``: gradient-based proxies, defined
  in :mod:`nas.predictors.zero_cost_grad` (registered when this module is imported).

Scores are deterministic: no proxy draws random numbers, so the same model and batch give the
same score (bitwise on the CPU). A score that is undefined for this model or batch (no layer the
proxy reads, a batch too small, a NaN or infinite result) is NaN; :class:`ProxyError` is kept
for input that is wrong whatever the model (``x`` not a batch tensor, ``y`` not its labels).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
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
    """Input no proxy can score (:func:`score`), or, raised inside a proxy, an undefined score.

    A proxy raises it when its score is undefined for this model or batch (no activations, a
    batch too small, overflow); :func:`score` turns that into NaN.
    """


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
        y: integer labels (N,), for proxies that use them; each proxy says what it does
            without them.

    Returns:
        The score, or NaN where it is undefined for this model or batch (the proxy finds no
        layer it reads, the batch is too small, the result is NaN or infinite).

    Raises:
        UserError: unknown proxy name (the message lists the known ones).
        ProxyError: ``x`` is not a batch tensor, or ``y`` not N integer labels.
    """
    if name not in PROXIES:
        raise UserError(f"unknown proxy {name!r}; known: {', '.join(list_proxies()) or '(none)'}")
    _check_batch(name, x, y)
    try:
        value = float(PROXIES[name](model, x, y))
    except ProxyError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def score_all(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """The scores of ``model`` under several proxies (all registered ones by default).

    Args:
        model: the network; left exactly as it was.
        x: a batch of inputs (N, ...).
        y: integer labels (N,), for the proxies that use them.
        names: the proxies, in the order of the result; default :func:`list_proxies`.

    Returns:
        Proxy name -> score, NaN for each proxy undefined on this model (see :func:`score`).

    Raises:
        UserError: an unknown proxy name.
        ProxyError: ``x`` is not a batch tensor, or ``y`` not N integer labels.
    """
    chosen = list_proxies() if names is None else list(names)
    unknown = [n for n in chosen if n not in PROXIES]
    if unknown:
        raise UserError(f"unknown proxy {unknown[0]!r}; known: {', '.join(list_proxies())}")
    return {n: score(n, model, x, y) for n in chosen}


def _check_batch(name: str, x: Any, y: Any) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] < 1:
        raise ProxyError(f"proxy {name}: x must be a batch tensor (N, ...)")
    if y is not None and (
        not isinstance(y, torch.Tensor)
        or y.shape != x.shape[:1]
        or y.is_floating_point()
        or y.is_complex()
    ):
        raise ProxyError(f"proxy {name}: y must be {int(x.shape[0])} integer labels (N,)")


def reference_batch(
    n: int = 16, size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of real images for scoring: ``n`` MNIST digits with their labels.

    The digits are drawn (seeded) from the vendored MNIST-5k training split, resized to
    ``size`` × ``size`` (bilinear), repeated to three channels and normalised with the mean
    and std of the training digits, so that a network for 3-channel images takes them.

    Args:
        n: samples, 1 to 3,500.
        size: side in pixels.
        seed: which digits are drawn.

    Returns:
        ``x`` float32 (n, 3, size, size) and ``y`` int64 (n,) labels 0..9.

    Raises:
        ValueError: ``n`` or ``size`` out of range.
    """
    from nas.compress.datasets import batches, default_preprocessing, load_data

    data = load_data("mnist", "train")
    if not 1 <= n <= len(data) or size < 1:
        raise ValueError(f"reference_batch needs 1 <= n <= {len(data)} and size >= 1")
    pre = default_preprocessing(data, size)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    chosen = dataclasses.replace(data, x=data.x[idx], y=data.y[idx])
    return next(iter(batches(chosen, pre, n)))


# -- helpers -------------------------------------------------------------------------------------
def placement(model: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
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


@contextmanager
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, but BatchNorm normalises with the batch's statistics and updates nothing.

    Networks are scored as at initialisation, in train mode, the way the proxies' authors did,
    without touching BatchNorm's running statistics; dropout and the rest run in eval mode, so
    scores are deterministic. Every mode is restored on exit.
    """
    with preserved_modes(model):
        model.eval()
        for m in model.modules():
            if _is_bn(m):
                m.train()
                m.track_running_stats = False
        yield


def _is_bn(m: nn.Module) -> TypeGuard[nn.modules.batchnorm._BatchNorm]:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def outputs_sum(out: Any) -> torch.Tensor:
    """Sum of every tensor in a model's output (a tensor, or nested tuples / lists / dicts).

    Raises:
        ProxyError: the output holds no tensor.
    """
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
    device, dtype = placement(model, x)
    kernel = torch.zeros(n, n, dtype=torch.float64, device=device)

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.shape[:1] == (n,):
            kernel.add_(_agreement(output))

    handles = [m.register_forward_hook(hook) for m in acts]
    try:
        with scoring_mode(model), torch.no_grad():
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

    Computed in float32 and, only when that overflows, again in float64: float64 convolutions
    are 2-3x slower on a CPU, and the two agree to about 1e-9 on the log scale (a small
    MobileNetV3: 34.978285227 against 34.978285208).

    Raises:
        ProxyError: no Conv / Linear weights, or the flow overflows float64.
    """
    device, _ = placement(model, x)
    for dtype in (torch.float32, torch.float64):
        total = _synflow_total(model, x.shape[1:], device, dtype)
        if math.isfinite(total):
            return math.log(total) if total > 0 else 0.0
    raise ProxyError("synflow: the score overflows float64")


def _synflow_total(
    model: nn.Module, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> float:
    """Σ |θ ⊙ ∂R/∂θ| over the Conv / Linear weights in ``dtype`` (inf when it overflows)."""
    net = _linearised_copy(model, dtype)
    weights = [
        m.weight for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
    ]
    if not weights:
        raise ProxyError("synflow: the model has no Conv or Linear weights")
    ones = torch.ones((1, *shape), dtype=dtype, device=device)
    with torch.enable_grad():
        flow = outputs_sum(net(ones))
        if not torch.isfinite(flow):
            return math.inf
        flow.backward()
    total = 0.0
    for w in weights:
        if w.grad is not None:
            total += float((w.detach() * w.grad).abs().sum(dtype=torch.float64))
    return total


def _linearised_copy(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """An eval-mode copy in ``dtype`` with |θ| for every parameter and normalisation bypassed."""
    try:
        net = copy.deepcopy(model)
    except Exception as e:
        raise ProxyError(f"synflow: cannot copy the model ({e})") from None
    for name, m in list(net.named_modules()):
        if name and isinstance(m, _NORM_TYPES):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, nn.Identity())
    net.eval().to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
            p.requires_grad_(True)
            p.grad = None
    return net


# -- params, flops -------------------------------------------------------------------------------
@register_proxy("params")
def params(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """Trainable parameters (``requires_grad``), in millions; ``x`` and ``y`` are not used."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6


@register_proxy("flops")
def flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """Multiply-accumulates (millions) of one sample of ``x``'s shape, in eval mode."""
    from nas.compress.arch import count_macs

    device, dtype = placement(model, x)
    with preserved_modes(model):
        model.eval()
        return count_macs(model, x[:1].to(device=device, dtype=dtype)) / 1e6


# the gradient-based proxies register themselves on import
from nas.predictors import zero_cost_grad  # noqa: E402, F401
