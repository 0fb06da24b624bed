"""The ``nas`` command line (typer).

Bad input ends with one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from nas.cli._args import parse_duration, parse_options, user_errors
from nas.cli.compress_cmd import compress as compress_command
from nas.cli.evonorm_cmd import evonorm_app
from nas.cli.output import ProgressReporter, out, setup_logging, trials_table
from nas.cli.skan_cmd import skan_app
from nas.search.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="nas",
    help="AutoML search and compression.\n\n"
    "Example: nas search --supernet nb201 --hw raspi4 --strategy tpe --budget 100",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
study_app = typer.Typer(
    help="Find, read, export and delete studies.\n\nExample: nas study list --storage sqlite:///nas.db",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")
supernet_app = typer.Typer(
    help="List, extract from and train elastic supernets.\n\nExample: nas supernet list",
    no_args_is_help=True,
)
app.add_typer(supernet_app, name="supernet")
hw_app = typer.Typer(
    help="Hardware profiles and latency predictors.\n\nExample: nas hw check --hw cpu "
    "--supernet mobilenetv3",
    no_args_is_help=True,
)
app.add_typer(hw_app, name="hw")
predictor_app = typer.Typer(
    help="Accuracy predictors fitted on measured sub-networks.\n\nExample: nas predictor fit "
    "mobilenetv3 --weights ckpt.safetensors --data mnist --out acc.json",
    no_args_is_help=True,
)
app.add_typer(predictor_app, name="predictor")
app.add_typer(skan_app, name="skan")
app.add_typer(evonorm_app, name="evonorm")
app.command("compress")(compress_command)


@app.command()
@user_errors
def search(
    hw: Annotated[str, typer.Option(help="Target hardware, e.g. gpu, raspi4, nb201:pixel3.")],
    supernet: Annotated[
        str | None, typer.Option(help="Supernet or benchmark space, e.g. nb201.")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="A registered task instead of a supernet, e.g. synthetic."),
    ] = None,
    task_option: Annotated[
        list[str] | None, typer.Option("--task-option", help="Task option key=value; repeatable.")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="Search strategy (default: the task's own).")
    ] = None,
    objectives: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated metrics; name:min|max overrides direction "
            "(default: the task's, e.g. top1,latency_ms)."
        ),
    ] = None,
    constraint: Annotated[
        list[str] | None, typer.Option(help="e.g. 'latency_ms<=20'; repeatable.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Data: nb201's cifar10|cifar100; mnist, digits, a folder, an .npz."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Supernet checkpoint (safetensors, or an OFA .pth).")
    ] = None,
    accuracy: Annotated[
        str,
        typer.Option(
            help="Accuracy source: auto, measured, predicted, predicted:FILE, proxy, proxy:NAME."
        ),
    ] = "auto",
    device: Annotated[str, typer.Option(help="Where accuracy is measured: cpu or cuda.")] = "cpu",
    measure: Annotated[
        bool, typer.Option("--measure", help="Time every candidate here instead of predicting.")
    ] = False,
    budget: Annotated[int, typer.Option(help="Evaluations, across all runs and workers.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    storage: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default sqlite:///nas.db) or :memory:.")
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="Study name (default <supernet>-<hw>-<objectives>).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes on one study.")] = 1,
    timeout: Annotated[str | None, typer.Option(help="Stop after 90s, 10m, 8h, ...")] = None,
    max_failures: Annotated[int, typer.Option(help="Stop after this many failed trials.")] = 10,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default ./nas-out/<study>/).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size of latency.")] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Strategy option key=value; repeatable.")
    ] = None,
    heartbeat: Annotated[
        int,
        typer.Option(help="Seconds between worker heartbeats; a trial silent for 3 is retried."),
    ] = 10,
    pick: Annotated[
        str | None, typer.Option(help="Pick one front member under a constraint.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Search a space for the best accuracy / latency trade-offs.

    Example: nas search --supernet nb201 --hw raspi4 --budget 100 --constraint 'latency_ms<=20'
    """
    from nas.cli.search_cmd import run_search_command
    from nas.search.study import SearchConfig

    if (supernet is None) == (task is None):
        raise UserError("give one of --supernet or --task")
    if task_option and task is None:
        raise UserError("--task-option needs --task")
    if heartbeat < 1:
        raise UserError("--heartbeat must be at least 1 second")
    config = SearchConfig(
        supernet=supernet or str(task),
        hw=hw,
        task=task,
        task_options=parse_options(task_option or []),
        heartbeat=heartbeat,
        strategy=strategy,
        objectives=tuple(s.strip() for s in (objectives or "").split(",") if s.strip()),
        constraints=tuple(constraint or ()),
        data=data,
        budget=budget,
        seed=seed,
        storage=storage,
        study=study,
        workers=workers,
        timeout=parse_duration(timeout),
        max_failures=max_failures,
        out=str(out_dir) if out_dir else None,
        batch_size=batch_size,
        strategy_options=parse_options(option or []),
        weights=str(weights.resolve()) if weights else None,
        accuracy=accuracy,
        device=device,
        measure=measure,
    )
    code = run_search_command(config, pick=pick, as_json=as_json)
    if code:
        raise typer.Exit(code)


