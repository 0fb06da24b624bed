"""``nas supernet list | extract | train`` and ``nas export``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from nas.cli.output import err, out
from nas.search.errors import UserError

FORMATS = ("onnx", "safetensors")


def _summary(values: list[Any]) -> str:
    shown = ",".join(str(v) for v in values)
    return f"{{{shown}}}" if len(values) <= 4 else f"{{{values[0]}..{values[-1]}}} ({len(values)})"


def dimension_groups(space: dict[str, Any]) -> list[tuple[str, int, list[Any]]]:
    """Group dimensions by name prefix and choices: ``[("e", 18, [0.2, 0.25, 0.35]), ...]``."""
    groups: list[tuple[str, int, list[Any]]] = []
    for name, dist in space.items():
        prefix = name.rstrip("0123456789") or name
        choices = list(dist.choices)
        if groups and groups[-1][0] == prefix and groups[-1][2] == choices:
            groups[-1] = (prefix, groups[-1][1] + 1, choices)
        else:
            groups.append((prefix, 1, choices))
    return groups


def list_supernets(as_json: bool) -> None:
    """Print every registered supernet with its dimensions and space size."""
    from nas.search.space import space_size
    from nas.supernets import SUPERNETS, create_supernet

    rows: list[dict[str, Any]] = []
    for name in SUPERNETS.names():
        task = create_supernet(name)
        space = dict(task.space())
        size_f = space_size(space)
        size = int(size_f) if math.isfinite(size_f) else None
        groups = dimension_groups(space)
        doc = (SUPERNETS.get(name).__doc__ or "").strip().splitlines()
        rows.append(
            {
                "name": name,
                "dimensions": [{"name": g, "count": n, "choices": c} for g, n, c in groups],
                "space_size": size,
                "description": doc[0] if doc else "",
            }
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="Supernets and search spaces")
    for col in ("name", "dimensions", "space size", "description"):
        table.add_column(col)
    for r in rows:
        dims = ", ".join(
            f"{d['name']}×{d['count']} {_summary(d['choices'])}"
            if d["count"] > 1
            else f"{d['name']} {_summary(d['choices'])}"
            for d in r["dimensions"]
        )
        table.add_row(
            r["name"],
            dims,
            f"{r['space_size']:.3g}" if r["space_size"] is not None else "inf",
            r["description"],
        )
    out.print(table)


def _write_model(net: Any, fmt: str, dest: Path) -> list[Path]:
    from nas.compress.model_io import export_onnx, save_model

    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "safetensors":
        return list(save_model(net, dest, net.origin))
    target = dest if dest.suffix == ".onnx" else dest.with_suffix(".onnx")
    try:
        diff = export_onnx(net, target)
    except ValueError as e:
        raise UserError(f"ONNX check failed: {e}") from None
    err.print(
        f"onnxruntime agrees with torch: max |diff| {diff:.2e} (atol 1e-4)",
        markup=False,
        highlight=False,
    )
    return [target]


def export_trial(
    study_name: str, trial: int, fmt: str, dest: Path | None, storage_url: str | None
) -> None:
    """Write the sub-network of ``trial`` of ``study_name`` as ONNX or safetensors + JSON."""
    from nas.search.job import prepare
    from nas.search.study import load, make_storage, stored_config

    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; known: {', '.join(FORMATS)}")
    study = load(make_storage(storage_url), study_name)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if trial not in trials:
        raise UserError(f"study {study_name} has no trial {trial}")
    t = trials[trial]
    if not t.params:
        raise UserError(f"trial {trial} of {study_name} has no candidate")
    config = stored_config(study)
    task = prepare(config).task
    build = getattr(task, "build", None)
    if build is None:
        raise UserError(f"{config.supernet} candidates cannot be built as models")
    net = build(dict(t.params))
    net.origin = {**net.origin, "study": study_name, "trial": trial}
    dest = dest or Path("nas-out") / study_name / f"trial{trial}"
    files = _write_model(net, fmt, dest)
    err.print(f"wrote {', '.join(str(f) for f in files)}", markup=False, highlight=False)


def extract_subnet(
    supernet: str, params_text: str, weights: Path | None, fmt: str, dest: Path
) -> None:
    """Extract one sub-network given as JSON params (``r`` included) and write it."""
    from nas.supernets.families import FAMILIES, load_supernet

    if supernet not in FAMILIES:
        raise UserError(f"unknown supernet {supernet!r}; elastic ones: {', '.join(FAMILIES)}")
    params = _read_params(params_text)
    net = load_supernet(supernet, str(weights) if weights else None)
    try:
        sub = net.extract(net.check(params))
    except ValueError as e:
        raise UserError(str(e)) from None
    sub.origin = {"supernet": supernet, "params": params, "weights": str(weights or "")}
    files = _write_model(sub.eval(), fmt, dest)
    err.print(f"wrote {', '.join(str(f) for f in files)}", markup=False, highlight=False)


def _read_params(text: str) -> dict[str, Any]:
    source = Path(text)
    raw = source.read_text() if not text.lstrip().startswith("{") and source.is_file() else text
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"--params is not JSON (nor a JSON file): {e}") from None
    if not isinstance(params, dict):
        raise UserError("--params must be a JSON object of dimension -> value")
    return params
