"""Batch jobs: job files, ``nas worker`` on SQLite and PostgreSQL, kills, status, reports.

The PostgreSQL cases need a server: ``.ci/run`` starts one and sets ``NAS_TEST_POSTGRES_URL``.
Unset, they skip with that reason locally and fail when ``CI=true``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.search.helpers import nas_cmd, nas_env, run_nas

POSTGRES_ENV = "NAS_TEST_POSTGRES_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL; PostgreSQL's studies are deleted afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {POSTGRES_ENV} is unset: .ci/run must start PostgreSQL")
        pytest.skip(f"{POSTGRES_ENV} is unset (no PostgreSQL server for this run)")
    yield url
    for s in optuna.get_all_study_summaries(url):
        if s.study_name.startswith("t-"):
            optuna.delete_study(study_name=s.study_name, storage=url)


def _job(path: Path, storage: str, study: str, budget: int, seconds: float) -> Path:
    path.write_text(
        "version = 1\n"
        'command = "search"\n'
        "[args]\n"
        'task = "synthetic"\n'
        'hw = "cpu"\n'
        f'task_option = ["seconds={seconds}"]\n'
        f"budget = {budget}\n"
        f'storage = "{storage}"\n'
        f'study = "{study}"\n'
        "heartbeat = 1\n"
    )
    return path


def _wait_for_study(storage: str, name: str, timeout: float = 60) -> optuna.Study:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            time.sleep(0.1)
    raise AssertionError(f"study {name} never appeared")


def _check_exact(trials: list[FrozenTrial], budget: int) -> None:
    """Exactly ``budget`` evaluations; every failed trial retried once; nothing done twice."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == budget
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    surplus = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs.get("nas:surplus") for t in surplus)
    done = {t.number for t in complete}
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        retries = [t for t in complete if t.system_attrs.get("failed_trial") == failed.number]
        assert len(retries) == 1 and retries[0].params == failed.params  # not lost
        assert failed.number not in done  # not duplicated


def test_four_workers_finish_exactly_the_budget(storage: str, tmp_path: Path) -> None:
    name = f"t-four-{uuid.uuid4().hex[:8]}"
    job = _job(tmp_path / "job.toml", storage, name, budget=24, seconds=0.3)
    env = nas_env()
    procs = [subprocess.Popen(nas_cmd("run", str(job)), env=env, cwd=tmp_path)]
    _wait_for_study(storage, name)
    worker = nas_cmd("worker", "--storage", storage, "--study", name)
    procs += [subprocess.Popen(worker, env=env, cwd=tmp_path) for _ in range(3)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0, 0, 0]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    _check_exact(trials, 24)
    assert not [t for t in trials if t.state == TrialState.FAIL]
    assert len({t.user_attrs["nas:worker"] for t in trials if t.state == TrialState.COMPLETE}) >= 2


def test_a_worker_killed_mid_trial_has_its_trial_retried(storage: str, tmp_path: Path) -> None:
    name = f"t-kill-{uuid.uuid4().hex[:8]}"
    job = _job(tmp_path / "job.toml", storage, name, budget=10, seconds=1.0)
    env = nas_env()
    first = subprocess.Popen(nas_cmd("run", str(job)), env=env, cwd=tmp_path)
    _wait_for_study(storage, name)
    victim = subprocess.Popen(
        nas_cmd("worker", "--storage", storage, "--study", name), env=env, cwd=tmp_path
    )
    owner = f"{socket.gethostname()}:{victim.pid}"
    deadline, killed = time.time() + 60, None
    while time.time() < deadline and killed is None:
        study = optuna.load_study(study_name=name, storage=storage)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        mine = [t for t in running if t.user_attrs.get("nas:worker") == owner]
        if mine:
            victim.send_signal(signal.SIGKILL)
            killed = mine[0]
        time.sleep(0.05)
    victim.wait()
    assert killed is not None, "the second worker never ran a trial"
    assert first.wait(timeout=180) == 0
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert trials[killed.number].state == TrialState.FAIL
    _check_exact(trials, 10)


