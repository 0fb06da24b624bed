"""``nas train``: a tiny run on digits writes a model that loads back; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nas.cli.main import app
from nas.compress import load_checkpoint, load_model
from nas.compress.datasets import batches, load_data
from nas.compress.evaluate import top1

TINY = ["--data", "digits", "--epochs", "1", "--limit", "96", "--batch-size", "32"]


def test_train_writes_a_model_that_loads_back(tmp_path: Path) -> None:
    out = tmp_path / "teachers"
    args = ["train", "--arch", "resnet20", "--width", "0.25", *TINY, "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    weights, arch = out / "resnet20-digits.safetensors", out / "resnet20-digits.json"
    assert weights.is_file() and arch.is_file()
    origin = json.loads(arch.read_text())["origin"]
    assert origin["arch"] == "resnet20" and origin["data"] == "digits"
    assert origin["arch_kwargs"] == {"num_classes": 10, "in_channels": 1, "width": 0.25}
    assert origin["epochs"] == 1 and origin["seed"] == 3 and origin["train_images"] == 96
    assert [h["epoch"] for h in origin["history"]] == [1]
    assert 0.0 <= origin["val_top1"] <= 100.0 and 0.0 <= origin["test_top1"] <= 100.0

    net = load_model(weights)
    assert net.preprocessing.channels == 1 and net.preprocessing.classes[-1] == "9"
    test = load_data("digits", "test")
    assert top1(net, batches(test, net.preprocessing, 256)) == pytest.approx(
        origin["test_top1"], abs=0.01
    )
    same = load_checkpoint(weights, origin["arch"], origin["arch_kwargs"])
    x = net.example_input(2)
    assert torch.equal(same(x), net(x))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "resnet99", *TINY], "unknown architecture 'resnet99'; the zoo has"),
        (["--arch", "resnet20", "--arch-kwargs", "{bad", *TINY], "not JSON"),
        (["--arch", "resnet20", "--arch-kwargs", '{"depth": 2}', *TINY], "no argument 'depth'"),
        (["--arch", "resnet20", "--width", "-1", *TINY], "width must be positive"),
        (["--arch", "mtcnn_onet", *TINY], "not class logits"),
        (["--arch", "resnet20", "--data", "/nonexistent/x.npz"], "no such file or folder"),
        (["--arch", "resnet20", *TINY, "--epochs", "0"], "--epochs must be at least 1"),
        (["--arch", "resnet20", *TINY, "--minutes", "0"], "--minutes must be positive"),
    ],
)
def test_train_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", *args, "--out", str(out)])
    assert result.exit_code == 2
    text = result.output.strip()
    assert len(text.splitlines()) == 1 and text.startswith("error:") and message in text, text
    assert not out.exists()
