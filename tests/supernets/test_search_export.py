"""End to end: search a supernet's sub-networks, export them, load them back; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from nas.compress import load_model
from nas.search import SearchConfig, run_search
from nas.supernets import create_supernet
from nas.supernets.families import build_supernet, save_supernet
from tests.search.helpers import run_nas


def _one_error_line(r: object, message: str) -> None:
    assert r.returncode == 2, r.stderr  # type: ignore[attr-defined]
    lines = r.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and message in lines[0], r.stderr  # type: ignore[attr-defined]


def test_resnet50_search_and_export(tmp_path: Path) -> None:
    r = run_nas(
        "search",
        "--supernet",
        "resnet50",
        "--hw",
        "gpu",
        "--budget",
        "5",
        "--strategy",
        "random",
        "--accuracy",
        "proxy:naswot",  # the default ensemble is covered in tests/predictors/test_ensemble.py
        "--json",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["evaluated"] == 5 and doc["study"] == "resnet50-gpu-top1,latency_ms"
    roofline = not torch.cuda.is_available()  # no GPU and no shipped table: an estimate
    assert doc["sources"] == {
        "top1": "proxy:naswot",
        "macs_m": "counted",
        "params_m": "counted",
        "latency_ms": "roofline" if roofline else "predicted",
    }
    assert doc["pareto"] and all(p["macs_m"] > 500 and p["latency_ms"] > 0 for p in doc["pareto"])
    assert Path(doc["files"]["trials.csv"]).is_file()
    trial = doc["pareto"][0]["trial"]

    # --pick: the finished study is reprinted with the best front member under the constraint
    bound = sorted(p["latency_ms"] for p in doc["pareto"])[0] * 1.0001
    r = run_nas(
        "search", "--supernet", "resnet50", "--hw", "gpu", "--budget", "5", "--strategy",
        "random", "--accuracy", "proxy:naswot", "--json", "--pick", f"latency_ms<={bound}",
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    picked = json.loads(r.stdout)["pick"]
    fastest = min(doc["pareto"], key=lambda p: p["latency_ms"])
    assert picked["trial"] == fastest["trial"]

    r = run_nas(
        "export",
        "--study",
        doc["study"],
        "--trial",
        str(trial),
        "--format",
        "onnx",
        "--out",
        "sub.onnx",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "onnxruntime agrees with torch" in r.stderr
    r = run_nas(
        "export",
        "--study",
        doc["study"],
        "--trial",
        str(trial),
        "--format",
        "safetensors",
        "--out",
        "sub",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr

    # the two exports and the supernet agree
    net = load_model(tmp_path / "sub.json")
    params = net.origin["params"]
    assert net.origin["trial"] == trial and net.preprocessing.input_size == (params["r"],) * 2
    x = net.example_input(2)
    (got,) = ort.InferenceSession("sub.onnx").run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(net(x), torch.from_numpy(got), atol=1e-4)
        supernet = create_supernet("resnet50").net  # type: ignore[attr-defined]
        supernet.eval().set_active(params)
        assert torch.allclose(supernet(x), net(x), atol=1e-5)


def test_measured_accuracy_and_cpu_latency_table(tmp_path: Path) -> None:
    from nas.predictors.hardware import measured_profile
    from nas.predictors.latency import table_path
    from nas.predictors.lut import build_table

    net = build_supernet("mobilenetv3", n_classes=10)
    net.resolutions = (24, 32)
    save_supernet(net, tmp_path / "w.safetensors")
    # this CPU's table, timed quickly here; `--hw cpu` finds it in NAS_HOME and reuses it
    profile = measured_profile("cpu", device="cpu")
    table = build_table(
        net, hardware={"name": "cpu"}, calibrate=2, warmup=1, runs=3, threads=1, lock=False
    )
    cached = table_path(net, profile)
    table.save(cached)
    stamp = cached.stat().st_mtime_ns
    config = SearchConfig(
        supernet="mobilenetv3",
        hw="cpu",
        data="digits",
        budget=3,
        strategy="random",
        weights=str(tmp_path / "w.safetensors"),
        storage=f"sqlite:///{tmp_path}/s.db",
    )
    result = run_search(config, handle_signals=False)
    assert result.sources == {
        "top1": "measured",
        "latency_ms": "predicted",
        "macs_m": "counted",
        "params_m": "counted",
    }
    trials = result.study.trials
    assert len(trials) == 3 and {t.params["r"] for t in trials} <= {24, 32}
    assert all(0 <= t.user_attrs["top1"] <= 100 for t in trials)
    for t in trials:
        assert t.user_attrs["latency_ms"] == pytest.approx(table.predict(net, t.params))
    assert cached.stat().st_mtime_ns == stamp  # reused, not rebuilt


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--supernet", "resnet51"], "error: unknown supernet 'resnet51'; known: "),
        (["--hw", "tpu"], "error: unknown hardware 'tpu'; known: "),
        (["--accuracy", "guess"], "error: unknown --accuracy 'guess'"),
        (["--accuracy", "measured"], "--accuracy measured needs trained --weights and --data"),
        (["--data", "no/such/folder"], "no/such/folder"),
        (["--weights", "missing.pt"], "missing.pt: no such file"),
    ],
)
def test_bad_search_input(args: list[str], message: str) -> None:
    base = {"--supernet": "resnet50", "--hw": "gpu", "--budget": "2"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    _one_error_line(run_nas("search", *[x for kv in base.items() for x in kv]), message)


def test_bad_weights(tmp_path: Path) -> None:
    torch.save({"classifier.linear.linear.weight": torch.ones(3, 3)}, tmp_path / "bad.pt")
    r = run_nas("search", "--supernet", "resnet50", "--hw", "gpu", "--weights", "bad.pt")
    _one_error_line(r, "is missing from the checkpoint")
    net = build_supernet("mobilenetv3", n_classes=10)
    sd = net.state_dict()
    key = next(k for k in sd if k.endswith("weight") and sd[k].ndim == 4)
    sd[key] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, tmp_path / "shape.pt")
    r = run_nas("search", "--supernet", "mobilenetv3", "--hw", "gpu", "--weights", "shape.pt")
    _one_error_line(r, f"tensor {key!r} has shape (1, 1, 1, 1) in the checkpoint but")
    assert not Path("nas-out").exists()  # nothing half-written


def test_extract_rejects_a_resolution_outside_the_space(tmp_path: Path) -> None:
    net = build_supernet("mobilenetv3", n_classes=10)
    params = {**net.largest(), "r": 300}
    r = run_nas(
        "supernet", "extract", "mobilenetv3", "--params", json.dumps(params), "--out", "sub"
    )
    _one_error_line(r, "r=300 is outside the space")
    assert not list(tmp_path.glob("sub*"))


def test_supernet_list_shows_dimensions_and_sizes() -> None:
    r = run_nas("supernet", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert {"nb201", "resnet50", "mobilenetv3", "mobilenetv3_w12"} <= set(rows)
    assert rows["nb201"]["space_size"] == 15625
    dims = {d["name"]: (d["count"], d["choices"]) for d in rows["resnet50"]["dimensions"]}
    assert dims["d"] == (5, [0, 1, 2]) and dims["e"] == (18, [0.2, 0.25, 0.35])
    assert dims["w"] == (6, [0, 1, 2]) and dims["r"] == (1, list(range(128, 225, 16)))
    assert rows["resnet50"]["space_size"] == 3**29 * 7
    kdims = {d["name"]: d["count"] for d in rows["mobilenetv3"]["dimensions"]}
    assert kdims == {"k": 20, "e": 20, "d": 5, "r": 1}
