"""Per-block lookup tables: covering, prediction = sum + constant, files, gaps (tiny timings)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from nas.predictors.lut import (
    LookupTable,
    TableError,
    block_key,
    blocks,
    build_table,
    covering_configs,
)
from nas.supernets import build_supernet

FAST = {"warmup": 1, "runs": 3, "lock": False, "threads": 1}


@pytest.fixture(scope="module")
def net():  # type: ignore[no-untyped-def]
    """MobileNetV3 at one small resolution: about 200 distinct blocks."""
    n = build_supernet("mobilenetv3", n_classes=10)
    n.resolutions = (32,)
    return n


@pytest.fixture(scope="module")
def table(net):  # type: ignore[no-untyped-def]
    return build_table(net, hardware={"name": "test-cpu", "device": "cpu"}, calibrate=3, **FAST)


def test_covering_configs_reach_every_block_of_random_subnets(net) -> None:  # type: ignore[no-untyped-def]
    covered = {k for p in covering_configs(net) for k, _, _ in blocks(net, p)}
    rng = random.Random(0)
    for _ in range(200):
        assert {k for k, _, _ in blocks(net, net.sample(rng))} <= covered


def test_block_keys_follow_spec_and_input_shape() -> None:
    conv = {"type": "conv", "in": 3, "out": 8, "kernel": 3, "stride": 2}
    assert block_key(conv, (3, 32, 32)) != block_key(conv, (3, 16, 16))
    assert block_key(conv, (3, 32, 32)) == block_key(dict(reversed(conv.items())), (3, 32, 32))


def test_prediction_is_block_sum_plus_constant(net, table: LookupTable) -> None:  # type: ignore[no-untyped-def]
    assert len(table.entries) == len(
        {k for p in covering_configs(net) for k, _, _ in blocks(net, p)}
    )
    assert all(v > 0 for v in table.entries.values())
    assert len(table.calibration) == 3
    rng = random.Random(1)
    small, big = net.smallest(), net.largest()
    for p in (small, big, net.sample(rng)):
        s = sum(table.entries[k] for k, _, _ in blocks(net, p))
        assert table.predict(net, p) == pytest.approx(s + table.constant_ms)
    # the largest sub-network has more blocks than the smallest, each one timed
    assert len(blocks(net, big)) > len(blocks(net, small))
    row = table.calibration[0]
    assert row["sum_ms"] == pytest.approx(table.sum_ms(net, row["params"]))


def test_save_load_roundtrip_and_version_check(tmp_path: Path, net, table: LookupTable) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.json.gz"
    table.save(path)
    again = LookupTable.load(path)
    p = net.largest()
    assert again.predict(net, p) == table.predict(net, p)
    doc = json.loads(gzip.decompress(path.read_bytes()))
    doc["version"] = 99
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(TableError, match="version 99 latency table"):
        LookupTable.load(bad)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(TableError, match="not a latency table"):
        LookupTable.load(tmp_path / "junk.json")


def test_missing_block_is_named_then_extended(net, table: LookupTable) -> None:  # type: ignore[no-untyped-def]
    other = build_supernet("mobilenetv3", n_classes=10)
    other.resolutions = (40,)  # blocks at another input size are not in the table
    p = other.smallest()
    assert table.missing(other, p)
    with pytest.raises(TableError, match="lacks the block"):
        table.predict(other, p)
    part = LookupTable(table.supernet, table.hardware, table.n_classes, dict(table.entries))
    added = part.extend(other, p, **FAST)
    assert added == len(table.missing(other, p)) and not part.missing(other, p)


def test_cpu_table_is_built_on_first_use_then_reused(
    net,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nas.predictors.latency as latency

    real = latency.measure_kwargs
    monkeypatch.setattr(latency, "measure_kwargs", lambda p: real(p) | FAST)
    first = latency.resolve_latency(net, "cpu")
    assert first.source == "predicted" and first.table is not None
    assert "lookup table of" in first.label
    (path,) = latency.tables_dir().glob("mobilenetv3-cpu-*.json.gz")
    stamp = path.stat().st_mtime_ns
    again = latency.resolve_latency(net, "cpu", build=False)
    assert again.table is not None and again.table.entries == first.table.entries
    assert path.stat().st_mtime_ns == stamp
    p = net.largest()
    assert again(net, p) == first(net, p) > 0


def test_gpu_without_cuda_or_table_is_a_labelled_roofline_estimate(net) -> None:  # type: ignore[no-untyped-def]
    import torch

    from nas.predictors.latency import resolve_latency

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: --hw gpu measures it")
    lat = resolve_latency(net, "gpu")
    assert lat.source == "roofline" and lat.table is None
    assert "roofline estimate" in lat.label and "not measured" in lat.label
    small, big = lat(net, net.smallest()), lat(net, net.largest())
    assert 0 < small < big


def test_unknown_hardware_and_missing_table_are_clear(net) -> None:  # type: ignore[no-untyped-def]
    from nas.predictors.hardware import ProfileError, measured_profile, save_profile
    from nas.predictors.latency import resolve_latency

    with pytest.raises(ProfileError, match="unknown hardware 'tpu'"):
        resolve_latency(net, "tpu")
    save_profile(measured_profile("mybox", device="cpu"), "mybox")
    with pytest.raises(TableError, match="no latency table for mobilenetv3 on mybox"):
        resolve_latency(net, "mybox", build=False)
