"""Teacher training (``nas train``): a zoo architecture trained on real data, on the CPU.

SGD with Nesterov momentum, weight decay on weights only, a short linear warm-up then cosine
decay to zero over the planned steps or the time budget, whichever is further along (so a run
cut short by ``--minutes`` still ends annealed); random shifts of up to 1/8 of the image as
augmentation (optional). The validation split is measured after every epoch, the test split
once at the end (it never chooses anything). The result is a standalone model, safetensors +
JSON (:func:`nas.compress.save_model`), whose ``origin`` describes the run: architecture and
arguments, data, epochs, seed, validation and test top-1.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nas.compress.arch import Network
from nas.search.errors import UserError

log = logging.getLogger("nas")


@dataclass(frozen=True)
class TeacherConfig:
    """One teacher training run (stored in the model's ``origin``)."""

    arch: str
    data: str
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0
    minutes: float = 60.0
    limit: int | None = None  # train on the first N training images (quick trials)
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise UserError("--lr must be positive and the weight decay not negative")
        if not self.minutes > 0:
            raise UserError("--minutes must be positive")


def build_teacher(
    cfg: TeacherConfig, classes: int, channels: int
) -> tuple[Network, dict[str, Any]]:
    """The untrained network and all its arguments (``num_classes`` / ``in_channels`` from the
    data unless given)."""
    from nas.compress.loading import build_model, factory_arguments

    takes = factory_arguments(cfg.arch)
    defaults = {"num_classes": classes, "in_channels": channels}
    kwargs = {k: v for k, v in defaults.items() if takes is None or k in takes}
    kwargs |= dict(cfg.arch_kwargs)
    net = build_model(cfg.arch, kwargs)
    if not isinstance(net, Network):
        raise UserError(f"{cfg.arch} is not described by a layer spec; nas train needs one")
    if net.output_names != ["logits"]:
        names = ", ".join(net.output_names)
        raise UserError(f"{cfg.arch} has the outputs {names}, not class logits: cannot train it")
    return net, kwargs


def _optimizer(net: Network, cfg: TeacherConfig) -> torch.optim.Optimizer:
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=0.0)


def train_teacher(cfg: TeacherConfig) -> tuple[Network, dict[str, Any]]:
    """Train a teacher; returns the network (eval mode) and its description (``origin``).

    Raises:
        UserError: bad data or architecture, or a loss that became NaN or infinite.
    """
    from nas.compress.datasets import default_preprocessing, load_data

    torch.manual_seed(cfg.seed)
    train = load_data(cfg.data, "train", limit=cfg.limit)
    val = load_data(cfg.data, "val")
    net, kwargs = build_teacher(cfg, len(train.classes), train.channels)
    pre = net.preprocessing
    net.preprocessing = default_preprocessing(train, pre.input_size, channels=pre.channels)
    t0 = time.monotonic()
    history = _fit(net, cfg, train, val)
    test = _top1(net, load_data(cfg.data, "test"))
    origin = {
        "kind": "teacher",
        "arch": cfg.arch,
        "arch_kwargs": kwargs,
        "data": cfg.data,
        "epochs": cfg.epochs,
        "epochs_done": len(history),
        "seed": cfg.seed,
        "train_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "arch_kwargs"},
        "train_images": len(train),
        "val_top1": history[-1]["val_top1"] if history else None,
        "test_top1": test,
        "seconds": round(time.monotonic() - t0, 1),
        "history": history,
    }
    net.origin = origin
    return net.eval(), origin


def _top1(net: Network, data: Any) -> float:
    from nas.compress.datasets import batches
    from nas.compress.evaluate import top1

    return round(top1(net, batches(data, net.preprocessing, 250)), 2)


def _fit(net: Network, cfg: TeacherConfig, train: Any, val: Any) -> list[dict[str, Any]]:
    """The training loop; one history row per epoch (loss, validation top-1, seconds)."""
    from nas.compress.datasets import batches
    from nas.supernets.train import lr_at

    opt = _optimizer(net, cfg)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    seconds = 60.0 * cfg.minutes
    t0, done, history = time.monotonic(), 0, []
    for epoch in range(cfg.epochs):
        net.train().to(cfg.device)
        total, n, progress = 0.0, 0, 0.0
        seed = cfg.seed * 1000 + epoch
        pre = net.preprocessing
        for x, y in batches(
            train, pre, cfg.batch_size, shuffle=True, seed=seed, augment=cfg.augment
        ):
            progress = max(done / steps, (time.monotonic() - t0) / seconds)
            if progress >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(progress, cfg.lr, warmup=0.05)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x.to(cfg.device)), y.to(cfg.device))
            if not torch.isfinite(loss):
                raise UserError(f"training diverged: the loss became {loss.item()} (lower --lr)")
            loss.backward()
            opt.step()
            total, n, done = total + loss.item() * len(y), n + len(y), done + 1
        row = {
            "epoch": epoch + 1,
            "loss": round(total / max(n, 1), 4),
            "val_top1": _top1(net, val),
            "seconds": round(time.monotonic() - t0, 1),
        }
        history.append(row)
        log.info(
            "epoch %d/%d loss %.4f val %.2f%% (%.0f s)",
            epoch + 1,
            cfg.epochs,
            row["loss"],
            row["val_top1"],
            row["seconds"],
        )
        if progress >= 1.0:
            log.warning("time budget used after %d of %d steps", done, steps)
            break
    return history


def teacher_paths(out: Path, arch: str, data: str) -> Path:
    """The stem ``out/<arch>-<data>`` (an import path's factory name stands for ``arch``)."""
    name = arch.rpartition(":")[2] if ":" in arch else arch
    source = data if data in ("mnist", "digits") else Path(data).stem
    return out / f"{name}-{source}"


def train_command(cfg: TeacherConfig, out: Path) -> tuple[Path, Path, dict[str, Any]]:
    """``nas train``: train, then write ``<out>/<arch>-<data>.safetensors`` and ``.json``."""
    from nas.compress.model_io import save_model

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: not a folder")
    net, origin = train_teacher(cfg)
    weights, arch = save_model(net.cpu(), teacher_paths(out, cfg.arch, cfg.data), origin)
    return weights, arch, origin
