"""Studies: storage, the stored configuration and provenance, resume, list, delete.

A study lives in an optuna ``RDBStorage``: a SQLite file (``nas.db`` in the working directory)
by default, in WAL mode with a busy timeout so local workers do not fail with "database is
locked", or any SQLAlchemy URL (PostgreSQL for many machines). Heartbeats are on, so a crashed
worker's trial becomes FAIL and its candidate is retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from nas.search.errors import ConfigMismatch, UserError
from nas.search.inputs import INPUTS_ATTR
from nas.search.inputs import check as check_inputs
from nas.search.inputs import record as record_inputs
from nas.search.objectives import Direction
from nas.search.strategies._base import SURPLUS_ATTR

#: version of the configuration schema stored with every study
SCHEMA_VERSION = 1
CONFIG_ATTR = "nas:config"
PROVENANCE_ATTR = "nas:provenance"
REJECTED_ATTR = "nas:rejected"
PRUNED_ATTR = "nas:pruned"
WORKER_ATTR = "nas:worker"
ERROR_ATTR = "nas:error"
JOB_ATTR = "nas:job"
#: the job file (command and args) being run, stored with a study it creates (``nas run``)
CURRENT_JOB: ContextVar[Mapping[str, Any] | None] = ContextVar("nas_job", default=None)
DEFAULT_STORAGE = "sqlite:///nas.db"
MEMORY = ":memory:"

#: configuration fields that define a study; a rerun may change the others (budget, ...)
IDENTITY_FIELDS = (
    "supernet",
    "hw",
    "strategy",
    "objectives",
    "constraints",
    "data",
    "seed",
    "batch_size",
    "strategy_options",
    "weights",
    "accuracy",
    "measure",
    "task",
    "task_options",
)


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search run is configured with; stored with its study.

    ``strategy=None`` means the task's default strategy and empty ``objectives`` the task's
    default objectives; both are resolved before storing. ``weights`` is a checkpoint of the
    supernet, ``accuracy`` the accuracy source (``auto``, ``measured``,
    ``predicted``, ``predicted:<file>``, ``proxy``, ``proxy:<name>``), ``device`` where
    accuracy is measured (``cpu``, ``cuda``) and ``measure`` whether every candidate's latency
    is timed on this machine instead of predicted. ``task`` names a registered task (a
    compression method) to run instead of a supernet, built with ``task_options``; ``supernet``
    then only labels the study.
    """

    supernet: str
    hw: str
    strategy: str | None = None
    objectives: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    data: str | None = None
    budget: int = 100
    seed: int = 0
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    timeout: float | None = None
    max_failures: int = 10
    out: str | None = None
    batch_size: int | None = None
    heartbeat: int = 10
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None
    accuracy: str = "auto"
    device: str = "cpu"
    measure: bool = False
    task: str | None = None
    task_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def study_name(self) -> str:
        """``--study``, or ``<supernet>-<hw>-<objectives>`` (``<task>-<supernet>-...`` for a
        registered task such as a compression method, where ``supernet`` labels the model)."""
        if self.study:
            return self.study
        prefix = f"{self.task}-" if self.task and self.task != self.supernet else ""
        return f"{prefix}{self.supernet}-{self.hw}-{','.join(self.objectives)}"

    @property
    def storage_url(self) -> str:
        return self.storage or DEFAULT_STORAGE

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("nas-out") / self.study_name

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict with the schema version."""
        d = dataclasses.asdict(self)
        d["objectives"] = list(self.objectives)
        d["constraints"] = list(self.constraints)
        d["strategy_options"] = dict(self.strategy_options)
        d["task_options"] = dict(self.task_options)
        return {"schema": SCHEMA_VERSION, **d}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_json`; unknown keys are an error."""
        d = dict(d)
        schema = d.pop("schema", None)
        if schema != SCHEMA_VERSION:
            raise UserError(
                f"study configuration has schema {schema}; this nas reads {SCHEMA_VERSION}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        d["objectives"] = tuple(d.get("objectives", ()))
        d["constraints"] = tuple(d.get("constraints", ()))
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a rerun to continue a stored study.

        Objectives are compared with their directions (``top1`` equals ``top1:max``).
        """
        from nas.search.objectives import parse_objectives

        j = self.to_json()
        ident = {k: j[k] for k in IDENTITY_FIELDS}
        with contextlib.suppress(ValueError):
            ident["objectives"] = [str(o) for o in parse_objectives(list(self.objectives))]
        return ident


# -- storage ----------------------------------------------------------------------------------
def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///") :])


def _prepare_sqlite(path: Path) -> None:
    """Create the folder, check it is writable, and switch the file to WAL mode."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the storage folder {folder}: {e.strerror}") from None
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"storage {path} is not writable")
    try:
        with sqlite3.connect(path, timeout=60) as con:
            con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise UserError(f"cannot open SQLite storage {path}: {e}") from None


