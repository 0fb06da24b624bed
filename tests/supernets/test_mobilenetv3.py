"""The Once-for-All MobileNetV3 supernet: extraction, ofa compatibility, MACs/params, training."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.compress.arch import count_macs, count_params
from nas.supernets.checkpoint import load_into, read_state_dict
from nas.supernets.ofa_mbv3 import OFAMobileNetV3, OFAMobileNetV3W12
from tests.supernets.ofa_compat import import_ofa

#: ofa's published MobileNetV3 space (OFAMobileNetV3's own defaults are a single network)
OFA_SPACE: dict[str, Any] = {
    "ks_list": [3, 5, 7],
    "expand_ratio_list": [3, 4, 6],
    "depth_list": [2, 3, 4],
}
WIDTHS = (1.0, 1.2)


def _randomise(model: nn.Module, seed: int) -> None:
    """Random BN affine weights and statistics, and kernel maps away from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
            elif isinstance(m, nn.Linear):  # logits of order 1-10, so atol is a tight check
                m.weight.normal_(0.0, 0.5, generator=g)
        for name, p in model.named_parameters():
            if name.endswith("_matrix"):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def _ofa(width: float, n_classes: int = 10) -> Any:
    return import_ofa().OFAMobileNetV3(n_classes=n_classes, width_mult=width, **OFA_SPACE)


def _configs(net: OFAMobileNetV3, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [net.largest(), net.smallest()] + [net.sample(rng) for _ in range(n)]


@pytest.fixture(scope="module", params=WIDTHS, ids=lambda w: f"w{w}")
def supernet(request: pytest.FixtureRequest) -> OFAMobileNetV3:
    torch.manual_seed(0)
    net = OFAMobileNetV3(n_classes=10, width_mult=request.param)
    _randomise(net, 1)
    return net.eval()


@pytest.fixture(scope="module", params=WIDTHS, ids=lambda w: f"w{w}")
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, OFAMobileNetV3]:
    """ofa's supernet with random weights, and ours loaded from its saved state_dict."""
    torch.manual_seed(2)
    ofa_net = _ofa(request.param)
    _randomise(ofa_net, 3)
    path = tmp_path_factory.mktemp("ofa") / "ofa_mbv3.pth"
    torch.save(ofa_net.state_dict(), path)
    ours = OFAMobileNetV3(n_classes=10, width_mult=request.param)
    sd, _ = read_state_dict(path)
    load_into(ours, sd, convert=ours.convert_state_dict, ignore=("num_batches_tracked",))
    return ofa_net.eval(), ours.eval()


def test_space_and_names() -> None:
    net = OFAMobileNetV3(n_classes=10)
    dims = list(net.dimensions())
    assert dims == [
        *(f"k{i}" for i in range(20)),
        *(f"e{i}" for i in range(20)),
        *(f"d{i}" for i in range(5)),
        "r",
    ]
    assert net.choices()["k0"] == (3, 5, 7) and net.choices()["e19"] == (3, 4, 6)
    assert net.choices()["d4"] == (2, 3, 4)
    assert net.config() == {"n_classes": 10, "width_mult": 1.0, "dropout": 0.1}
    w12 = OFAMobileNetV3W12(n_classes=10)
    assert w12.name == "mobilenetv3_w12" and w12.config()["width_mult"] == 1.2
    assert OFAMobileNetV3(n_classes=10, width_mult=1.2).name == "mobilenetv3_w12"


def test_check_rejects_outside_values() -> None:
    net = OFAMobileNetV3(n_classes=10)
    for key, bad in (("k3", 4), ("e0", 5), ("d2", 1)):
        with pytest.raises(ValueError, match=key):
            net.check({**net.largest(), key: bad})
    with pytest.raises(ValueError, match="k7"):
        net.set_active({k: v for k, v in net.largest().items() if k != "k7"})


