"""``nas evonorm``: evolve normalization-activation layers, show the best, apply one."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli._args import parse_duration, parse_options, user_errors
from nas.cli.output import ProgressReporter, err, out, setup_logging

log = logging.getLogger("nas")

evonorm_app = typer.Typer(
    help="Evolve normalization-activation layers (EvoNorm).\n\n"
    "Example: nas evonorm search --data mnist --budget 300",
    no_args_is_help=True,
)

Storage = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL (default sqlite:///nas.db) or :memory:.")
]


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


def _archs(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


@evonorm_app.command("search")
@user_errors
def search(
    data: Annotated[str, typer.Option(help="Proxy data: mnist or digits.")] = "mnist",
    archs: Annotated[
        str, typer.Option(help="Architectures, comma-separated (K >= 1).")
    ] = "resnet20,mobilenet_tiny",
    budget: Annotated[int, typer.Option(help="Candidates to evaluate (rejected count).")] = 300,
    strategy: Annotated[str | None, typer.Option(help="Strategy (default aging).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    storage: Storage = None,
    study: Annotated[str | None, typer.Option(help="Study name.")] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes on one study.")] = 1,
    timeout: Annotated[str | None, typer.Option(help="Stop after 90s, 10m, 8h, ...")] = None,
    max_failures: Annotated[int, typer.Option(help="Stop after this many failed trials.")] = 10,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default ./nas-out/<study>/).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Task option key=value (e.g. steps=30); repeatable."),
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Strategy option key=value.")
    ] = None,
) -> None:
    """Evolve layers on the proxy task; rerun the same command to resume."""
    from nas.compress.evonorm_job import EvoNormSearch, summary
    from nas.search.job import prepare, run_search

    job = EvoNormSearch(
        data=data,
        archs=_archs(archs),
        budget=budget,
        seed=seed,
        storage=storage,
        study=study,
        workers=workers,
        timeout=parse_duration(timeout),
        max_failures=max_failures,
        out=str(out_dir) if out_dir else None,
        strategy=strategy,
        strategy_options=parse_options(option or []),
        task_options=parse_options(set_ or []),
    )
    prepared = prepare(job.search_config())
    setup_logging(prepared.config.out_dir / "evonorm.log")
    progress = ProgressReporter(list(prepared.objectives))
    try:
        result = run_search(prepared.config, prepared=prepared, progress=progress)
    finally:
        progress.close()
    counts = summary(result.study)
    _say(
        f"study {result.study.study_name}: {result.evaluated} of {budget} candidates; "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    if result.reason:
        err.print(f"stopped: {result.reason}", markup=False, highlight=False)
    _say(f"best layers: nas evonorm show --study {result.study.study_name}")
    if not result.complete:
        raise typer.Exit(3 if "failed" in (result.reason or "") else 1)


@evonorm_app.command("show")
@user_errors
def show(
    study: Annotated[
        str, typer.Option(help="Study name.")
    ] = "evonorm-mnist-resnet20+mobilenet_tiny",
    storage: Storage = None,
    top: Annotated[int, typer.Option(help="How many layers.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The best layers as readable formulas, and what each protocol rejected."""
    from nas.compress.evonorm_job import best_layers, load_study, summary

    s = load_study(storage, study)
    rows, counts = best_layers(s, top), summary(s)
    if as_json:
        out.print_json(json.dumps({"study": study, "counts": counts, "best": rows}))
        return
    _say(f"study {study}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for r in rows:
        accs = ", ".join(f"{k} {v:.1f}" for k, v in r.items() if k.startswith("top1@"))
        same = f" (= {r['equivalent_to']})" if r["equivalent_to"] else ""
        _say(f"trial {r['trial']}: y = {r['formula']}{same}  [{accs}] #{r['canonical']}")


@evonorm_app.command("apply")
@user_errors
def apply(
    checkpoint: Annotated[Path, typer.Argument(help="Trained model (nas-saved or state_dict).")],
    layer: Annotated[
        str, typer.Option(help="bn-relu, gn-relu, b0, s0, STUDY/TRIAL, a JSON graph or file.")
    ],
    arch: Annotated[str | None, typer.Option(help="Zoo model (not for models nas saved).")] = None,
    arch_kwargs: Annotated[str | None, typer.Option(help="Architecture arguments, JSON.")] = None,
    data: Annotated[str, typer.Option(help="Fine-tuning and test data.")] = "mnist",
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs (0: none).")] = 3,
    batch: Annotated[int, typer.Option(help="Fine-tuning batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 0.02,
    limit: Annotated[int | None, typer.Option(help="Fine-tune on the first N images.")] = None,
    storage: Storage = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path(
        "nas-out/evonorm-apply"
    ),
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Replace a model's BN-activation layers by a layer and fine-tune it."""
    from nas.compress.evonorm_job import ApplyConfig, apply_layer

    report: dict[str, Any] = apply_layer(
        ApplyConfig(
            checkpoint=str(checkpoint),
            layer=layer,
            arch=arch,
            arch_kwargs=arch_kwargs,
            data=data,
            epochs=epochs,
            batch=batch,
            lr=lr,
            limit=limit,
            seed=seed,
            storage=storage,
            out=str(out_dir),
        )
    )
    if as_json:
        out.print_json(json.dumps(report))
        return
    _say(f"layer: {report['formula']}")
    _say(
        f"test top-1: original {report['original_test_top1']:.2f}%, with the layer "
        f"{report['before_test_top1']:.2f}% before and {report['after_test_top1']:.2f}% "
        f"after {epochs} epochs of fine-tuning"
    )
    if "onnx_error" in report:
        err.print(f"ONNX export skipped: {report['onnx_error']}", markup=False)
    _say(f"wrote {', '.join(report['files'].values())}")
