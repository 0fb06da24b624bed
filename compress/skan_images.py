"""S-ConvKAN image classifiers: the networks, their same-size CNN, and three-phase training.

The S-ConvKAN of :func:`convkan_spec` is ``convkan(C -> w1, 3x3, stride s1) -> bn ->
convkan(w1 -> w2, 3x3, stride 2) -> bn -> ... -> flatten -> linear(classes)``: strides 2 on
MNIST's 28x28 (28 -> 14 -> 7), 1 then 2 on the 8x8 digits (8 -> 8 -> 4). BatchNorm keeps each
ConvKAN's inputs where its bases live (range ``[-2, 2]``). :func:`cnn_spec` is the same
skeleton with plain 3x3 convolutions + BatchNorm + ReLU; :func:`cnn_matching` widens it until
its parameter count is closest to a given one.

Training (:func:`train_classifier`): Adam, batch 64, random shifts, the epochs' steps split
into the three phases of :func:`nas.compress.skan.train_skan` (50 / 20 / 30 %, so a pruned
S-ConvKAN fine-tunes for the last 30 %); validation top-1 at the end, test top-1 once.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from nas.compress.arch import LayerSpec, Network, build, sequence_output_shape
from nas.compress.skan import Phases, count_params, train_skan

BATCH = 64
KAN_RANGE = [-2.0, 2.0]


def _strides(size: int, depth: int) -> list[int]:
    """Stride 2 while the feature map is at least 14 pixels (or on the last layer), else 1."""
    out = []
    for i in range(depth):
        s = 2 if size >= 14 or i == depth - 1 else 1
        out.append(s)
        size = (size + 2 - 3) // s + 1
    return out


def convkan_spec(
    channels: int,
    size: int,
    classes: int,
    widths: list[int],
    spaces: list[str] | list[list[str]],
    grid: int = 5,
    order: int = 3,
) -> list[LayerSpec]:
    """The S-ConvKAN (or single-space ConvKAN) classifier's layers (see the module doc)."""
    per_layer = spaces if spaces and isinstance(spaces[0], list) else [spaces] * len(widths)
    spec: list[LayerSpec] = []
    c = channels
    for w, s, pool in zip(widths, _strides(size, len(widths)), per_layer, strict=True):
        spec += [
            {
                "type": "convkan",
                "in": c,
                "out": w,
                "kernel": 3,
                "stride": s,
                "padding": 1,
                "spaces": list(pool),
                "grid": grid,
                "order": order,
                "range": KAN_RANGE,
                "choice": None,
            },
            {"type": "bn", "channels": w},
        ]
        c = w
    return _head(spec, channels, size, classes)


def cnn_spec(channels: int, size: int, classes: int, widths: list[int]) -> list[LayerSpec]:
    """The CNN of the same skeleton: 3x3 conv + BatchNorm + ReLU per layer, linear head."""
    spec: list[LayerSpec] = []
    c = channels
    for w, s in zip(widths, _strides(size, len(widths)), strict=True):
        spec.append(
            {
                "type": "conv",
                "in": c,
                "out": w,
                "kernel": 3,
                "stride": s,
                "bn": True,
                "act": "relu",
            }
        )
        c = w
    return _head(spec, channels, size, classes)


def _head(spec: list[LayerSpec], channels: int, size: int, classes: int) -> list[LayerSpec]:
    c, h, w = sequence_output_shape(spec, (channels, size, size))
    return [*spec, {"type": "flatten"}, {"type": "linear", "in": c * h * w, "out": classes}]


def cnn_matching(
    channels: int, size: int, classes: int, widths: list[int], params: int
) -> list[LayerSpec]:
    """The CNN whose widths (``widths`` scaled by one factor) give the parameter count closest
    to ``params``."""
    best: list[LayerSpec] = []
    best_gap = math.inf
    for scale in [x / 8 for x in range(2, 65)]:
        ws = [max(1, round(w * scale)) for w in widths]
        spec = cnn_spec(channels, size, classes, ws)
        gap = abs(count_params(build(spec)) - params)
        if gap < best_gap:
            best, best_gap = spec, gap
    return best


def classifier(data: Any, spec: list[LayerSpec]) -> Network:
    """The network of ``spec`` with the data's preprocessing (native image size)."""
    from nas.compress.datasets import default_preprocessing

    net = build(spec)
    net.preprocessing = default_preprocessing(
        data, (int(data.x.shape[-2]), int(data.x.shape[-1])), channels=data.channels
    )
    return net


def train_classifier(
    net: Network,
    train: Any,
    epochs: int,
    seed: int,
    *,
    lr: float = 3e-3,
    minutes: float | None = None,
) -> dict[str, Any]:
    """Train ``net`` on ``train`` (an :class:`~nas.compress.datasets.ImageData`) in three phases.

    ``minutes`` caps the time: the planned steps shrink to what the pace of three timed steps
    of the (mixed) network allows.

    Returns:
        ``history`` (per phase), ``steps``, ``seconds``, ``params`` (after pruning).
    """
    torch.manual_seed(seed)
    per_epoch = math.ceil(len(train) / BATCH)
    steps = epochs * per_epoch
    batch = epoch_batches(train, net.preprocessing, per_epoch, seed)
    if minutes is not None:
        steps = min(steps, _affordable(net, batch, minutes))
    t0 = time.monotonic()
    net.train()
    history = train_skan(
        net,
        batch,
        F.cross_entropy,
        Phases(int(0.5 * steps), int(0.2 * steps), steps - int(0.5 * steps) - int(0.2 * steps)),
        lr=lr,
    )
    return {
        "history": history,
        "steps": steps,
        "seconds": round(time.monotonic() - t0, 1),
        "params": count_params(net),
    }


def epoch_batches(train: Any, pre: Any, per_epoch: int, seed: int) -> Any:
    """``batch(step)``: the training batches, reshuffled (and shifted) each epoch, one epoch
    held in memory at a time."""
    from nas.compress.datasets import batches

    cache: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch = step // per_epoch
        if epoch not in cache:
            cache.clear()
            order = seed * 1000 + epoch
            cache[epoch] = list(batches(train, pre, BATCH, shuffle=True, seed=order, augment=True))
        return cache[epoch][step % per_epoch]

    return batch


def _affordable(net: Network, batch: Any, minutes: float) -> int:
    """Steps that fit in ``minutes``, judged from three timed forward + backward passes."""
    x, y = batch(0)
    probe = copy.deepcopy(net).train()  # leaves the network's BatchNorm statistics alone
    t0 = time.monotonic()
    for _ in range(3):
        F.cross_entropy(probe(x), y).backward()
    per_step = (time.monotonic() - t0) / 3
    return max(1, int(60.0 * minutes / max(per_step, 1e-6)))


def top1(net: Network, data: Any) -> float:
    """Top-1 (percent) of ``net`` on ``data``."""
    from nas.compress.datasets import batches
    from nas.compress.evaluate import top1 as _top1

    net.eval()
    return round(float(_top1(net, batches(data, net.preprocessing, 250))), 2)
