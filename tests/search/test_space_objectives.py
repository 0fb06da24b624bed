"""Spaces, encodings, objectives, constraints, fronts and hypervolume."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nas.search import objectives as obj
from nas.search import space as sp


def _space() -> sp.Space:
    return {
        "op": CategoricalDistribution(["a", "b", "c"]),
        "d": IntDistribution(1, 7, step=2),
        "r": FloatDistribution(0.5, 2.0, log=True),
    }


def test_sample_contains_and_encodings() -> None:
    space = _space()
    rng = np.random.default_rng(0)
    cands = [sp.sample(space, rng) for _ in range(50)]
    assert all(sp.contains(space, c) for c in cands)
    assert sp.onehot(space, cands).shape == (50, 5)
    enc = sp.onehot(space, cands)
    assert enc.min() >= 0 and enc.max() <= 1
    rows = sp.ordinal(space, cands)
    assert [sp.decode_ordinal(space, r) == c for r, c in zip(rows, cands, strict=True)].count(
        True
    ) == 50


def test_contains_rejects_outside_values() -> None:
    space = _space()
    assert not sp.contains(space, {"op": "z", "d": 1, "r": 1.0})
    assert not sp.contains(space, {"op": "a", "d": 2, "r": 1.0})  # off the step grid
    assert not sp.contains(space, {"op": "a", "d": 1})


def test_space_size_and_enumeration() -> None:
    space = {"x": CategoricalDistribution([0, 1]), "y": IntDistribution(0, 2)}
    assert sp.space_size(space) == 6
    assert len(list(sp.enumerate_space(space))) == 6
    assert math.isinf(sp.space_size(_space()))
    with pytest.raises(ValueError, match="finite"):
        list(sp.enumerate_space(_space()))


def test_parse_objectives_directions_and_errors() -> None:
    o = obj.parse_objectives("top1,latency_ms")
    assert [x.direction for x in o] == ["maximize", "minimize"]
    assert obj.parse_objectives("latency_ms:max")[0].direction == "maximize"
    assert obj.parse_objectives("top1@resnet20")[0].direction == "maximize"
    with pytest.raises(ValueError, match="unknown metric 'acc'; known metrics: top1, latency_ms"):
        obj.parse_objectives("acc")
    with pytest.raises(ValueError, match="twice"):
        obj.parse_objectives("top1,top1")
    with pytest.raises(ValueError, match="'min' or 'max'"):
        obj.parse_objectives("top1:up")


def test_constraints() -> None:
    c = obj.parse_constraint("latency_ms<=20")
    assert c.violation({"latency_ms": 15.0}) <= 0 < c.violation({"latency_ms": 25.0})
    assert obj.parse_constraint("top1 >= 90").violation({"top1": 91.0}) <= 0
    assert obj.parse_constraint("latency_ms<20").violation({"latency_ms": 20.0}) > 0
    with pytest.raises(ValueError, match="must look like"):
        obj.parse_constraint("latency_ms=20")
    with pytest.raises(ValueError, match="unknown metric"):
        obj.parse_constraint("speed<=3")


def test_pareto_mask_and_hypervolume() -> None:
    objs = obj.parse_objectives("top1,latency_ms")
    v = np.array([[90, 10], [91, 20], [89, 15], [np.nan, 1], [91, 20]])
    assert obj.pareto_mask(v, objs).tolist() == [True, True, False, False, True]
    # the ideal point covers the whole normalised box
    assert obj.hypervolume(np.array([[100, 0]]), objs, [0, 0], [100, 50]) == pytest.approx(1.0)
    half = obj.hypervolume(np.array([[50, 0]]), objs, [0, 0], [100, 50])
    assert half == pytest.approx(0.5)
    assert obj.hypervolume(v, objs, [80, 0], [100, 50]) > obj.hypervolume(
        v[2:3], objs, [80, 0], [100, 50]
    )
