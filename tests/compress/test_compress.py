"""``nas compress`` with the ``magnitude`` method: pruning primitives, drift, the conformance
suite, and the command end to end (a teacher trained for seconds on digits; MTCNN R-Net weights
judged by drift)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nas.cli.main import app
from nas.compress import create_model, load_model, save_model
from nas.compress.arch import build
from nas.compress.drift import drift, outputs, probe_images
from nas.compress.pruning import (
    _unprunable,
    count_nonzero,
    prune_channels,
    prune_unstructured,
    respec,
)
from nas.compress.testing import check_method
from nas.search.task import create_task

WEIGHTS = Path(__file__).resolve().parents[2] / "compress" / "data" / "weights"


def test_channel_surgery_equals_zeroing_the_same_channels() -> None:
    """torch-pruning's removal + our respec computes exactly what the original does with the
    removed channels' filters zeroed (PReLU(0) = 0, max-pool of zeros = 0)."""
    import torch_pruning as tp

    torch.manual_seed(0)
    net = create_model("mtcnn_rnet")
    for p in net.parameters():  # random weights everywhere, biases included
        nn.init.normal_(p, std=0.3)
    masked = copy.deepcopy(net)
    x = net.example_input(4)
    names = {m: n for n, m in net.named_modules()}
    mods = dict(masked.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            net,
            x,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=0.25,
            ignored_layers=_unprunable(net),
        )
        removed = 0
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                m = dep.target.module
                if isinstance(m, nn.Conv2d | nn.Linear) and dep.handler.__name__ == (
                    "prune_out_channels"
                ):
                    with torch.no_grad():
                        mods[names[m]].weight[idxs] = 0
                        mods[names[m]].bias[idxs] = 0
                    removed += len(idxs)
            group.prune()
    narrow = respec(net)
    assert removed > 0
    assert narrow.spec[0]["out"] < 28 and narrow.spec[-3]["out"] < 128  # conv1, dense
    assert narrow.spec[4]["out"] == 64  # the conv before the permute keeps its channels
    for got, want in zip(narrow(x), masked(x), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_prune_channels_keeps_outputs_and_residuals() -> None:
    net = create_model("resnet20", width=0.5)
    narrow = prune_channels(net, 0.5)
    assert narrow(narrow.example_input(2)).shape == (2, 10)
    assert count_nonzero(narrow).params < 0.4 * count_nonzero(net).params
    assert prune_channels(net, 0.0).spec == net.spec
    with pytest.raises(ValueError, match="channel ratio"):
        prune_channels(net, 1.0)


def test_unstructured_sparsity_and_counts() -> None:
    spec = [
        {"type": "conv", "in": 1, "out": 4, "kernel": 3, "stride": 1, "bn": False, "act": "relu"},
        {"type": "gap"},
        {"type": "flatten"},
        {"type": "linear", "in": 4, "out": 3, "bias": False},
    ]
    from nas.compress.arch import Preprocessing

    net = build(spec, Preprocessing(input_size=(6, 6), channels=1, mean=(0.0,), std=(1.0,)))
    c = count_nonzero(net)
    assert c.macs == 6 * 6 * 4 * 9 + 4 * 3 and c.params == 36 + 12
    half = prune_unstructured(net, 0.5)
    weights = torch.cat([half.layers[0].conv.weight.flatten(), half.layers[3].weight.flatten()])
    assert int((weights == 0).sum()) == 24  # half of the 48 weights, ranked across layers
    ch = count_nonzero(half)
    assert ch.nnz_params == 24 and ch.params == c.params and ch.macs == c.macs
    conv_nnz = int(torch.count_nonzero(half.layers[0].conv.weight))
    linear_nnz = int(torch.count_nonzero(half.layers[3].weight))
    assert ch.nnz_macs == 36 * conv_nnz + linear_nnz
    assert ch.metrics()["sparsity"] == pytest.approx(0.5)


def test_probes_and_drift() -> None:
    net = create_model("mtcnn_rnet")
    x = probe_images(net.preprocessing)
    assert x.shape == (1024, 3, 24, 24) and torch.equal(x, probe_images(net.preprocessing))
    pixels = x * torch.tensor(net.preprocessing.std).view(1, 3, 1, 1) + torch.tensor(
        net.preprocessing.mean
    ).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    ref = outputs(net, x)
    same = drift(ref, outputs(copy.deepcopy(net), x), net.output_names)
    assert [d.head for d in same] == ["box", "prob"]
    assert all(d.cosine == pytest.approx(1.0) and d.max_abs == 0.0 for d in same)
    moved = drift(ref, [r + 0.1 for r in ref], net.output_names)
    assert all(d.max_abs == pytest.approx(0.1) and d.cosine < 1.0 for d in moved)


def test_magnitude_passes_the_conformance_suite(teacher: Path) -> None:
    check_method(create_task("magnitude", checkpoint=str(teacher), data="digits"))


def test_magnitude_conformance_by_drift_on_mtcnn() -> None:
    task = create_task("magnitude", checkpoint=str(WEIGHTS / "rnet.pt"), arch="mtcnn_rnet")
    assert task.default_objectives == ("cosine", "nnz_params_m")
    check_method(task, candidates=1)


def test_conformance_suite_fails_a_method_that_accepts_anything(teacher: Path) -> None:
    from nas.compress.magnitude import MagnitudeTask

    class Lax(MagnitudeTask):
        def build(self, params):  # type: ignore[no-untyped-def]
            return self.apply(self.original, {"channels_pct": 0, "sparsity_pct": 0})

    with pytest.raises(AssertionError, match="must refuse"):
        check_method(Lax(checkpoint=str(teacher), data="digits"), candidates=1)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["compress", *args])
    return result.exit_code, result.output


