"""``n2n``: network-to-network compression (Ashok et al., ICLR 2018) — the student space.

N2N shrinks a teacher in two stages: remove layers, then shrink the layers that remain; each
child is distilled briefly from the teacher and rewarded ``R = C (2 - C) A`` with
``C = 1 - params(student) / params(teacher)`` and ``A = top1(student) / top1(teacher)``
(``R = -1`` for an invalid network or a violated constraint).

This module gives the plugin's pieces: the teacher's layers as a sequence with the features the
policies read (type, kernel, stride, outputs, padding, skip-connection start / end); building a
student from keep flags and keep-fractions; and the flat space — ``keep<i>`` (1 keep, 0 remove)
and ``frac<i>`` per layer — over which any strategy (``tpe``, ``nsga2``, ``reinforce``) can
search the same budget.

Removal replaces a layer by the identity (an empty ``seq`` in the spec), so every other layer
keeps its module name and weights; a residual block whose body is emptied is removed whole. A
removal that breaks the network (a channel count or a spatial size no longer fits) is found by
running the student once, and is invalid.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from optuna.distributions import CategoricalDistribution
from torch import nn

from nas.compress.arch import ConvBNAct, LayerSpec, Network, SpecError, build
from nas.compress.pruning import respec
from nas.compress.task import CompressionTask
from nas.search.errors import UserError
from nas.search.space import Params, Space
from nas.search.task import Rejected, register_task

log = logging.getLogger("nas")

#: keep-fractions of stage 2 (the paper's discrete action set)
FRACTIONS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
KINDS = ("conv", "linear", "maxpool", "avgpool")
IDENTITY: LayerSpec = {"type": "seq", "layers": []}


@dataclass(frozen=True)
class Layer:
    """One layer of the sequence the policies read, and where it sits in the spec."""

    path: tuple[Any, ...]  # (i,) top level, or (i, "body", j) inside a residual block
    kind: str
    kernel: int
    stride: int
    out: int
    padding: int
    skip_start: bool
    skip_end: bool

    def features(self) -> list[float]:
        """Numeric description: one-hot type, kernel, stride, log2 outputs, padding, skips."""
        onehot = [1.0 if self.kind == k else 0.0 for k in KINDS]
        return [
            *onehot,
            float(self.kernel),
            float(self.stride),
            math.log2(max(self.out, 1)),
            float(self.padding),
            float(self.skip_start),
            float(self.skip_end),
        ]


def _layer(s: LayerSpec, path: tuple[Any, ...], out: int, start: bool, end: bool) -> Layer:
    k = int(s.get("kernel", 1))
    pad = int(s.get("padding", k // 2 if s["type"] == "conv" else 0))
    return Layer(path, s["type"], k, int(s.get("stride", 1)), out, pad, start, end)


def layer_sequence(net: Network) -> list[Layer]:
    """The teacher's removable / shrinkable layers in forward order (the final classifier and
    the convolutions of a residual shortcut are not in it: they follow the others)."""
    out: list[Layer] = []
    last_linear = max((i for i, s in enumerate(net.spec) if s["type"] == "linear"), default=-1)
    channels = net.preprocessing.channels
    for i, s in enumerate(net.spec):
        kind = s["type"]
        if kind == "conv":
            channels = int(s["out"])
            out.append(_layer(s, (i,), channels, False, False))
        elif kind == "linear" and i != last_linear:
            out.append(_layer(s, (i,), int(s["out"]), False, False))
        elif kind in ("maxpool", "avgpool"):
            out.append(_layer(s, (i,), channels, False, False))
        elif kind == "residual":
            body = [j for j, b in enumerate(s["body"]) if b["type"] == "conv"]
            for j in body:
                channels = int(s["body"][j]["out"])
                out.append(
                    _layer(s["body"][j], (i, "body", j), channels, j == body[0], j == body[-1])
                )
    return out


def remove_layers(net: Network, keep: Sequence[bool]) -> Network | None:
    """The teacher without the layers whose flag is False (weights of the rest kept), or None
    when the result is not a valid network (shapes do not fit, or an output changed shape)."""
    layers = layer_sequence(net)
    if len(keep) != len(layers):
        raise ValueError(f"{len(keep)} keep flags for {len(layers)} layers")
    spec = copy.deepcopy(net.spec)
    for layer, k in zip(layers, keep, strict=True):
        if k:
            continue
        if len(layer.path) == 1:
            spec[layer.path[0]] = dict(IDENTITY)
        else:
            i, part, j = layer.path
            spec[i][part][j] = dict(IDENTITY)
    for i, s in enumerate(spec):  # an emptied residual body: the block goes (identity shortcut)
        if s["type"] == "residual" and all(b == IDENTITY for b in s["body"]):
            spec[i] = dict(IDENTITY) if not s.get("shortcut") else s
    try:
        student = build(spec, net.preprocessing)
    except SpecError:
        return None
    own = student.state_dict()
    student.load_state_dict({k: v for k, v in net.state_dict().items() if k in own}, strict=True)
    if not _runs_like(student, net):
        return None
    student.origin = dict(net.origin)
    return student.eval()


def _runs_like(student: Network, teacher: Network) -> bool:
    x = teacher.example_input(2)
    try:
        with torch.no_grad():
            a, b = student.eval()(x), teacher.eval()(x)
    except RuntimeError:  # a channel count or size that no longer fits
        return False
    a_t = a if isinstance(a, tuple) else (a,)
    b_t = b if isinstance(b, tuple) else (b,)
    return [t.shape for t in a_t] == [t.shape for t in b_t]


def shrink_layers(net: Network, layers: Sequence[Layer], fractions: Sequence[float]) -> Network:
    """A copy of ``net`` keeping ``fraction`` of each listed conv / linear layer's outputs
    (smallest L1 norm removed, torch-pruning's dependency graph keeping coupled layers
    consistent; a layer coupled to others through a residual addition follows its group)."""
    import torch_pruning as tp

    from nas.compress.pruning import _unprunable

    out = copy.deepcopy(net).eval()
    ratios: dict[nn.Module, float] = {}
    for layer, f in zip(layers, fractions, strict=True):
        if f >= 1.0 or layer.kind not in ("conv", "linear"):
            continue
        module = _module(out, layer.path)
        target = module.conv if isinstance(module, ConvBNAct) else module
        ratios[target] = 1.0 - float(f)
    if not ratios:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            out,
            out.example_input(2),
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=0.0,
            pruning_ratio_dict=ratios,
            ignored_layers=_unprunable(out),
        )
        pruner.step()
    return respec(out)


def _module(net: Network, path: tuple[Any, ...]) -> nn.Module:
    m: Any = net.layers[path[0]]
    for part in path[1:]:
        m = getattr(m, part) if isinstance(part, str) else m[part]
    assert isinstance(m, nn.Module)
    return m


def student(net: Network, keep: Sequence[bool], fractions: Sequence[float]) -> Network | None:
    """Stage 1 then stage 2: remove, then shrink what remains (None: invalid removal)."""
    removed = remove_layers(net, keep)
    if removed is None:
        return None
    layers = layer_sequence(net)
    kept = [(layer, f) for layer, k, f in zip(layers, keep, fractions, strict=True) if k]
    return shrink_layers(removed, [lay for lay, _ in kept], [f for _, f in kept])


def reward(
    params_student: float, params_teacher: float, top1_student: float, top1_teacher: float
) -> float:
    """``C (2 - C) A``: C the compression, A the accuracy relative to the teacher's."""
    c = 1.0 - params_student / params_teacher
    a = top1_student / top1_teacher if top1_teacher > 0 else 0.0
    return c * (2.0 - c) * a