def test_extracted_matches_supernet(supernet: OFAMobileNetV3) -> None:
    x = torch.randn(2, 3, 40, 40)
    for p in _configs(supernet, 5, seed=4):
        supernet.set_active(p)
        with torch.no_grad():
            want = supernet(x)
            got = supernet.extract(p).eval()(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_kernel_maps_matter(supernet: OFAMobileNetV3) -> None:
    """A 3x3 kernel is the transformed centre, not the plain crop, of the 7x7 weights."""
    block: Any = supernet.blocks[1]
    ek = block.conv.depth_conv.conv
    crop = ek.conv.weight[:8, :, 2:5, 2:5]
    assert not torch.allclose(ek.kernel(8, 3), crop)


def test_matches_ofa(pair: tuple[Any, OFAMobileNetV3]) -> None:
    ofa_net, ours = pair
    x = torch.randn(2, 3, 32, 32)
    outputs = []
    for p in _configs(ours, 18, seed=5):
        ofa_net.set_active_subnet(**ours.to_ofa(p))
        ours.set_active(p)
        with torch.no_grad():
            want = ofa_net(x)
            torch.testing.assert_close(ours(x), want, atol=1e-4, rtol=0.0)
        outputs.append(want)
    assert min(float(o.abs().max()) for o in outputs) > 0.5  # not vacuously small
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-2)  # sub-networks differ


@pytest.mark.parametrize("width", WIDTHS)
def test_macs_and_params_match_ofa(width: float) -> None:
    torch.manual_seed(0)
    ofa_net = _ofa(width, n_classes=1000)  # imports ofa with its torchvision stand-ins
    from ofa.utils import count_net_flops, count_parameters

    ours = OFAMobileNetV3(n_classes=1000, width_mult=width)
    for p in (ours.largest(), ours.smallest()):
        ofa_net.set_active_subnet(**ours.to_ofa(p))
        sub = ofa_net.get_active_subnet()
        want_macs = count_net_flops(sub, (1, 3, 224, 224))
        want_params = count_parameters(sub)
        net = ours.extract({**p, "r": 224}).eval()
        macs = count_macs(net, torch.zeros(1, 3, 224, 224))
        assert macs == pytest.approx(want_macs, rel=0.03)
        assert count_params(net) == pytest.approx(want_params, rel=0.03)


def test_one_sgd_step_trains_the_shared_weights() -> None:
    torch.manual_seed(0)
    net = OFAMobileNetV3(n_classes=10, dropout=0.0).train()
    p = {**net.smallest(), "k0": 3, "k4": 5, "e0": 4, "d0": 3}
    net.set_active(p)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    before = {n: t.detach().clone() for n, t in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = F.cross_entropy(net(x), y)
    assert after.item() < loss.item()
    changed = {n for n, t in net.named_parameters() if not torch.equal(t, before[n])}
    assert "blocks.1.conv.depth_conv.conv.5to3_matrix" in changed  # k0 = 3 runs 7->5->3
    assert "blocks.5.conv.depth_conv.conv.7to5_matrix" in changed  # k4 = 5
    assert "blocks.5.conv.depth_conv.conv.5to3_matrix" not in changed
    assert "blocks.1.conv.inverted_bottleneck.conv.conv.weight" in changed
    assert "classifier.linear.weight" in changed and "first_conv.conv.weight" in changed
    assert not any(n.startswith("blocks.4.") for n in changed)  # d0 = 3: slot 3 is inactive
    mid = 64  # make_divisible(16 * 4, 8): only the first expanded channels are used
    key = "blocks.1.conv.inverted_bottleneck.conv.conv.weight"
    assert torch.equal(dict(net.named_parameters())[key][mid:], before[key][mid:])


def test_copy_weights_rejects_another_network() -> None:
    net = OFAMobileNetV3(n_classes=10)
    other = net.extract(net.smallest())
    with pytest.raises(ValueError, match="not built"):
        net.copy_weights(other, net.largest())


def test_convert_state_dict_renames_legacy_keys(tmp_path: Path) -> None:
    net = OFAMobileNetV3(n_classes=10)
    sd = net.state_dict()
    legacy = {
        k.replace("blocks.3.conv.", "blocks.3.mobile_inverted_conv.")
        .replace("bn.bn.", "bn.")
        .replace("conv.conv.weight", "conv.weight"): v
        for k, v in sd.items()
    }
    assert legacy.keys() != sd.keys()
    assert net.convert_state_dict(legacy).keys() == sd.keys()
