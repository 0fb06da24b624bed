"""``n2n``'s student space: the layer sequence, removal validity, shrinkage, the reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nas.cli.main import app
from nas.compress import create_model
from nas.compress.n2n import layer_sequence, remove_layers, reward, shrink_layers, student
from nas.compress.pruning import count_nonzero
from nas.compress.testing import check_method
from nas.search.task import create_task

QUICK = {"distill_images": 64}


def test_layer_sequence_marks_skip_connections() -> None:
    layers = layer_sequence(create_model("resnet20", width=0.25))
    assert len(layers) == 19  # the stem and 9 blocks x 2 convs; not the classifier
    assert layers[1].path == (1, "body", 0) and layers[1].skip_start and not layers[1].skip_end
    assert layers[2].skip_end and not layers[2].skip_start
    assert len(layers[0].features()) == 10


def test_removal_keeps_valid_networks_only() -> None:
    net = create_model("resnet20", width=0.25)
    n = len(layer_sequence(net))
    x = net.example_input(2)
    same = remove_layers(net, [True] * n)
    assert same is not None and torch.equal(same(x), net(x))
    assert remove_layers(net, [False] + [True] * (n - 1)) is None  # the stem: 1 -> 4 channels
    # the first block's two convs: the whole identity block goes, outputs keep their shape
    fewer = remove_layers(net, [True, False, False] + [True] * (n - 3))
    assert fewer is not None and fewer.spec[1] == {"type": "seq", "layers": []}
    assert count_nonzero(fewer).params < count_nonzero(net).params
    assert fewer(x).shape == (2, 10)
    # the first conv of a downsampling block cannot go (its stride and width are needed)
    assert remove_layers(net, [True] * 7 + [False] + [True] * (n - 8)) is None


def test_shrinking_and_the_reward() -> None:
    net = create_model("resnet20", width=0.5)
    layers = layer_sequence(net)
    half = shrink_layers(net, layers, [0.5] * len(layers))
    assert half(half.example_input(2)).shape == (2, 10)
    assert count_nonzero(half).params < 0.4 * count_nonzero(net).params
    assert student(net, [True] * len(layers), [1.0] * len(layers)).spec == net.spec
    assert reward(1.0, 10.0, 90.0, 90.0) == pytest.approx(0.9 * 1.1)
    assert reward(10.0, 10.0, 90.0, 90.0) == 0.0


def test_n2n_conformance(teacher: Path) -> None:
    check_method(create_task("n2n", checkpoint=str(teacher), data="digits", **QUICK), candidates=1)


def test_n2n_invalid_children_get_reward_minus_one(teacher: Path) -> None:
    task = create_task("n2n", checkpoint=str(teacher), data="digits", **QUICK)
    task.require({"reward"})
    bad = {k: 1 for k in task.space() if k.startswith("keep")} | {
        k: 1.0 for k in task.space() if k.startswith("frac")
    }
    bad["keep0"] = 0
    assert task.evaluate(bad) == {"reward": -1.0}
    whole = dict(bad, keep0=1)
    m = task.evaluate(whole)
    assert m["reward"] == pytest.approx(0.0) and m["params_m"] == task.baseline_counts["params_m"]


def test_nas_compress_n2n(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "compress",
        str(teacher),
        "--method",
        "n2n",
        "--data",
        "digits",
        "--budget",
        "3",
        "--storage",
        ":memory:",
        "--out",
        str(out),
        "--set",
        "distill_images=64",
    ]
    result = CliRunner().invoke(app, args)
    report = json.loads((out / "report.json").read_text())
    assert report["objectives"] == ["reward:max"] and report["strategy"] == "n2n"
    assert report["selection"]["quality"] == "reward"
    assert result.exit_code == 0, result.output  # the two starting children are valid
    s = report["selected"]
    assert s["params_m"] < report["original"]["params_m"] and s["trial"] in (0, 1, 2)
    best = max(report["front"], key=lambda r: r["metrics"]["reward"])
    assert s["trial"] == best["trial"]


def test_two_stage_policy_search_saves_and_transfers(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = [
        "compress",
        str(teacher),
        "--method",
        "n2n",
        "--data",
        "digits",
        "--storage",
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        "--set",
        "distill_images=32",
    ]
    args = [
        *base,
        "--budget",
        "6",
        "--out",
        str(out),
        "--option",
        "stage1=4",
        "--option",
        "rollouts=2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    assert report["strategy"] == "n2n" and (out / "policy.safetensors").is_file()
    trials = json.loads((out / "trials.json").read_text())["trials"]
    n = len([k for k in trials[0] if k.startswith("keep")])
    # two starting candidates, then stage 1 (every kept layer whole), then stage 2 (the best
    # stage-1 child's removals, fractions chosen)
    stage1 = [t for t in trials if 2 <= t["trial"] < 4]
    assert all(t[f"frac{i}"] == 1.0 for t in stage1 for i in range(n) if t[f"keep{i}"])
    first = [t for t in trials if t["trial"] < 4]
    best = max(first, key=lambda t: (t["reward"], -t["trial"]))
    for t in (t for t in trials if t["trial"] >= 4):
        assert [t[f"keep{i}"] for i in range(n)] == [best[f"keep{i}"] for i in range(n)]
    # the policies read per-layer features: they start a search on a deeper teacher
    from nas.compress import save_model

    deeper, _ = save_model(create_model("resnet32", width=0.25, in_channels=1), tmp_path / "r32")
    again = CliRunner().invoke(
        app,
        [
            *base[:1],
            str(deeper),
            *base[2:],
            "--budget",
            "3",
            "--out",
            str(tmp_path / "out2"),
            "--study",
            "transfer",
            "--policy",
            str(out / "policy.safetensors"),
        ],
    )
    assert again.exit_code in (0, 1), again.output
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["evaluated"] == 3


def test_hard_and_annealed_soft_penalties(teacher: Path) -> None:
    hard = create_task("n2n", checkpoint=str(teacher), data="digits", max_params_m=0.001, **QUICK)
    m = {"params_m": 0.002, "top1": 50.0, "reward": 0.5}
    assert hard.violation(m) == pytest.approx(1.0)
    assert hard._penalised(m) == -1.0
    assert hard._penalised({**m, "params_m": 0.0005}) == 0.5  # within the limit
    soft = create_task(
        "n2n",
        checkpoint=str(teacher),
        data="digits",
        min_top1=80.0,
        penalty="soft",
        anneal=4,
        **QUICK,
    )
    got = [soft._penalised(m) for _ in range(5)]  # violation 0.375, weight 1/4 .. 1
    assert got == pytest.approx([0.5 - 0.375 * w for w in (0.25, 0.5, 0.75, 1.0, 1.0)])
