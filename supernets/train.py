"""Supernet training: progressive shrinking with in-place distillation (sandwich rule).

Once-for-All trains the largest network first, then makes one family of dimensions elastic at a
time (MobileNetV3: kernel, then depth, then expand ratio), so small sub-networks are fine-tuned
from the large ones instead of competing with them from scratch. Each step here follows the
sandwich rule of BigNAS / in-place distillation: the largest sub-network learns from the labels,
then the smallest and two random sub-networks (of the dimensions elastic so far, each at a random
training resolution) learn from the largest one's soft outputs; one optimiser step per batch.

A checkpoint (safetensors with its metadata) is written after every phase; rerunning the same
command resumes after the last finished phase. The final checkpoint's metadata holds the
training resolutions, which then replace the supernet's default resolution choices.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nas.compress.arch import Preprocessing, count_macs
from nas.supernets.elastic import ElasticSupernet, SubnetParams

log = logging.getLogger("nas")

#: the order in which each family's dimensions become elastic (after the "full" phase)
SHRINK_ORDER: dict[str, tuple[str, ...]] = {
    "mobilenetv3": ("k", "d", "e"),
    "mobilenetv3_w12": ("k", "d", "e"),
    "resnet50": ("d", "e", "w"),
}
PHASE_NAMES = {"k": "kernel", "d": "depth", "e": "expand", "w": "width"}


@dataclass(frozen=True)
class TrainConfig:
    """How a supernet is trained; stored in every checkpoint's metadata."""

    supernet: str
    data: str
    resolutions: tuple[int, ...] = (24, 28, 32)
    epochs: tuple[int, ...] = (6, 4, 4, 6)  # full, then one per elastic family
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 3e-5
    seed: int = 0
    device: str = "cpu"
    minutes: float = 30.0
    random_subnets: int = 2
    extra: Mapping[str, Any] = field(default_factory=dict)


def prefix(name: str) -> str:
    """The family of a dimension name: ``k12`` -> ``k``."""
    return name.rstrip("0123456789")


def phase_space(net: ElasticSupernet, elastic: set[str]) -> dict[str, tuple[Any, ...]]:
    """Choices of every dimension with only the families in ``elastic`` free (others at max)."""
    return {k: (v if prefix(k) in elastic else (max(v),)) for k, v in net.choices().items()}


def kd_loss(student: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's soft targets."""
    return -(teacher_probs * F.log_softmax(student, dim=1)).sum(1).mean()


def _resize(x: torch.Tensor, r: int) -> torch.Tensor:
    if x.shape[-1] == r:
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)


def sandwich_step(
    net: ElasticSupernet,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    space: Mapping[str, Sequence[Any]],
    resolutions: Sequence[int],
    rng: random.Random,
    n_random: int,
) -> float:
    """One optimiser step: largest on labels, then smallest + random ones distilled from it."""
    opt.zero_grad(set_to_none=True)
    net.set_active({k: max(v) for k, v in space.items()})
    logits = net(_resize(x, max(resolutions)))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    soft = logits.detach().softmax(1)
    total = float(loss)
    free = any(len(v) > 1 for v in space.values()) or len(resolutions) > 1
    if free:
        subs = [{k: min(v) for k, v in space.items()}]
        subs += [{k: rng.choice(list(v)) for k, v in space.items()} for _ in range(n_random)]
        rs = [min(resolutions)] + [rng.choice(list(resolutions)) for _ in range(n_random)]
        for sub, r in zip(subs, rs, strict=True):
            net.set_active(sub)
            sub_loss = kd_loss(net(_resize(x, r)), soft)
            sub_loss.backward()
            total += float(sub_loss)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    if not math.isfinite(total):
        raise FloatingPointError("the training loss became NaN or infinite")
    return total


def _optimizer(net: ElasticSupernet, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in net.named_parameters() if p.ndim > 1 and "matrix" not in n]
    rest = [p for n, p in net.named_parameters() if not (p.ndim > 1 and "matrix" not in n)]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=0.0)


def evaluate_subnet(
    net: ElasticSupernet, params: Mapping[str, Any], train: Any, val: Any, device: str = "cpu"
) -> float:
    """Validation top-1 (%) of the extracted sub-network after BatchNorm recalibration."""
    from nas.compress.datasets import batches
    from nas.compress.evaluate import recalibrate_bn, top1

    sub = net.extract(params)
    calib = _head(train, 1000)
    recalibrate_bn(sub, batches(calib, sub.preprocessing, 100), device)
    return top1(sub, batches(val, sub.preprocessing, 250), device)


