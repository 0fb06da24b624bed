"""The EvoNorm search: encoding, rejection protocols, pruning, the task contract, every
strategy driving the layer space, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from typer.testing import CliRunner

from nas.cli.main import app
from nas.compress.evonorm import (
    EvoNormTask,
    graph_to_params,
    layer_space,
    params_to_graph,
    stability_check,
)
from nas.compress.evonorm_job import rejection_counts
from nas.compress.evonorm_train import zoo_model
from nas.compress.normact import graph_of, node
from nas.compress.normact_canon import KNOWN, canonical
from nas.search import testing as conformance
from nas.search.job import run_search
from nas.search.space import contains
from nas.search.strategies import STRATEGIES, list_strategies
from nas.search.study import SearchConfig
from nas.search.task import Pruned, Rejected

#: a cheap evaluation: a few images and steps (what matters is the contract, not accuracy)
CHEAP: dict[str, Any] = {
    "data": "digits",
    "train_images": 32,
    "val_images": 32,
    "steps": 2,
    "batch": 16,
    "stability_steps": 1,
    "quality_margin": -100.0,
    "prune": False,
}


def _cheap(**kw: Any) -> EvoNormTask:
    return EvoNormTask(**(CHEAP | kw))


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_layers_are_points_of_the_space(name: str) -> None:
    params = graph_to_params(KNOWN[name])
    assert contains(layer_space(), params)
    assert canonical(params_to_graph(params, 8)) == canonical(KNOWN[name])


def test_the_output_is_the_last_node_that_normalises() -> None:
    ops = [("neg", 0, 0)] * 5 + [("std_batch", 0, 0), ("div", 0, 9), ("sigmoid", 3, 0)]
    params = {f"op{k}": o[0] for k, o in enumerate(ops)} | {
        f"{d}{k}": o[i] for k, o in enumerate(ops) for i, d in ((1, "a"), (2, "b"))
    }
    graph = params_to_graph(params, 8)
    assert canonical(graph) == "div(x,std_batch(x))"  # sigmoid(v1) is no layer: x / std_b(x)
    none = graph_to_params(graph_of([node("sigmoid", 3)]))
    assert params_to_graph(none, 8)["output"] == 11  # no node normalises: the last node


def test_task_contract() -> None:
    bad = graph_to_params(KNOWN["s0"]) | {"a3": 99}  # node 7 cannot read node 99
    # without the structural rules: 3 % of random graphs normalise, the suite draws 50
    conformance.check_task(_cheap(statistics=False), candidates=2, invalid=bad)


def test_protocols_reject_and_say_why() -> None:
    task = _cheap()
    with pytest.raises(Rejected, match=r"^invalid: the output does not depend on x"):
        task.evaluate(graph_to_params(graph_of([node("sigmoid", 3)])))
    swish = graph_to_params(graph_of([node("sigmoid", 0), node("mul", 0, 4)]))
    with pytest.raises(Rejected, match=r"^invalid: no statistic of x"):
        task.evaluate(swish)  # a pure activation: not a normalisation layer
    assert set(_cheap(statistics=False).evaluate(swish)) == {"top1@resnet20", "top1@mobilenet_tiny"}
    x_over_0 = graph_of([node("std_batch", 0), node("div", 0, 1), node("mul", 5, 4)])
    with pytest.raises(Rejected, match=r"^nan"):
        task.evaluate(graph_to_params(x_over_0))  # x / 0 * std_b(x)
    with pytest.raises(Rejected, match=r"^quality"):
        _cheap(quality_margin=95.0).evaluate(graph_to_params(KNOWN["s0"]))
    torch.manual_seed(0)
    net = zoo_model("resnet20", graph_of([node("exp", 0), node("exp", 4)]), width=0.25)
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(Rejected, match=r"^(stability|nan)"):
        stability_check(net, x, torch.arange(4), limit=10.0)
    ok = zoo_model("resnet20", KNOWN["bn-relu"], width=0.25)
    assert 0 < stability_check(ok, x, torch.arange(4)) < 1e3


def test_hopeless_training_is_pruned_after_the_warm_up() -> None:
    task = _cheap(prune=True, steps=8, prune_startup=3)
    side = task._curves("resnet20")
    for _ in range(3):  # earlier trainings that reached 100 % at every step
        t = side.ask()
        for step in (2, 4, 6):
            t.report(100.0, step)
        side.tell(t, 100.0)
    with pytest.raises(Pruned, match=r"^pruned: resnet20 at step 4"):  # not at the first report
        task.evaluate(graph_to_params(KNOWN["b0"]))
    assert side.trials[-1].state == optuna.trial.TrialState.PRUNED
    assert list(side.trials[-1].intermediate_values) == [2, 4]


def test_training_at_chance_half_way_is_rejected_early(monkeypatch: pytest.MonkeyPatch) -> None:
    import nas.compress.evonorm_train as train

    monkeypatch.setattr(train, "accuracy", lambda net, data: 10.0)  # a constant prediction
    with pytest.raises(Rejected, match=r"^quality: top1@resnet20 10.0% at chance at step 4"):
        _cheap(steps=8, quality_margin=5.0).evaluate(graph_to_params(KNOWN["s0"]))


def test_no_pruning_before_the_startup_trainings() -> None:
    task = _cheap(prune=True, steps=8)  # prune_startup 10 by default
    side = task._curves("resnet20")
    for _ in range(9):
        t = side.ask()
        for step in (2, 4, 6):
            t.report(100.0, step)
        side.tell(t, 100.0)
    assert set(task.evaluate(graph_to_params(KNOWN["s0"]))) == {
        "top1@resnet20",
        "top1@mobilenet_tiny",
    }


MULTI = [s for s in list_strategies() if not STRATEGIES.get(s).needs_task]


@pytest.mark.parametrize("name", MULTI)
def test_every_strategy_drives_the_layer_space(name: str) -> None:
    cls = STRATEGIES.get(name)
    objectives = ("top1@resnet20", "top1@mobilenet_tiny")
    options = conformance.STRATEGY_OPTIONS.get(name, lambda space: {})(layer_space())
    config = SearchConfig(
        supernet="evonorm",
        hw="cpu",
        strategy=name,
        objectives=objectives if cls.multi_objective else objectives[:1],
        budget=3,
        storage=":memory:",
        task="evonorm",
        task_options={k: v for k, v in CHEAP.items() if k != "data"} | {"steps": 1},
        data="digits",
        strategy_options=options,
        out="out",
    )
    if cls.needs_training_free:  # the job asks the task for them; evonorm has none: the
        # strategy gets the suite's stand-ins and runs through the runner's objective directly
        trials = _run_direct(config, name, options)
    else:
        result = run_search(config, handle_signals=False, export=False)
        assert result.evaluated == 3
        trials = result.study.trials
    assert sum(rejection_counts(trials).values()) == 3


def _run_direct(config: SearchConfig, name: str, options: dict[str, Any]) -> list[Any]:
    from nas.search.objectives import parse_objectives
    from nas.search.runner import BudgetGuard, TaskObjective
    from nas.search.strategies import create_strategy

    task = EvoNormTask(data="digits", **config.task_options)
    objs = parse_objectives(list(config.objectives))
    strategy = create_strategy(name, task.space(), objs, seed=0, **options)
    study = optuna.create_study(sampler=strategy, directions=[o.direction for o in objs])
    study.optimize(TaskObjective(task, objs, (), BudgetGuard(3)), n_trials=3)
    return study.trials


def test_aging_is_the_default_and_evolves_past_random() -> None:
    from nas.compress.evonorm_job import EvoNormSearch
    from nas.search.job import prepare

    job = EvoNormSearch(
        data="digits",
        budget=4,
        storage=":memory:",
        task_options={k: v for k, v in CHEAP.items() if k != "data"},
    )
    assert prepare(job.search_config()).config.strategy == "aging"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_cli_search_show_apply(tmp_path: Path) -> None:
    from nas.compress.model_io import save_model
    from nas.compress.zoo import create_model

    db = f"sqlite:///{tmp_path / 'e.db'}"
    cheap = [f"--set={k}={v}" for k, v in CHEAP.items() if k != "data"]
    args = ["evonorm", "search", "--data", "digits", "--budget", "6", "--storage", db, *cheap]
    r = _cli(*args, "--option", "population_size=2", "--option", "sample_size=1")
    assert r.exit_code == 0, r.output
    assert "of 6 candidates" in r.output
    study = "evonorm-digits-resnet20+mobilenet_tiny"
    r = _cli("evonorm", "show", "--study", study, "--storage", db, "--json")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert sum(shown["counts"].values()) == 6
    net = create_model("resnet20", width=0.25)
    weights, _ = save_model(net, tmp_path / "r20")  # type: ignore[arg-type]
    base = ["evonorm", "apply", str(weights), "--data", "digits", "--limit", "64"]
    layer = "b0" if not shown["best"] else f"{study}/{shown['best'][0]['trial']}"
    out = tmp_path / "applied"
    r = _cli(*base, "--layer", layer, "--storage", db, "--epochs", "1", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "test top-1" in r.output and (out / "model.safetensors").is_file()
    r = _cli(*base, "--layer", json.dumps(KNOWN["s0"]), "--epochs", "0", "--out", str(out))
    assert r.exit_code == 0, r.output
    for bad, why in [
        ("nope", "expected bn-relu"),
        ('{"nodes": [{"op": "x"}]}', "not a layer graph"),
        (f"{study}/999", "no trial 999"),
        ("nostudy/1", "no study"),
    ]:
        r = _cli(*base, "--layer", bad, "--storage", db, "--out", str(out))
        assert r.exit_code == 2 and why in r.output, r.output
        assert "Traceback" not in r.output
