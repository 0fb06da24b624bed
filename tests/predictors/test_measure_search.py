"""``nas search --measure``: every candidate's latency timed on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.search import SearchConfig, run_search
from nas.supernets.families import build_supernet, save_supernet
from tests.search.helpers import run_nas


def test_measure_times_every_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "home"))
    net = build_supernet("mobilenetv3", n_classes=10)
    net.resolutions = (24,)
    save_supernet(net, tmp_path / "w.safetensors")
    config = SearchConfig(
        supernet="mobilenetv3",
        hw="cpu",
        budget=2,
        strategy="random",
        weights=str(tmp_path / "w.safetensors"),
        objectives=("macs_m", "latency_ms"),
        storage=f"sqlite:///{tmp_path}/s.db",
        measure=True,
        workers=1,
    )
    result = run_search(config, handle_signals=False)
    assert result.sources["latency_ms"] == "measured"
    assert all(t.user_attrs["latency_ms"] > 0 for t in result.study.trials)
    assert (tmp_path / "home" / "locks" / "measure.lock").exists()  # taken while timing
    assert not (tmp_path / "home" / "tables").exists()  # no table was built


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--supernet", "mobilenetv3", "--hw", "raspi4"], "use --hw cpu or --hw gpu"),
        (["--supernet", "nb201", "--hw", "raspi4"], "nb201 latency comes from its table"),
    ],
)
def test_measure_bad_input(args: list[str], message: str) -> None:
    r = run_nas("search", *args, "--measure", "--budget", "1")
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
