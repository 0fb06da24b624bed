"""``nas compress CHECKPOINT --method M``: search a method's choices, then select and export."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli._args import parse_duration, parse_options, user_errors
from nas.cli.output import ProgressReporter, err, out, setup_logging

log = logging.getLogger("nas")


@user_errors
def compress(
    checkpoint: Annotated[Path, typer.Argument(help="Trained weights: safetensors or state_dict.")],
    method: Annotated[
        str, typer.Option(help="Compression method: magnitude, jackpot, n2n (or a plugin's).")
    ] = "magnitude",
    arch: Annotated[
        str | None,
        typer.Option(help="Zoo model or package.module:factory (not for models nas saved)."),
    ] = None,
    arch_kwargs: Annotated[
        str | None, typer.Option(help="Architecture arguments as JSON, e.g. '{\"width\": 0.5}'.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="mnist, digits, a folder, an .npz; without it: judged by drift."),
    ] = None,
    hw: Annotated[str, typer.Option(help="Where latency is measured: cpu or gpu.")] = "cpu",
    strategy: Annotated[
        str | None, typer.Option(help="Search strategy (default: the method's own).")
    ] = None,
    objectives: Annotated[
        str | None,
        typer.Option(help="Comma-separated (default: the method's, e.g. top1,nnz_params_m)."),
    ] = None,
    constraint: Annotated[
        list[str] | None, typer.Option(help="e.g. 'macs_m<=10'; repeatable.")
    ] = None,
    budget: Annotated[int, typer.Option(help="Candidates to evaluate.")] = 20,
    max_drop: Annotated[
        float, typer.Option(help="Selection: top1 points the model may lose.")
    ] = 1.0,
    min_cosine: Annotated[
        float, typer.Option(help="Selection without data: least output cosine per head.")
    ] = 0.99,
    select: Annotated[
        str | None, typer.Option(help="Size metric to minimise (default nnz_params_m).")
    ] = None,
    finetune_epochs: Annotated[
        int, typer.Option(help="Distil the selected model from the original.")
    ] = 0,
    int8: Annotated[bool, typer.Option("--int8", help="Also write an INT8 ONNX model.")] = False,
    sparsity: Annotated[
        float | None, typer.Option(help="Target sparsity, for methods that take one (jackpot).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Method option key=value (e.g. search_epochs=5); repeatable."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    storage: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default sqlite:///nas.db) or :memory:.")
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name.")] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes on one study.")] = 1,
    timeout: Annotated[str | None, typer.Option(help="Stop after 90s, 10m, 8h, ...")] = None,
    max_failures: Annotated[int, typer.Option(help="Stop after this many failed trials.")] = 10,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default ./nas-out/<study>/).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size of latency.")] = None,
    device: Annotated[str, typer.Option(help="Where accuracy is measured: cpu or cuda.")] = "cpu",
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Strategy option key=value; repeatable.")
    ] = None,
    policy: Annotated[
        Path | None, typer.Option(help="n2n: start from policies saved by an earlier run.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compress a trained model: search the method's choices, select, export and report.

    Example: nas compress resnet20-mnist.safetensors --data mnist --int8
    """
    from nas.compress.job import CompressConfig, prepare_compress, run_compress

    cfg = CompressConfig(
        checkpoint=str(checkpoint),
        method=method,
        arch=arch,
        arch_kwargs=arch_kwargs,
        data=data,
        hw=hw,
        strategy=strategy,
        objectives=tuple(s.strip() for s in (objectives or "").split(",") if s.strip()),
        constraints=tuple(constraint or ()),
        budget=budget,
        seed=seed,
        storage=storage,
        study=study,
        workers=workers,
        timeout=parse_duration(timeout),
        max_failures=max_failures,
        out=str(out_dir) if out_dir else None,
        batch_size=batch_size,
        device=device,
        strategy_options=parse_options(option or [])
        | ({"policy": str(policy.resolve())} if policy else {}),
        method_options=_method_options(set_ or [], sparsity),
        max_drop=max_drop,
        min_cosine=min_cosine,
        select=select,
        finetune_epochs=finetune_epochs,
        int8=int8,
    )
    prepared = prepare_compress(cfg)
    setup_logging(prepared.config.out_dir / "compress.log", quiet=as_json)
    for line in getattr(prepared.task, "notes", lambda: [])():
        log.info("%s", line)
    progress = ProgressReporter(list(prepared.objectives), enabled=not as_json)
    try:
        result = run_compress(cfg, prepared=prepared, progress=progress)
    finally:
        progress.close()
    if as_json:
        doc = {**result.report, "files": {k: str(v) for k, v in result.files.items()}}
        out.print_json(json.dumps(doc, default=str))
    else:
        _print(result.report, result.files)
    if result.search.reason and "failed" in result.search.reason:
        raise typer.Exit(3)
    if not result.search.complete:
        raise typer.Exit(130 if (result.search.reason or "").startswith("interrupted") else 1)
    if result.report["selected"] is None:
        raise typer.Exit(1)


def _method_options(items: list[str], sparsity: float | None) -> dict[str, Any]:
    options = parse_options(items)
    if sparsity is not None:
        options["sparsity"] = sparsity
    return options


def _print(report: dict[str, Any], files: dict[str, Path]) -> None:
    o, s = report["original"], report["selected"]
    say = lambda text: err.print(text, markup=False, highlight=False)  # noqa: E731
    say(
        f"study {report['study']}: {report['evaluated']} of {report['budget']} evaluations, "
        f"strategy {report['strategy']}; front of {len(report['front'])}"
    )
    say(f"selection: {report['selection']['rule']}")
    quality = "test_top1" if "test_top1" in o else "cosine"
    unit = "%" if quality == "test_top1" else ""
    say(
        f"original: {o['nnz_params_m']:.4f} M non-zero params, {o['macs_m']:.2f} M MACs, "
        f"{quality} {o[quality]:.4g}{unit}"
    )
    if s is None:
        say(
            "no candidate satisfies the selection rule: raise --max-drop (or lower "
            "--min-cosine), or --budget"
        )
    else:
        say(
            f"selected trial {s['trial']} {json.dumps(s['params'])}: {s['nnz_params_m']:.4f} M "
            f"non-zero params, {s['macs_m']:.2f} M MACs, {quality} {s[quality]:.4g}{unit}"
        )
        if s.get("int8"):
            q = s["int8"]
            say(
                f"INT8 ONNX: {quality} {q[quality]:.4g}{unit}, {q['latency_ms']:.3f} ms on this CPU"
            )
    folder = files.get("report", Path(".")).parent
    out.print(f"wrote {', '.join(sorted(files))} to {folder}/", markup=False, highlight=False)