def _head(data: Any, n: int) -> Any:
    import dataclasses

    return dataclasses.replace(data, x=data.x[:n], y=data.y[:n])


def spearman_accuracy_macs(
    net: ElasticSupernet, train: Any, val: Any, n: int, seed: int, device: str = "cpu"
) -> dict[str, Any]:
    """Spearman correlation of accuracy and MACs over ``n`` random sub-networks."""
    from scipy.stats import spearmanr

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = net.sample(rng)
        r = int(p["r"])
        macs = count_macs(net.extract(p), torch.zeros(1, net.preprocessing.channels, r, r))
        rows.append(
            {"params": p, "macs_m": macs / 1e6, "top1": evaluate_subnet(net, p, train, val, device)}
        )
    rho = spearmanr([r["top1"] for r in rows], [r["macs_m"] for r in rows]).statistic
    return {"spearman": float(rho), "subnets": rows}


Callback = Callable[[str, int, float], None]


class Trainer:
    """Runs the phases of one :class:`TrainConfig`, checkpointing after each."""

    def __init__(self, cfg: TrainConfig, out: Path):
        from nas.compress.datasets import load_data

        self.cfg, self.out = cfg, out
        if cfg.supernet not in SHRINK_ORDER:
            raise ValueError(f"no training recipe for {cfg.supernet}")
        if len(cfg.epochs) != 1 + len(SHRINK_ORDER[cfg.supernet]):
            raise ValueError(f"epochs needs {1 + len(SHRINK_ORDER[cfg.supernet])} numbers")
        self.train_data = load_data(cfg.data, "train")
        self.val_data = load_data(cfg.data, "val")
        self.deadline = time.monotonic() + 60 * cfg.minutes
        self.report: dict[str, Any] = {"phases": []}

    def phases(self) -> list[tuple[str, set[str], int]]:
        order = SHRINK_ORDER[self.cfg.supernet]
        names = ["full"] + [PHASE_NAMES[o] for o in order]
        elastic = [set(order[:i]) for i in range(len(order) + 1)]
        return list(zip(names, elastic, self.cfg.epochs, strict=True))

    def checkpoint(self, phase: str) -> Path:
        return self.out.with_name(f"{self.out.stem}.{phase}.safetensors")

    def new_supernet(self) -> ElasticSupernet:
        from nas.compress.datasets import default_preprocessing
        from nas.supernets.families import build_supernet

        size = max(self.cfg.resolutions)
        pre: Preprocessing = default_preprocessing(self.train_data, size)
        net = build_supernet(
            self.cfg.supernet, n_classes=len(self.train_data.classes), preprocessing=pre
        )
        net.resolutions = tuple(sorted(self.cfg.resolutions))
        return net

    def run(self) -> dict[str, Any]:
        """Train every unfinished phase; returns the report (also saved beside the output)."""
        from nas.supernets.families import load_supernet, save_supernet

        torch.manual_seed(self.cfg.seed)
        net, start = self.new_supernet(), 0
        for i, (name, _, _) in enumerate(self.phases()):
            if self.checkpoint(name).is_file():
                net, start = load_supernet(self.cfg.supernet, self.checkpoint(name)), i + 1
                self.report = json.loads(_meta(self.checkpoint(name)).get("report", "{}"))
                log.info("resuming after phase %s (%s)", name, self.checkpoint(name))
        net.to(self.cfg.device)
        for i, (name, elastic, epochs) in enumerate(self.phases()):
            if i < start:
                continue
            self._phase(net, name, elastic, epochs, i)
            save_supernet(net.cpu(), self.checkpoint(name), self._meta(name))
            net.to(self.cfg.device)
        self.report["final"] = self._final(net)
        save_supernet(net.cpu(), self.out, self._meta("final"))
        self.out.with_suffix(".json").write_text(json.dumps(self.report, indent=1) + "\n")
        return self.report

    def _meta(self, phase: str) -> dict[str, str]:
        cfg = asdict(self.cfg) | {"resolutions": list(self.cfg.resolutions)}
        return {"train": json.dumps(cfg), "phase": phase, "report": json.dumps(self.report)}

    def _phase(
        self, net: ElasticSupernet, name: str, elastic: set[str], epochs: int, index: int
    ) -> None:
        from nas.compress.datasets import batches

        space = phase_space(net, elastic)
        resolutions = self.cfg.resolutions if index > 0 else (max(self.cfg.resolutions),)
        rng = random.Random(self.cfg.seed * 1000 + index)
        opt = _optimizer(net, self.cfg)
        steps = epochs * math.ceil(len(self.train_data.y) / self.cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.cfg.lr, total_steps=max(1, steps), pct_start=0.15
        )
        t0, done, loss = time.monotonic(), 0, float("nan")
        net.train()
        for epoch in range(epochs):
            pre = Preprocessing(
                **{**asdict(net.preprocessing), "input_size": (max(resolutions),) * 2}
            )
            for x, y in batches(
                self.train_data,
                pre,
                self.cfg.batch_size,
                shuffle=True,
                seed=self.cfg.seed + 100 * index + epoch,
                augment=True,
            ):
                loss = sandwich_step(
                    net,
                    opt,
                    x.to(self.cfg.device),
                    y.to(self.cfg.device),
                    space,
                    resolutions,
                    rng,
                    self.cfg.random_subnets,
                )
                sched.step()
                done += 1
            log.info(
                "phase %s epoch %d/%d loss %.3f (%.0f s)",
                name,
                epoch + 1,
                epochs,
                loss,
                time.monotonic() - t0,
            )
            if time.monotonic() > self.deadline:
                log.warning("time budget reached during phase %s; stopping it early", name)
                break
        self.report["phases"].append(self._phase_report(net, name, space, done, t0))

    def _phase_report(
        self,
        net: ElasticSupernet,
        name: str,
        space: Mapping[str, Sequence[Any]],
        steps: int,
        t0: float,
    ) -> dict[str, Any]:
        net.eval()
        big: SubnetParams = {k: max(v) for k, v in space.items()} | {"r": max(self.cfg.resolutions)}
        small: SubnetParams = {k: min(v) for k, v in space.items()} | {
            "r": min(self.cfg.resolutions)
        }
        acc_big = evaluate_subnet(net, big, self.train_data, self.val_data, self.cfg.device)
        acc_small = evaluate_subnet(net, small, self.train_data, self.val_data, self.cfg.device)
        row = {
            "phase": name,
            "steps": steps,
            "seconds": round(time.monotonic() - t0, 1),
            "largest_val_top1": acc_big,
            "smallest_val_top1": acc_small,
        }
        log.info("phase %s: largest %.2f%%, smallest %.2f%% (validation)", name, acc_big, acc_small)
        net.train()
        return row

    def _final(self, net: ElasticSupernet) -> dict[str, Any]:
        net.eval()
        dev = self.cfg.device
        big, small = net.largest(), net.smallest()
        corr = spearman_accuracy_macs(net, self.train_data, self.val_data, 10, self.cfg.seed, dev)
        return {
            "largest_val_top1": evaluate_subnet(net, big, self.train_data, self.val_data, dev),
            "smallest_val_top1": evaluate_subnet(net, small, self.train_data, self.val_data, dev),
            "spearman_top1_macs_10": corr["spearman"],
            "random_subnets": corr["subnets"],
            "seconds_total": sum(p["seconds"] for p in self.report["phases"]),
        }


