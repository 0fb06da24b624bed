"""The report of ``nas compress``: JSON (format ``nas-compress-report``) and Markdown, plus one
file pair per front member in ``pareto/``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from nas.compress.model_io import atomic_write_bytes

REPORT_FORMAT = "nas-compress-report"
REPORT_VERSION = 1


def finite(v: Any) -> bool:
    """A real, finite number (not a bool's None or NaN)."""
    return isinstance(v, int | float) and math.isfinite(v)


# -- reports -----------------------------------------------------------------------------------
def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    metrics = {k: v for k, v in t.user_attrs.items() if finite(v)}
    return {"trial": t.number, "params": dict(t.params), "metrics": metrics}


def write_reports(
    report: dict[str, Any], out_dir: Path, front: Sequence[optuna.trial.FrozenTrial]
) -> dict[str, Path]:
    files = {"report": out_dir / "report.json", "report_md": out_dir / "report.md"}
    atomic_write_bytes(files["report"], (json.dumps(report, indent=1, default=str) + "\n").encode())
    atomic_write_bytes(files["report_md"], markdown(report).encode())
    pareto = out_dir / "pareto"
    for t in front:
        row = {"study": report["study"], "method": report["method"], **trial_row(t)}
        stem = pareto / f"trial-{t.number}"
        atomic_write_bytes(stem.with_suffix(".json"), (json.dumps(row, indent=1) + "\n").encode())
        atomic_write_bytes(stem.with_suffix(".md"), _member_md(row).encode())
    return files


COLUMNS = (
    ("params_m", "params (M)", "{:.4f}"),
    ("nnz_params_m", "non-zero params (M)", "{:.4f}"),
    ("macs_m", "MACs (M)", "{:.2f}"),
    ("nnz_macs_m", "non-zero MACs (M)", "{:.2f}"),
    ("sparsity", "sparsity", "{:.3f}"),
    ("val_top1", "val top1 (%)", "{:.2f}"),
    ("test_top1", "test top1 (%)", "{:.2f}"),
    ("cosine", "min cosine", "{:.5f}"),
    ("latency_ms", "CPU latency, torch (ms)", "{:.3f}"),
    ("onnx_latency_ms", "CPU latency, onnxruntime (ms)", "{:.3f}"),
)


def _fmt(v: Any, f: str) -> str:
    return f.format(v) if finite(v) else "–"


def markdown(report: Mapping[str, Any]) -> str:
    """The human-readable report."""
    t = report["task"]
    lines = [
        f"# nas compress: {report['method']} on {Path(t['checkpoint']).name}",
        "",
        f"- checkpoint: `{t['checkpoint']}` (SHA-256 {t['checkpoint_sha256'][:16]}…)",
        f"- data: {t['data'] or 'none (judged by output drift)'}",
        f"- study: {report['study']}, {report['evaluated']} of {report['budget']} evaluations, "
        f"strategy {report['strategy']}, objectives {', '.join(report['objectives'])}",
        f"- selection: {report['selection']['rule']}",
        "- sources: " + "; ".join(f"{k}: {v}" for k, v in report["sources"].items()),
        "",
    ]
    o, s = report["original"], report["selected"]
    if s is None:
        lines += [
            "**No candidate satisfies the selection rule**"
            + (f" (stopped: {report['stopped']})" if report.get("stopped") else "")
            + ".",
            "",
        ]
    rows = [("original", o)] + ([("selected", s)] if s else [])
    if s and s.get("int8"):
        q = s["int8"]
        rows.append(
            (
                "selected, INT8 ONNX",
                {
                    "test_top1": q.get("test_top1"),
                    "cosine": q.get("cosine"),
                    "onnx_latency_ms": q.get("latency_ms"),
                },
            )
        )
    lines += ["| model | " + " | ".join(c[1] for c in COLUMNS) + " |"]
    lines += ["|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(k), f) for k, _, f in COLUMNS) + " |")
    if s:
        lines += ["", f"Selected trial {s['trial']}: `{json.dumps(s['params'])}`."]
        if s.get("finetune"):
            ft = s["finetune"]
            lines.append(
                f"Fine-tuned {ft['epochs']} epochs ({ft['method']}); before: "
                + ", ".join(f"{k} {v:.4g}" for k, v in ft["before"].items())
                + "."
            )
        lines.append(
            f"ONNX export checked by onnxruntime: max |diff| {s['onnx_max_abs_diff']:.2e}."
        )
        if s["nnz_params_m"] < 0.99 * s["params_m"]:
            lines.append(
                f"Unstructured sparsity ({100 * s['sparsity']:.1f} % zeros) does not speed up "
                "dense runtimes, which multiply the zeros too: measured CPU latency "
                f"{_fmt(o.get('latency_ms'), '{:.3f}')} → {_fmt(s.get('latency_ms'), '{:.3f}')} ms "
                f"(torch), {_fmt(o.get('onnx_latency_ms'), '{:.3f}')} → "
                f"{_fmt(s.get('onnx_latency_ms'), '{:.3f}')} ms (onnxruntime); only the dense "
                "MACs (channels removed) shrink it."
            )
        if s.get("int8"):
            q = s["int8"]
            lines.append(
                f"INT8: {q['format']}; {q['calibration_images']} calibration images; "
                f"{q['bytes'] / 1024:.0f} KiB (FP32 {q['fp32_bytes'] / 1024:.0f} KiB)."
            )
    lines += ["", f"## Pareto front ({len(report['front'])} candidates)", ""]
    names = sorted({k for r in report["front"] for k in r["metrics"]})
    params = sorted({k for r in report["front"] for k in r["params"]})
    lines += ["| trial | " + " | ".join(params + names) + " |"]
    lines += ["|---" * (len(params) + len(names) + 1) + "|"]
    for r in report["front"]:
        vals = [str(r["params"].get(k, "")) for k in params]
        vals += [_fmt(r["metrics"].get(k), "{:.4g}") for k in names]
        lines.append(f"| {r['trial']} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _member_md(row: Mapping[str, Any]) -> str:
    lines = [f"# {row['method']}: trial {row['trial']} of {row['study']}", ""]
    lines += [f"- {k}: {v}" for k, v in row["params"].items()]
    lines += [f"- {k}: {v:.6g}" for k, v in row["metrics"].items()]
    return "\n".join(lines) + "\n"
