"""The zero-cost ensemble: normalisation, weighting, files, and the default search proxy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nas.predictors.ensemble import Ensemble, equal_ensemble, load_ensemble
from nas.supernets.families import build_supernet, save_supernet


def test_reference_normalises_and_weights_combine() -> None:
    ens = Ensemble(("a", "b"), (1.0, -0.5), "test")
    ref = ens.reference(np.array([[0.0, 10.0], [2.0, 30.0], [1.0, math.nan]]))
    assert ref.low.tolist() == [0.0, 10.0] and ref.high.tolist() == [2.0, 30.0]
    # a: (1-0)/2 = 0.5; b: (20-10)/20 = 0.5 -> (0.5 - 0.25) / 1.5
    assert ens.combine({"a": 1.0, "b": 20.0}, ref) == pytest.approx(0.25 / 1.5)
    assert ens.combine(np.array([1.0, 20.0]), ref) == pytest.approx(0.25 / 1.5)
    # an undefined metric counts as the reference minimum
    assert ens.combine({"a": 2.0, "b": math.nan}, ref) == pytest.approx(1.0 / 1.5)
    assert ens.combine({"a": 2.0}, ref) == pytest.approx(1.0 / 1.5)
    with pytest.raises(ValueError, match="undefined on every reference"):
        ens.reference(np.array([[1.0, math.nan], [2.0, math.nan]]))
    with pytest.raises(ValueError, match=r"must be \(n, 2\)"):
        ens.reference(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="one weight per metric"):
        Ensemble(("a",), (1.0, 2.0), "x")
    with pytest.raises(ValueError, match="non-zero weight"):
        Ensemble(("a",), (0.0,), "x")


def test_files(tmp_path: Path) -> None:
    ens = Ensemble(("naswot", "synflow"), (0.8, -0.1), "robot:test")
    (tmp_path / "e.json").write_text(json.dumps(ens.to_json()))
    assert load_ensemble(tmp_path / "e.json") == ens
    (tmp_path / "v2.json").write_text(json.dumps(ens.to_json() | {"version": 2}))
    with pytest.raises(ValueError, match="not a nas-zero-cost-ensemble file of version 1"):
        load_ensemble(tmp_path / "v2.json")
    shipped = load_ensemble()  # learned weights when shipped, else equal weights
    assert shipped.source == "equal" or shipped.source.startswith("robot:")
    assert "rank averaging" in equal_ensemble().describe()


def test_default_proxy_is_the_ensemble(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.supernets.subnet_task import SubnetTask

    monkeypatch.setattr("nas.supernets.subnet_task.REFERENCE_SUBNETS", 3)
    net = build_supernet("mobilenetv3", n_classes=10)
    net.resolutions = (32,)
    save_supernet(net, tmp_path / "w.safetensors")
    task = SubnetTask("mobilenetv3", weights=str(tmp_path / "w.safetensors"))
    assert task.sources()["top1"] == "proxy:ensemble"
    assert "normalised over 3 random sub-networks" in task.notes()[0]
    task.require({"top1"})
    assert task.ensemble is not None and task._reference is not None
    params = task._random_subnets(2, seed=5)
    for p in params:
        m = task.evaluate(p)
        zc = {k[3:]: v for k, v in m.items() if k.startswith("zc_")}
        assert set(zc) == set(task.ensemble.metrics)
        assert zc["flops"] == pytest.approx(m["macs_m"]) and zc["params"] == pytest.approx(
            m["params_m"]
        )
        assert m["top1"] == pytest.approx(task.ensemble.combine(zc, task._reference))
    # repeatable; torch's multi-threaded float32 reductions move the last digits, and the
    # min-max normalisation over reference sub-networks amplifies that (seen: 1e-9 relative)
    assert task.evaluate(params[0]) == pytest.approx(task.evaluate(params[0]), rel=1e-6)