def _meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def train_command(
    supernet: str,
    data: str,
    out: Path | None,
    resolutions: str,
    minutes: float,
    seed: int,
    device: str,
) -> None:
    """``nas supernet train``: validate the options, train, print the result."""
    from nas.search.errors import UserError

    try:
        res = tuple(sorted({int(r) for r in resolutions.split(",") if r.strip()}))
    except ValueError:
        raise UserError(f"--resolutions {resolutions!r} must be integers like 24,28,32") from None
    if not res or min(res) < 16 or max(res) > 512:
        raise UserError("--resolutions must lie between 16 and 512")
    if supernet not in SHRINK_ORDER:
        raise UserError(f"cannot train {supernet!r}; trainable: {', '.join(SHRINK_ORDER)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    name = data if data in ("mnist", "digits") else Path(data).stem
    path = out or Path("nas-out") / f"{supernet}-{name}.safetensors"
    path = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        supernet=supernet, data=data, resolutions=res, minutes=minutes, seed=seed, device=device
    )
    try:
        report = Trainer(cfg, path).run()
    except FloatingPointError as e:
        raise UserError(f"training diverged: {e}") from None
    final = report["final"]
    print(
        f"wrote {path}: largest {final['largest_val_top1']:.2f}%, smallest "
        f"{final['smallest_val_top1']:.2f}% validation top-1; Spearman(top1, MACs) over 10 "
        f"random sub-networks {final['spearman_top1_macs_10']:.2f}"
    )
