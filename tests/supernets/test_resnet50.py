"""The Once-for-All ResNet50-D supernet: extraction, ofa compatibility, MACs/params, loading."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nas.compress.arch import build, count_macs, count_params
from nas.search.errors import UserError
from nas.supernets.checkpoint import load_into, read_state_dict
from nas.supernets.ofa_resnet import OFAResNet50
from tests.supernets.ofa_compat import import_ofa

#: ofa's published ResNet50 space (OFAResNets' own defaults are a single, non-elastic net)
OFA_SPACE: dict[str, Any] = {
    "depth_list": [0, 1, 2],
    "expand_ratio_list": [0.2, 0.25, 0.35],
    "width_mult_list": [0.65, 0.8, 1.0],
}


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Random BN affine weights and running statistics, so that slicing them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)


def _ofa_resnets(n_classes: int = 10) -> Any:
    return import_ofa().OFAResNets(n_classes=n_classes, **OFA_SPACE)


@pytest.fixture(scope="module")
def supernet() -> OFAResNet50:
    torch.manual_seed(0)
    net = OFAResNet50(n_classes=10)
    _randomise_bn(net, 1)
    return net.eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, OFAResNet50]:
    """ofa's supernet with random weights, and ours loaded from its saved state_dict."""
    torch.manual_seed(2)
    ofa_net = _ofa_resnets()
    _randomise_bn(ofa_net, 3)
    path = tmp_path_factory.mktemp("ofa") / "ofa_resnet50.pth"
    torch.save(ofa_net.state_dict(), path)
    ours = OFAResNet50(n_classes=10)
    sd, _ = read_state_dict(path)
    load_into(ours, sd, convert=ours.convert_state_dict, ignore=("num_batches_tracked",))
    return ofa_net.eval(), ours.eval()


def _configs(net: OFAResNet50, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [net.largest(), net.smallest()] + [net.sample(rng) for _ in range(n)]


def test_space(supernet: OFAResNet50) -> None:
    dims = supernet.dimensions()
    assert list(dims)[:5] == ["d0", "d1", "d2", "d3", "d4"]
    assert [k for k in dims if k.startswith("e")] == [f"e{i}" for i in range(18)]
    assert [k for k in dims if k.startswith("w")] == [f"w{i}" for i in range(6)]
    assert list(dims)[-1] == "r" and dims["e0"] == (0.2, 0.25, 0.35)
    assert supernet.config() == {"n_classes": 10, "dropout": 0.0}


def test_extract_matches_supernet(supernet: OFAResNet50) -> None:
    x = torch.randn(2, 3, 40, 40)  # odd feature sizes exercise the ceil-mode avg-pool
    for p in _configs(supernet, 5, seed=0):
        supernet.set_active(p)
        spec = supernet.arch_spec(p)
        assert build(json.loads(json.dumps(spec))) is not None  # the spec is plain JSON
        sub = supernet.extract(p).eval()
        with torch.no_grad():
            want, got = supernet(x), sub(x)
        assert want.abs().mean() > 1e-2  # outputs large enough for the tolerance to matter
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_subnets_differ(supernet: OFAResNet50) -> None:
    x = torch.randn(1, 3, 32, 32)
    outs = []
    for p in _configs(supernet, 1, seed=1):
        supernet.set_active(p)
        with torch.no_grad():
            outs.append(supernet(x))
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)


def test_forward_is_differentiable_on_the_active_slice(supernet: OFAResNet50) -> None:
    saved = {k: v.clone() for k, v in supernet.state_dict().items()}
    supernet.set_active(supernet.smallest())
    supernet.zero_grad()
    supernet.train()
    try:
        supernet(torch.randn(2, 3, 32, 32)).square().sum().backward()
        weight = supernet.input_stem[0].conv.conv.weight
        assert weight.grad is not None
        mid = supernet.stem_mid[0]
        assert weight.grad[:mid].abs().sum() > 0 and weight.grad[mid:].abs().sum() == 0
        assert supernet.blocks[-1].conv3.conv.conv.weight.grad is None  # d4=0: block off
        bn = supernet.input_stem[0].bn.bn
        assert not torch.equal(
            bn.running_mean[:mid], saved["input_stem.0.bn.bn.running_mean"][:mid]
        )
    finally:
        supernet.eval()
        supernet.zero_grad()
        supernet.load_state_dict(saved)


def test_matches_ofa(pair: tuple[Any, OFAResNet50]) -> None:
    ofa_net, ours = pair
    x = torch.randn(2, 3, 40, 40)
    for p in _configs(ours, 18, seed=2):
        ofa_net.set_active_subnet(**ours.to_ofa(p))
        ours.set_active(p)
        with torch.no_grad():
            want, got = ofa_net(x), ours(x)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_to_ofa(supernet: OFAResNet50) -> None:
    got = supernet.to_ofa(supernet.smallest())
    assert got == {"d": [0] * 5, "e": [0.2] * 18, "w": [0] * 6}


def test_legacy_ofa_key_names(pair: tuple[Any, OFAResNet50]) -> None:
    ofa_net, _ = pair
    legacy = {
        k.replace("bn.bn.", "bn.").replace("conv.conv.weight", "conv.weight"): v
        for k, v in ofa_net.state_dict().items()
    }
    legacy = {k.replace(".linear.linear.", ".linear."): v for k, v in legacy.items()}
    assert "blocks.0.conv1.conv.weight" in legacy
    fresh = OFAResNet50(n_classes=10)
    load_into(fresh, legacy, convert=fresh.convert_state_dict)
    key = "blocks.5.conv2.bn.bn.running_var"
    assert torch.equal(fresh.state_dict()[key], ofa_net.state_dict()[key])


def test_macs_and_params_match_ofa(pair: tuple[Any, OFAResNet50]) -> None:
    ofa_net, ours = pair
    from ofa.utils import count_net_flops, count_parameters  # after import_ofa's stand-ins

    for p in (ours.smallest(), ours.largest()):
        p = {**p, "r": 224}
        ofa_net.set_active_subnet(**ours.to_ofa(p))
        ref = ofa_net.get_active_subnet()
        net = ours.extract(p)
        macs, params = count_macs(net, net.example_input()), count_params(net)
        assert macs == pytest.approx(count_net_flops(ref, (1, 3, 224, 224)), rel=0.03)
        assert params == pytest.approx(count_parameters(ref), rel=0.03)


def test_wrong_shape_names_key_and_shapes(supernet: OFAResNet50, tmp_path: Path) -> None:
    sd = dict(supernet.state_dict())
    key = "blocks.3.conv2.conv.conv.weight"
    sd[key] = torch.zeros(7, 7, 3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    loaded, _ = read_state_dict(tmp_path / "bad.pth")
    fresh = OFAResNet50(n_classes=10)
    with pytest.raises(UserError) as err:
        load_into(fresh, loaded, convert=fresh.convert_state_dict)
    msg = str(err.value)
    want = tuple(supernet.state_dict()[key].shape)
    assert key in msg and str((7, 7, 3, 3)) in msg and str(want) in msg


@pytest.mark.parametrize(("dim", "value"), [("e3", 0.3), ("w0", 3), ("d2", -1), ("r", 100)])
def test_check_rejects_values_outside_the_space(
    supernet: OFAResNet50, dim: str, value: float
) -> None:
    with pytest.raises(ValueError, match=dim):
        supernet.check({**supernet.largest(), dim: value})
    with pytest.raises(ValueError, match=dim):
        supernet.set_active({**supernet.largest(), dim: value})
