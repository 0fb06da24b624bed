"""``nas report STUDY``: the HTML report with plots, exports and provenance."""

from __future__ import annotations

from pathlib import Path

from nas.cli.output import err
from nas.cli.study_cmd import _storage
from nas.search.objectives import parse_objectives
from nas.search.study import load, stored_config


def write_report(name: str, storage: str | None, out_dir: Path | None, pick: str | None) -> None:
    """Write the report of study ``name`` and print where."""
    from nas.cli.search_cmd import pick_trial
    from nas.search.report import write_report as write

    study = load(_storage(storage), name)
    config = stored_config(study)
    objectives = parse_objectives(list(config.objectives))
    picked = None
    if pick is not None:
        chosen = pick_trial(study, objectives, pick)
        if chosen is None:
            err.print(f"no Pareto candidate satisfies {pick}", markup=False)
        picked = None if chosen is None else chosen.number
    folder = out_dir or config.out_dir
    files = write(study, objectives, folder, picked)
    err.print(f"wrote {', '.join(files)} to {folder}/", markup=False, highlight=False)
