"""``nas skan``: fit functions and train image classifiers with S-KAN, show what nodes chose.

The search over S-KAN sizes runs through the core: ``nas search --task skan --task-option
fit=compose4 --objectives error,params_m`` (or ``--data mnist`` and ``top1``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli._args import user_errors
from nas.cli.output import out
from nas.search.errors import UserError

skan_app = typer.Typer(
    help="Kolmogorov-Arnold networks that select an activation space per node (S-KAN).\n\n"
    "Example: nas skan fit --task bessel_j0",
    no_args_is_help=True,
)


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(
            f"{what} {text!r} must be comma-separated integers, e.g. 5 or 8,16"
        ) from None
    if not values or min(values) < 1:
        raise UserError(f"{what} {text!r} must list positive integers")
    return values


def _print_choices(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        picked = ", ".join(f"{s} {n}" for s, n in r["counts"].items() if n)
        state = "mixed (would choose)" if r["mixed"] else "chosen"
        out.print(
            f"  layer {r['layer']} {r['type']} {r['shape'][0]}->{r['shape'][1]}: {state}: {picked}",
            markup=False,
            highlight=False,
        )


def _check_grid(grid: int, order: int) -> None:
    if grid < 1 or order < 0:
        raise UserError("--grid must be at least 1 and --order at least 0")


@skan_app.command("fit")
@user_errors
def fit(
    task: Annotated[
        str, typer.Option(help="bessel_j0, exp_sin_sq, xy, x_over_y, sin_hf, compose4 or kink.")
    ],
    spaces: Annotated[
        str, typer.Option(help="all, a pool (bspline+chebyshev, ...) or bases, comma-separated.")
    ] = "all",
    width: Annotated[str, typer.Option(help="Hidden widths, comma-separated.")] = "5",
    grid: Annotated[int, typer.Option(help="Grid intervals of the bases.")] = 5,
    order: Annotated[int, typer.Option(help="Spline order (adds to every basis' size).")] = 3,
    steps: Annotated[int, typer.Option(help="Optimiser steps over the three phases.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the data and the initialisation.")] = 0,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Save the fitted model (safetensors + JSON).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fit a function with an S-KAN and print its test RMSE and each layer's choices.

    Example: nas skan fit --task bessel_j0 --spaces all --width 5 --steps 2000
    """
    import torch

    from nas.compress.kan import choices
    from nas.compress.skan import fit as run_fit
    from nas.compress.skan import fit_network, fit_task, kan_spec, parse_spaces

    t = fit_task(task)
    pool = parse_spaces(spaces)
    torch.set_num_threads(1)  # networks of a few hundred parameters: threads only cost
    _check_grid(grid, order)
    if steps < 1:
        raise UserError("--steps must be at least 1")
    torch.manual_seed(seed)
    net = fit_network(t.n_in, kan_spec([t.n_in, *_ints(width, "--width"), 1], pool, grid, order))
    result = run_fit(t, net, steps, seed)
    rows = choices(net)
    report = {
        "task": t.name,
        "function": t.text,
        "spaces": pool,
        "seed": seed,
        "steps": steps,
        "rmse": result["rmse"],
        "params": result["params"],
        "layers": rows,
    }
    if out_path is not None:
        from nas.compress import save_model

        net.origin = {"kind": "skan-fit", **{k: v for k, v in report.items() if k != "layers"}}
        save_model(net, out_path, net.origin)
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print(
        f"{t.name}: test RMSE {result['rmse']:.4g} ({result['params']} params, "
        f"{result['seconds']:.1f} s)",
        markup=False,
        highlight=False,
    )
    _print_choices(rows)


@skan_app.command("train")
@user_errors
def train(
    data: Annotated[str, typer.Option(help="mnist, digits, a folder or an .npz.")] = "mnist",
    epochs: Annotated[int, typer.Option(help="Epochs over the three phases.")] = 5,
    widths: Annotated[str, typer.Option(help="ConvKAN channels per layer.")] = "8,16",
    spaces: Annotated[str, typer.Option(help="all, a pool or bases, comma-separated.")] = "all",
    grid: Annotated[int, typer.Option(help="Grid intervals of the bases.")] = 5,
    order: Annotated[int, typer.Option(help="Spline order.")] = 3,
    limit: Annotated[int | None, typer.Option(help="Train on the first N images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("nas-out/skan"),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Train an S-ConvKAN image classifier and save it (safetensors + JSON).

    Example: nas skan train --data mnist --epochs 5 --out models/
    """
    from nas.compress import save_model
    from nas.compress.datasets import load_data
    from nas.compress.kan import choices
    from nas.compress.skan import parse_spaces
    from nas.compress.skan_images import classifier, convkan_spec, top1, train_classifier

    pool = parse_spaces(spaces)
    _check_grid(grid, order)
    if epochs < 1 or (limit is not None and limit < 1):
        raise UserError("--epochs and --limit must be at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: not a folder")
    tr = load_data(data, "train", limit=limit)
    spec = convkan_spec(
        tr.channels,
        int(tr.x.shape[-1]),
        len(tr.classes),
        _ints(widths, "--widths"),
        pool,
        grid,
        order,
    )
    net = classifier(tr, spec)
    result = train_classifier(net, tr, epochs, seed)
    origin = {
        "kind": "skan-train",
        "data": data,
        "epochs": epochs,
        "seed": seed,
        "spaces": pool,
        "params": result["params"],
        "val_top1": top1(net, load_data(data, "val")),
        "test_top1": top1(net, load_data(data, "test")),
    }
    name = data if data in ("mnist", "digits") else Path(data).stem
    weights, _ = save_model(net, out_dir / f"skan-{name}", origin)
    if as_json:
        out.print_json(json.dumps({**origin, "file": str(weights), "layers": choices(net)}))
        return
    out.print(
        f"S-ConvKAN on {data}: val top-1 {origin['val_top1']:.2f}%, test top-1 "
        f"{origin['test_top1']:.2f}% ({result['params']} params, {result['seconds']:.0f} s); "
        f"wrote {weights}",
        markup=False,
        highlight=False,
    )
    _print_choices(choices(net))


@skan_app.command("show")
@user_errors
def show(
    model: Annotated[Path, typer.Argument(help="A saved model (.safetensors or .json).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print which activation space each KAN layer's nodes chose, with counts per layer.

    Example: nas skan show nas-out/skan/skan-mnist.safetensors
    """
    from safetensors import SafetensorError

    from nas.compress import ModelFileError, load_model
    from nas.compress.arch import SpecError
    from nas.compress.kan import choices

    try:
        net = load_model(model)
    except (ModelFileError, SpecError) as e:
        raise UserError(str(e)) from None
    except SafetensorError as e:  # a corrupt file without its JSON beside it
        raise UserError(f"{model}: not a readable model file ({e})") from None
    rows = choices(net)
    if not rows:
        raise UserError(f"{model}: the model has no KAN layers")
    if as_json:
        out.print_json(json.dumps({"model": str(model), "layers": rows}))
        return
    out.print(f"{model}: {len(rows)} KAN layers", markup=False, highlight=False)
    _print_choices(rows)
