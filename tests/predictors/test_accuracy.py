"""Accuracy predictors: fit, quality, files; ``--accuracy predicted`` in a supernet search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution

from nas.predictors.accuracy import AccuracyModel, load_accuracy_model
from nas.search import SearchConfig, run_search
from nas.supernets.families import build_supernet, save_supernet
from tests.search.helpers import run_nas

SPACE = {f"x{i}": CategoricalDistribution(["a", "b", "c", 3]) for i in range(5)}


def _data(n: int, seed: int = 0) -> tuple[list[dict[str, object]], np.ndarray]:
    """Random candidates and an additive 'accuracy' with a little noise."""
    rng = np.random.default_rng(seed)
    gain = {"a": 0.0, "b": 1.0, "c": 2.5, 3: -1.0}
    params = [{k: ["a", "b", "c", 3][rng.integers(4)] for k in SPACE} for _ in range(n)]
    y = np.array([70 + sum(gain[v] * (i + 1) for i, v in enumerate(p.values())) for p in params])
    return params, y + rng.normal(scale=0.3, size=n)


def test_fit_reports_out_of_fold_quality_and_ranks_unseen_candidates() -> None:
    params, y = _data(60)
    model = AccuracyModel.fit(SPACE, params, y, seed=1)
    assert model.kind in ("ridge", "svr", "gp", "gbm")
    q = model.holdout
    assert q["n"] == 60 and q["spearman"] > 0.9 and q["mape"] < 5 and 0 <= q["within10"] <= 100
    test_params, test_y = _data(200, seed=7)
    pred = model.predict(test_params)
    assert pred.shape == (200,)
    assert np.corrcoef(np.argsort(np.argsort(pred)), np.argsort(np.argsort(test_y)))[0, 1] > 0.9
    assert "fitted on 60 measured candidates" in model.describe()


def test_file_round_trip_and_errors(tmp_path: Path) -> None:
    params, y = _data(30)
    model = AccuracyModel.fit(SPACE, params, y, kind="ridge", meta={"supernet": "toy"})
    path = model.save(tmp_path / "acc.json")
    again = load_accuracy_model(path)
    test_params, _ = _data(20, seed=3)
    assert np.allclose(again.predict(test_params), model.predict(test_params))
    assert again.meta == {"supernet": "toy"} and again.holdout == pytest.approx(model.holdout)
    assert json.loads(path.read_text())["format"] == "nas-accuracy-predictor"

    doc = json.loads(path.read_text())
    doc["version"] = 99
    (tmp_path / "v99.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="file version 99; this nas reads version 1"):
        load_accuracy_model(tmp_path / "v99.json")
    (tmp_path / "other.json").write_text('{"format": "nas-latency-predictor"}')
    with pytest.raises(ValueError, match="not an accuracy predictor file"):
        load_accuracy_model(tmp_path / "other.json")
    other = {**SPACE, "x0": CategoricalDistribution(["a", "b"])}
    with pytest.raises(ValueError, match="dimension 'x0' has choices"):
        model.check_space(other)
    with pytest.raises(ValueError, match="outside the space at 'x1'"):
        model.predict([{**params[0], "x1": "zzz"}])
    with pytest.raises(ValueError, match="encode categorical spaces"):
        AccuracyModel.fit({"n": IntDistribution(1, 3)}, [{"n": 1}, {"n": 2}], [1.0, 2.0])


def test_search_with_predicted_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fit on measured sub-networks once (cached), then every candidate is predicted."""
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "home"))
    net = build_supernet("mobilenetv3", n_classes=10)
    net.resolutions = (24,)
    save_supernet(net, tmp_path / "w.safetensors")
    r = run_nas(
        "predictor", "fit", "mobilenetv3", "--weights", str(tmp_path / "w.safetensors"),
        "--data", "digits", "--samples", "6", "--out", str(tmp_path / "acc.json"), "--json",
        timeout=300, NAS_HOME=str(tmp_path / "home"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["samples"] == 6 and report["kind"] == "ridge"
    model = load_accuracy_model(tmp_path / "acc.json")
    config = SearchConfig(
        supernet="mobilenetv3",
        hw="gpu",
        budget=3,
        strategy="random",
        accuracy=f"predicted:{tmp_path / 'acc.json'}",
        weights=str(tmp_path / "w.safetensors"),
        objectives=("top1", "macs_m"),
        storage=f"sqlite:///{tmp_path}/s.db",
    )
    result = run_search(config, handle_signals=False)
    assert result.sources["top1"] == "predicted"
    for t in result.study.trials:
        assert t.user_attrs["top1"] == pytest.approx(float(model.predict([t.params])[0]))
    from nas.search.errors import UserError
    from nas.supernets.subnet_task import SubnetTask

    with pytest.raises(UserError, match="fitted on another space"):
        SubnetTask("resnet50", accuracy=f"predicted:{tmp_path / 'acc.json'}")
    with pytest.raises(UserError, match="give trained --weights and --data"):
        SubnetTask("mobilenetv3", accuracy="predicted")


def test_predicted_accuracy_fits_once_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("nas.supernets.subnet_task.PREDICTOR_SAMPLES", 5)
    net = build_supernet("mobilenetv3", n_classes=10)
    net.resolutions = (24,)
    save_supernet(net, tmp_path / "w.safetensors")

    def search(study: str) -> None:
        config = SearchConfig(
            supernet="mobilenetv3",
            hw="gpu",
            budget=2,
            strategy="random",
            accuracy="predicted",
            data="digits",
            weights=str(tmp_path / "w.safetensors"),
            objectives=("top1", "macs_m"),
            storage=f"sqlite:///{tmp_path}/s.db",
            study=study,
        )
        result = run_search(config, handle_signals=False)
        assert result.sources["top1"] == "predicted"
        assert all(0 <= t.user_attrs["top1"] <= 100 for t in result.study.trials)

    search("first")
    (cached,) = (tmp_path / "home" / "predictors").glob("mobilenetv3-*-n5-s0.json")
    stamp = cached.stat().st_mtime_ns
    assert len(load_accuracy_model(cached).y) == 5
    search("second")
    assert cached.stat().st_mtime_ns == stamp  # reused, not refitted
