"""The ``nas`` command line: help, bad input, study commands, kill-and-resume, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.search.helpers import nas_cmd, nas_env, run_nas

COMMANDS = [
    [],
    ["search"],
    ["strategies"],
    ["supernets"],
    ["study"],
    ["study", "list"],
    ["study", "show"],
    ["study", "export"],
    ["study", "delete"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "nas")
def test_every_help_shows_an_example(cmd: list[str]) -> None:
    r = run_nas(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Example: nas" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "nope"], "error: unknown strategy 'nope'; known: "),
        (["--supernet", "nope"], "error: unknown supernet 'nope'; known: "),
        (["--objectives", "top1,acc"], "error: unknown metric 'acc'; known metrics: "),
        (["--data", "svhn"], "error: unknown dataset 'svhn' for nb201; known: cifar10, cifar100"),
        (["--hw", "tpu"], "error: unknown hardware 'tpu' for nb201; known: "),
        (["--timeout", "soon"], "error: duration 'soon' must look like 90s, 10m or 8h"),
        (["--storage", "sqlite:////proc/nope/x.db"], "error: cannot create the storage folder"),
        (["--storage", "postgresql://u:pw@127.0.0.1:9/x"], "error: cannot open storage"),
        (["--constraint", "latency_ms=3"], "error: constraint 'latency_ms=3' must look like"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args: list[str], message: str) -> None:
    base = {"--supernet": "nb201", "--hw": "raspi4", "--budget": "3"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    r = run_nas("search", *[x for kv in base.items() for x in kv])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr
    assert "Traceback" not in r.stderr
    assert "u:pw" not in r.stderr  # a password never reaches the terminal


def test_unwritable_storage_is_one_line(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = run_nas(
        "search", "--supernet", "nb201", "--hw", "raspi4", "--storage", f"sqlite:///{ro}/x.db"
    )
    ro.chmod(0o700)
    if os.geteuid() == 0:  # root may write anywhere; the folder check cannot fail then
        assert r.returncode == 0
        return
    assert r.returncode == 2 and "is not writable" in r.stderr


def test_search_json_then_study_commands(tmp_path: Path) -> None:
    r = run_nas("search", "--supernet", "nb201", "--hw", "pixel3", "--budget", "8", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["evaluated"] == 8 and doc["sources"] == {"top1": "table", "latency_ms": "table"}
    assert doc["provenance"]["config"]["strategy"] == "linas"
    assert doc["pareto"] and all(p["pareto"] for p in doc["pareto"])
    name = doc["study"]
    assert name == "nb201-pixel3-top1,latency_ms"
    listed = json.loads(run_nas("study", "list", "--json").stdout)
    assert [s["study"] for s in listed] == [name] and listed[0]["evaluated"] == 8
    show = run_nas("study", "show", name)
    assert show.returncode == 0 and "Pareto set" in show.stdout and "top1: table" in show.stderr
    exp = run_nas("study", "export", name, "--out", str(tmp_path / "exp"))
    assert exp.returncode == 0 and (tmp_path / "exp" / "pareto.csv").exists()
    assert run_nas("study", "show", "nope").stderr.startswith("error: no study named 'nope'")
    assert run_nas("study", "delete", name, "--yes").returncode == 0
    assert json.loads(run_nas("study", "list", "--json").stdout) == []


def _load(db: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def test_sigkill_mid_trial_then_rerun_finishes_exact_budget(tmp_path: Path) -> None:
    db, marker = tmp_path / "k.db", tmp_path / "marker"
    args = ["search", "--supernet", "slow-nb201", "--hw", "raspi4", "--budget", "6"]
    args += ["--storage", f"sqlite:///{db}", "--study", "kill"]
    env = nas_env(NAS_TEST_MARKER=str(marker), NAS_TEST_SLEEP="0.4")
    proc = subprocess.Popen(nas_cmd(*args), env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not marker.exists() or len(marker.read_text().split()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the third evaluation is running now
    proc.wait()
    running = [t for t in _load(db, "kill").trials if t.state == TrialState.RUNNING]
    assert len(running) == 1
    r = run_nas(*args, NAS_TEST_SLEEP="0")
    assert r.returncode == 0, r.stderr
    trials = _load(db, "kill").trials
    assert trials[running[0].number].state == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    retried = [t for t in complete if "failed_trial" in t.system_attrs]
    assert [t.system_attrs["failed_trial"] for t in retried] == [running[0].number]
    assert retried[0].params == running[0].params  # the killed candidate itself was retried


def test_two_workers_finish_exactly_the_budget(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    r = run_nas(
        "search",
        "--supernet",
        "slow-nb201",
        "--hw",
        "raspi4",
        "--budget",
        "10",
        "--workers",
        "2",
        "--storage",
        f"sqlite:///{db}",
        "--study",
        "two",
        NAS_TEST_SLEEP="0.2",
    )
    assert r.returncode == 0, r.stderr
    trials = _load(db, "two").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 10
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    assert len({t.user_attrs["nas:worker"] for t in complete}) == 2


def test_sigterm_finishes_the_trial_in_flight(tmp_path: Path) -> None:
    db, marker = tmp_path / "t.db", tmp_path / "marker"
    args = ["search", "--supernet", "slow-nb201", "--hw", "raspi4", "--budget", "50"]
    args += ["--storage", f"sqlite:///{db}", "--study", "term"]
    env = nas_env(NAS_TEST_MARKER=str(marker), NAS_TEST_SLEEP="0.5")
    proc = subprocess.Popen(nas_cmd(*args), env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and (not marker.exists() or len(marker.read_text().split()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stderr
    states = [t.state for t in _load(db, "term").trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL not in states
    assert states.count(TrialState.COMPLETE) == 2


def test_plugin_entry_point_registers_a_supernet() -> None:
    r = run_nas("supernets")
    assert r.returncode == 0 and "slow-nb201" in r.stdout and "nb201" in r.stdout