@app.command("strategies")
@user_errors
def strategies() -> None:
    """List the search strategies.

    Example: nas strategies
    """
    from nas.search.strategies import STRATEGIES
    from nas.search.task import load_builtin_tasks

    load_builtin_tasks()  # compression methods may bring their own strategy (n2n)
    for name in STRATEGIES.names():
        doc = (STRATEGIES.get(name).__doc__ or "").strip().splitlines()
        out.print(f"{name:<10} {doc[0] if doc else ''}", markup=False, highlight=False)


@app.command("supernets")
@user_errors
def supernets(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the supernets and benchmark spaces (same as nas supernet list).

    Example: nas supernets
    """
    from nas.cli.supernet_cmd import list_supernets

    list_supernets(as_json)


@supernet_app.command("list")
@user_errors
def supernet_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the supernets with their dimensions and search-space sizes.

    Example: nas supernet list
    """
    from nas.cli.supernet_cmd import list_supernets

    list_supernets(as_json)


FormatOpt = Annotated[str, typer.Option("--format", help="onnx or safetensors (+ JSON).")]


@supernet_app.command("extract")
@user_errors
def supernet_extract(
    supernet: Annotated[str, typer.Argument(help="Elastic supernet, e.g. resnet50.")],
    params: Annotated[str, typer.Option(help="Sub-network as JSON, or a JSON file.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output path (stem).")],
    weights: Annotated[Path | None, typer.Option(help="Supernet checkpoint.")] = None,
    fmt: FormatOpt = "safetensors",
) -> None:
    """Extract one sub-network as a standalone model.

    Example: nas supernet extract mobilenetv3 --params sub.json --out sub --format onnx
    """
    from nas.cli.supernet_cmd import extract_subnet

    extract_subnet(supernet, params, weights, fmt, out_path)


@supernet_app.command("train")
@user_errors
def supernet_train(
    supernet: Annotated[str, typer.Argument(help="Elastic supernet, e.g. mobilenetv3.")],
    data: Annotated[str, typer.Option(help="mnist, digits, a folder of class folders, an .npz.")],
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Checkpoint (default nas-out/<supernet>-<data>).")
    ] = None,
    resolutions: Annotated[
        str, typer.Option(help="Comma-separated training resolutions.")
    ] = "24,28,32",
    minutes: Annotated[float, typer.Option(help="Time budget of the whole training.")] = 30.0,
    epochs: Annotated[
        str | None,
        typer.Option(help="Epochs per phase: full, then each elastic family (default 5,3,3,5)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Train a supernet by progressive shrinking (kernel, depth, expand) with in-place
    distillation; resumes from the last finished phase.

    Example: nas supernet train mobilenetv3 --data mnist
    """
    from nas.supernets.train import train_command

    train_command(supernet, data, out_path, resolutions, minutes, seed, device, epochs)


@app.command("train")
@user_errors
def train(
    arch: Annotated[
        str, typer.Option(help="Zoo model (resnet20, vgg11, ...) or package.module:factory.")
    ],
    data: Annotated[str, typer.Option(help="mnist, digits, a folder of class folders, an .npz.")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    width: Annotated[float | None, typer.Option(help="Width multiplier of the model.")] = None,
    arch_kwargs: Annotated[
        str | None, typer.Option(help="More model arguments as JSON, e.g. '{\"hidden\": 128}'.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights, order and augmentation.")] = 0,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for <arch>-<data>.safetensors and .json.")
    ] = Path("nas-out/teachers"),
    minutes: Annotated[float, typer.Option(help="Time budget of the training.")] = 60.0,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, cosine decay).")] = 0.1,
    limit: Annotated[int | None, typer.Option(help="Train on the first N images only.")] = None,
    augment: Annotated[bool, typer.Option(help="Random shifts of up to 1/8 image.")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """Train a teacher model from the zoo on real data; writes safetensors + JSON (validation
    accuracy per epoch, test accuracy at the end), loadable with nas.compress.load_model.

    Example: nas train --arch resnet20 --data mnist --epochs 30
    """
    from nas.compress.loading import parse_kwargs
    from nas.compress.teacher import TeacherConfig, train_command

    kwargs = parse_kwargs(arch_kwargs) | ({"width": width} if width is not None else {})
    cfg = TeacherConfig(
        arch=arch,
        data=data,
        arch_kwargs=kwargs,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        augment=augment,
        seed=seed,
        minutes=minutes,
        limit=limit,
        device=device,
    )
    setup_logging(None, quiet=as_json)
    weights, arch_file, origin = train_command(cfg, out_dir)
    if as_json:
        out.print_json(json.dumps({"weights": str(weights), "json": str(arch_file), **origin}))
        return
    out.print(
        f"wrote {weights} and {arch_file}: validation top-1 {origin['val_top1']}%, "
        f"test top-1 {origin['test_top1']}% ({origin['epochs_done']} epochs, "
        f"{origin['seconds']:.0f} s)",
        markup=False,
        highlight=False,
    )


@app.command("export")
@user_errors
def export(
    study: Annotated[str, typer.Option(help="Study name.")],
    trial: Annotated[int, typer.Option(help="Trial number.")],
    fmt: FormatOpt = "onnx",
    out_path: Annotated[Path | None, typer.Option("--out", help="Output path (stem).")] = None,
    storage: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default sqlite:///nas.db).")
    ] = None,
) -> None:
    """Write the sub-network of one trial as ONNX (checked with onnxruntime) or
    safetensors + JSON (rebuilt by nas.compress.load_model).

    Example: nas export --study resnet50-gpu-top1,macs_m --trial 12 --format onnx
    """
    from nas.cli.supernet_cmd import export_trial

    export_trial(study, trial, fmt, out_path, storage)


StorageOpt = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL of the study database (default sqlite:///nas.db)."),
]


@study_app.command("list")
@user_errors
def study_list(
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the studies in a storage.

    Example: nas study list --storage sqlite:///nas.db
    """
    from nas.cli.study_cmd import list_studies

    list_studies(storage, as_json)


@study_app.command("show")
@user_errors
def study_show(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a study: configuration, provenance, counts and its Pareto set.

    Example: nas study show nb201-raspi4-top1,latency_ms
    """
    from nas.cli.study_cmd import show_study

    show_study(name, storage, as_json)


@study_app.command("export")
@user_errors
def study_export(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder to write into.")] = None,
) -> None:
    """Write all trials and the Pareto set as CSV and JSON.

    Example: nas study export nb201-raspi4-top1,latency_ms --out results/
    """
    from nas.cli.study_cmd import export_study

    export_study(name, storage, out_dir)


@study_app.command("delete")
@user_errors
def study_delete(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a study and all its trials.

    Example: nas study delete old-study --yes
    """
    from nas.cli.study_cmd import delete_study

    delete_study(name, storage, yes)


@app.command("run")
@user_errors
def run_job(
    job_file: Annotated[Path, typer.Argument(help="A job file (TOML, version = 1).")],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the space size, budget and ETA; run nothing."),
    ] = False,
    evaluations: Annotated[
        int, typer.Option(help="Evaluations timed by --dry-run for the ETA.")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="--dry-run: print JSON.")] = False,
) -> None:
    """Run a job file: a search, compress, evonorm search or skan train job.

    Example: nas run overnight.toml --dry-run
    """
    from nas.cli.jobs_cmd import load_job
    from nas.cli.jobs_cmd import run_job as run

    if evaluations < 1:
        raise UserError("--evaluations must be at least 1")
    code = run(app, load_job(job_file), dry_run, evaluations, as_json)
    if code:
        raise typer.Exit(code)


@app.command("worker")
@user_errors
def worker(
    storage: Annotated[str, typer.Option(help="The study's SQLAlchemy URL (e.g. postgresql://).")],
    study: Annotated[str, typer.Option(help="Study name.")],
    timeout: Annotated[str | None, typer.Option(help="Stop after 90s, 10m, 8h, ...")] = None,
    max_failures: Annotated[
        int | None, typer.Option(help="Stop after this many failed trials (default: the job's).")
    ] = None,
) -> None:
    """Join a study as one more worker, from the configuration stored with it.

    Example: nas worker --storage postgresql://nas@db/nas --study nb201-overnight --timeout 8h
    """
    from nas.cli.jobs_cmd import worker as run_worker

    code = run_worker(storage, study, parse_duration(timeout), max_failures)
    if code:
        raise typer.Exit(code)


@app.command("status")
@user_errors
def status(
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Jobs of a storage: progress, ETA, best values and failures.

    Example: nas status --storage sqlite:///nas.db
    """
    from nas.cli.jobs_cmd import status as show_status

    show_status(storage, as_json)


@app.command("report")
@user_errors
def report(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder (default: the study's output folder).")
    ] = None,
    pick: Annotated[
        str | None, typer.Option(help="Label the front member picked under a constraint.")
    ] = None,
) -> None:
    """Write an HTML report with PNG plots, the CSV/JSON exports and the provenance.

    Example: nas report nb201-raspi4-top1,latency_ms --storage sqlite:///nas.db
    """
    from nas.cli.report_cmd import write_report

    write_report(study, storage, out_dir, pick)


def main() -> None:
    """Console-script entry point."""
    setup_logging()
    app()


__all__ = ["ProgressReporter", "app", "main", "trials_table"]


@hw_app.command("list")
@user_errors
def hw_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Hardware profiles: this machine, benchmark table columns, saved profiles.

    Example: nas hw list
    """
    from nas.cli.hw_cmd import list_hw

    list_hw(as_json)


@hw_app.command("profile")
@user_errors
def hw_profile(
    name: Annotated[str, typer.Option(help="Name of the new profile.")],
    supernet: Annotated[str, typer.Option(help="Supernet whose lookup table to build.")],
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    backend: Annotated[str, typer.Option(help="torch or onnxruntime.")] = "torch",
    weights: Annotated[
        str | None, typer.Option(help="Checkpoint: its classes and resolutions set the blocks.")
    ] = None,
) -> None:
    """Measure this machine: save a profile under $NAS_HOME and build the supernet's table.

    Example: nas hw profile --name mybox --supernet mobilenetv3
    """
    from nas.cli.hw_cmd import profile_hw

    setup_logging(None, quiet=False)
    profile_hw(name, supernet, device, batch_size, threads, backend, weights)


@hw_app.command("check")
@user_errors
def hw_check(
    hw: Annotated[str, typer.Option(help="cpu, gpu or a saved profile.")],
    supernet: Annotated[str, typer.Option(help="Supernet.")],
    n: Annotated[int, typer.Option(help="Random sub-networks to measure.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the sub-networks.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the JSON here.")] = None,
    weights: Annotated[
        str | None, typer.Option(help="Checkpoint: its classes and resolutions set the blocks.")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Repeated medians for the noise floor.")] = 10,
) -> None:
    """Measure random sub-networks and report the latency predictor's error on them.

    Example: nas hw check --hw cpu --supernet resnet50
    """
    from nas.cli.hw_cmd import check_hw

    setup_logging(None, quiet=as_json)
    check_hw(hw, supernet, n, seed, as_json, out_path, weights, repeats)


@predictor_app.command("fit")
@user_errors
def predictor_fit(
    supernet: Annotated[str, typer.Argument(help="Elastic supernet, e.g. mobilenetv3.")],
    weights: Annotated[str, typer.Option(help="Trained supernet checkpoint.")],
    data: Annotated[str, typer.Option(help="mnist, digits, a folder of class folders, an .npz.")],
    out_path: Annotated[Path, typer.Option("--out", help="Predictor file to write (JSON).")],
    samples: Annotated[int, typer.Option(help="Sub-networks to measure.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the sub-networks and folds.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure random sub-networks, fit an accuracy predictor and print its out-of-fold quality.

    Use it with: nas search --supernet mobilenetv3 --accuracy predicted:acc.json ...

    Example: nas predictor fit mobilenetv3 --weights ckpt.safetensors --data mnist --out acc.json
    """
    from nas.cli.predictor_cmd import fit_predictor

    setup_logging(None, quiet=as_json)
    fit_predictor(supernet, weights, data, samples, seed, out_path, device, as_json)


if __name__ == "__main__":  # pragma: no cover
    main()
