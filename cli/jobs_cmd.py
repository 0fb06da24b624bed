"""``nas run JOB.toml``, ``nas worker`` and ``nas status``: overnight batch jobs.

A job file is TOML::

    version = 1
    command = "search"            # search | compress | evonorm search | skan train
    [args]                        # the command's long flags, "-" written "_"
    supernet = "nb201"
    hw = "raspi4"
    budget = 500
    storage = "postgresql://nas@db-host/nas"
    study = "nb201-overnight"
    constraint = ["latency_ms<=20"]   # a repeatable flag takes a list
    measure = true                    # a flag takes true / false

A positional argument is given by its name (``checkpoint = "teacher.safetensors"`` for
``compress``). The job is run by the same command-line code as the command itself, so a job file
accepts exactly what the command does; the job (command and args) is stored with the study it
creates.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from nas.cli.output import err, out
from nas.search.errors import UserError

JOB_VERSION = 1
#: commands a job file may run; the first three run searches, which --dry-run can plan
COMMANDS = ("search", "compress", "evonorm search", "skan train")
SEARCH_COMMANDS = ("search", "compress", "evonorm search")


@dataclass(frozen=True)
class Job:
    """A parsed job file."""

    path: Path
    command: str
    args: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"file": str(self.path), "command": self.command, "args": self.args}


def load_job(path: Path) -> Job:
    """Read and check a job file (version, command, one ``[args]`` table, nothing else).

    Raises:
        UserError: the file is missing, not TOML, or not a job of this version.
    """
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"job file {path}: no such file") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"job file {path}: not valid TOML ({e})") from None
    extra = set(doc) - {"version", "command", "args"}
    if extra:
        raise UserError(
            f"job file {path}: unknown key {sorted(extra)[0]!r}; "
            "a job has version, command and [args]"
        )
    if doc.get("version") != JOB_VERSION:
        raise UserError(
            f"job file {path}: version {doc.get('version')!r}; this nas reads version {JOB_VERSION}"
        )
    command = doc.get("command")
    if command not in COMMANDS:
        raise UserError(
            f"job file {path}: command {command!r} is not one of: {', '.join(COMMANDS)}"
        )
    args = doc.get("args", {})
    if not isinstance(args, dict):
        raise UserError(f"job file {path}: args must be a table ([args])")
    return Job(path, str(command), dict(args))


def find_command(app: typer.Typer, command: str) -> Any:
    """The (click) command behind ``nas <command>`` (``"evonorm search"`` walks a group)."""
    node: Any = typer.main.get_command(app)
    for word in command.split():
        sub = node.commands.get(word) if isinstance(node, TyperGroup) else None
        if sub is None:
            raise UserError(f"this nas has no command `nas {command}`")
        node = sub
    return node


def _names(param: Any) -> list[str]:
    """The job-file keys of a parameter: its long flags with ``-`` as ``_``, or its name."""
    if isinstance(param, TyperArgument):
        return [str(param.name)]
    opts = [*param.opts, *getattr(param, "secondary_opts", [])]
    return [o[2:].replace("-", "_") for o in opts if o.startswith("--")]


def _option_args(param: TyperOption, flag: str, value: Any, where: str) -> list[str]:
    if param.is_flag and not param.multiple:
        if not isinstance(value, bool):
            raise UserError(f"{where}: {flag.lstrip('-')} takes true or false")
        if value:
            return [param.opts[0]]
        return [param.secondary_opts[0]] if param.secondary_opts else []
    values = value if isinstance(value, list) else [value]
    if len(values) > 1 and not param.multiple:
        raise UserError(f"{where}: {flag.lstrip('-')} takes one value, not a list")
    out_: list[str] = []
    for v in values:
        if isinstance(v, dict | list):
            raise UserError(f"{where}: {flag.lstrip('-')} takes a value, not a table or list")
        out_ += [param.opts[0], json.dumps(v) if isinstance(v, bool) else str(v)]
    return out_


def job_argv(command: Any, job: Job) -> list[str]:
    """The command line the job's ``[args]`` stand for; unknown keys are a :class:`UserError`."""
    where = f"job file {job.path}"
    by_key = {k: p for p in command.params for k in _names(p) if p.name != "help"}
    unknown = sorted(set(job.args) - set(by_key))
    if unknown:
        known = ", ".join(sorted(k for k in by_key if not k.startswith("no_")))
        raise UserError(
            f"{where}: unknown key {unknown[0]!r} for `nas {job.command}`; known keys: {known}"
        )
    options: list[str] = []
    positional: list[str] = []
    for key, value in job.args.items():
        param = by_key[key]
        if isinstance(param, TyperArgument):
            positional += [str(v) for v in (value if isinstance(value, list) else [value])]
        elif isinstance(param, TyperOption):
            flag = "--" + key.replace("_", "-")
            options += _option_args(param, flag, value, where)
    return [*positional, *options]


