"""The normalization-activation layer graph: executor, known layers, canonical form, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.compress.arch import Network, build
from nas.compress.evonorm_train import (
    fit,
    lr_at,
    replace_norm_act,
    tensors,
    transfer,
    with_layer,
    zoo_model,
)
from nas.compress.model_io import export_onnx, load_model, save_model
from nas.compress.normact import (
    EPS,
    EvoNormB0,
    EvoNormS0,
    GraphError,
    GraphNormAct,
    NormReLU,
    build_normact,
    check_graph,
    elementwise_on_input,
    graph_of,
    has_statistics,
    node,
    normalises,
)
from nas.compress.normact_canon import (
    KNOWN,
    canonical,
    canonical_hash,
    equivalent_known,
    formula,
    numerically_equal,
)
from nas.compress.zoo import create_model


def _x(n: int = 6, c: int = 8) -> torch.Tensor:
    return torch.randn(n, c, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 + 0.5


def test_b0_matches_its_formula_in_training_and_eval() -> None:
    x, layer = _x(), EvoNormB0(8)
    with torch.no_grad():
        layer.v1.uniform_(-1, 1)
        layer.weight.uniform_(0.5, 2)
        layer.bias.uniform_(-1, 1)
    v = layer.v1.view(1, -1, 1, 1)
    batch_var = x.var(dim=(0, 2, 3), unbiased=False).view(1, -1, 1, 1)
    inst = torch.sqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + EPS)
    want = x / torch.maximum(torch.sqrt(batch_var + EPS), v * x + inst)
    want = want * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), want)
    running = 0.9 * 1 + 0.1 * x.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(layer.batch_std.running, running)
    layer.eval()
    want_eval = x / torch.maximum(torch.sqrt(running.view(1, -1, 1, 1) + EPS), v * x + inst)
    want_eval = want_eval * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x[:1]), want_eval[:1])  # batch 1 works in eval


def test_s0_matches_its_formula() -> None:
    x, layer = _x(), EvoNormS0(8, groups=4)
    with torch.no_grad():
        layer.v1.uniform_(-1, 1)
    g = x.reshape(6, 4, 2 * 25)
    std = torch.sqrt(g.var(dim=2, unbiased=False) + EPS).repeat_interleave(2, 1).view(6, 8, 1, 1)
    want = x * torch.sigmoid(layer.v1.view(1, -1, 1, 1) * x) / std
    torch.testing.assert_close(layer(x), want)


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("b0", lambda: EvoNormB0(8)),
        ("s0", lambda: EvoNormS0(8)),
        ("bn-relu", lambda: NormReLU(8, "bn")),
        ("gn-relu", lambda: NormReLU(8, "gn")),
    ],
)
def test_known_graphs_compute_the_modules(name: str, module: object) -> None:
    """B0, S0, BN-ReLU and GN-ReLU as graphs equal their modules (training and eval)."""
    mod, graph = module(), GraphNormAct(KNOWN[name], 8)  # type: ignore[operator]
    x = _x()
    torch.testing.assert_close(graph(x), mod(x), atol=1e-5, rtol=1e-4)
    mod.eval(), graph.eval()
    torch.testing.assert_close(graph(x[:1]), mod(x[:1]), atol=1e-5, rtol=1e-4)


def test_canonical_form_recognises_equivalent_graphs() -> None:
    b0 = KNOWN["b0"]
    # the same B0 with commutative operands swapped and a dead node in front
    swapped = graph_of(
        [
            node("exp", 2),  # dead
            node("std_instance", 0),
            node("mul", 0, 3),
            node("add", 5, 6),
            node("std_batch", 0),
            node("max", 7, 8),
            node("div", 0, 9),
        ]
    )
    assert canonical(swapped) == canonical(b0)
    assert canonical_hash(swapped) == canonical_hash(b0)
    assert equivalent_known(swapped) == "b0"
    names = list(KNOWN)
    assert len({canonical(KNOWN[n]) for n in names}) == len(names)  # B0 != S0 != ...
    square = graph_of([node("mul", 0, 0)])
    assert canonical(square) != canonical(graph_of([node("square", 0)]))
    assert numerically_equal(square, graph_of([node("square", 0)]))  # the second line
    assert not numerically_equal(KNOWN["b0"], KNOWN["s0"])
    assert formula(b0) == "x/max(std_b(x), v1*x + std_i(x))"


@pytest.mark.parametrize(
    "bad",
    [
        {"nodes": [{"op": "nope", "in": [0]}]},
        {"nodes": [{"op": "add", "in": [0]}]},
        {"nodes": [{"op": "neg", "in": [4]}]},
        {"nodes": [{"op": "neg", "in": [0]}], "output": 9},
        {"graph": []},
    ],
)
def test_malformed_graphs_are_refused(bad: dict) -> None:
    with pytest.raises(GraphError):
        check_graph(bad)
    with pytest.raises(ValueError, match=r"layers\.3"):
        build_normact({"type": "normact", "channels": 4, "graph": bad}, "layers.3")


def test_nan_is_not_repaired() -> None:
    layer = GraphNormAct(graph_of([node("div", 0, 1)]), 4)  # x / 0
    assert not torch.isfinite(layer(_x(c=4))).all()


def test_model_with_graph_layer_saves_loads_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = zoo_model("resnet20", KNOWN["b0"], width=0.25, input_size=14)
    net.train()
    net(net.example_input(4))  # running statistics move
    net.eval()
    weights, arch = save_model(net, tmp_path / "m")
    doc = json.loads(arch.read_text())
    assert "normact" in arch.read_text() and doc["spec"]
    again = load_model(weights)
    x = net.example_input(1)
    torch.testing.assert_close(again(x), net(x))
    assert export_onnx(again, tmp_path / "m.onnx") is not None  # checked by onnxruntime


def test_replacing_layers_transfers_weights() -> None:
    net = create_model("resnet20", width=0.25, input_size=14)
    assert isinstance(net, Network)
    spec, renames = replace_norm_act(net.spec, "s0")
    assert renames and all(k.endswith(".") for k in renames)
    text = json.dumps(spec)
    assert '"graph": "s0"' in text and '"graph": "gn"' in text  # plain BNs become GN
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2)
    new = with_layer(net, "gn-relu", plain="gn")
    for key, value in net.state_dict().items():  # conv and BN affine weights moved over
        if key.endswith(".bn.weight"):
            torch.testing.assert_close(new.state_dict()[key.replace(".bn.", ".1.norm.")], value)
        if key.endswith(".conv.weight"):
            moved = key.replace(".conv.weight", ".0.conv.weight")
            torch.testing.assert_close(new.state_dict()[moved], value)
    again = build(new.spec, new.preprocessing)
    assert transfer(new.state_dict(), again, {}) == len(again.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in new.modules())


def test_statistics_are_required_of_x() -> None:
    assert all(normalises(g) for g in KNOWN.values())
    only_stats = graph_of([node("std_group", 0), node("mean_batch", 0), node("div", 4, 5)])
    assert has_statistics(only_stats) and not elementwise_on_input(only_stats)
    assert not normalises(only_stats)  # constant over space
    assert not has_statistics(graph_of([node("max", 0, 1)]))  # ReLU
    assert not has_statistics(graph_of([node("std_batch", 3), node("div", 0, 4)]))  # x/std(v1)
    assert has_statistics(graph_of([node("abs", 0), node("mean_group", 4), node("add", 3, 5)]))


def test_lr_schedule_warms_up_then_decays() -> None:
    assert [round(lr_at(s, 10, 1.0, warmup=2), 3) for s in (0, 1, 2, 10)] == [0.5, 1.0, 1.0, 0.0]
    assert lr_at(0, 10, 1.0) == 1.0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_held_back_convnet_trains_with_every_reference(optimizer: str) -> None:
    """convnet5 (the benchmark's held-back net) builds with each layer and fits a little."""
    for name in ("bn-relu", "gn-relu", "b0", "s0"):
        torch.manual_seed(0)
        net = zoo_model("convnet5", name, width=0.25, input_size=12)
        data = tensors("digits", "train", net, 32)
        fit(net, data, steps=3, batch=2, lr=1e-3, seed=0, optimizer=optimizer, clip=1.0)
        assert net(net.example_input(1)).shape == (1, 10)
    with pytest.raises(ValueError, match="optimizer"):
        fit(net, data, steps=1, batch=2, lr=1e-3, seed=0, optimizer="lion")
