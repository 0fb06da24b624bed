"""Knowledge distillation of a compressed model from its original, keeping its zeros zero.

With labelled data the student learns from the teacher's softened logits and the labels (Hinton
et al., 2015: temperature 4, weight 0.9 on the soft targets); without data (a model judged by
drift) it matches every output head of the teacher (mean squared error) on probe images drawn
with another seed than the probes it is judged on. SGD with Nesterov momentum and a cosine
schedule; weights that were pruned to zero are reset to zero after every step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F

from nas.compress.arch import Network
from nas.compress.pruning import weight_masks
from nas.search.errors import UserError

log = logging.getLogger("nas")

TEMPERATURE = 4.0
SOFT_WEIGHT = 0.9
#: probe images per epoch when there is no data, and their seed (the judged probes use 0)
PROBE_IMAGES = 2048
PROBE_SEED = 1


def distill(
    student: Network,
    teacher: Network,
    *,
    epochs: int,
    data: str | None,
    seed: int = 0,
    lr: float = 0.01,
    batch_size: int = 128,
    device: str = "cpu",
    limit: int | None = None,
    objective: Literal["kd", "logits"] = "kd",
) -> list[dict[str, Any]]:
    """Fine-tune ``student`` in place for ``epochs``; one history row (epoch, loss) per epoch.

    ``limit`` trains on the first images of the training split only; ``objective`` ``logits``
    regresses the teacher's outputs (squared error, as N2N does) instead of soft targets and
    labels.

    Raises:
        UserError: ``epochs`` below 1, or the loss became NaN.
    """
    from nas.supernets.train import lr_at

    if epochs < 1:
        raise UserError(f"--finetune-epochs must be at least 1, not {epochs}")
    masks = {k: v.to(device) for k, v in weight_masks(student).items()}
    params = dict(student.named_parameters())
    torch.manual_seed(seed)
    teacher.eval().to(device)
    student.to(device)
    opt = torch.optim.SGD(
        student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps_per_epoch = math.ceil(_epoch_size(data, limit) / batch_size)
    total, done, history = epochs * steps_per_epoch, 0, []
    for epoch in range(epochs):
        student.train()
        loss_sum, n = 0.0, 0
        for x, y in _batches(student, data, batch_size, seed * 1000 + epoch, limit):
            for group in opt.param_groups:
                group["lr"] = lr_at(done / total, lr, warmup=0.0)
            x = x.to(device)
            with torch.no_grad():
                target = teacher(x)
            labels = None if y is None or objective == "logits" else y.to(device)
            loss = _loss(student(x), target, labels)
            if not torch.isfinite(loss):
                raise UserError(f"fine-tuning diverged: the loss became {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
            loss_sum, n, done = loss_sum + loss.item() * len(x), n + len(x), done + 1
        history.append({"epoch": epoch + 1, "loss": round(loss_sum / max(n, 1), 5)})
        log.info("fine-tune epoch %d/%d loss %.5f", epoch + 1, epochs, history[-1]["loss"])
    student.eval()
    return history


def match_heads(out: Any, target: Any) -> torch.Tensor:
    """Sum over output heads of the squared error to the teacher's outputs."""
    outs = out if isinstance(out, tuple) else (out,)
    targets = target if isinstance(target, tuple) else (target,)
    return sum((F.mse_loss(o, t) for o, t in zip(outs, targets, strict=True)), torch.tensor(0.0))


def _loss(out: Any, target: Any, y: torch.Tensor | None) -> torch.Tensor:
    if y is None:  # drift or logit regression: match every head
        return match_heads(out, target)
    t = TEMPERATURE
    soft = F.kl_div(F.log_softmax(out / t, 1), F.softmax(target / t, 1), reduction="batchmean") * (
        t * t
    )
    return SOFT_WEIGHT * soft + (1 - SOFT_WEIGHT) * F.cross_entropy(out, y)


def _epoch_size(data: str | None, limit: int | None) -> int:
    from nas.compress.datasets import load_data

    return len(load_data(data, "train", limit=limit)) if data else PROBE_IMAGES


def _batches(
    model: Network, data: str | None, batch_size: int, seed: int, limit: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    from nas.compress.datasets import batches, load_data
    from nas.compress.drift import probe_images

    if data:
        train = load_data(data, "train", limit=limit)
        yield from batches(
            train, model.preprocessing, batch_size, shuffle=True, seed=seed, augment=True
        )
        return
    half = PROBE_IMAGES // 2
    x = probe_images(model.preprocessing, noise=half, digits=half, seed=PROBE_SEED + seed)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(x), batch_size):
        yield x[order[i : i + batch_size]], None
