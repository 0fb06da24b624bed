"""KAN layers: bases, selectable layers, pruning, ConvKAN, specs and saved models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.compress import load_model, save_model
from nas.compress.arch import Preprocessing, SpecError, build, layer_output_shape
from nas.compress.kan import (
    ConvKAN,
    SelectableKAN,
    SpaceLayer,
    choices,
    keep_top,
    prune_network,
    set_fade,
    set_temperature,
    update_grids,
)
from nas.compress.kan_bases import BASES, create_basis

ALL = list(BASES)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize("name", ALL)
def test_basis_features_have_grid_plus_order_functions(name: str) -> None:
    basis = create_basis(name, grid=4, order=2)
    grid = basis.make_grid(3, -1.0, 1.0)
    x = torch.rand(50, 3) * 2 - 1
    f = basis.features(x, grid)
    assert f.shape == (50, 3, 6) and torch.isfinite(f).all()
    assert f.abs().sum() > 0


def test_bspline_partition_of_unity_inside_the_grid() -> None:
    basis = create_basis("bspline", grid=5, order=3)
    grid = basis.make_grid(2, -1.0, 1.0)
    f = basis.features(torch.rand(100, 2) * 1.98 - 0.99, grid)
    assert torch.allclose(f.sum(-1), torch.ones(100, 2), atol=1e-5)


def test_unknown_basis_and_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown KAN basis 'nope'; known: bspline"):
        create_basis("nope", 5, 3)
    with pytest.raises(ValueError, match="grid"):
        create_basis("rbf", 0, 3)


@pytest.mark.parametrize("name", ALL)
def test_grid_update_keeps_the_function(name: str) -> None:
    layer = SpaceLayer(name, 2, 3, grid=6, order=3, lo=-1.0, hi=1.0)
    x = torch.rand(400, 2) * 1.2 - 0.6  # data narrower than the initial range
    before = layer(x).detach()
    layer.update_grid(x)
    after = layer(x).detach()
    assert (layer.grid.min() > -0.7 and layer.grid.max() < 0.7) or name == "bspline"
    assert (after - before).abs().max() < 0.05 * before.abs().max() + 1e-3


def test_mixed_layer_weights_topk_and_prune() -> None:
    layer = SelectableKAN(3, 4, ALL, grid=3, order=2)
    n = 3 * (3 + 2 + 1)  # functions + residual weight per edge
    assert sum(p.numel() for p in layer.parameters()) == len(ALL) * 4 * n + 4 * len(ALL)
    with torch.no_grad():
        assert layer.logits is not None
        layer.logits.copy_(torch.tensor([[5.0, 4, 0, 0, 0, 0], [0, 0, 3, 0, 5, 0]] * 2))
    keep_top(layer, 2)
    w = layer.weights()
    assert (w > 0).sum(1).tolist() == [2, 2, 2, 2]
    x = torch.randn(7, 3)
    set_temperature(layer, 0.01)  # nearly one-hot: pruning then changes nothing
    y = layer(x)
    layer.prune()
    assert not layer.mixed and layer.choice == [0, 4, 0, 4]
    assert set(layer.layers) == {"bspline", "wavelet"}
    assert sum(p.numel() for p in layer.parameters()) == 4 * n  # as a single-space layer
    assert torch.allclose(layer(x), y, atol=1e-4)
    assert layer.counts() == {
        "bspline": 2,
        "chebyshev": 0,
        "fourier": 0,
        "rbf": 0,
        "wavelet": 2,
        "silu": 0,
    }


def test_faded_layer_prunes_without_change() -> None:
    layer = SelectableKAN(3, 6, ALL, grid=3, order=1)
    with torch.no_grad():
        assert layer.logits is not None
        layer.logits.normal_()
    keep_top(layer, 2)
    set_fade(layer, 0.0)
    x = torch.randn(9, 3)
    y = layer(x)
    layer.prune()
    assert torch.allclose(layer(x), y, atol=1e-6)


def test_one_space_is_a_plain_kan_layer() -> None:
    layer = SelectableKAN(2, 5, ["chebyshev"], grid=5, order=3)
    assert not layer.mixed and layer.choice == [0] * 5
    assert sum(p.numel() for p in layer.parameters()) == 2 * 5 * 9


def test_layer_accepts_leading_dimensions() -> None:
    layer = SelectableKAN(4, 2, ["rbf", "fourier"])
    assert layer(torch.randn(3, 5, 4)).shape == (3, 5, 2)


def _fit_spec(choice: list[int] | None = None) -> list[dict[str, object]]:
    return [
        {
            "type": "kan",
            "in": 2,
            "out": 4,
            "spaces": ALL,
            "grid": 4,
            "order": 2,
            "choice": choice,
        },
        {"type": "kan", "in": 4, "out": 1, "spaces": ["bspline", "rbf"], "grid": 4, "order": 2},
    ]


def test_network_prune_updates_spec_and_round_trips(tmp_path: Path) -> None:
    net = build(_fit_spec(), Preprocessing(input_size=(1, 2), channels=1, mean=(0,), std=(1,)))
    x = torch.rand(64, 2) * 2 - 1
    update_grids(net, x * 0.5)
    prune_network(net)
    assert all(isinstance(s["choice"], list) for s in net.spec)
    assert [r["mixed"] for r in choices(net)] == [False, False]
    save_model(net, tmp_path / "m")
    again = load_model(tmp_path / "m.json")
    assert again.spec == net.spec
    assert torch.equal(again(x), net.eval()(x))  # grids are saved with the weights
    assert sum(p.numel() for p in again.parameters()) == 2 * 4 * 7 + 4 * 1 * 7


def test_mixed_network_round_trips(tmp_path: Path) -> None:
    net = build(_fit_spec()).eval()
    save_model(net, tmp_path / "m")
    x = torch.randn(5, 2)
    assert torch.equal(load_model(tmp_path / "m")(x), net(x))


def test_convkan_shape_prune_and_round_trip(tmp_path: Path) -> None:
    spec = [
        {
            "type": "convkan",
            "in": 2,
            "out": 5,
            "kernel": 3,
            "stride": 2,
            "spaces": ALL,
            "grid": 3,
            "order": 1,
        },
        {"type": "bn", "channels": 5},
    ]
    net = build(spec, Preprocessing(input_size=(9, 9), channels=2, mean=(0, 0), std=(1, 1)))
    assert isinstance(net.layers[0], ConvKAN)
    x = torch.randn(3, 2, 9, 9)
    assert net(x).shape == (3, *layer_output_shape(spec[0], (2, 9, 9)))
    prune_network(net)
    assert net.spec[0]["type"] == "convkan" and len(net.spec[0]["choice"]) == 5
    assert net.spec[0]["kernel"] == 3 and net.spec[0]["in"] == 2
    save_model(net.eval(), tmp_path / "c")
    assert torch.equal(load_model(tmp_path / "c")(x), net(x))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spaces": ["bspline", "nope"]}, "unknown KAN space 'nope'"),
        ({"choice": [0, 1]}, "choice must give one of"),
        ({"choice": [0, 0, 0, 9]}, "choice must give one of"),
        ({"range": [1, -1]}, "range"),
        ({"grid": 0}, "grid"),
    ],
)
def test_bad_specs_name_the_layer(change: dict[str, object], message: str) -> None:
    spec = {**_fit_spec()[0], **change}
    with pytest.raises(SpecError, match=message) as e:
        build([spec])
    assert "layers.0" in str(e.value)


def test_convkan_spec_needs_kernel() -> None:
    with pytest.raises(SpecError, match="lacks key 'kernel'"):
        build([{"type": "convkan", "in": 1, "out": 2, "stride": 1}])
