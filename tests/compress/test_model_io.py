"""Saved models: safetensors + JSON round trip, ONNX checked by onnxruntime, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.compress import ModelFileError, Preprocessing, build, export_onnx, load_model, save_model
from nas.compress.arch import SpecError, build_layer, count_macs, count_params

SPEC = [
    {"type": "conv", "in": 3, "out": 8, "kernel": 3, "stride": 2, "act": "hswish"},
    {
        "type": "residual",
        "body": [
            {"type": "conv", "in": 8, "out": 16, "kernel": 1, "stride": 1, "act": "relu"},
            {"type": "conv", "in": 16, "out": 16, "kernel": 5, "stride": 1, "groups": 16},
            {"type": "se", "channels": 16, "mid": 8},
            {"type": "conv", "in": 16, "out": 8, "kernel": 1, "stride": 1},
        ],
        "shortcut": [],
    },
    {
        "type": "residual",
        "body": [{"type": "conv", "in": 8, "out": 12, "kernel": 3, "stride": 2, "act": "relu"}],
        "shortcut": [
            {"type": "avgpool", "kernel": 2, "stride": 2, "ceil_mode": True},
            {"type": "conv", "in": 8, "out": 12, "kernel": 1, "stride": 1},
        ],
        "act": "relu",
    },
    {"type": "gap"},
    {"type": "flatten"},
    {"type": "dropout", "p": 0.1},
    {"type": "linear", "in": 12, "out": 10},
]
PRE = Preprocessing(input_size=(20, 20), mean=(0.5,) * 3, std=(0.25,) * 3, classes=("a", "b"))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build(SPEC, PRE)
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_round_trip_keeps_outputs_and_preprocessing(tmp_path: Path) -> None:
    net = _net()
    weights, arch = save_model(net, tmp_path / "m", {"supernet": "toy", "trial": 3})
    assert weights.name == "m.safetensors" and arch.name == "m.json"
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files
    back = load_model(arch)
    x = torch.randn(4, 3, 20, 20)
    assert torch.equal(back(x), net(x))
    assert back.preprocessing == PRE
    assert back.origin == {"supernet": "toy", "trial": 3}
    assert not back.training
    # the JSON alone suffices: no pickle, and the safetensors file also embeds it
    arch.unlink()
    assert torch.equal(load_model(weights)(x), net(x))


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    net = _net()
    diff = export_onnx(net, tmp_path / "m.onnx")
    assert diff is not None and diff <= 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = torch.randn(5, 3, 20, 20)  # another batch size: the batch axis is dynamic
    (got,) = session.run(None, {"input": x.numpy()})
    assert torch.allclose(torch.from_numpy(got), net(x), atol=1e-4)


def test_bad_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "missing.json")
    net = _net()
    _, arch = save_model(net, tmp_path / "m")
    doc = json.loads(arch.read_text())
    arch.write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(ModelFileError, match="format version 99"):
        load_model(arch)
    doc["spec"][0]["out"] = 9  # the tensors no longer fit the architecture
    arch.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match=r"layers\.0\.conv\.weight.*\(8, 3, 3, 3\)"):
        load_model(arch)
    junk = tmp_path / "junk.safetensors"  # no JSON beside it, and not safetensors either
    junk.write_bytes(b"\x00" * 40)
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(junk)


def test_spec_errors_name_the_layer() -> None:
    with pytest.raises(SpecError, match="unknown layer type 'lstm'"):
        build_layer({"type": "lstm"})
    with pytest.raises(SpecError, match=r"layers\.1: conv layer lacks key 'kernel'"):
        build([{"type": "gap"}, {"type": "conv", "in": 3, "out": 4, "stride": 1}])


def test_counts() -> None:
    net = build(
        [
            {"type": "conv", "in": 3, "out": 4, "kernel": 3, "stride": 1, "bn": False},
            {"type": "gap"},
            {"type": "flatten"},
            {"type": "linear", "in": 4, "out": 2},
        ]
    )
    # conv: 10*10 outputs * 4 channels * 27 MACs; linear: 8
    assert count_macs(net, torch.zeros(1, 3, 10, 10)) == 100 * 4 * 27 + 8
    assert count_params(net) == 4 * 27 + 2 * 4 + 2