def test_compress_end_to_end_with_int8_and_finetuning(teacher: Path, tmp_path: Path) -> None:
    import shutil

    out, db = tmp_path / "out", f"sqlite:///{tmp_path / 'nas.db'}"
    ckpt = tmp_path / "ckpt" / teacher.name
    ckpt.parent.mkdir()
    shutil.copy(teacher, ckpt)
    shutil.copy(teacher.with_suffix(".json"), ckpt.with_suffix(".json"))
    common = [str(ckpt), "--data", "digits", "--storage", db, "--out", str(out)]
    code, text = _run(
        *common, "--budget", "4", "--max-drop", "100", "--finetune-epochs", "1", "--int8", "--json"
    )
    assert code == 0, text
    report = json.loads((out / "report.json").read_text())
    o, s = report["original"], report["selected"]
    assert report["evaluated"] == 4 and report["method"] == "magnitude"
    assert report["selection"]["quality"] == "top1" and report["selection"]["size"] == (
        "nnz_params_m"
    )
    # the smallest candidate by non-zero parameters (max-drop 100 admits all)
    smallest = min(report["front"], key=lambda r: r["metrics"]["nnz_params_m"])
    assert s["trial"] == smallest["trial"] and s["params"] == smallest["params"]
    assert s["nnz_params_m"] <= o["nnz_params_m"] and s["finetune"]["epochs"] == 1
    for row in (o, s):
        assert 0 <= row["test_top1"] <= 100 and row["latency_ms"] > 0
        assert row["onnx_latency_ms"] > 0
    assert s["onnx_max_abs_diff"] <= 1e-4
    # the written model is the selected one, self-describing, and its ONNX runs
    model = load_model(out / "model.safetensors")
    assert model.origin["params"] == s["params"] and model.origin["method"] == "magnitude"
    assert count_nonzero(model).metrics()["nnz_params_m"] == pytest.approx(s["nnz_params_m"])
    x = model.example_input(3)
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), atol=1e-4, rtol=1e-4)
    q = s["int8"]
    assert (out / q["file"]).is_file()  # (tiny models are not smaller in QDQ form)
    ort.InferenceSession(str(out / q["file"]))
    assert abs(q["test_top1"] - s["test_top1"]) <= 10 and q["latency_ms"] > 0
    assert len(list((out / "pareto").glob("trial-*.json"))) == len(report["front"])
    md = (out / "report.md").read_text()
    assert "selected, INT8 ONNX" in md and f"Selected trial {s['trial']}" in md

    # a rerun continues (here: is already complete), no new evaluations
    code, text = _run(*common, "--budget", "4", "--max-drop", "100", "--json")
    assert code == 0, text
    assert json.loads((out / "report.json").read_text())["evaluated"] == 4
    # the checkpoint's file changed since: its digest is part of the study's identity
    save_model(prune_unstructured(load_model(ckpt), 0.1), ckpt.with_suffix(""))
    code, text = _run(*common, "--budget", "4", "--max-drop", "100")
    assert code == 2 and "checkpoint_sha256" in text and "name a new study" in text, text


