"""Zero-cost proxies: exact values on small nets, no side effects, ordering, the registry."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from nas.compress.arch import Preprocessing, build, count_macs
from nas.predictors.zero_cost import (
    NASWOT_SINGULAR,
    PROXIES,
    ProxyError,
    list_proxies,
    reference_batch,
    register_proxy,
    score,
    score_all,
)
from nas.search.errors import UserError
from nas.supernets.nb201_net import nb201_network

BUILTIN = ["fisher", "flops", "grad_norm", "grasp", "jacob_cov", "naswot", "params", "snip"]
BUILTIN = sorted([*BUILTIN, "synflow"])
#: proxies whose score depends on the weights' gradients (undefined without Conv / Linear)
GRADIENT = ["fisher", "grad_norm", "grasp", "snip", "synflow"]


def _conv_net(width: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1),
        nn.BatchNorm2d(width),
        nn.Hardswish(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def _mlp(width: int, seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, width, bias=bias),
        nn.ReLU(),
        nn.Linear(width, width, bias=bias),
        nn.ReLU(),
        nn.Linear(width, 3, bias=bias),
    )


def _arch_net() -> nn.Module:
    spec = [
        {"type": "conv", "in": 3, "out": 8, "kernel": 3, "stride": 2, "act": "hswish"},
        {
            "type": "residual",
            "body": [{"type": "conv", "in": 8, "out": 8, "kernel": 3, "stride": 1, "act": "relu"}],
            "act": "relu",
        },
        {"type": "gap"},
        {"type": "flatten"},
        {"type": "linear", "in": 8, "out": 4},
    ]
    torch.manual_seed(0)
    return build(spec, Preprocessing((16, 16)))


def _batch(n: int = 16, shape: tuple[int, ...] = (3, 16, 16)) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _flags(model: nn.Module) -> list[object]:
    modes = [(m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    return [*modes, *[(p.requires_grad, p.grad, p.dtype) for p in model.parameters()]]


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("train_mode", [True, False])
def test_scoring_leaves_the_model_exactly_as_it_was(name: str, train_mode: bool) -> None:
    model = _conv_net(8).train(train_mode)
    model[0].weight.requires_grad_(False)  # a frozen layer stays frozen
    model[3].train(not train_mode)  # mixed modes survive
    state, flags = _state(model), _flags(model)
    value = score(name, model, _batch())
    assert isinstance(value, float) and math.isfinite(value)
    after = model.state_dict()
    assert state.keys() == after.keys() and _flags(model) == flags
    for k, v in state.items():  # bit-identical, BatchNorm statistics included
        assert torch.equal(v, after[k]) and v.dtype == after[k].dtype, k


@pytest.mark.parametrize("name", BUILTIN)
def test_same_seed_same_score_and_arch_networks_score(name: str) -> None:
    y = torch.arange(16) % 10
    assert score(name, _conv_net(8, seed=3), _batch(), y) == score(
        name, _conv_net(8, seed=3), _batch(), y
    )
    assert math.isfinite(score(name, _arch_net(), _batch()))
    assert math.isfinite(score(name, _mlp(8), _batch(8, (12,))))  # no BatchNorm


def test_all_builtin_proxies_are_registered_and_score_a_small_nb201_network() -> None:
    assert set(BUILTIN) <= set(list_proxies())
    torch.manual_seed(0)
    net = nb201_network(
        "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|skip_connect~2|",
        C=4,
        N=1,
    )
    x, y = reference_batch(8, 16)
    scores = score_all(net, x, y)
    assert list(scores) == list_proxies() and all(math.isfinite(v) for v in scores.values())
    assert score_all(net, x, y, names=["params", "naswot"]) == {
        "params": scores["params"],
        "naswot": scores["naswot"],
    }
    with pytest.raises(UserError, match="unknown proxy 'nope'"):
        score_all(net, x, names=["params", "nope"])


def test_reference_batch_is_fixed_normalised_digits() -> None:
    x, y = reference_batch(16)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 2]) and set(y.tolist()) <= set(range(10))
    again, _ = reference_batch(16)
    other, _ = reference_batch(16, seed=1)
    assert torch.equal(x, again) and not torch.equal(x, other)
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3
    assert reference_batch(4, 8)[0].shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="reference_batch needs"):
        reference_batch(0)


@pytest.mark.parametrize("name", BUILTIN)
def test_undefined_scores_are_nan_and_bad_input_raises(name: str) -> None:
    x = _batch(4, (12,))
    flat = nn.Sequential(nn.Flatten())  # no weights, no activations, constant input gradient
    value = score(name, flat, x)
    assert value == 0.0 if name in ("params", "flops") else math.isnan(value)
    if name in ("naswot", "jacob_cov"):
        assert math.isnan(score(name, _mlp(4), _batch(1, (12,))))  # needs a batch of 2
    if name in GRADIENT and name != "synflow":  # the loss needs (N, classes) logits
        assert math.isnan(score(name, nn.Sequential(nn.Linear(12, 3), nn.Flatten(0)), x))
    with pytest.raises(ProxyError, match="x must be a batch tensor"):
        score(name, _mlp(4), torch.zeros(12))
    with pytest.raises(ProxyError, match="y must be 4 integer labels"):
        score(name, _mlp(4), x, torch.zeros(4))


def test_label_proxies_default_to_the_fixed_label_rule() -> None:
    x = _batch(8, (12,))
    rule = torch.arange(8) % 3
    for name in ("grad_norm", "snip", "grasp", "fisher"):
        assert score(name, _mlp(6), x) == score(name, _mlp(6), x, rule)
        assert score(name, _mlp(6), x) != score(name, _mlp(6), x, (rule + 1) % 3)


def _weights_loss(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> Any:
    """The loss as a function of the Linear weights, for torch.func (biases fixed)."""
    names = [f"{i}.weight" for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    params = dict(model.named_parameters())

    def loss(*weights: torch.Tensor) -> torch.Tensor:
        p = {**params, **dict(zip(names, weights, strict=True))}
        out = torch.func.functional_call(model, p, (x,))
        return nn.functional.cross_entropy(out, y)

    return loss, tuple(params[n].detach() for n in names)


def test_gradient_proxies_equal_their_definitions_by_hand() -> None:
    model, x = _mlp(5).double(), _batch(6, (12,)).double()
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    loss, ws = _weights_loss(model, x, y)
    g = torch.autograd.grad(loss(*(w.requires_grad_() for w in ws)), ws)
    ws = tuple(w.detach() for w in ws)
    flat_w, flat_g = torch.cat([w.flatten() for w in ws]), torch.cat([t.flatten() for t in g])

    def flat_loss(v: torch.Tensor) -> torch.Tensor:
        return loss(*_unflatten(v, ws))

    hessian = torch.autograd.functional.hessian(flat_loss, flat_w)
    assert score("grad_norm", model, x, y) == pytest.approx(sum(float(t.norm()) for t in g))
    assert score("snip", model, x, y) == pytest.approx(float((flat_w * flat_g).abs().sum()))
    want = -float(flat_w @ (hessian @ flat_g))
    assert score("grasp", model, x, y) == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert score("params", model, x) == sum(p.numel() for p in model.parameters()) / 1e6
    assert score("flops", model, x) == count_macs(model, x) / 1e6 == (12 * 5 + 25 + 15) / 1e6


def _unflatten(v: torch.Tensor, like: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    parts = torch.split(v, [w.numel() for w in like])
    return tuple(p.view_as(w) for p, w in zip(parts, like, strict=True))


def test_fisher_and_jacob_cov_equal_their_definitions_by_hand() -> None:
    model, x = _mlp(5).double(), _batch(6, (12,)).double()
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    acts = []
    h = x
    for layer in model:
        h = layer(h)
        if isinstance(layer, nn.Linear):
            h.retain_grad()
            acts.append(h)
    nn.functional.cross_entropy(h, y).backward()
    want = sum(  # per output feature, ½ mean over the batch of (a·∂L/∂a)², times the fan-in
        0.5 * float(((a * a.grad).detach() ** 2).mean(0).sum()) * fan_in
        for a, fan_in in zip(acts, [12, 5, 5], strict=True)
    )
    assert score("fisher", model, x, y) == pytest.approx(want, rel=1e-9)
    inp = x.clone().requires_grad_()
    jac = torch.autograd.grad(model(inp).sum(), inp)[0].numpy()
    eig = np.linalg.eigvalsh(np.corrcoef(jac)) + 1e-5
    want_jc = -float(np.sum(np.log(eig) + 1 / eig))
    assert score("jacob_cov", model, x) == pytest.approx(want_jc, rel=1e-9)


def test_naswot_equals_the_kernel_computed_by_hand() -> None:
    model = _mlp(6).eval()
    x = _batch(8, (12,))
    h1 = torch.relu(model[1](x))
    h2 = torch.relu(model[3](h1))
    k = np.zeros((8, 8))
    for h in (h1, h2):
        c = (h > 0).double().numpy()
        k += c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = np.linalg.slogdet(k)
    assert sign > 0 and score("naswot", model, x) == pytest.approx(logdet, abs=1e-9)


def test_naswot_dead_relus_score_below_a_working_net() -> None:
    x = _batch(16, (12,))
    alive = score("naswot", _mlp(32), x)
    dead = _mlp(32)
    with torch.no_grad():
        first = dead[1]
        assert isinstance(first, nn.Linear)
        first.bias.fill_(-1e3)  # the first ReLUs never fire, nor do the ones after
    assert score("naswot", dead, x) == NASWOT_SINGULAR < 0 < alive


def test_naswot_needs_activations_and_a_batch() -> None:
    assert math.isnan(score("naswot", nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), _batch(4)))
    assert math.isnan(score("naswot", _mlp(4), _batch(1, (12,))))


def test_synflow_equals_the_path_sum_by_hand() -> None:
    # With |W| and no bias, R = 1ᵀ|W3||W2||W1|1 and each layer's Σ θ·∂R/∂θ is R, so 3R in all.
    model = _mlp(5, bias=False)
    w = [m.weight.detach().double().abs() for m in model if isinstance(m, nn.Linear)]
    r = float((w[2] @ w[1] @ w[0] @ torch.ones(12, dtype=torch.float64)).sum())
    assert score("synflow", model, _batch(4, (12,))) == pytest.approx(math.log(3 * r), rel=1e-7)


def test_synflow_grows_with_width() -> None:
    x = _batch(2)
    for family in (_conv_net, _mlp):
        shape = (3, 16, 16) if family is _conv_net else (12,)
        scores = [score("synflow", family(w), _batch(2, shape)) for w in (4, 16, 64)]
        assert scores == sorted(scores) and scores[0] < scores[-1] - 1.0, (family, scores)
    assert score("synflow", _conv_net(8), x) == score("synflow", _conv_net(8), 5 * x)  # data-free


def test_synflow_sums_tuple_outputs() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp(4, bias=False)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            y = self.body(x)
            return y, {"copy": y}

    one = score("synflow", _mlp(4, bias=False), _batch(2, (12,)))
    assert score("synflow", TwoHeads(), _batch(2, (12,))) == pytest.approx(one + math.log(2))


@pytest.fixture
def temporary_proxy() -> Iterator[str]:
    yield "test-mean-output"
    PROXIES.pop("test-mean-output", None)
    PROXIES.pop("test-nan", None)


def test_registered_proxy_is_scored_and_checked(temporary_proxy: str) -> None:
    @register_proxy(temporary_proxy)
    def mean_output(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
        with torch.no_grad():
            return float(model(x).mean()) + (0.0 if y is None else float(y.sum()))

    assert temporary_proxy in list_proxies()
    x = _batch(4, (12,))
    assert score(temporary_proxy, _mlp(4), x, torch.tensor([1, 1, 0, 0])) == pytest.approx(
        float(_mlp(4)(x).detach().mean()) + 2.0
    )
    with pytest.raises(ValueError, match="already registered"):
        register_proxy(temporary_proxy)(mean_output)
    register_proxy("test-nan")(lambda m, x, y: math.nan)
    assert math.isnan(score("test-nan", _mlp(4), x))


def test_unknown_proxy_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown proxy 'nope'; known: .*naswot.*synflow"):
        score("nope", _mlp(4), _batch(4, (12,)))
