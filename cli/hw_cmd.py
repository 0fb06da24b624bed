"""``nas hw``: list hardware profiles, profile this machine, check a latency predictor."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rich.table import Table

from nas.cli.output import err, out
from nas.search.errors import UserError

log = logging.getLogger("nas")


def _supernet(name: str, weights: str | None) -> Any:
    """The supernet; a checkpoint sets its classes and resolutions (hence its blocks)."""
    from nas.supernets.families import FAMILIES, load_supernet

    if name not in FAMILIES:
        raise UserError(
            f"unknown supernet {name!r} for latency tables; known: {', '.join(FAMILIES)}"
        )
    return load_supernet(name, weights)


def _progress(what: str) -> Any:
    step = {"last": -1}

    def report(done: int, total: int) -> None:
        pct = 100 * done // max(1, total)
        if pct // 10 != step["last"] // 10 or done == total:
            step["last"] = pct
            log.info("%s: %d/%d (%d%%)", what, done, total, pct)

    return report


def list_hw(as_json: bool) -> None:
    """Print every hardware profile: built-in, benchmark tables, saved."""
    from nas.predictors.hardware import ProfileError, get_hardware, list_hardware

    rows: list[dict[str, Any]] = []
    for name in list_hardware():
        try:
            p = get_hardware(name)
        except ProfileError as e:  # e.g. gpu without CUDA
            rows.append({"name": name, "kind": "measured", "notes": str(e)})
            continue
        rows.append(
            {
                "name": name,
                "kind": p.kind,
                "device": p.device,
                "batch_size": p.batch_size,
                "machine": p.gpu_model or p.cpu_model or "",
                "notes": p.notes,
            }
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="Hardware profiles")
    for col in ("name", "kind", "batch", "machine / notes"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            str(r.get("batch_size", "")),
            r.get("machine") or r.get("notes", ""),
        )
    out.print(table)


def profile_hw(
    name: str,
    supernet: str,
    device: str,
    batch_size: int,
    threads: int | None,
    backend: str,
    weights: str | None = None,
) -> None:
    """Measure this machine: a profile plus the lookup table of ``supernet``."""
    import torch

    from nas.predictors.hardware import measured_profile, save_profile
    from nas.predictors.latency import table_for, table_path
    from nas.predictors.measure import MeasureError, noise_floor

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown --device {device!r}; use cpu or cuda")
    if backend not in ("torch", "onnxruntime"):
        raise UserError(f"unknown --backend {backend!r}; use torch or onnxruntime")
    if batch_size < 1 or (threads is not None and threads < 1):
        raise UserError("--batch-size and --threads must be at least 1")
    if name in ("cpu", "gpu") or ":" in name:
        raise UserError(f"--name {name!r} is reserved; choose another name")
    net = _supernet(supernet, weights)
    prof = measured_profile(
        name, device=device, batch_size=batch_size, backend=backend, threads=threads
    )
    p = net.smallest() | {"r": net.resolutions[len(net.resolutions) // 2]}
    from nas.compress.arch import build

    r = int(p["r"])
    try:
        nf = noise_floor(
            build(net.arch_spec(p)).eval(),
            (net.preprocessing.channels, r, r),
            device=device,
            batch_size=batch_size,
            threads=prof.threads,
            backend=backend,
        )
        table = table_for(net, prof, build=True, progress=_progress("timing blocks"))
    except MeasureError as e:
        raise UserError(str(e)) from None
    from dataclasses import replace

    prof = replace(
        prof,
        notes=f"noise floor {nf.spread_pct:.1f}% (spread of 10 medians); table of {supernet}",
    )
    path = save_profile(prof, name)
    within = _calibration_within10(table.calibration, table.constant_ms)
    err.print(
        f"profile {name}: {path}\ntable: {table_path(net, prof)} ({len(table.entries)} blocks, "
        f"constant {table.constant_ms:+.3f} ms, {within:.0f}% of {len(table.calibration)} "
        f"calibration sub-networks within ±10%)\nnoise floor: {nf.spread_pct:.1f}% spread, "
        f"{nf.cv_pct:.1f}% CV of 10 medians of one sub-network ({nf.median_ms:.3f} ms)",
        markup=False,
        highlight=False,
    )


def _calibration_within10(rows: list[dict[str, Any]], constant: float) -> float:
    if not rows:
        return float("nan")
    ok = [abs(r["sum_ms"] + constant - r["measured_ms"]) <= 0.1 * r["measured_ms"] for r in rows]
    return 100.0 * sum(ok) / len(ok)


def check_hw(
    hw: str,
    supernet: str,
    n: int,
    seed: int,
    as_json: bool,
    out_path: Path | None,
    weights: str | None = None,
    repeats: int = 10,
) -> None:
    """Measure ``n`` random sub-networks and compare them with the predictor of ``hw``."""
    import torch

    from nas.predictors.check import check_latency
    from nas.predictors.hardware import ProfileError
    from nas.predictors.latency import resolve_latency
    from nas.predictors.lut import TableError

    if n < 3:
        raise UserError("--n must be at least 3")
    if repeats < 2:
        raise UserError("--repeats must be at least 2")
    net = _supernet(supernet, weights)
    if hw == "gpu" and not torch.cuda.is_available():
        raise UserError("nas hw check --hw gpu measures on a CUDA device, and there is none here")
    try:
        lat = resolve_latency(net, hw)
    except (ProfileError, TableError) as e:
        raise UserError(str(e)) from None
    table = lat.table
    hwinfo: dict[str, Any] = table.hardware if table is not None else {}
    measure = {
        "device": "cuda" if hwinfo.get("device") == "cuda" else "cpu",
        "batch_size": int(hwinfo.get("batch_size", 1)),
        "threads": hwinfo.get("threads"),
        "backend": hwinfo.get("backend") or "torch",
    }
    res = check_latency(
        net, lat, measure, n=n, seed=seed, noise_repeats=repeats, progress=_progress("measuring")
    )
    if out_path is not None:
        from nas.search.export import atomic_write

        atomic_write(out_path, json.dumps(res, indent=1) + "\n")
    if as_json:
        out.print_json(json.dumps(res))
        return
    q, nf = res["quality"], res.get("noise_floor", {})
    table_out = Table(title=f"{supernet} on {hw}: {res['label']}")
    for col in ("sub-networks", "Spearman", "Kendall τ", "MAPE %", "±10 %", "noise floor %"):
        table_out.add_column(col)
    table_out.add_row(
        str(n),
        f"{q['spearman']:.3f}",
        f"{q['kendall']:.3f}",
        f"{q['mape']:.1f}",
        f"{q['within10']:.0f}",
        f"{nf.get('spread_pct', float('nan')):.1f}",
    )
    out.print(table_out)
    err.print(
        f"{res['predictions_per_s']:.0f} predictions/s against {res['measurements_per_s']:.2f} "
        f"measurements/s ({res['speedup']:.0f}× faster)",
        markup=False,
        highlight=False,
    )
