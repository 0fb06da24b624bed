"""Hardware profiles (files, registry, machine checks), the roofline estimate, light imports."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from nas.predictors import hardware
from nas.predictors.hardware import (
    FORMAT,
    KINDS,
    HardwareProfile,
    ProfileError,
    ProfileMismatchWarning,
    current_machine,
    get_hardware,
    list_hardware,
    load_profile,
    measured_profile,
    register_hardware,
    save_profile,
)
from nas.predictors.roofline import (
    GPUS,
    LABEL,
    bound,
    gpu_peak,
    layer_costs,
    match_gpu,
    roofline_ms,
)


def _here(name: str = "mybox") -> HardwareProfile:
    return measured_profile(name, threads=torch.get_num_threads(), notes="test")


# --- profile files -------------------------------------------------------------------------


def test_json_round_trip(tmp_path: Path) -> None:
    profile = _here()
    assert HardwareProfile.from_json(json.loads(json.dumps(profile.to_json()))) == profile
    path = save_profile(profile)
    assert path == tmp_path / "nas_home" / "profiles" / "mybox.json"
    assert [p.name for p in path.parent.iterdir()] == ["mybox.json"]  # no temp file left
    data = json.loads(path.read_text())
    assert (data["format"], data["version"]) == (FORMAT, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same machine: no mismatch warning
        assert load_profile(path) == profile


def test_save_under_another_name() -> None:
    path = save_profile(_here("a"), "b")
    assert load_profile(path).name == "b"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": 2}, "version 2 is not supported"),
        ({"format": "nas-model"}, "not a hardware profile"),
        ({"kind": "guessed"}, "kind 'guessed' unknown"),
        ({"batch_size": "one"}, "'batch_size' has the wrong type"),
        ({"speed": 3}, "unknown field"),
    ],
)
def test_bad_file_is_one_line_error(tmp_path: Path, change: dict[str, object], match: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**_here().to_json(), **change}))
    with pytest.raises(ProfileError, match=match) as info:
        load_profile(path)
    assert "\n" not in str(info.value)


def test_missing_field_file_and_json(tmp_path: Path) -> None:
    data = _here().to_json()
    del data["device"]
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="missing field"):
        load_profile(tmp_path / "p.json")
    with pytest.raises(ProfileError, match="no hardware profile file"):
        load_profile(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "bad.json")


def test_machine_mismatch_warns() -> None:
    other = replace(_here(), cpu_model="Imaginary CPU 9000", torch_version="1.0.0")
    path = save_profile(other)
    with pytest.warns(ProfileMismatchWarning, match="cpu_model 'Imaginary CPU 9000'.*torch"):
        assert load_profile(path).cpu_model == "Imaginary CPU 9000"


def test_table_profile_never_warns() -> None:
    path = save_profile(replace(get_hardware("nb201:raspi4"), name="mytable", space=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_profile(path)


def test_bad_save_names() -> None:
    with pytest.raises(ProfileError, match="letters, digits"):
        save_profile(_here(), "../evil")
    with pytest.raises(ProfileError, match="built-in"):
        save_profile(_here(), "cpu")


def test_current_machine() -> None:
    m = current_machine()
    assert m["cpu_model"] and m["cores"] >= 1 and m["torch_version"] == torch.__version__
    assert m["gpu_model"] is None


# --- registry ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(hardware._REGISTRY))  # not the user's saved ones
def test_every_registered_profile(name: str) -> None:
    if name == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ProfileError, match="CUDA"):
            get_hardware(name)
        return
    profile = get_hardware(name)
    assert profile.name == name and profile.kind in KINDS
    assert HardwareProfile.from_json(profile.to_json()) == profile


def test_table_profiles() -> None:
    assert len(list_hardware("nb201")) == 7 and len(list_hardware("fbnet")) == 4
    p = get_hardware("raspi4", space="nb201")
    assert (p.name, p.kind, p.device, p.space, p.batch_size) == (
        "nb201:raspi4",
        "table",
        "raspi4",
        "nb201",
        1,
    )
    assert get_hardware("raspi4", space="fbnet").name == "fbnet:raspi4"
    assert get_hardware("1080ti_32", space="nb201").batch_size == 32
    assert get_hardware("gpu", space="nb201").name == "nb201:1080ti_1"
    assert get_hardware("nb201:pixel3").device == "pixel3"
    assert get_hardware("cpu", space="nb201").kind == "measured"


def test_batch_size_check() -> None:
    get_hardware("nb201:1080ti_32").check_batch_size(32)
    get_hardware("nb201:raspi4").check_batch_size(None)
    with pytest.raises(ProfileError, match="measured at batch size 32; pass --batch-size 32"):
        get_hardware("nb201:1080ti_32").check_batch_size(None)


def test_unknown_names() -> None:
    with pytest.raises(ProfileError, match=r"unknown hardware 'raspi5' for nb201; known: .*raspi4"):
        get_hardware("raspi5", space="nb201")
    with pytest.raises(
        ProfileError, match=r"unknown hardware 'eyeriss' for fbnet; known: .*pixel3"
    ):
        get_hardware("eyeriss", space="fbnet")
    with pytest.raises(ProfileError, match=r"known: .*cpu.*nb201:raspi4"):
        get_hardware("tpu")
    with pytest.raises(ProfileError, match="belongs to space fbnet, not nb201"):
        get_hardware("fbnet:raspi4", space="nb201")


def test_user_profiles_found_by_name() -> None:
    save_profile(_here("lab-box"))
    assert "lab-box" in list_hardware()
    profile = get_hardware("lab-box")
    assert (profile.name, profile.kind, profile.notes) == ("lab-box", "measured", "test")
    assert get_hardware("lab-box", space="nb201").kind == "measured"


def test_register_and_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "_REGISTRY", dict(hardware._REGISTRY))

    @register_hardware("toy:box")
    def _toy() -> HardwareProfile:
        return HardwareProfile(name="toy:box", kind="table", device="box", space="toy")

    assert get_hardware("box", space="toy").device == "box"
    with pytest.raises(ValueError, match="already registered"):
        register_hardware("toy:box")(_toy)
    with pytest.raises(ValueError, match="already registered"):
        register_hardware("cpu")(_toy)


# --- roofline ------------------------------------------------------------------------------


def _convnet(width: int, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def test_layer_costs() -> None:
    costs = layer_costs(_convnet(8), (3, 16, 16), batch_size=2)
    assert [c.kind for c in costs] == [
        "conv",
        "norm",
        "act",
        "conv",
        "norm",
        "act",
        "pool",
        "linear",
    ]
    first = costs[0]
    assert first.name == "0"
    assert first.flops == 2 * (2 * 8 * 16 * 16) * 27 + 2 * 8 * 16 * 16
    assert first.bytes == 4 * (2 * 3 * 16 * 16 + 2 * 8 * 16 * 16 + 8 * 27 + 8)
    pool = layer_costs(nn.MaxPool2d(3, 2, 1), (8, 16, 16))[0]
    assert (pool.kind, pool.flops) == ("pool", 8 * 8 * 8 * 9)
    half = layer_costs(_convnet(8), (3, 16, 16), batch_size=2, dtype="fp16")
    assert half[0].bytes == first.bytes / 2


def test_bigger_model_costs_more() -> None:
    small = roofline_ms(_convnet(8), (3, 16, 16), "a100")
    big = roofline_ms(_convnet(64, depth=4), (3, 16, 16), "a100")
    assert big.ms > small.ms and big.kernels > small.kernels
    assert small.label == LABEL == "roofline estimate" and small.gpu == "a100_80gb"
    assert max(small.compute_ms, small.memory_ms) <= small.ms - small.overhead_ms + 1e-12
    assert small.ms - small.overhead_ms <= small.compute_ms + small.memory_ms + 1e-12


def test_bound_classification() -> None:
    big_conv = layer_costs(nn.Conv2d(256, 256, 3, padding=1), (256, 14, 14))[0]
    relu = layer_costs(nn.ReLU(), (256, 14, 14))[0]
    assert bound(big_conv, "h100") == "compute"
    assert bound(relu, "h100") == "memory"
    assert bound(relu, "h100", "fp16") == "memory"


def test_fp16_faster_for_conv_heavy_model() -> None:
    net = _convnet(64, depth=3)
    fp32 = roofline_ms(net, (3, 16, 16), "h100", batch_size=4, dtype="fp32")
    fp16 = roofline_ms(net, (3, 16, 16), "h100", batch_size=4, dtype="fp16")
    assert fp16.ms < fp32.ms and fp16.compute_ms < fp32.compute_ms / 5
    # more bandwidth, same compute: the H200 is never slower
    assert roofline_ms(net, (3, 16, 16), "h200", batch_size=4).ms <= fp32.ms


def test_roofline_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown GPU 'b300'.*known: h100, h200"):
        roofline_ms(_convnet(8), (3, 16, 16), "b300")
    with pytest.raises(ValueError, match="no bf16"):
        roofline_ms(_convnet(8), (3, 16, 16), "v100", dtype="bf16")
    with pytest.raises(ValueError, match="unknown dtype"):
        roofline_ms(_convnet(8), (3, 16, 16), dtype="int8")  # type: ignore[arg-type]


def test_gpu_names() -> None:
    assert gpu_peak("A100-40GB") == GPUS["a100_40gb"]
    assert match_gpu("NVIDIA H100 80GB HBM3") == "h100"
    assert match_gpu("NVIDIA A100-SXM4-40GB") == "a100_40gb"
    assert match_gpu("NVIDIA GeForce RTX 4090") == "rtx4090"
    assert match_gpu("Intel Arc") is None


def test_roofline_leaves_model_alone() -> None:
    net = _convnet(8).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    roofline_ms(net, (3, 16, 16), batch_size=4)
    assert net.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


# --- imports -------------------------------------------------------------------------------

_LIGHT = """
import sys
for heavy in ("optuna", "sklearn", "pymoo", "torch_pruning", "botorch", "nas.search"):
    sys.modules[heavy] = None  # importing any of them now raises ImportError
import nas.predictors.measure, nas.predictors.hardware, nas.predictors.roofline
loaded = [m for m in ("onnx", "onnxruntime") if m in sys.modules]
assert not loaded, loaded
"""


def test_imports_need_only_torch() -> None:
    r = subprocess.run([sys.executable, "-c", _LIGHT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
