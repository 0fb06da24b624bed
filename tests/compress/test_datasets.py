"""Data loaders: the stored MNIST split, every source, batches for a model, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.compress.arch import Preprocessing
from nas.compress.datasets import (
    MNIST_SPLIT,
    ImageData,
    batches,
    default_preprocessing,
    load_data,
    make_mnist_split,
)
from nas.search.errors import UserError


def _png(path: Path, value: int, size: tuple[int, int] = (12, 12), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color: int | tuple[int, int, int] = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, size, color).save(path)


def _folder(root: Path, per_class: int = 10, mode: str = "RGB") -> Path:
    for label, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            _png(root / name / f"{i}.png", 20 * label + i, mode=mode)
    return root


def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


# -- MNIST ---------------------------------------------------------------------------------------
def test_mnist_split_file_is_reproducible_disjoint_stratified_and_complete() -> None:
    stored = json.loads(MNIST_SPLIT.read_text())
    assert make_mnist_split() == stored
    parts = {s: np.array(stored[s]) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in parts.items()} == {"train": 3500, "val": 500, "test": 1000}
    everything = np.concatenate(list(parts.values()))
    assert sorted(everything.tolist()) == list(range(5000))  # disjoint and covering
    y = load_data("mnist", "train").y  # only to get labels: compare counts per class
    assert torch.bincount(y).tolist() == [350] * 10
    assert torch.bincount(load_data("mnist", "val").y).tolist() == [50] * 10
    assert torch.bincount(load_data("mnist", "test").y).tolist() == [100] * 10


def test_mnist_loads_cached_limited_and_shuffled() -> None:
    val = load_data("mnist", "val")
    assert isinstance(val, ImageData)
    assert val.x.shape == (500, 1, 28, 28) and val.x.dtype == torch.float32
    assert val.y.dtype == torch.int64 and val.classes == tuple(str(i) for i in range(10))
    assert float(val.x.min()) >= 0.0 and float(val.x.max()) == 1.0
    assert load_data("mnist", "val") is val
    head = load_data("mnist", "val", limit=20)
    assert len(head) == 20 and torch.equal(head.x, val.x[:20])
    assert len(set(head.y.tolist())) > 3  # the split's order mixes the classes


def test_digits_split_sizes_and_range() -> None:
    parts = [load_data("digits", s) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [1258, 180, 359]
    assert parts[0].x.shape[1:] == (1, 8, 8) and float(parts[0].x.max()) <= 1.0
    assert set(parts[2].y.tolist()) == set(range(10))


# -- folders and npz -----------------------------------------------------------------------------
def test_image_folder_skips_other_files_and_resizes_odd_images(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    (root / "cat" / "notes.txt").write_text("not an image")
    _png(root / "dog" / "big.png", 200, size=(30, 20))
    parts = [load_data(str(root), s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 21
    assert parts[0].classes == ("cat", "dog") and parts[0].x.shape[1:] == (3, 12, 12)
    assert set(parts[2].y.tolist()) == {0, 1}  # stratified
    pixels = torch.cat([p.x for p in parts]).flatten(1)
    assert len({tuple(r.tolist()) for r in pixels}) == 21  # no image lost or doubled


def test_grey_folder_keeps_one_channel(tmp_path: Path) -> None:
    root = _folder(tmp_path / "grey", mode="L")
    data = load_data(str(root), "train")
    assert data.channels == 1 and len(data) == 14


def test_presplit_folder_is_used_as_given(tmp_path: Path) -> None:
    _folder(tmp_path / "ds" / "train", per_class=3)
    _png(tmp_path / "ds" / "val" / "dog" / "a.png", 7)
    _png(tmp_path / "ds" / "val" / "emu" / "b.png", 9)
    val = load_data(str(tmp_path / "ds"), "val")
    assert val.classes == ("cat", "dog", "emu") and sorted(val.y.tolist()) == [1, 2]
    assert len(load_data(str(tmp_path / "ds"), "train")) == 6
    with pytest.raises(UserError, match="no test/ sub-folder"):
        load_data(str(tmp_path / "ds"), "test")


def test_npz_uint8_and_float_with_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    grey = _npz(tmp_path / "g.npz", x=rng.integers(0, 256, (40, 9, 9), dtype=np.uint8), y=y)
    data = load_data(grey, "train")
    assert data.x.shape == (28, 1, 9, 9) and data.classes == ("0", "1", "2", "3")
    rgb = rng.random((40, 6, 6, 3)).astype(np.float32)
    names = np.array(["a", "b", "c", "d"])
    colour = load_data(_npz(tmp_path / "c.npz", x=rgb, y=y, classes=names), "test")
    assert colour.x.shape == (8, 3, 6, 6) and colour.classes == ("a", "b", "c", "d")


# -- batches -------------------------------------------------------------------------------------
def test_batches_resize_replicate_and_normalise() -> None:
    data = load_data("mnist", "val", limit=100)
    pre = default_preprocessing(data, 32)
    assert pre.channels == 3 and pre.classes == data.classes and pre.mean[0] == pre.mean[2]
    out = list(batches(data, pre, 32))
    assert [x.shape for x, _ in out] == [(32, 3, 32, 32)] * 3 + [(4, 3, 32, 32)]
    x = torch.cat([b[0] for b in out])
    assert torch.equal(x[:, 0], x[:, 2])  # grey replicated
    same = Preprocessing((28, 28), 1, pre.mean[:1], pre.std[:1])
    z = torch.cat([b[0] for b in batches(data, same, 50)])
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1.0) < 1e-3
    assert torch.equal(torch.cat([b[1] for b in out]), data.y)


def test_batches_average_colour_for_one_channel_and_shrink() -> None:
    x = torch.zeros(2, 3, 16, 16)
    x[:, 0], x[:, 1], x[:, 2] = 0.3, 0.6, 0.9
    data = ImageData(x, torch.tensor([0, 1]), ("a", "b"), "mem")
    pre = Preprocessing((8, 8), 1, (0.5,), (0.25,))
    xb, _ = next(batches(data, pre, 2))
    assert xb.shape == (2, 1, 8, 8) and torch.allclose(xb, torch.full_like(xb, 0.4))


def test_shuffle_and_augment_are_seeded() -> None:
    data = load_data("digits", "val")
    pre = Preprocessing((8, 8), 1, (0.0,), (1.0,))

    def run(seed: int, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        parts = list(batches(data, pre, 64, shuffle=True, seed=seed, augment=augment))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    x1, y1 = run(1, False)
    assert torch.equal(y1.sort().values, data.y.sort().values) and not torch.equal(y1, data.y)
    xa, ya = run(1, True)
    assert torch.equal(ya, y1) and not torch.equal(xa, x1) and xa.shape == x1.shape
    assert torch.equal(run(1, True)[0], xa) and not torch.equal(run(2, True)[0], xa)


# -- bad input -----------------------------------------------------------------------------------
def test_bad_sources_are_one_line_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "a.txt").write_text("x")
    (tmp_path / "bad.png").mkdir()
    _png(tmp_path / "corrupt" / "c" / "ok.png", 1)
    (tmp_path / "corrupt" / "c" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "f.csv").write_text("1,2")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    cases = {
        "cifar10": "no such file or folder.*built-in: mnist, digits",
        str(tmp_path / "nope"): "no such file",
        str(tmp_path / "empty"): "holds no images",
        str(tmp_path / "corrupt"): "broken.png: not a readable image",
        str(tmp_path / "f.csv"): "expected a folder .* or an .npz",
        str(tmp_path / "junk.npz"): "not a readable npz",
    }
    for spec, match in cases.items():
        with pytest.raises(UserError, match=match) as e:
            load_data(spec)
        assert "\n" not in str(e.value)


def test_bad_npz_contents(tmp_path: Path) -> None:
    x = np.zeros((20, 5, 5), np.uint8)
    y = np.repeat(np.arange(2), 10)
    cases: dict[str, tuple[dict[str, np.ndarray], str]] = {
        "noy": ({"x": x}, "must hold arrays 'x' and 'y'"),
        "len": ({"x": x, "y": y[:-1]}, "x has 20 samples but y has 19"),
        "xint": ({"x": x.astype(np.int32), "y": y}, "must be uint8 .* or float"),
        "xrange": ({"x": x.astype(np.float32) + 2.0, "y": y}, "must lie in 0..1"),
        "yfloat": ({"x": x, "y": y.astype(np.float64)}, "integer labels"),
        "shape": ({"x": np.zeros((20, 5, 5, 2), np.uint8), "y": y}, "C 1 or 3"),
    }
    for name, (arrays, match) in cases.items():
        path = _npz(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(UserError, match=match):
            load_data(path)


def test_bad_split_limit_and_preprocessing() -> None:
    with pytest.raises(UserError, match="unknown data split 'dev'; known: train, val, test"):
        load_data("digits", "dev")
    with pytest.raises(UserError, match="at least 1"):
        load_data("digits", limit=0)
    data = load_data("digits", "val")
    with pytest.raises(UserError, match="3 channels; the model expects 4"):
        rgb = ImageData(data.x.repeat(1, 3, 1, 1), data.y, data.classes, "rgb")
        batches(rgb, Preprocessing((8, 8), 4, (0.5,), (0.5,)), 8)
    with pytest.raises(UserError, match="mean has 2 values for 3 channels"):
        batches(data, Preprocessing((8, 8), 3, (0.5, 0.5), (0.5,)), 8)