def test_no_candidate_passing_is_exit_1_with_a_report(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = _run(
        str(teacher),
        "--data",
        "digits",
        "--storage",
        ":memory:",
        "--budget",
        "2",
        "--out",
        str(out),
        "--constraint",
        "params_m<=0",
        "--strategy",
        "random",
    )
    assert code == 1 and "no candidate satisfies the selection rule" in text, text
    report = json.loads((out / "report.json").read_text())
    assert report["selected"] is None and report["evaluated"] == 2
    assert "No candidate satisfies" in (out / "report.md").read_text()
    assert not (out / "model.safetensors").exists()


def test_mtcnn_by_drift(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = _run(
        str(WEIGHTS / "rnet.pt"),
        "--arch",
        "mtcnn_rnet",
        "--storage",
        ":memory:",
        "--budget",
        "3",
        "--out",
        str(out),
        "--min-cosine",
        "-1",
        "--int8",
    )
    assert code == 0, text
    report = json.loads((out / "report.json").read_text())
    s = report["selected"]
    assert report["selection"]["quality"] == "cosine" and report["original"]["cosine"] == 1.0
    assert [d["head"] for d in s["drift"]] == ["box", "prob"]
    assert s["cosine"] == pytest.approx(min(d["cosine"] for d in s["drift"]))
    assert [d["head"] for d in s["int8"]["drift"]] == ["box", "prob"]
    names = [o.name for o in ort.InferenceSession(str(out / "model.onnx")).get_outputs()]
    assert names == ["box", "prob"]
    # a new study starts with the method's own starting candidates
    trials = json.loads((out / "trials.json").read_text())["trials"]
    task = create_task("magnitude", checkpoint=str(WEIGHTS / "rnet.pt"), arch="mtcnn_rnet")
    first = [{k: t[k] for k in ("channels_pct", "sparsity_pct")} for t in trials]
    assert first == task.initial_candidates()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "digits", "--method", "nope"], "unknown compression method 'nope'"),
        (["--data", "digits", "--max-drop", "-1"], "--max-drop"),
        (["--data", "digits", "--select", "bogus"], "--select 'bogus'"),
        (["--data", "digits", "--objectives", "top1,bogus"], "unknown metric 'bogus'"),
        (["--arch", "mtcnn_rnet", "--data", "digits"], "judged by output drift"),
        (["--hw", "raspi4"], "cpu or gpu"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    ckpt = str(WEIGHTS / "rnet.pt") if "mtcnn_rnet" in args else str(_tiny(tmp_path))
    code, text = _run(ckpt, "--storage", ":memory:", "--out", str(tmp_path / "o"), *args)
    assert code == 2 and message in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


def _tiny(tmp_path: Path) -> Path:
    weights, _ = save_model(create_model("resnet20", width=0.25), tmp_path / "tiny")
    return weights
