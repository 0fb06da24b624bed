"""NAS-Bench-201 networks (sizes as NASLib counts them), build/export, and the cell classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nas.compress.arch import SpecError, build, count_params
from nas.compress.model_io import export_onnx, load_model, save_model
from nas.search.errors import UserError
from nas.supernets.nb201 import (
    EDGES,
    NB201Task,
    cell_classes,
    class_representatives,
    load_table,
)
from nas.supernets.nb201_net import arch_string, nb201_network, parse_arch

# NASLib's ``params`` scores (millions) from its zero-cost file for NAS-Bench-201
A1 = "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|"
A2 = "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_3x3~1|skip_connect~2|"
A3 = "|avg_pool_3x3~0|+|none~0|none~1|+|nor_conv_1x1~0|nor_conv_3x3~1|nor_conv_1x1~2|"
NASLIB_PARAMS = [(A1, 10, 0.615386), (A2, 10, 0.316346), (A3, 10, 0.372346), (A3, 100, 0.378196)]


def _cell(**ops: str) -> dict[str, str]:
    """A cell whose edges are ``none`` except those given."""
    return {e: ops.get(e, "none") for e in EDGES}


@pytest.mark.parametrize(("arch", "classes", "millions"), NASLIB_PARAMS)
def test_network_has_naslibs_parameter_count(arch: str, classes: int, millions: float) -> None:
    net = nb201_network(arch, num_classes=classes)
    assert count_params(net) == round(millions * 1e6)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, classes)


def test_arch_strings_and_params_name_the_same_cell() -> None:
    arch = NASLIB_PARAMS[0][0]
    ops = parse_arch(arch)
    assert arch_string(ops) == arch and parse_arch(ops) == ops
    assert load_table().arch[load_table().row(ops)] == arch
    small = nb201_network(ops, C=4, N=1)
    assert count_params(small) < count_params(nb201_network(arch)) / 50
    for bad in ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "|none~0|", _cell(e01="x")):
        with pytest.raises(ValueError, match="NAS-Bench-201"):
            parse_arch(bad)
    with pytest.raises(ValueError, match="lacks the edges e23"):
        parse_arch({e: "none" for e in EDGES[:-1]})


POOL = {"type": "avgpool", "kernel": 3, "stride": 1, "padding": 1, "count_include_pad": False}


def test_cells_sum_their_edges_and_an_unfed_node_is_zero() -> None:
    conv = {"type": "conv", "in": 2, "out": 2, "kernel": 1, "stride": 1, "bn": False}
    skip_pool = {
        "type": "cell",
        "nodes": 3,
        "edges": [
            {"from": 1, "to": 2, "layers": []},  # order in the spec does not matter
            {"from": 0, "to": 1, "layers": [conv]},
            {"from": 0, "to": 2, "layers": [POOL]},
        ],
    }
    net = build([skip_pool])
    x = torch.randn(1, 2, 4, 4)
    cell = net.layers[0]
    pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    assert torch.allclose(net(x), cell.edges[0](x) + pool(x))  # edges sorted by target
    assert torch.equal(build([{"type": "cell", "nodes": 3, "edges": []}])(x), torch.zeros_like(x))
    with pytest.raises(SpecError, match="cannot hold the edges"):
        build([{"type": "cell", "nodes": 3, "edges": [{"from": 2, "to": 1, "layers": []}]}])


def test_task_builds_its_untrained_network_and_it_exports(tmp_path: Path) -> None:
    task = NB201Task(hw="raspi4", data="cifar100")
    params = parse_arch(NASLIB_PARAMS[1][0])
    net, again = task.build(params), task.build(params)
    assert net.origin["weights"].startswith("untrained") and net.origin["data"] == "cifar100"
    pairs = zip(net.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    x = net.example_input(2)
    assert net.eval()(x).shape == (2, 100)
    weights, _ = save_model(net, tmp_path / "cell", net.origin)
    assert torch.equal(load_model(weights)(x), net(x))
    assert export_onnx(net, tmp_path / "cell.onnx") is not None
    with pytest.raises(UserError, match="unknown NAS-Bench-201 operations"):
        task.build(_cell(e01="conv9"))


def test_cell_classes_count_and_representatives() -> None:
    classes, reps = cell_classes(), class_representatives()
    assert classes.shape == (15625,) and classes.max() + 1 == len(reps) == 4929
    assert (classes == -1).sum() == 341
    assert (classes[reps] == range(len(reps))).all() and (reps[1:] > reps[:-1]).all()
    first = {}
    for row, c in enumerate(classes.tolist()):
        first.setdefault(c, row)
    assert [first[c] for c in range(len(reps))] == reps.tolist()


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # nodes 1 and 2 swap roles when nothing runs between them (e12 none)
        (
            _cell(e01="nor_conv_3x3", e02="nor_conv_1x1", e13="avg_pool_3x3", e23="skip_connect"),
            _cell(e01="nor_conv_1x1", e02="nor_conv_3x3", e13="skip_connect", e23="avg_pool_3x3"),
            True,
        ),
        # a skip edge passes its node on: conv(skip(x)) is conv(x)
        (_cell(e01="skip_connect", e13="nor_conv_3x3"), _cell(e03="nor_conv_3x3"), True),
        # edges out of a node with no input add nothing
        (_cell(e13="nor_conv_3x3", e03="skip_connect"), _cell(e03="skip_connect"), True),
        (_cell(e03="nor_conv_3x3"), _cell(e03="nor_conv_1x1"), False),
        (
            _cell(e01="nor_conv_3x3", e13="avg_pool_3x3"),
            _cell(e01="avg_pool_3x3", e13="nor_conv_3x3"),
            False,
        ),
    ],
)
def test_equivalent_cells_share_a_class(a: dict[str, str], b: dict[str, str], same: bool) -> None:
    table, classes = load_table(), cell_classes()
    ca, cb = classes[table.row(a)], classes[table.row(b)]
    assert ca >= 0 and cb >= 0 and (ca == cb) == same


def test_cut_off_cells_have_no_class() -> None:
    table, classes = load_table(), cell_classes()
    for cell in (_cell(), _cell(e01="nor_conv_3x3", e02="skip_connect"), _cell(e23="skip_connect")):
        assert classes[table.row(cell)] == -1


def test_robot_searches_nb201_with_training_free_knowledge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without shipped scores, robot's pool is a few random cells scored on first use."""
    from nas.search import SearchConfig, run_search
    from nas.supernets import nb201

    monkeypatch.setattr(nb201, "zero_cost_scores", lambda: None)
    monkeypatch.setattr(nb201, "ROBOT_POOL", 6)
    config = SearchConfig(
        supernet="nb201",
        hw="gpu",
        objectives=("top1",),
        strategy="robot",
        budget=4,
        storage=f"sqlite:///{tmp_path}/s.db",
    )
    result = run_search(config, handle_signals=False, export=False)
    trials = result.study.trials
    allowed = {tuple(p[e] for e in nb201.EDGES) for p in nb201.NB201Task().training_free(0).pool}
    proposed = [tuple(t.params[e] for e in nb201.EDGES) for t in trials]
    assert len(trials) == 4 and set(proposed) <= allowed  # only the 6 scored cells
    assert len(set(proposed)) == 4  # never the same cell twice


def test_shipped_zero_cost_scores_cover_every_live_cell() -> None:
    from nas.supernets import nb201

    shipped = nb201.zero_cost_scores()
    assert shipped is not None, "supernets/data/nb201_zero_cost.csv.gz ships with the package"
    names, scores = shipped
    assert names == nb201.ZERO_COST_METRICS and scores.shape == (15625, len(names))
    live = nb201.cell_classes() >= 0
    assert np.isfinite(scores[live][:, names.index("params")]).all()
    assert np.isnan(scores[~live]).all()
