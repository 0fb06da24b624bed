"""Zero-cost proxies: exact values on small nets, no side effects, ordering, the registry."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from nas.compress.arch import Preprocessing, build
from nas.predictors.zero_cost import (
    NASWOT_SINGULAR,
    PROXIES,
    ProxyError,
    list_proxies,
    register_proxy,
    score,
)
from nas.search.errors import UserError


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


@pytest.mark.parametrize("name", ["naswot", "synflow"])
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


@pytest.mark.parametrize("name", ["naswot", "synflow"])
def test_same_seed_same_score_and_arch_networks_score(name: str) -> None:
    assert score(name, _conv_net(8, seed=3), _batch()) == score(
        name, _conv_net(8, seed=3), _batch()
    )
    assert math.isfinite(score(name, _arch_net(), _batch()))


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
    with pytest.raises(ProxyError, match="no ReLU-like activation"):
        score("naswot", nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), _batch(4, (12,)))
    with pytest.raises(ProxyError, match="at least 2"):
        score("naswot", _mlp(4), _batch(1, (12,)))


def test_synflow_equals_the_path_sum_by_hand() -> None:
    # With |W| and no bias, R = 1ᵀ|W3||W2||W1|1 and each layer's Σ θ·∂R/∂θ is R, so 3R in all.
    model = _mlp(5, bias=False)
    w = [m.weight.detach().double().abs() for m in model if isinstance(m, nn.Linear)]
    r = float((w[2] @ w[1] @ w[0] @ torch.ones(12, dtype=torch.float64)).sum())
    assert score("synflow", model, _batch(4, (12,))) == pytest.approx(math.log(3 * r), rel=1e-12)


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
    with pytest.raises(ProxyError, match="test-nan gave nan"):
        score("test-nan", _mlp(4), x)


def test_unknown_proxy_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown proxy 'nope'; known: .*naswot.*synflow"):
        score("nope", _mlp(4), _batch(4, (12,)))
