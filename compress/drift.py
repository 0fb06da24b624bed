"""Output drift: how far a compressed model's outputs moved from the original's, without labels.

Models that ship without their task data (the MTCNN nets) are judged by drift on a fixed, seeded
probe set at the net's input size: uniform noise, and RGB crops cut from MNIST digits (tinted,
on a tinted background, so every channel varies). For every output head: the mean and largest
absolute difference, and the cosine similarity of the flattened outputs, sample by sample,
averaged. The headline figure is the smallest cosine over the heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas.compress.arch import Preprocessing

#: probe sizes and seed of the issue's protocol
NOISE_PROBES = 512
DIGIT_PROBES = 512
PROBE_SEED = 0


def probe_images(
    pre: Preprocessing,
    *,
    noise: int = NOISE_PROBES,
    digits: int = DIGIT_PROBES,
    seed: int = PROBE_SEED,
) -> torch.Tensor:
    """Probe inputs (noise + digit crops), normalised as ``pre`` asks: (N, C, H, W) float32."""
    g = torch.Generator().manual_seed(seed)
    h, w = pre.input_size
    parts = [torch.rand(noise, 3, h, w, generator=g)]
    if digits:
        parts.append(_digit_crops(digits, (h, w), g))
    x = torch.cat(parts)
    if pre.channels == 1:
        x = x.mean(1, keepdim=True)
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


def _digit_crops(n: int, size: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """``n`` RGB images in 0..1: a random square crop of a random MNIST training digit, resized,
    the ink and the paper each a random colour."""
    from nas.compress.datasets import load_data

    train = load_data("mnist", "train")
    idx = torch.randint(len(train), (n,), generator=g)
    src = train.x[idx]  # (n, 1, 28, 28) in 0..1
    side = src.shape[-1]
    out = torch.empty(n, 3, *size)
    crop = torch.randint(side // 2, side + 1, (n,), generator=g)
    for i in range(n):
        c = int(crop[i])
        top, left = (int(torch.randint(side - c + 1, (1,), generator=g)) for _ in range(2))
        patch = src[i : i + 1, :, top : top + c, left : left + c]
        out[i] = F.interpolate(patch, size=size, mode="bilinear", align_corners=False)[0]
    ink, paper = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    return (paper + (ink - paper) * out).clamp(0, 1)


@dataclass(frozen=True)
class HeadDrift:
    """Drift of one output head."""

    head: str
    mean_abs: float
    max_abs: float
    cosine: float


def outputs(model: nn.Module, x: torch.Tensor, batch: int = 256) -> list[torch.Tensor]:
    """Every head's output of ``model`` on ``x`` (eval mode, in batches)."""
    model.eval()
    chunks: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            y = model(x[i : i + batch])
            chunks.append(list(y) if isinstance(y, tuple) else [y])
    return [torch.cat([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def drift(
    reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor], names: Sequence[str]
) -> list[HeadDrift]:
    """Per-head drift of ``candidate`` outputs from ``reference`` outputs (same inputs).

    Raises:
        ValueError: a head count or shape that differs.
    """
    if len(reference) != len(candidate) or len(reference) != len(names):
        raise ValueError(f"{len(candidate)} outputs, expected {len(reference)} ({list(names)})")
    result = []
    for name, a, b in zip(names, reference, candidate, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"head {name}: shape {tuple(b.shape)}, expected {tuple(a.shape)}")
        a2, b2 = a.double().flatten(1), b.double().flatten(1)
        diff = (a2 - b2).abs()
        if not torch.isfinite(b2).all():
            cos = float("nan")
        else:
            cos = float(F.cosine_similarity(a2, b2, dim=1, eps=1e-12).mean())
        result.append(HeadDrift(name, float(diff.mean()), float(diff.max()), cos))
    return result
