"""``nas study list | show | export | delete``."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from rich.table import Table

from nas.cli.output import err, out, trials_table
from nas.search.errors import UserError
from nas.search.export import pareto_trials, study_report, write_exports
from nas.search.objectives import parse_objectives
from nas.search.study import (
    DEFAULT_STORAGE,
    PROVENANCE_ATTR,
    load,
    make_storage,
    stored_config,
    summaries,
)


def _storage(url: str | None) -> optuna.storages.BaseStorage:
    url = url or DEFAULT_STORAGE
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        raise UserError(f"no study database at {url[len('sqlite:///') :]}; pass --storage")
    return make_storage(url)


def list_studies(storage: str | None, as_json: bool) -> None:
    """Print one row per study."""
    rows = summaries(_storage(storage))
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(title=f"{len(rows)} studies", title_justify="left")
    cols = ("study", "supernet", "hw", "strategy", "evaluated", "budget", "failed", "created")
    for col in cols:
        table.add_column(col)
    for r in rows:
        table.add_row(*[str(r.get(k, "")) for k in cols])
    out.print(table)


def show_study(name: str, storage: str | None, as_json: bool) -> None:
    """Print a study's configuration, provenance, counts and Pareto set."""
    study = load(_storage(storage), name)
    config = stored_config(study)
    objectives = parse_objectives(list(config.objectives))
    report = study_report(study, objectives)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    prov = study.user_attrs.get(PROVENANCE_ATTR, {})
    err.print(
        f"study {name}: {report['evaluated']} of {config.budget} evaluations, "
        f"{report['failed']} failed; strategy {config.strategy}, seed {config.seed}",
        markup=False,
        highlight=False,
    )
    for metric, source in prov.get("sources", {}).items():
        err.print(f"  {metric}: {source}", markup=False, highlight=False)
    err.print(
        f"  made with nas {prov.get('versions', {}).get('nas-service')} "
        f"(git {prov.get('git_commit')}), optuna {prov.get('versions', {}).get('optuna')}, "
        f"on {prov.get('cpu')}",
        markup=False,
        highlight=False,
    )
    front = pareto_trials(study, objectives)
    out.print(
        trials_table(f"Pareto set ({len(front)})", front, objectives, prov.get("sources", {}))
    )


def export_study(name: str, storage: str | None, out_dir: Path | None) -> None:
    """Write the CSV/JSON exports of a study."""
    study = load(_storage(storage), name)
    config = stored_config(study)
    folder = out_dir or config.out_dir
    files = write_exports(study, parse_objectives(list(config.objectives)), folder)
    err.print(f"wrote {', '.join(files)} to {folder}/", markup=False, highlight=False)


def delete_study(name: str, storage: str | None, yes: bool) -> None:
    """Delete a study after confirmation."""
    st = _storage(storage)
    load(st, name)
    if not yes:
        import typer

        typer.confirm(f"delete study {name!r} and all its trials?", abort=True)
    optuna.delete_study(study_name=name, storage=st)
    err.print(f"deleted study {name}", markup=False, highlight=False)