def test_job_file_errors_are_one_line(tmp_path: Path) -> None:
    cases = {
        "version = 1\ncommand = 'search'\n[args]\nsupernet = 'nb201'\nbudgte = 3\n": (
            "unknown key 'budgte' for `nas search`; known keys: "
        ),
        "version = 1\ncommand = 'search\n": "not valid TOML",
        "version = 2\ncommand = 'search'\n": "version 2; this nas reads version 1",
        "version = 1\ncommand = 'train'\n": "command 'train' is not one of: search, compress",
        "version = 1\ncommand = 'search'\n[args]\nhw = 'cpu'\nmeasure = 3\n": (
            "measure takes true or false"
        ),
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"job{i}.toml"
        path.write_text(text)
        r = run_nas("run", str(path))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"error: job file {path}") and message in lines[0], r.stderr
    r = run_nas("run", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_dry_run_plans_without_running(tmp_path: Path) -> None:
    db = tmp_path / "plan.db"
    job = _job(tmp_path / "job.toml", f"sqlite:///{db}", "t-plan", budget=40, seconds=0.1)
    r = run_nas("run", str(job), "--dry-run", "--json", "--evaluations", "2")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert plan["space_size"] == 5**6 and plan["budget"] == 40 and plan["evaluated"] == 0
    assert plan["timed_evaluations"] == 2 and plan["seconds_per_evaluation"] >= 0.1
    assert plan["eta_seconds"] == pytest.approx(40 * plan["seconds_per_evaluation"], abs=0.1)
    assert not db.exists()


def test_status_and_stored_job(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    job = _job(tmp_path / "job.toml", url, "t-status", budget=6, seconds=0)
    assert run_nas("run", str(job)).returncode == 0
    study = optuna.load_study(study_name="t-status", storage=url)
    assert study.user_attrs["nas:job"]["args"]["budget"] == 6
    assert (tmp_path / "nas-out" / "t-status" / "search.log").read_text().count(" COMPLETE ") == 6
    rows = json.loads(run_nas("status", "--storage", url, "--json").stdout)
    assert [r["study"] for r in rows] == ["t-status"]
    assert rows[0]["evaluated"] == 6 and rows[0]["eta_seconds"] == 0
    assert set(rows[0]["best"]) == {"error", "reward"} and rows[0]["failed"] == 0


def test_worker_refuses_a_changed_or_missing_input(tmp_path: Path) -> None:
    data, url = tmp_path / "d.npz", f"sqlite:///{tmp_path / 'i.db'}"
    data.write_bytes(b"first")
    args = ["search", "--task", "synthetic", "--hw", "cpu", "--data", str(data), "--budget", "2"]
    assert run_nas(*args, "--storage", url, "--study", "t-in").returncode == 0
    data.write_bytes(b"second")
    r = run_nas("worker", "--storage", url, "--study", "t-in")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"data {data} differs from the one study 't-in' was started with" in r.stderr
    data.unlink()
    r = run_nas("worker", "--storage", url, "--study", "t-in")
    assert r.returncode == 2 and "which is not on this machine" in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_report_and_optuna_dashboard_read_our_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    job = _job(tmp_path / "job.toml", url, "t-report", budget=12, seconds=0)
    assert run_nas("run", str(job)).returncode == 0
    out = tmp_path / "report"
    r = run_nas("report", "t-report", "--storage", url, "--out", str(out), "--pick", "reward>=0.5")
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text()
    assert "t-report" in page and "proxy:synthetic" in page
    for png in ("pareto.png", "hypervolume.png", "history.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f'src="{png}"' in page
    assert (out / "trials.csv").read_text().count("\n") == 13
    port = _free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"  # its console script
    cmd = [str(exe), url, "--host", "127.0.0.1", "--port", str(port)]
    dash = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as f:
                    body = json.loads(f.read())
            except OSError:
                time.sleep(0.2)
        assert body is not None, "optuna-dashboard did not answer"
        assert [s["study_name"] for s in body["study_summaries"]] == ["t-report"]
    finally:
        dash.terminate()
        dash.wait(timeout=10)


def test_job_args_map_to_the_commands_own_flags(tmp_path: Path) -> None:
    from nas.cli.jobs_cmd import Job, find_command, job_argv
    from nas.cli.main import app

    args = {"checkpoint": "t.safetensors", "method": "jackpot", "int8": True, "budget": 5}
    args |= {"set": ["sparsity=0.9", "epochs=1"], "max_drop": 0.5}
    argv = job_argv(find_command(app, "compress"), Job(tmp_path / "j.toml", "compress", args))
    assert argv == [
        "t.safetensors", "--method", "jackpot", "--int8", "--budget", "5",
        "--set", "sparsity=0.9", "--set", "epochs=1", "--max-drop", "0.5",
    ]  # fmt: skip
    off = job_argv(
        find_command(app, "compress"), Job(tmp_path / "j.toml", "compress", {"int8": False})
    )
    assert off in ([], ["--no-int8"])


def test_plan_times_full_evaluations_past_rejections() -> None:
    from dataclasses import replace

    from nas.search.batch import make_plan
    from nas.search.job import prepare
    from nas.search.study import SearchConfig
    from nas.search.task import Rejected

    p = prepare(SearchConfig(supernet="synthetic", hw="cpu", task="synthetic", budget=10))
    inner = p.task

    class HalfRejected:  # refuses every candidate whose x0 is even, as a plugin may
        name = "half"

        def __getattr__(self, attr: str) -> object:
            return getattr(inner, attr)

        def evaluate(self, params: dict) -> dict:
            if int(params["x0"]) % 2 == 0:
                raise Rejected("even")
            return inner.evaluate(params)

    plan = make_plan(replace(p, task=HalfRejected()), timed=3)  # type: ignore[arg-type]
    assert plan.timed == 3 and plan.rejected >= 1
    assert plan.to_json()["rejected_while_timing"] == plan.rejected
