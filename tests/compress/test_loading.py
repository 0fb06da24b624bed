"""load_checkpoint: zoo names and import paths, every mismatch named, code refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nas.compress import create_model, load_checkpoint, save_model
from nas.compress.zoo import MTCNN_WEIGHTS
from nas.search.errors import UserError


def _resnet_sd(**kwargs: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model("resnet20", width=0.25, **kwargs).state_dict()


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_zoo_checkpoint_round_trip(tmp_path: Path, suffix: str) -> None:
    sd = _resnet_sd()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": sd}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    net = load_checkpoint(path, "resnet20", '{"width": 0.25}')
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k])


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path: Path) -> None:
    sd = _resnet_sd()
    path = tmp_path / "w.pt"
    torch.save({k: v for k, v in sd.items() if k != "layers.1.body.0.conv.weight"}, path)
    with pytest.raises(UserError, match=r"'layers\.1\.body\.0\.conv\.weight' is missing"):
        load_checkpoint(path, "resnet20", {"width": 0.25})
    torch.save(sd | {"extra.weight": torch.ones(1)}, path)
    with pytest.raises(UserError, match=r"unexpected key 'extra\.weight'"):
        load_checkpoint(path, "resnet20", {"width": 0.25})
    torch.save(sd, path)
    with pytest.raises(
        UserError,
        match=r"'layers\.0\.conv\.weight' has shape \(4, 1, 3, 3\) in the checkpoint but "
        r"\(8, 1, 3, 3\) in the model",
    ):
        load_checkpoint(path, "resnet20", {"width": 0.5})


def test_foreign_key_names_are_reported_as_the_file_has_them(tmp_path: Path) -> None:
    sd = torch.load(MTCNN_WEIGHTS["mtcnn_rnet"], weights_only=True)
    path = tmp_path / "rnet.pt"
    torch.save({k: v for k, v in sd.items() if k != "dense4.weight"}, path)
    with pytest.raises(UserError, match=r"'dense4\.weight' is missing"):
        load_checkpoint(path, "mtcnn_rnet")
    torch.save(sd | {"prelu2.weight": torch.ones(3)}, path)
    with pytest.raises(UserError, match=r"'prelu2\.weight' has shape \(3,\)"):
        load_checkpoint(path, "mtcnn_rnet")
    with pytest.raises(UserError, match=r"'conv1\.weight' has shape \(28, 3, 3, 3\)"):
        load_checkpoint(MTCNN_WEIGHTS["mtcnn_rnet"], "mtcnn_onet")


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _resnet_sd(), "hook": _Evil()}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path, "resnet20", {"width": 0.25})
    assert not Path("PWNED").exists()


def test_unknown_architecture_lists_the_zoo(tmp_path: Path) -> None:
    torch.save(_resnet_sd(), tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"unknown architecture 'resnet99'.*resnet20.*vgg11"):
        load_checkpoint(tmp_path / "w.pt", "resnet99")
    with pytest.raises(UserError, match="resnet20 takes no argument 'depth'; it takes num_classes"):
        load_checkpoint(tmp_path / "w.pt", "resnet20", {"depth": 3})
    with pytest.raises(UserError, match="not JSON"):
        load_checkpoint(tmp_path / "w.pt", "resnet20", "{width: 1}")
    with pytest.raises(UserError, match=r"name its architecture: one of .*mtcnn_onet"):
        load_checkpoint(tmp_path / "w.pt")
    with pytest.raises(UserError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt", "resnet20")


def test_import_path_architecture_with_json_kwargs(tmp_path: Path) -> None:
    linear = torch.nn.Linear(4, 2)
    torch.save(linear.state_dict(), tmp_path / "lin.pth")
    net = load_checkpoint(
        tmp_path / "lin.pth", "torch.nn:Linear", '{"in_features": 4, "out_features": 2}'
    )
    assert isinstance(net, torch.nn.Linear)
    assert torch.equal(net.weight, linear.weight)
    with pytest.raises(UserError, match="cannot import no_such_module"):
        load_checkpoint(tmp_path / "lin.pth", "no_such_module:f")
    with pytest.raises(UserError, match="has no callable 'Nope'"):
        load_checkpoint(tmp_path / "lin.pth", "torch.nn:Nope")
    with pytest.raises(UserError, match=r"not a torch nn\.Module"):
        load_checkpoint(tmp_path / "lin.pth", "builtins:dict", {"a": 4})


def test_our_own_model_files_need_no_architecture(tmp_path: Path) -> None:
    net = create_model("resnet20", width=0.25).eval()
    weights, _ = save_model(net, tmp_path / "m")
    again = load_checkpoint(weights)
    x = net.example_input(1)
    assert torch.equal(again(x), net(x))
    # ... and they load into the named architecture too
    assert torch.equal(load_checkpoint(weights, "resnet20", {"width": 0.25})(x), net(x))
