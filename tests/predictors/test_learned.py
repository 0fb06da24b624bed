"""Latency predictors: quality metrics, encodings, learned models, few-shot transfer, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nas.predictors.learned import (
    FORMAT,
    VERSION,
    LatencyModel,
    TransferModel,
    fit_transfer,
    load_predictor,
)
from nas.predictors.quality import quality
from nas.predictors.tables import (
    encode,
    fbnet_layer_macs,
    live_edges,
    load_latency_table,
    n_summary,
    running_edges,
)


# -- quality ----------------------------------------------------------------------------------
def test_quality_on_hand_computed_examples() -> None:
    q = quality(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.05, 2.5, 2.9, 4.0]))
    assert q["spearman"] == pytest.approx(1.0) and q["kendall"] == pytest.approx(1.0)
    assert q["mape"] == pytest.approx(100 * (0.05 + 0.25 + 0.1 / 3) / 4)
    assert q["within10"] == pytest.approx(75.0) and q["n"] == 4
    # one swapped pair: rho = 1 - 6 * 2 / (4 * 15), tau = (5 - 1) / 6
    q = quality(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 3.0, 4.0]))
    assert q["spearman"] == pytest.approx(0.8) and q["kendall"] == pytest.approx(4 / 6)
    assert q["within10"] == pytest.approx(50.0) and q["mape"] == pytest.approx(100 * 1.5 / 4)


def test_quality_edge_cases() -> None:
    assert math.isnan(quality(np.array([1.0, 2.0]), np.array([3.0, 3.0]))["spearman"])
    assert quality(np.array([10.0, 20.0]), np.array([11.0, 18.0]))["within10"] == 100.0
    with pytest.raises(ValueError, match="positive"):
        quality(np.array([0.0, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="3 measured values but 2"):
        quality(np.ones(3), np.ones(2))


# -- tables and encodings ---------------------------------------------------------------------
def test_structural_features_of_hand_written_cells() -> None:
    # edges e01 e02 e12 e03 e13 e23; ops none=0 skip=1 1x1=2 3x3=3 pool=4
    cut_off = [3, 0, 0, 0, 0, 2]  # 0->1 conv dead-ends; node 2 gets nothing; 2->3 1x1 on zeros
    dead_end = [3, 1, 0, 0, 0, 4]  # 0->2->3 (skip, pool) is the path; 0->1 conv leads nowhere
    ops = np.array([cut_off, dead_end])
    assert live_edges(ops).tolist() == [[False] * 6, [False, True, False, False, False, True]]
    assert running_edges(ops).tolist() == [
        [False, False, False, False, False, True],
        [False, True, False, False, False, True],
    ]
    summary = encode("nb201", ops)[:, : n_summary("nb201")]
    # all-edge counts (skip 1x1 3x3 pool), running counts, connected, output fed
    assert summary[0].tolist() == [0, 1, 1, 0, 0, 1, 0, 0, 0, 1]
    assert summary[1].tolist() == [1, 0, 1, 1, 1, 0, 0, 1, 1, 1]
    assert encode("nb201", np.zeros((1, 6), dtype=int))[0, 8:10].tolist() == [0, 0]


def test_fbnet_macs_by_hand() -> None:
    macs = fbnet_layer_macs()
    # layer 0, k3_e1 on 16 channels at 112x112: two 1x1 convs 16->16 and a 3x3 depthwise
    assert macs[0, 0] == pytest.approx((2 * 16 * 16 + 16 * 9) * 112**2 / 1e6)
    assert macs[0, 1] == pytest.approx((16 * 16 + 16 * 9) * 112**2 / 1e6)  # g2 halves the 1x1s
    assert macs[0, 8] == 0.0  # skip with matching shapes
    assert macs[1, 8] == pytest.approx(16 * 24 * 56**2 / 1e6)  # skip 16->24 at stride 2
    row = np.zeros((1, 22), dtype=int)
    assert encode("fbnet", row)[0, 0] == pytest.approx(macs[:, 0].sum() / 15.0)


def test_tables_and_encodings_have_the_documented_shapes() -> None:
    nb, fb = load_latency_table("nb201"), load_latency_table("fbnet")
    assert nb.ops.shape == (15625, 6) and len(nb.devices) == 7 and nb.batch_size["1080ti_32"] == 32
    assert fb.ops.shape == (5000, 22) and fb.devices == (
        "1080ti_1",
        "gold_6226",
        "pixel3",
        "raspi4",
    )
    assert nb.features().shape == (15625, 10 + 30) and fb.features().shape == (5000, 125 + 198)
    assert (encode("fbnet", fb.ops[:3])[:, 8:17].sum(axis=1) == 22).all()  # block counts
    with pytest.raises(ValueError, match=r"op ids are 0\.\.8"):
        encode("fbnet", np.full((1, 22), 9))
    with pytest.raises(ValueError, match="no latency table for space"):
        load_latency_table("nb301")


# -- learned models ---------------------------------------------------------------------------
def _split(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    return idx[:k], idx[k : k + 3000]


@pytest.mark.parametrize(("device", "floor"), [("1080ti_1", 0.96), ("raspi4", 0.93)])
def test_nb201_predictor_from_50_samples_ranks_held_out_cells(device: str, floor: float) -> None:
    # measured with these seeds: 1080ti_1 0.988, raspi4 0.962 (one-hot ridge: 0.976, 0.827)
    table = load_latency_table("nb201")
    X, y = table.features(), table.latency[device]
    train, test = _split(len(y), 50, seed=1)
    model = LatencyModel.fit(X[train], y[train], "ridge_cv", seed=1)
    assert quality(y[test], model.predict(X[test]))["spearman"] >= floor


def test_auto_chooses_a_kind_by_cross_validation() -> None:
    table = load_latency_table("nb201")
    X, y = table.features(), table.latency["pixel3"]
    train, test = _split(len(y), 40, seed=0)
    model = LatencyModel.fit(X[train], y[train], seed=0, candidates=("ridge_cv", "gbm"))
    assert model.kind in ("ridge_cv", "gbm") and model.cv_score > 0.8
    assert quality(y[test], model.predict(X[test]))["spearman"] > 0.88  # measured 0.931


def test_transfer_from_ten_samples_with_the_other_devices_as_sources() -> None:
    table = load_latency_table("nb201")
    X, target = table.features(), "raspi4"
    fit_rows, _ = _split(len(X), 300, seed=7)
    sources = [d for d in table.devices if d != target]
    S = np.column_stack(
        [
            LatencyModel.fit(X[fit_rows], table.latency[d][fit_rows], "ridge_cv").predict(X)
            for d in sources
        ]
    )
    train, test = _split(len(X), 10, seed=3)
    summary = X[:, : n_summary("nb201")]
    y = table.latency[target]
    model = fit_transfer(summary[train], y[train], S[train], sources=sources)
    assert set(model.weights) == {"scale", "mix", "ridge"}
    assert sum(model.weights.values()) == pytest.approx(1.0) and model.method in model.weights
    # measured: 0.961 ("mix"; ridge on the encoding of the same 10 samples alone: 0.963)
    assert quality(y[test], model.predict(summary[test], S[test]))["spearman"] >= 0.93


# -- files ------------------------------------------------------------------------------------
def test_save_load_round_trip_predicts_identically(tmp_path: Path) -> None:
    table = load_latency_table("fbnet")
    X, y = table.features(), table.latency["pixel3"]
    train, test = _split(len(y), 60, seed=2)
    meta = {"space": "fbnet", "device": "pixel3", "batch_size": 1}
    for kind in ("gbm", "gp", "mlp"):
        model = LatencyModel.fit(X[train], y[train], kind, seed=2, meta=meta)
        loaded = load_predictor(model.save(tmp_path / f"{kind}.json"))
        assert isinstance(loaded, LatencyModel) and loaded.kind == kind and loaded.meta == meta
        np.testing.assert_array_equal(loaded.predict(X[test]), model.predict(X[test]))
    head = json.loads((tmp_path / "gp.json").read_text())
    assert head["format"] == FORMAT and head["version"] == VERSION and head["arrays"] == "gp.npz"
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob(".*tmp*"))

    rng = np.random.default_rng(0)
    S = rng.uniform(1, 10, size=(12, 3))
    transfer = fit_transfer(
        np.zeros((12, 0)), 2 * S[:, 1] + 1, S[: 10 + 2], sources=["a", "b", "c"]
    )
    back = load_predictor(transfer.save(tmp_path / "t.json"))
    assert isinstance(back, TransferModel) and back.sources == ("a", "b", "c")
    new = rng.uniform(1, 10, size=(5, 3))
    np.testing.assert_array_equal(
        back.predict(np.zeros((5, 0)), new), transfer.predict(np.zeros((5, 0)), new)
    )
    np.testing.assert_allclose(back.predict(np.zeros((5, 0)), new), 2 * new[:, 1] + 1, rtol=1e-6)


def test_files_of_another_version_or_format_are_refused(tmp_path: Path) -> None:
    X = np.eye(4)
    path = LatencyModel.fit(X, np.arange(1.0, 5.0), "ridge").save(tmp_path / "m.json")
    head = json.loads(path.read_text())
    path.write_text(json.dumps({**head, "version": 2}))
    with pytest.raises(
        ValueError, match=r"m\.json: latency predictor file version 2; this nas reads version 1"
    ):
        load_predictor(path)
    path.write_text(json.dumps({**head, "format": "something-else"}))
    with pytest.raises(ValueError, match=r"m\.json: not a latency predictor file"):
        load_predictor(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"m\.json: cannot read"):
        load_predictor(path)
    path.write_text(json.dumps(head))
    (tmp_path / "m.npz").unlink()
    with pytest.raises(ValueError, match=r"cannot read its arrays m\.npz"):
        load_predictor(path)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="log_target needs positive"):
        LatencyModel.fit(np.eye(3), np.array([0.0, 1.0, 2.0]), "ridge", log_target=True)
    with pytest.raises(ValueError, match="unknown transfer methods"):
        fit_transfer(np.zeros((5, 0)), np.ones(5), np.ones((5, 2)), methods=("magic",))
    with pytest.raises(ValueError, match="at least 3"):
        fit_transfer(np.zeros((2, 0)), np.ones(2), np.ones((2, 2)))
    model = LatencyModel.fit(np.eye(3), np.array([1.0, 2.0, 3.0]), "ridge")
    with pytest.raises(ValueError, match="expected rows of 3 features"):
        model.predict(np.eye(4))
