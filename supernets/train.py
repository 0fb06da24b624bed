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
#: share of the time budget kept for the final evaluation (12 sub-networks)
EVAL_RESERVE = 0.06
PHASE_NAMES = {"k": "kernel", "d": "depth", "e": "expand", "w": "width"}


@dataclass(frozen=True)
class TrainConfig:
    """How a supernet is trained; stored in every checkpoint's metadata."""

    supernet: str
    data: str
    resolutions: tuple[int, ...] = (24, 28, 32)
    epochs: tuple[int, ...] = (5, 3, 3, 5)  # full, then one per elastic family
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 3e-5
    seed: int = 0
    device: str = "cpu"
    minutes: float = 30.0
    random_subnets: int = 2
    train_limit: int | None = None  # train on the first N training images (quick trials)
    val_limit: int | None = None  # validate on the first N validation images (quick trials)
    elastic_lr_scale: float = 0.5  # elastic phases fine-tune at this fraction of the peak lr
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


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # NHWC is about 10-30% faster for these depthwise-separable networks on CPU
    return x.contiguous(memory_format=torch.channels_last)


def lr_at(progress: float, peak: float, warmup: float = 0.1) -> float:
    """Learning rate at ``progress`` in [0, 1] of a phase: linear warm-up, then cosine to 0."""
    if progress < warmup:
        return peak * (0.1 + 0.9 * progress / warmup)
    t = min(1.0, (progress - warmup) / (1.0 - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


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
    logits = net(_channels_last(_resize(x, max(resolutions))))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    soft = logits.detach().softmax(1)
    total = loss.item()
    free = any(len(v) > 1 for v in space.values()) or len(resolutions) > 1
    if free:
        subs = [{k: min(v) for k, v in space.items()}]
        subs += [{k: rng.choice(list(v)) for k, v in space.items()} for _ in range(n_random)]
        rs = [min(resolutions)] + [rng.choice(list(resolutions)) for _ in range(n_random)]
        for sub, r in zip(subs, rs, strict=True):
            net.set_active(sub)
            sub_loss = kd_loss(net(_channels_last(_resize(x, r))), soft)
            sub_loss.backward()
            total += sub_loss.item()
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
        self.train_data = load_data(cfg.data, "train", limit=cfg.train_limit)
        self.val_data = load_data(cfg.data, "val", limit=cfg.val_limit)
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
            ckpt = self.checkpoint(name)
            if ckpt.is_file():
                meta = _meta(ckpt)
                if json.loads(meta.get("train", "{}")) != self._config_json():
                    raise ValueError(
                        f"{ckpt} was written by a different training configuration; "
                        "delete it or choose another output path"
                    )
                net, start = load_supernet(self.cfg.supernet, ckpt), i + 1
                self.report = json.loads(meta.get("report", "{}"))
                log.info("resuming after phase %s (%s)", name, ckpt)
        net.to(self.cfg.device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # the time budget covers the whole run: what earlier runs spent, training, evaluation
        spent = sum(p["seconds"] for p in self.report["phases"])
        budget = 60 * self.cfg.minutes * (1 - EVAL_RESERVE) - spent
        clock = time.monotonic()
        for i, (name, elastic, epochs) in enumerate(self.phases()):
            if i < start:
                continue
            left = budget - (time.monotonic() - clock)
            share = epochs / sum(e for _, _, e in self.phases()[i:])
            self._phase(net, name, elastic, epochs, i, max(0.0, left * share))
            save_supernet(net.cpu(), self.checkpoint(name), self._meta(name))
            net.to(self.cfg.device)
        self.report["final"] = self._final(net)
        save_supernet(net.cpu(), self.out, self._meta("final"))
        self.out.with_suffix(".json").write_text(json.dumps(self.report, indent=1) + "\n")
        return self.report

    def _config_json(self) -> dict[str, Any]:
        cfg = asdict(self.cfg)
        return json.loads(json.dumps(cfg | {"extra": dict(cfg["extra"])}))

    def _meta(self, phase: str) -> dict[str, str]:
        return {
            "train": json.dumps(self._config_json()),
            "phase": phase,
            "report": json.dumps(self.report),
        }

    def _phase(
        self,
        net: ElasticSupernet,
        name: str,
        elastic: set[str],
        epochs: int,
        index: int,
        seconds: float,
    ) -> None:
        """Train one phase for ``epochs`` or ``seconds``, whichever ends first.

        The learning rate follows warm-up and cosine decay over the phase's progress, measured
        in steps or in time, whichever is further along, so a phase cut short by the time budget
        still ends annealed.
        """
        from nas.compress.datasets import batches

        space = phase_space(net, elastic)
        resolutions = self.cfg.resolutions if index > 0 else (max(self.cfg.resolutions),)
        rng = random.Random(self.cfg.seed * 1000 + index)
        opt = _optimizer(net, self.cfg)
        peak = self.cfg.lr if index == 0 else self.cfg.lr * self.cfg.elastic_lr_scale
        steps = epochs * math.ceil(len(self.train_data.y) / self.cfg.batch_size)
        t0, done, loss, progress = time.monotonic(), 0, float("nan"), 0.0
        pre = Preprocessing(**{**asdict(net.preprocessing), "input_size": (max(resolutions),) * 2})
        net.train()
        for epoch in range(epochs):
            for x, y in batches(
                self.train_data,
                pre,
                self.cfg.batch_size,
                shuffle=True,
                seed=self.cfg.seed + 100 * index + epoch,
                augment=True,
            ):
                progress = max(done / steps, (time.monotonic() - t0) / max(seconds, 1e-9))
                if progress >= 1.0:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr_at(progress, peak)
                dev = self.cfg.device
                loss = sandwich_step(
                    net, opt, x.to(dev), y.to(dev), space, resolutions, rng, self.cfg.random_subnets
                )
                done += 1
            log.info(
                "phase %s epoch %d/%d loss %.3f (%.0f s)",
                name,
                epoch + 1,
                epochs,
                loss,
                time.monotonic() - t0,
            )
            if progress >= 1.0:
                if done < steps:
                    log.warning("phase %s: time share used after %d of %d steps", name, done, steps)
                break
        self.report["phases"].append(self._phase_report(net, name, space, done, steps, t0))

    def _phase_report(
        self,
        net: ElasticSupernet,
        name: str,
        space: Mapping[str, Sequence[Any]],
        steps: int,
        planned: int,
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
            "planned_steps": planned,
            "seconds": round(time.monotonic() - t0, 1),
            "largest_val_top1": acc_big,
            "smallest_val_top1": acc_small,
        }
        log.info("phase %s: largest %.2f%%, smallest %.2f%% (validation)", name, acc_big, acc_small)
        net.train()
        return row

    def _final(self, net: ElasticSupernet) -> dict[str, Any]:
        net.eval()
        t0 = time.monotonic()
        dev = self.cfg.device
        big, small = net.largest(), net.smallest()
        corr = spearman_accuracy_macs(net, self.train_data, self.val_data, 10, self.cfg.seed, dev)
        return {
            "largest_val_top1": evaluate_subnet(net, big, self.train_data, self.val_data, dev),
            "smallest_val_top1": evaluate_subnet(net, small, self.train_data, self.val_data, dev),
            "spearman_top1_macs_10": corr["spearman"],
            "random_subnets": corr["subnets"],
            "seconds_eval": round(time.monotonic() - t0, 1),
            "seconds_total": round(
                sum(p["seconds"] for p in self.report["phases"]) + time.monotonic() - t0, 1
            ),
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
    epochs: str | None = None,
) -> None:
    """``nas supernet train``: validate the options, train, print the result."""
    from nas.search.errors import UserError

    if supernet not in SHRINK_ORDER:
        raise UserError(f"cannot train {supernet!r}; trainable: {', '.join(SHRINK_ORDER)}")
    n_phases = 1 + len(SHRINK_ORDER[supernet])
    try:
        ep = tuple(int(e) for e in epochs.split(",")) if epochs else TrainConfig.epochs
    except ValueError:
        raise UserError(f"--epochs {epochs!r} must be integers like 5,3,3,5") from None
    if len(ep) != n_phases or min(ep) < 1:
        raise UserError(f"--epochs needs {n_phases} positive integers (full, then each family)")
    if minutes <= 0:
        raise UserError("--minutes must be positive")

    try:
        res = tuple(sorted({int(r) for r in resolutions.split(",") if r.strip()}))
    except ValueError:
        raise UserError(f"--resolutions {resolutions!r} must be integers like 24,28,32") from None
    if not res or min(res) < 16 or max(res) > 512:
        raise UserError("--resolutions must lie between 16 and 512")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    name = data if data in ("mnist", "digits") else Path(data).stem
    path = out or Path("nas-out") / f"{supernet}-{name}.safetensors"
    path = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        supernet=supernet,
        data=data,
        resolutions=res,
        epochs=ep,
        minutes=minutes,
        seed=seed,
        device=device,
    )
    try:
        report = Trainer(cfg, path).run()
    except FloatingPointError as e:
        raise UserError(f"training diverged: {e}") from None
    except ValueError as e:
        raise UserError(str(e)) from None
    final = report["final"]
    print(
        f"wrote {path}: largest {final['largest_val_top1']:.2f}%, smallest "
        f"{final['smallest_val_top1']:.2f}% validation top-1; Spearman(top1, MACs) over 10 "
        f"random sub-networks {final['spearman_top1_macs_10']:.2f}"
    )
