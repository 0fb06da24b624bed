"""Progressive-shrinking trainer: phases, checkpoints, resume, time budget (tiny runs on digits)."""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from nas.supernets.families import load_supernet
from nas.supernets.train import TrainConfig, Trainer, lr_at, phase_space

TINY = {
    "supernet": "mobilenetv3",
    "data": "digits",
    "resolutions": (16, 20),
    "epochs": (1, 1, 1, 1),
    "batch_size": 32,
    "train_limit": 64,
    "val_limit": 40,
}


def _meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def test_learning_rate_warms_up_then_anneals_to_zero() -> None:
    assert lr_at(0.0, 1.0) == pytest.approx(0.1)
    assert lr_at(0.1, 1.0) == pytest.approx(1.0)
    assert lr_at(0.55, 1.0) == pytest.approx(0.5)
    assert lr_at(1.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(p / 100, 0.1) for p in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_phase_space_frees_only_the_elastic_families(tmp_path: Path) -> None:
    from nas.supernets.families import build_supernet

    net = build_supernet("mobilenetv3")
    space = phase_space(net, {"k"})
    assert all(len(v) == 3 for k, v in space.items() if k.startswith("k"))
    assert all(len(v) == 1 for k, v in space.items() if not k.startswith("k"))
    assert space["e0"] == (6,) and space["d0"] == (4,)


def test_train_checkpoints_every_phase_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "mbv3.safetensors"
    cfg = TrainConfig(**TINY)  # type: ignore[arg-type]
    report = Trainer(cfg, out).run()

    assert [p["phase"] for p in report["phases"]] == ["full", "kernel", "depth", "expand"]
    for p in report["phases"]:
        assert p["steps"] == p["planned_steps"] == 2  # 64 images / batch 32, one epoch
        assert 0.0 <= p["smallest_val_top1"] <= 100.0
    final = report["final"]
    assert len(final["random_subnets"]) == 10
    assert -1.0 <= final["spearman_top1_macs_10"] <= 1.0 or math.isnan(
        final["spearman_top1_macs_10"]
    )
    for phase in ("full", "kernel", "depth", "expand"):
        assert (tmp_path / f"mbv3.{phase}.safetensors").is_file()
    assert json.loads(out.with_suffix(".json").read_text())["final"] == json.loads(
        json.dumps(final)
    )

    # the final checkpoint loads, and its resolution set replaces the default choices
    net = load_supernet("mobilenetv3", out)
    assert net.resolutions == (16, 20)
    assert net.dimensions()["r"] == (16, 20)
    assert json.loads(_meta(out)["train"])["resolutions"] == [16, 20]

    # resume: drop the last phase and the final model; only the last phase trains again
    expand = tmp_path / "mbv3.expand.safetensors"
    depth_weights = load_supernet("mobilenetv3", tmp_path / "mbv3.depth.safetensors").state_dict()
    expand.unlink()
    out.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nas"):
        again = Trainer(cfg, out).run()
    messages = [r.getMessage() for r in caplog.records]
    assert any("resuming after phase depth" in m for m in messages)
    assert not any(m.startswith("phase full epoch") for m in messages)
    assert any(m.startswith("phase expand epoch") for m in messages)
    assert again["phases"][:3] == report["phases"][:3]
    assert expand.is_file() and out.is_file()
    # the resumed run started from the depth checkpoint (weights differ only by the new phase)
    resumed = load_supernet("mobilenetv3", expand).state_dict()
    assert resumed.keys() == depth_weights.keys()
    assert any(not torch.equal(resumed[k], depth_weights[k]) for k in resumed)


def test_time_budget_ends_phases_early_and_resume_checks_the_configuration(
    tmp_path: Path,
) -> None:
    out = tmp_path / "m.safetensors"
    report = Trainer(TrainConfig(**(TINY | {"minutes": 1e-6})), out).run()  # type: ignore[arg-type]
    assert [p["steps"] for p in report["phases"]] == [0, 0, 0, 0]
    assert all(p["planned_steps"] == 2 for p in report["phases"])
    out.unlink()  # a rerun would resume; with another configuration it must refuse
    other = TrainConfig(**(TINY | {"seed": 1, "minutes": 1e-6}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different training configuration"):
        Trainer(other, out).run()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resnet18", "--data", "digits"], "cannot train 'resnet18'"),
        (["mobilenetv3", "--data", "digits", "--epochs", "1,2"], "--epochs needs 4"),
        (["mobilenetv3", "--data", "digits", "--resolutions", "a,b"], "--resolutions 'a,b'"),
        (["mobilenetv3", "--data", "digits", "--minutes", "0"], "--minutes must be positive"),
        (["mobilenetv3", "--data", "/nonexistent/images"], "error:"),
    ],
)
def test_train_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from nas.cli.main import app

    result = CliRunner().invoke(
        app, ["supernet", "train", *args, "--out", str(tmp_path / "m.safetensors")]
    )
    assert result.exit_code != 0
    text = result.output.strip()
    assert len(text.splitlines()) == 1 and message in text, text
    assert not list(tmp_path.iterdir())
