"""``nas hw list | profile | check`` end to end, on a small checkpoint so tables time quickly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.supernets.families import build_supernet, save_supernet
from tests.search.helpers import run_nas


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A 10-class MobileNetV3 trained (nominally) at 24 px: about 190 distinct blocks."""
    net = build_supernet("mobilenetv3", n_classes=10)
    net.resolutions = (24,)
    path = tmp_path / "w.safetensors"
    save_supernet(net, path)
    return path


def test_list_shows_builtin_and_table_profiles() -> None:
    r = run_nas("hw", "list", "--json")
    assert r.returncode == 0, r.stderr
    names = {row["name"] for row in json.loads(r.stdout)}
    assert {"cpu", "gpu", "nb201:raspi4", "nb201:1080ti_32", "fbnet:pixel3"} <= names


def test_profile_then_check_a_saved_profile(tmp_path: Path, weights: Path) -> None:
    home = tmp_path / "nas_home"
    r = run_nas(
        "hw", "profile", "--name", "box", "--supernet", "mobilenetv3", "--weights", str(weights),
        "--threads", "1", timeout=300, NAS_HOME=str(home),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "noise floor:" in r.stderr and "calibration sub-networks within ±10%" in r.stderr
    profile = json.loads((home / "profiles" / "box.json").read_text())
    assert profile["format"] == "nas-hardware-profile" and profile["threads"] == 1
    (table,) = (home / "tables").glob("mobilenetv3-box-*.json.gz")

    r = run_nas(
        "hw", "check", "--hw", "box", "--supernet", "mobilenetv3", "--weights", str(weights),
        "--n", "5", "--repeats", "2", "--json", "--out", "check.json", timeout=300,
        NAS_HOME=str(home),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc == json.loads(Path("check.json").read_text())
    assert doc["source"] == "predicted" and doc["n"] == 5 and len(doc["rows"]) == 5
    assert set(doc["quality"]) >= {"spearman", "kendall", "mape", "within10"}
    assert doc["measure"]["threads"] == 1 and len(doc["noise_floor"]["medians_ms"]) == 2
    assert all(row["predicted_ms"] > 0 and row["measured_ms"] > 0 for row in doc["rows"])
    assert doc["speedup"] > 1  # a lookup is faster than timing 40 runs
    assert table.is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["profile", "--name", "cpu", "--supernet", "mobilenetv3"], "--name 'cpu' is reserved"),
        (["profile", "--name", "b", "--supernet", "vgg"], "unknown supernet 'vgg'"),
        (["profile", "--name", "b", "--supernet", "resnet50", "--device", "tpu"], "--device"),
        (["check", "--hw", "tpu", "--supernet", "resnet50"], "unknown hardware 'tpu'"),
        (["check", "--hw", "cpu", "--supernet", "resnet50", "--n", "1"], "--n must be at least"),
        (["check", "--hw", "nobox", "--supernet", "resnet50"], "unknown hardware 'nobox'"),
    ],
)
def test_hw_bad_input_is_one_line(args: list[str], message: str) -> None:
    r = run_nas("hw", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
