"""The model zoo: every registered model builds, runs, saves and reloads; MTCNN matches
facenet-pytorch on its trained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.compress import create_model, export_onnx, list_models, load_model, save_model
from nas.compress.arch import Network, count_params, sequence_output_shape
from nas.compress.loading import load_checkpoint
from nas.compress.zoo import MODELS, MTCNN_WEIGHTS, register_model
from tests.compress.facenet_compat import import_mtcnn

#: output shapes (batch 2) and parameter counts of each model with its default arguments
EXPECTED = {
    "vgg11": ([(2, 10)], 9_355_978),
    "resnet20": ([(2, 10)], 272_186),
    "resnet32": ([(2, 10)], 466_618),
    "mobilenetv2": ([(2, 10)], 2_236_106),
    "mtcnn_rnet": ([(2, 4), (2, 2)], 100_178),
    "mtcnn_onet": ([(2, 4), (2, 10), (2, 2)], 389_040),
}


def _outputs(y: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return y if isinstance(y, tuple) else (y,)


def test_the_zoo_holds_the_expected_models() -> None:
    assert set(EXPECTED) <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_saves_and_reloads(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = create_model(name).eval()
    assert isinstance(net, Network)
    x = net.example_input(2)
    with torch.no_grad():
        y = _outputs(net(x))
    if name in EXPECTED:
        shapes, params = EXPECTED[name]
        assert [tuple(t.shape) for t in y] == shapes
        assert count_params(net) == params
        assert len(net.output_names) == len(shapes)
    # the spec's shape arithmetic (lookup tables key blocks by it) agrees: the first output
    assert sequence_output_shape(net.spec, tuple(x.shape[1:])) == tuple(y[0].shape[1:])
    save_model(net, tmp_path / name)
    again = load_model(tmp_path / name)
    with torch.no_grad():
        for a, b in zip(y, _outputs(again(x)), strict=True):
            assert torch.equal(a, b)


def test_width_and_channels_change_the_classifiers() -> None:
    small = create_model("resnet20", width=0.5, in_channels=3, num_classes=5)
    assert small.layers[0].conv.weight.shape == (8, 3, 3, 3)
    assert _outputs(small(torch.randn(1, 3, 28, 28)))[0].shape == (1, 5)
    assert count_params(create_model("mobilenetv2", width=0.5)) < 2_236_106 / 2
    deep = create_model("resnet32")
    assert sum(1 for s in deep.spec if s["type"] == "residual") == 15
    with pytest.raises(ValueError, match="width"):
        create_model("vgg11", width=0)


def test_a_duplicate_name_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20")(lambda: None)
    assert "resnet20" in MODELS


def test_mtcnn_exports_to_onnx_with_named_outputs(tmp_path: Path) -> None:
    import onnx

    net = create_model("mtcnn_onet").eval()
    diff = export_onnx(net, tmp_path / "onet.onnx")
    assert diff is not None and diff < 1e-4
    names = [o.name for o in onnx.load(str(tmp_path / "onet.onnx")).graph.output]
    assert names == ["box", "landmarks", "prob"]


@pytest.mark.parametrize(
    ("name", "cls", "size"), [("mtcnn_rnet", "RNet", 24), ("mtcnn_onet", "ONet", 48)]
)
def test_mtcnn_matches_facenet_pytorch(name: str, cls: str, size: int) -> None:
    mtcnn = import_mtcnn()
    reference = getattr(mtcnn, cls)(pretrained=False)
    sd = torch.load(MTCNN_WEIGHTS[name], map_location="cpu", weights_only=True)
    reference.load_state_dict(sd)
    reference.eval()
    ours = load_checkpoint(MTCNN_WEIGHTS[name], name)
    x = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = reference(x), _outputs(ours(x))
    assert len(got) == len(want)
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    # the face probability is a softmax, the trained weights tell faces apart
    assert torch.allclose(got[-1].sum(1), torch.ones(16))