def _message(e: Exception) -> str:
    fmt = getattr(e, "format_message", None)
    return str(fmt()) if callable(fmt) else str(e)


def check_args(command: Any, job: Job, argv: Sequence[str]) -> None:
    """Parse ``argv`` as the command would, without running it."""
    try:
        with command.make_context(f"nas {job.command}", list(argv)):
            pass
    except typer.Exit:
        pass
    except typer.TyperException as e:
        raise UserError(f"job file {job.path}: {_message(e)}") from None


def run_job(app: typer.Typer, job: Job, dry_run: bool, evaluations: int, as_json: bool) -> int:
    """Run the job (or plan it); returns the command's exit status."""
    from nas.search.study import CURRENT_JOB

    command = find_command(app, job.command)
    argv = job_argv(command, job)
    check_args(command, job, argv)
    if dry_run:
        return plan_job(command, job, argv, evaluations, as_json)
    token = CURRENT_JOB.set(job.to_json())
    try:
        return _invoke(command, job, argv)
    finally:
        CURRENT_JOB.reset(token)


def _invoke(command: Any, job: Job, argv: Sequence[str]) -> int:
    try:
        code = command.main(list(argv), prog_name=f"nas {job.command}", standalone_mode=False)
    except typer.Exit as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except typer.TyperException as e:
        raise UserError(f"job file {job.path}: {_message(e)}") from None
    return int(code) if isinstance(code, int) else 0


def plan_job(command: Any, job: Job, argv: Sequence[str], evaluations: int, as_json: bool) -> int:
    """``--dry-run``: the space size, the budget and an ETA from a few timed evaluations."""
    from nas.search.batch import make_plan
    from nas.search.job import PLAN, PlanReady, Prepared

    if job.command not in SEARCH_COMMANDS:
        _say(
            as_json,
            {"command": job.command, "args": "valid", "plan": None},
            f"nas {job.command}: arguments valid; a single run, no search to plan",
        )
        return 0
    captured: list[Prepared] = []
    token = PLAN.set(captured)
    try:
        code = _invoke(command, job, argv)
    except PlanReady:
        code = 0
    finally:
        PLAN.reset(token)
    if code or not captured:
        return code or 2
    plan = make_plan(captured[0], timed=evaluations)
    extra = ""
    if plan.rejected:
        extra = f" ({plan.rejected} more rejected, {plan.seconds_per_rejection:.3g} s each)"
    size = plan.space_size
    text = (
        f"study {plan.study}: task {plan.task}, strategy {plan.strategy}, space "
        f"{'continuous' if size == float('inf') else f'{size:.4g} candidates'}, budget "
        f"{plan.budget} ({plan.evaluated} evaluated), {plan.workers} worker(s); "
        f"{plan.seconds_per_evaluation:.3g} s per evaluation over {plan.timed} timed{extra}, "
        f"ETA {_duration(plan.eta_seconds)}"
    )
    _say(as_json, {"command": job.command, "plan": plan.to_json()}, text)
    return 0


def _say(as_json: bool, doc: Mapping[str, Any], text: str) -> None:
    if as_json:
        out.print_json(json.dumps(doc, default=str))
    else:
        out.print(text, markup=False, highlight=False)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def worker(storage: str, study: str, timeout: float | None, max_failures: int | None) -> int:
    """``nas worker``: join a study from its stored configuration; returns the exit status."""
    from nas.cli.output import setup_logging
    from nas.search.batch import join_study
    from nas.search.runner import worker_id
    from nas.search.study import evaluated, load, make_storage, stored_config

    config = stored_config(load(make_storage(storage), study))
    setup_logging(config.out_dir / "search.log")
    joined, reason = join_study(storage, study, timeout=timeout, max_failures=max_failures)
    done = evaluated(joined)
    err.print(
        f"worker {worker_id()}: study {study}: {done} of {config.budget} evaluations"
        + (f"; stopped: {reason}" if reason else ""),
        markup=False,
        highlight=False,
    )
    if reason and "failed" in reason:
        return 3
    if reason and reason.startswith("interrupted"):
        return 130
    return 0


def status(storage: str | None, as_json: bool) -> None:
    """``nas status``: every job of a storage with progress, ETA, best values and failures."""
    from rich.table import Table

    from nas.cli.study_cmd import _storage
    from nas.search.batch import status as job_status

    rows = job_status(_storage(storage))
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(title=f"jobs ({len(rows)})")
    for col in ("study", "command", "task", "done", "running", "failed", "workers", "ETA", "best"):
        table.add_column(col)
    for r in rows:
        best = ", ".join(f"{k} {v:.4g}" for k, v in r["best"].items())
        table.add_row(
            r["study"],
            r["command"],
            str(r["task"]),
            f"{r['evaluated']}/{r['budget']} ({100 * r['progress']:.0f}%)",
            str(r["running"]),
            str(r["failed"]),
            str(r["active_workers"]),
            _duration(r["eta_seconds"]),
            best,
        )
    out.print(table)