def make_storage(url: str | None = None, *, heartbeat: int = 10) -> BaseStorage:
    """Open the storage at ``url`` (default ``sqlite:///nas.db``; ``:memory:`` for none).

    Raises:
        UserError: the storage cannot be reached, created or written.
    """
    url = url or DEFAULT_STORAGE
    if url == MEMORY:
        return InMemoryStorage()
    path = sqlite_path(url)
    engine_kwargs: dict[str, Any] = {}
    if path is not None:
        _prepare_sqlite(path)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=retry_trial,
            )
    except Exception as e:  # SQLAlchemy raises many kinds; all mean "cannot use this storage"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot open storage {_redact(url)}: {reason[:200]}") from None


MAX_RETRY = 3


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue the candidate of a crashed worker's trial again (at most :data:`MAX_RETRY` times).

    Like optuna's ``RetryHeartbeatStaleTrialCallback``, but the copy carries the params only:
    metrics, constraint values and worker of the dead attempt are not inherited.
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        return
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={"failed_trial": history[0], "retry_history": history},
        )
    )


def _redact(url: str) -> str:
    """Hide a password in a database URL."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


# -- provenance -------------------------------------------------------------------------------
_PACKAGES = ("nas-service", "optuna", "torch", "numpy", "pymoo", "botorch", "scikit-learn")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the nas source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # never take index.lock
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
        env=env,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_model() -> str | None:
    """The first CUDA device's name, when torch is already imported and sees one."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    except Exception:
        return None


def provenance(
    config: SearchConfig, task: Mapping[str, Any], sources: Mapping[str, str]
) -> dict[str, Any]:
    """Everything needed to reproduce and trust a result."""
    return {
        "schema": SCHEMA_VERSION,
        "config": config.to_json(),
        "task": dict(task),
        "sources": dict(sources),
        "seed": config.seed,
        "versions": {p: _version(p) for p in _PACKAGES},
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_model(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# -- opening and resuming ---------------------------------------------------------------------
def open_study(
    config: SearchConfig,
    storage: BaseStorage,
    directions: Sequence[Direction],
    prov: Mapping[str, Any],
) -> optuna.Study:
    """Create the study or load it; a rerun with another configuration is an error.

    Raises:
        ConfigMismatch: the stored configuration differs in a field of :data:`IDENTITY_FIELDS`.
    """
    name = config.study_name
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        inputs = record_inputs(config)
        study = optuna.create_study(study_name=name, storage=storage, directions=list(directions))
        study.set_user_attr(CONFIG_ATTR, config.to_json())
        study.set_user_attr(PROVENANCE_ATTR, dict(prov))
        study.set_user_attr(INPUTS_ATTR, inputs)
        job = CURRENT_JOB.get()
        if job is not None:
            study.set_user_attr(JOB_ATTR, dict(job))
        return study
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise UserError(f"study {name!r} exists but was not made by nas; pick another --study")
    check_same(SearchConfig.from_json(stored), config)
    check_inputs(study.user_attrs.get(INPUTS_ATTR, {}), name)
    if stored != config.to_json():  # e.g. a larger budget: workers that join follow it
        study.set_user_attr(CONFIG_ATTR, config.to_json())
    return study


def check_same(stored: SearchConfig, new: SearchConfig) -> None:
    """Raise :class:`ConfigMismatch` naming the first identity field that differs."""
    a, b = stored.identity(), new.identity()
    for key in IDENTITY_FIELDS:
        if a[key] != b[key]:
            raise ConfigMismatch(
                f"study {new.study_name!r} was run with {key}={a[key]!r}, not {b[key]!r}; "
                "rerun with the stored settings or name a new study with --study"
            )


def stored_config(study: optuna.Study) -> SearchConfig:
    """The configuration stored with a nas study."""
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise UserError(f"study {study.study_name!r} was not made by nas")
    return SearchConfig.from_json(raw)


# -- counting ---------------------------------------------------------------------------------
def counts_against_budget(t: FrozenTrial) -> bool:
    """COMPLETE trials and evaluated PRUNED ones (pruned, rejected) count; surplus ones don't."""
    if t.state == TrialState.COMPLETE:
        return True
    return t.state == TrialState.PRUNED and not t.user_attrs.get(SURPLUS_ATTR, False)


def evaluated(study: optuna.Study) -> int:
    """How many budget slots the study has used."""
    return sum(counts_against_budget(t) for t in study.get_trials(deepcopy=False))


def summaries(storage: BaseStorage) -> list[dict[str, Any]]:
    """One line of facts per study in ``storage`` (name, trials, budget, strategy, ...)."""
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        cfg = s.user_attrs.get(CONFIG_ATTR, {})
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        out.append(
            {
                "study": s.study_name,
                "supernet": cfg.get("supernet"),
                "hw": cfg.get("hw"),
                "strategy": cfg.get("strategy"),
                "objectives": cfg.get("objectives"),
                "evaluated": sum(counts_against_budget(t) for t in trials),
                "budget": cfg.get("budget"),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
                "running": sum(t.state == TrialState.RUNNING for t in trials),
                "created": s.datetime_start.isoformat(timespec="seconds")
                if s.datetime_start
                else None,
            }
        )
    return out


def load(storage: BaseStorage, name: str) -> optuna.Study:
    """Load study ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise UserError(f"no study named {name!r}; studies here: {known}") from None


def to_json_text(obj: Any) -> str:
    """Stable, readable JSON (NaN written as null)."""
    return json.dumps(obj, indent=2, sort_keys=False, default=str, allow_nan=False)