@register_task("n2n")
class N2NTask(CompressionTask):
    """N2N's flat space: ``keep<i>`` and ``frac<i>`` per layer of :func:`layer_sequence`.

    Each valid child is distilled from the teacher (the student regresses the teacher's logits)
    for ``distill_epochs`` on the first ``distill_images`` training images, then measured on the
    validation split; its ``reward`` is ``C (2 - C) A``, or -1 for an invalid network or when
    ``max_params_m`` / ``min_top1`` is violated. With ``reward`` as the only objective an invalid
    child is a measurement (reward -1, so a policy learns from it); otherwise it is rejected.

    Method options: ``distill_images`` (1000), ``distill_epochs`` (1), ``max_params_m``,
    ``min_top1``, ``penalty`` (``hard``: -1 on a violation; ``soft``: the reward minus the
    relative violation times a weight that grows linearly from 0 to 1 over the first
    ``anneal`` evaluations of this process, floored at -1 — the annealed penalty of the
    authors' code, which lets early children near the limit still teach the policy).
    """

    name: str = "n2n"
    default_strategy = "n2n"
    recalibrate = False  # distillation trains BatchNorm

    def __init__(
        self,
        *args: Any,
        distill_images: int = 1000,
        distill_epochs: int = 1,
        max_params_m: float | None = None,
        min_top1: float | None = None,
        penalty: str = "hard",
        anneal: int = 40,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.data is None:
            raise UserError("n2n distils students on labelled data: give --data")
        if int(distill_images) < 1 or int(distill_epochs) < 1:
            raise UserError("n2n needs distill_images >= 1 and distill_epochs >= 1")
        self.distill_images, self.distill_epochs = int(distill_images), int(distill_epochs)
        self.max_params_m = None if max_params_m is None else float(max_params_m)
        self.min_top1 = None if min_top1 is None else float(min_top1)
        if penalty not in ("hard", "soft") or int(anneal) < 1:
            raise UserError("n2n: penalty is hard or soft, and anneal at least 1")
        self.penalty, self.anneal, self._evaluated = penalty, int(anneal), 0
        self.layers = layer_sequence(self.original)
        if not self.layers:
            raise UserError("n2n: the model has no layer it could remove or shrink")
        self._space: Space = {}
        for i in range(len(self.layers)):
            self._space[f"keep{i}"] = CategoricalDistribution((1, 0))
            self._space[f"frac{i}"] = CategoricalDistribution(FRACTIONS)
        self._cache: dict[str, dict[str, float]] = {}

    @property
    def default_objectives(self) -> tuple[str, ...]:
        return ("reward",)

    def sources(self) -> dict[str, str]:
        return super().sources() | {"reward": "measured:C(2-C)A after distillation"}

    def space(self) -> Space:
        return self._space

    def decode(self, params: Params) -> tuple[list[bool], list[float]]:
        """Keep flags and keep-fractions of candidate ``params``."""
        n = len(self.layers)
        return [bool(params[f"keep{i}"]) for i in range(n)], [
            float(params[f"frac{i}"]) for i in range(n)
        ]

    def initial_candidates(self) -> list[Params]:
        """Every layer kept at 50 % and at 80 % of its outputs: valid children to start from."""
        n = len(self.layers)
        return [
            {**{f"keep{i}": 1 for i in range(n)}, **{f"frac{i}": f for i in range(n)}}
            for f in (0.5, 0.8)
        ]

    def apply(self, model: Network, params: Params) -> Network:
        from nas.compress.finetune import distill

        keep, fractions = self.decode(params)
        child = student(model, keep, fractions)
        if child is None:
            raise Rejected("invalid network: a removed layer's neighbours no longer fit")
        distill(
            child,
            model,
            epochs=self.distill_epochs,
            data=self.data,
            seed=self.seed,
            limit=self.distill_images,
            objective="logits",
            device=self.device,
        )
        return child

    @cached_property
    def teacher_val_top1(self) -> float:
        return self.top1(self.original, "val")

    def evaluate(self, params: Params) -> dict[str, float]:
        key = repr(sorted(params.items()))
        if key in self._cache:
            return dict(self._cache[key])
        try:
            m = super().evaluate(params)
        except Rejected:
            if not self._required <= {"reward"}:
                raise
            m = {"reward": -1.0}
        else:
            m["reward"] = reward(
                m["params_m"], self.baseline_counts["params_m"], m["top1"], self.teacher_val_top1
            )
            m["reward"] = self._penalised(m)
        self._cache[key] = m
        return dict(m)

    def violation(self, m: Mapping[str, float]) -> float:
        """Relative violation of the constraints (0 when both hold)."""
        v = 0.0
        if self.max_params_m is not None and m["params_m"] > self.max_params_m:
            v += (m["params_m"] - self.max_params_m) / self.max_params_m
        if self.min_top1 is not None and m["top1"] < self.min_top1:
            v += (self.min_top1 - m["top1"]) / max(self.min_top1, 1e-9)
        return v

    def _penalised(self, m: Mapping[str, float]) -> float:
        self._evaluated += 1
        v = self.violation(m)
        if v <= 0:
            return m["reward"]
        if self.penalty == "hard":
            return -1.0
        weight = min(1.0, self._evaluated / self.anneal)
        return max(-1.0, m["reward"] - weight * v)

    def options(self) -> dict[str, Any]:
        return {
            "penalty": self.penalty,
            "anneal": self.anneal,
            "distill_images": self.distill_images,
            "distill_epochs": self.distill_epochs,
            "max_params_m": self.max_params_m,
            "min_top1": self.min_top1,
            "layers": len(self.layers),
        }
