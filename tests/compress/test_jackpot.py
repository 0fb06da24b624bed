"""``jackpot``: mask search on frozen weights through nas compress; sparse model files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from nas.cli.main import app
from nas.compress import create_model, load_model, save_model
from nas.compress.masks import prunable
from nas.compress.pruning import count_nonzero, prune_unstructured
from nas.compress.sparse_io import META_KEY
from nas.compress.testing import check_method
from nas.search.task import create_task
from nas.supernets.checkpoint import read_state_dict

QUICK = {"search_epochs": 0.5, "lr": 5.0, "sparsity": 0.9, "allocation": "global"}


def test_sparse_files_round_trip_dense(tmp_path: Path) -> None:
    net = prune_unstructured(create_model("resnet20", width=0.5), 0.9)
    weights, _ = save_model(net, tmp_path / "m")
    with safe_open(str(weights), framework="pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
        keys = set(f.keys())
    assert "layers.1.body.0.conv.weight" in meta and "layers.1.body.0.conv.weight::indices" in keys
    assert meta["layers.1.body.0.conv.weight"]["sparsity"] >= 0.5
    dense_bytes = sum(v.numel() * 4 for v in net.state_dict().values())
    assert weights.stat().st_size < 0.5 * dense_bytes
    again = load_model(weights)
    for k, v in net.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    sd, _ = read_state_dict(weights)  # the checkpoint reader restores them dense too
    assert torch.equal(
        sd["layers.1.body.0.conv.weight"], net.state_dict()["layers.1.body.0.conv.weight"]
    )


def test_jackpot_keeps_weights_and_exact_sparsity(teacher: Path) -> None:
    task = create_task("jackpot", checkpoint=str(teacher), data="digits", **QUICK)
    params = {"sparsity_pct": 90.0, "allocation": "global"}
    model = task.build(params)
    rates = task.rates(params)
    orig = prunable(task.original)
    for name, m in prunable(model).items():
        w, w0 = m.weight.detach(), orig[name].weight.detach()
        kept = w != 0
        assert int((~kept).sum()) == round(rates[name] * w.numel())
        assert torch.equal(w[kept], w0[kept])  # the trained weights, unchanged
    swaps = sum(row["swaps"] for row in model.origin["mask_search"])
    assert swaps > 0
    c = count_nonzero(model)
    total = sum(m.weight.numel() for m in orig.values())
    assert c.nnz_params <= c.params - 0.9 * total + 1
    m1 = task.evaluate(params)
    assert task.evaluate(params) == m1  # cached


def test_jackpot_conformance(teacher: Path) -> None:
    check_method(
        create_task("jackpot", checkpoint=str(teacher), data="digits", **QUICK), candidates=1
    )


def test_jackpot_by_drift_and_per_layer() -> None:
    rnet = Path(__file__).resolve().parents[2] / "compress" / "data" / "weights" / "rnet.pt"
    task = create_task(
        "jackpot", checkpoint=str(rnet), arch="mtcnn_rnet", per_layer=True, search_epochs=0.25
    )
    space = task.space()
    assert len(space) == len(prunable(task.original))
    params = {k: 50 for k in space}
    m = task.evaluate(params)
    assert 0.0 < m["cosine"] <= 1.0 and m["sparsity"] == pytest.approx(0.5, abs=0.05)


def test_nas_compress_jackpot_command(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "compress",
        str(teacher),
        "--method",
        "jackpot",
        "--sparsity",
        "0.9",
        "--data",
        "digits",
        "--budget",
        "2",
        "--storage",
        ":memory:",
        "--out",
        str(out),
        "--max-drop",
        "100",
        "--set",
        "search_epochs=0.25",
        "--set",
        "allocation=global",
        "--set",
        "lr=5",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["options"]["bn"] == "frozen" and report["evaluated"] == 2
    assert report["selected"]["sparsity"] > 0.85
    model = load_model(out / "model.safetensors")
    assert count_nonzero(model).metrics()["sparsity"] == pytest.approx(
        report["selected"]["sparsity"]
    )
    bad = CliRunner().invoke(app, [*args[:2], "--set", "bogus=1", "--data", "digits"])
    assert bad.exit_code == 2 and "magnitude takes no option 'bogus'" in bad.output


def test_imp_prunes_a_fifth_per_round_and_keeps_pruned_weights_zero() -> None:
    from nas.compress.lottery import IMPSettings, iterative_magnitude_pruning

    torch.manual_seed(0)
    init = create_model("resnet20", width=0.25, in_channels=1)
    seen: list[torch.nn.Module] = []

    def evaluate(net: torch.nn.Module) -> dict[str, float]:
        seen.append(copy.deepcopy(net))
        return {
            "nnz": float(sum(int(torch.count_nonzero(m.weight)) for m in prunable(net).values()))
        }

    settings = IMPSettings(rounds=2, epochs=1, rewind_epochs=1)
    rows = iterative_magnitude_pruning(init, "digits", settings, evaluate=evaluate)
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["epochs_trained"] == 3
    total = sum(m.weight.numel() for m in prunable(init).values())
    for r, want in zip(rows, (0.0, 0.2, 0.36), strict=True):
        assert r["sparsity"] == pytest.approx(want, abs=1e-3)
        assert r["nnz"] <= round((1 - want) * total) + 1
    # a weight pruned in round 1 is still zero after round 2's training
    w1 = {n: m.weight.detach() for n, m in prunable(seen[1]).items()}
    w2 = {n: m.weight.detach() for n, m in prunable(seen[2]).items()}
    assert all(bool((w2[n][w1[n] == 0] == 0).all()) for n in w1)
    assert any(not torch.equal(w1[n], w2[n]) for n in w1)  # and the survivors trained
