"""The weights loader refuses code, names mismatches, and unwraps common checkpoint layouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nas.search.errors import UserError
from nas.supernets.checkpoint import load_into, read_state_dict


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hook": _Evil()}, path)
    with pytest.raises(UserError, match="refused"):
        read_state_dict(path)
    assert not Path("PWNED").exists()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    ],
)
def test_wrapped_state_dicts_load(tmp_path: Path, wrap: object) -> None:
    model = torch.nn.Linear(3, 2)
    torch.save(wrap(model.state_dict()), tmp_path / "w.pth")  # type: ignore[operator]
    sd, meta = read_state_dict(tmp_path / "w.pth")
    target = torch.nn.Linear(3, 2)
    load_into(target, sd)
    assert torch.equal(target.weight, model.weight) and meta == {}


def test_safetensors_with_metadata(tmp_path: Path) -> None:
    save_file(
        {"weight": torch.ones(2, 3), "bias": torch.zeros(2)},
        tmp_path / "w.safetensors",
        metadata={"k": "v"},
    )
    sd, meta = read_state_dict(tmp_path / "w.safetensors")
    assert set(sd) == {"weight", "bias"} and meta == {"k": "v"}


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        read_state_dict(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a torch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserError, match="not a safetensors file"):
        read_state_dict(tmp_path / "junk.safetensors")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a state_dict"):
        read_state_dict(tmp_path / "list.pt")


def test_mismatch_names_key_and_shapes() -> None:
    model = torch.nn.Linear(3, 2)
    sd = {"weight": torch.ones(4, 3), "bias": torch.zeros(2)}
    with pytest.raises(UserError, match=r"'weight' has shape \(4, 3\).*but \(2, 3\)"):
        load_into(model, sd)
    with pytest.raises(UserError, match="'bias' is missing"):
        load_into(model, {"weight": torch.ones(2, 3)})
    with pytest.raises(UserError, match="unexpected key 'extra'"):
        load_into(model, {**model.state_dict(), "extra": torch.ones(1)})
