"""S-KAN training, fitting tasks, the ``skan`` search task and ``nas skan``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nas.cli.main import app
from nas.compress.kan import choices, kan_layers
from nas.compress.skan import (
    FIT_TASKS,
    Phases,
    fit,
    fit_data,
    fit_network,
    fit_task,
    kan_spec,
    mlp,
    mlp_params,
    mlp_width,
    parse_spaces,
    train_skan,
)
from nas.search.errors import UserError


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", list(FIT_TASKS))
def test_fit_tasks_give_finite_targets_on_scaled_inputs(name: str) -> None:
    task = fit_task(name)
    x, y = fit_data(task, 200, seed=1)
    assert x.shape == (200, task.n_in) and y.shape == (200, 1)
    assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(y).all() and y.std() > 0.05
    assert torch.equal(fit_data(task, 200, seed=1)[1], y)


def test_unknown_names_are_user_errors() -> None:
    with pytest.raises(UserError, match="known: bessel_j0"):
        fit_task("nope")
    with pytest.raises(UserError, match="unknown KAN space 'x'"):
        parse_spaces("bspline,x")
    assert parse_spaces("rbf+wavelet") == ["rbf", "wavelet"]


def test_three_phases_prune_and_train_the_same_steps() -> None:
    task = fit_task("xy")
    torch.manual_seed(0)
    net = fit_network(2, kan_spec([2, 3, 1], parse_spaces("all"), grid=3, order=2))
    result = fit(task, net, steps=40, seed=0, grid_every=10)
    assert [h["phase"] for h in result["history"]] == ["full", "selective", "finetune"]
    assert sum(h["steps"] for h in result["history"]) == 40
    assert not any(layer.mixed for layer in kan_layers(net))
    assert result["params"] == 2 * 3 * 6 + 3 * 1 * 6  # as many as one single-space KAN
    assert all(sum(r["counts"].values()) == r["shape"][1] for r in choices(net))
    assert result["rmse"] < 1.0


def test_training_stops_on_a_nan_loss() -> None:
    net = fit_network(2, kan_spec([2, 1], ["rbf"]))
    x = torch.zeros(4, 2)
    with pytest.raises(UserError, match="diverged"):
        train_skan(
            net, lambda s: (x, x[:, :1] * torch.nan), torch.nn.functional.mse_loss, Phases(2, 0, 0)
        )


def test_mlp_matches_a_parameter_count() -> None:
    h = mlp_width(2, 135)
    assert abs(mlp_params([2, h, h, 1]) - 135) <= 2 * h
    assert sum(p.numel() for p in mlp([2, h, h, 1]).parameters()) == mlp_params([2, h, h, 1])


def test_skan_task_keeps_the_task_contract() -> None:
    from nas.search.task import create_task
    from nas.search.testing import check_task

    task = create_task("skan", fit="xy", steps=12)
    bad = {k: (d.choices[0] if hasattr(d, "choices") else d.low) for k, d in task.space().items()}
    check_task(task, candidates=2, invalid={**bad, "grid": 99})
    with pytest.raises(UserError, match="cpu only"):
        create_task("skan", hw="gpu")


def test_skan_task_on_images_measures_top1() -> None:
    from nas.search.task import create_task

    task = create_task("skan", data="digits", epochs=1, limit=128)
    params = {
        "depth": 1,
        "width_0": 4,
        "width_1": 4,
        "grid": 3,
        "order": 1,
        "pool_0": "all",
        "pool_1": "all",
    }
    m = task.evaluate(params)
    assert set(m) == {"top1", "params_m"} and 0 <= m["top1"] <= 100


def test_search_through_the_core_with_two_objectives(tmp_path: Path) -> None:
    from nas.search.job import run_search
    from nas.search.study import SearchConfig

    config = SearchConfig(
        supernet="skan",
        hw="cpu",
        task="skan",
        task_options={"fit": "kink", "steps": 10},
        objectives=("error", "latency_ms"),
        strategy="random",
        budget=3,
        storage=f"sqlite:///{tmp_path}/s.db",
    )
    result = run_search(config, handle_signals=False, export=False)
    done = [t for t in result.study.trials if t.values]
    assert len(done) == 3 and all(t.values[1] > 0 for t in done)
    assert all(t.user_attrs["params_m"] > 0 and "error" in t.user_attrs for t in done)


def test_cli_fit_saves_a_model_that_show_reads(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "skan",
            "fit",
            "--task",
            "x_over_y",
            "--steps",
            "20",
            "--width",
            "3",
            "--out",
            str(tmp_path / "f"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "x_over_y: test RMSE" in r.output and "layer 0 kan 2->3: chosen:" in r.output
    r = runner.invoke(app, ["skan", "show", str(tmp_path / "f.safetensors")])
    assert r.exit_code == 0 and "layer 1 kan 3->1: chosen:" in r.output, r.output


def test_cli_train_on_digits(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        app,
        [
            "skan",
            "train",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--limit",
            "128",
            "--widths",
            "4",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "S-ConvKAN on digits" in r.output and (tmp_path / "skan-digits.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--task", "nope"], "unknown fitting task 'nope'"),
        (["fit", "--task", "xy", "--spaces", "spline"], "unknown KAN space 'spline'"),
        (["fit", "--task", "xy", "--width", "a"], "--width 'a'"),
        (["train", "--data", "/nonexistent/images"], "error:"),
        (["show", "missing.safetensors"], "no such file"),
    ],
)
def test_cli_bad_input_is_one_line(args: list[str], message: str) -> None:
    r = CliRunner().invoke(app, ["skan", *args])
    assert r.exit_code != 0
    assert len(r.output.strip().splitlines()) == 1 and message in r.output, r.output


def test_cli_show_refuses_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    r = CliRunner().invoke(app, ["skan", "show", str(tmp_path / "bad.safetensors")])
    assert r.exit_code == 2 and r.output.startswith("error:"), r.output
