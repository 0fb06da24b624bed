"""EvoNorm search: the layer space as a flat candidate, the rejection protocols, the task.

**Encoding.** A candidate has ``nodes`` intermediate nodes (default 8: enough for BN-ReLU and
GN-ReLU; the fewer dead nodes, the more random graphs depend on ``x``). Node ``k`` (graph index
``4 + k``) is three categorical dimensions: ``op<k>`` (one of :data:`~nas.compress.normact.OPS`)
and its inputs ``a<k>`` / ``b<k>``, each over the indices ``0 .. 3 + k`` of the earlier nodes
(optuna categoricals may differ per dimension, so no modulo is needed); ``b<k>`` is ignored by
unary ops and aggregates. The output is the last node; nodes it does not depend on are dead
code. Changing one dimension is exactly "replace one node's op or rewire one input", the
mutation of the ``aging`` strategy. Any graph of at most ``nodes`` live nodes is a point of the
space (:func:`graph_to_params`; BN-ReLU and GN-ReLU need 8, B0 6, S0 5).

**Evaluation** (:class:`EvoNormTask`), in order, each step cheaper than the next:

1. ``invalid``: the output does not depend on ``x`` (no training needed).
2. An equivalent graph (same canonical form) measured before in this process: the same result.
3. Stability (``stability`` / ``nan``): on the first architecture, a batch, a few steps of
   gradient *ascent on the gradient norm* with respect to the weights (double backprop, each
   tensor moved by ``perturb`` of its norm); the layer is rejected when the gradient norm
   exceeds ``grad_limit`` or anything is NaN/infinite.
4. Per architecture: ``steps`` SGD steps on ``train_images`` proxy images (downsampled to
   ``input_size``); the validation accuracy (``val_images``) is reported every ``steps/4`` steps
   to an optuna side study (``<curves_study>:curves:<arch>``, a MedianPruner) that prunes
   hopeless trainings (raises :class:`~nas.search.task.Pruned`); a NaN loss is ``nan``; a final
   accuracy below chance + ``quality_margin`` points is ``quality``.

Rejections raise :class:`~nas.search.task.Rejected` with the kind first (``"stability: ..."``),
so the study counts them by kind (:func:`rejection_counts`).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from nas.compress.normact import (
    DEFAULT_GROUPS,
    INITIAL,
    OPS,
    Graph,
    GraphError,
    arity,
    check_graph,
    depends_on_input,
    live_nodes,
)
from nas.compress.normact_canon import canonical
from nas.search.space import Measurement, Params, Space
from nas.search.task import Pruned, Rejected, register_task

DEFAULT_ARCHS = ("resnet20", "mobilenet_tiny")
KINDS = ("invalid", "stability", "nan", "quality", "pruned")


# -- the flat encoding --------------------------------------------------------------------------
def layer_space(nodes: int = 8) -> Space:
    """The flat space of graphs with ``nodes`` intermediate nodes (module docstring)."""
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, not {nodes}")
    space: Space = {}
    for k in range(nodes):
        earlier = list(range(len(INITIAL) + k))
        space[f"op{k}"] = CategoricalDistribution(list(OPS))
        space[f"a{k}"] = CategoricalDistribution(earlier)
        space[f"b{k}"] = CategoricalDistribution(earlier)
    return space


def params_to_graph(params: Mapping[str, Any], nodes: int) -> Graph:
    """The graph of a candidate; the output is the last node.

    Raises:
        ValueError: a missing dimension, an unknown op or an input that is no earlier node.
    """
    out = []
    for k in range(nodes):
        try:
            op, a, b = params[f"op{k}"], int(params[f"a{k}"]), int(params[f"b{k}"])
        except KeyError as e:
            raise ValueError(f"candidate lacks {e}") from None
        out.append({"op": op, "in": [a, b][: arity(str(op))]})
    try:
        return check_graph({"nodes": out})
    except GraphError as e:
        raise ValueError(str(e)) from None


def graph_to_params(graph: Mapping[str, Any], nodes: int = 8) -> Params:
    """A candidate of the space that computes ``graph``: its live nodes renumbered to the end,
    filler nodes (``neg(x)``, dead) before them.

    Raises:
        ValueError: the graph has more live nodes than ``nodes``.
    """
    g = check_graph(graph)
    live = [i for i in live_nodes(g) if i >= len(INITIAL)]
    if len(live) > nodes:
        raise ValueError(f"the graph has {len(live)} live nodes; the space holds {nodes}")
    start = nodes - len(live)
    where = {i: i for i in range(len(INITIAL))}
    where |= {i: len(INITIAL) + start + k for k, i in enumerate(live)}
    if not live:
        raise ValueError("the graph's output is an initial node, not a computed one")
    params: Params = {}
    for k in range(start):
        params |= {f"op{k}": "neg", f"a{k}": 0, f"b{k}": 0}
    for k, i in enumerate(live, start):
        ins = [where[j] for j in g["nodes"][i - len(INITIAL)]["in"]]
        params |= {f"op{k}": g["nodes"][i - len(INITIAL)]["op"], f"a{k}": ins[0]}
        params[f"b{k}"] = ins[1] if len(ins) > 1 else 0
    return params


# -- rejection protocols ------------------------------------------------------------------------
def stability_check(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 3,
    perturb: float = 0.05,
    limit: float = 1e3,
) -> float:
    """The largest gradient norm seen under ``steps`` steps of adversarial weight perturbation.

    Raises:
        Rejected: ``nan: ...`` for a non-finite loss or gradient norm, ``stability: ...`` when
            the gradient norm exceeds ``limit``.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    net.train()
    worst = 0.0
    for step in range(steps):
        loss = F.cross_entropy(net(x), y)
        if not torch.isfinite(loss):
            raise Rejected(f"nan: loss {loss.item()} at perturbation step {step}")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        norm = torch.sqrt(sum((g**2).sum() for g in grads if g is not None))  # type: ignore[arg-type]
        value = float(norm.detach())
        if not math.isfinite(value):
            raise Rejected(f"nan: gradient norm {value} at perturbation step {step}")
        worst = max(worst, value)
        if value > limit:
            raise Rejected(f"stability: gradient norm {value:.3g} > {limit:g} at step {step}")
        if step == steps - 1:
            break
        ascent = torch.autograd.grad(norm, params, allow_unused=True)
        with torch.no_grad():
            for p, h in zip(params, ascent, strict=True):
                if h is not None and float(h.norm()) > 0:
                    p.add_(perturb * (p.norm() + 1e-3) * h / h.norm())
    return worst


def rejection_kind(trial: FrozenTrial) -> str | None:
    """``invalid`` / ``stability`` / ``nan`` / ``quality`` / ``pruned`` for a rejected or pruned
    trial of an evonorm study, else None."""
    from nas.search.study import PRUNED_ATTR, REJECTED_ATTR

    if trial.state != TrialState.PRUNED:
        return None
    if PRUNED_ATTR in trial.user_attrs:
        return "pruned"
    reason = str(trial.user_attrs.get(REJECTED_ATTR, ""))
    kind = reason.split(":", 1)[0]
    return kind if kind in KINDS else None


def rejection_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """How many trials each protocol rejected (and the pruner stopped), plus ``evaluated``
    (COMPLETE trials, which measured every architecture)."""
    counts = Counter(k for t in trials if (k := rejection_kind(t)) is not None)
    out = {k: counts.get(k, 0) for k in KINDS}
    out["evaluated"] = sum(t.state == TrialState.COMPLETE for t in trials)
    return out


def open_curves(storage: str | None, name: str, arch: str) -> optuna.Study:
    """The side study of ``arch``'s training curves (single objective, a MedianPruner)."""
    from nas.search.study import MEMORY, make_storage

    store = None
    if storage and storage != MEMORY:
        make_storage(storage)  # prepares SQLite (WAL) and says clearly when it cannot
        kw = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
        store = optuna.storages.RDBStorage(storage, engine_kwargs=kw)  # no heartbeat: ask/tell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(
            study_name=f"{name}:curves:{arch}",
            storage=store,
            direction="maximize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=1),
            load_if_exists=True,
        )


@register_task("evonorm")
class EvoNormTask:
    """Evolving normalization-activation layers on a proxy task (module docstring).

    Args:
        data: ``mnist`` (default) or ``digits`` (or any data set of :mod:`nas.compress.datasets`).
        archs: the architectures every candidate is trained in (names of the zoo or
            :data:`~nas.compress.evonorm_train.PROXY_ARCHS`), comma-separated or a list.
        width, input_size: their width multiplier and input side (images are resized).
        train_images, val_images, steps, batch, lr: the brief training per architecture.
        nodes, groups, plain: the space's node count, the groups of group aggregates, and what
            replaces BNs without activation (:mod:`nas.compress.evonorm_train`).
        prune: use the side-study pruner; ``curves`` is its storage URL (default in memory,
            this process only) and ``curves_study`` the name its studies start with.
        grad_limit, perturb, stability_steps: the stability protocol.
        quality_margin: points above chance a final accuracy needs on every architecture.
        seed: seeds weights and data order (the same candidate measures the same).
        hw, batch_size, device: accepted for the job's sake; the proxy runs on the CPU.
    """

    name = "evonorm"
    default_strategy = "aging"

    def __init__(
        self,
        data: str | None = "mnist",
        archs: str | Sequence[str] = DEFAULT_ARCHS,
        width: float = 0.25,
        input_size: int = 14,
        train_images: int = 512,
        val_images: int = 250,
        steps: int = 50,
        batch: int = 32,
        lr: float = 0.05,
        nodes: int = 8,
        groups: int = DEFAULT_GROUPS,
        plain: str = "gn",
        prune: bool = True,
        curves: str | None = None,
        curves_study: str = "evonorm",
        grad_limit: float = 1e3,
        perturb: float = 0.05,
        stability_steps: int = 3,
        quality_margin: float = 5.0,
        seed: int = 0,
        hw: str | None = None,
        batch_size: int | None = None,
        device: str = "cpu",
    ) -> None:
        names = archs.split(",") if isinstance(archs, str) else list(archs)
        self.archs = tuple(a.strip() for a in names if a.strip())
        if len(set(self.archs)) != len(self.archs) or not self.archs:
            raise ValueError(f"archs must name distinct architectures, got {archs!r}")
        if min(steps, batch, train_images, val_images, stability_steps) < 1:
            raise ValueError("steps, batch, train_images, val_images must be at least 1")
        self.data = data or "mnist"
        self.options: dict[str, Any] = dict(
            width=width, input_size=input_size, train_images=train_images, val_images=val_images,
            steps=steps, batch=batch, lr=lr, nodes=nodes, groups=groups, plain=plain,
            prune=prune, grad_limit=grad_limit, perturb=perturb,
            stability_steps=stability_steps, quality_margin=quality_margin,
        )  # fmt: skip
        self.nodes, self.groups, self.plain, self.seed = nodes, groups, plain, seed
        self.curves, self.curves_study = curves, curves_study
        self._space = layer_space(nodes)
        self._cache: dict[str, Measurement | Rejected] = {}
        self._data: dict[str, Any] = {}
        self._side: dict[str, optuna.Study] = {}
        self.default_objectives = tuple(f"top1@{a}" for a in self.archs)

    def space(self) -> Space:
        return self._space

    def sources(self) -> Mapping[str, str]:
        return {f"top1@{a}": f"proxy:{self.data}-{self.options['steps']}-steps" for a in self.archs}

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "data": self.data,
            "archs": list(self.archs),
            "seed": self.seed,
            **self.options,
        }

    def graph(self, params: Mapping[str, Any]) -> Graph:
        """The layer graph of a candidate."""
        return params_to_graph(params, self.nodes)

    def build(self, params: Params) -> torch.nn.Module:
        """The candidate in the first architecture (untrained)."""
        return self._model(self.archs[0], self.graph(params))

    def _model(self, arch: str, layer: Graph | str) -> torch.nn.Module:
        from nas.compress.evonorm_train import zoo_model

        o = self.options
        kw = {"width": o["width"], "input_size": o["input_size"]}
        return zoo_model(arch, layer, groups=self.groups, plain=self.plain, **kw)

    def evaluate(self, params: Params) -> Measurement:
        graph = self.graph(params)
        if not depends_on_input(graph):
            raise Rejected("invalid: the output does not depend on x")
        key = canonical(graph)
        if key not in self._cache:
            try:
                self._cache[key] = self._measure(graph)
            except Rejected as e:
                self._cache[key] = e
        got = self._cache[key]
        if isinstance(got, Rejected):
            raise type(got)(str(got))
        return dict(got)

    def _measure(self, graph: Graph) -> Measurement:
        from nas.compress.evonorm_train import Diverged

        self._stability(graph)
        out: Measurement = {}
        for i, arch in enumerate(self.archs):
            try:
                acc = self._train(arch, graph, i)
            except Diverged as e:
                raise Rejected(f"nan: {arch}: {e}") from None
            chance = 100.0 / len(self._tensors(arch, "val")[1].unique())
            if not math.isfinite(acc) or acc < chance + self.options["quality_margin"]:
                raise Rejected(f"quality: top1@{arch} {acc:.1f}% stays near chance")
            out[f"top1@{arch}"] = acc
        return out

    def _tensors(self, arch: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        from nas.compress.evonorm_train import tensors

        key = f"{arch}:{split}"
        if key not in self._data:
            limit = self.options["train_images" if split == "train" else "val_images"]
            net = self._model(arch, "bn-relu")
            self._data[key] = tensors(self.data, split, net, limit)  # type: ignore[arg-type]
        got: tuple[torch.Tensor, torch.Tensor] = self._data[key]
        return got

    def _stability(self, graph: Graph) -> None:
        arch = self.archs[0]
        torch.manual_seed(self.seed)
        net = self._model(arch, graph)
        x, y = self._tensors(arch, "train")
        o = self.options
        stability_check(
            net,
            x[:16],
            y[:16],
            steps=o["stability_steps"],
            perturb=o["perturb"],
            limit=o["grad_limit"],
        )

    def _train(self, arch: str, graph: Graph, index: int) -> float:
        from nas.compress.evonorm_train import accuracy, fit

        torch.manual_seed(self.seed * 1000 + index)
        net = self._model(arch, graph)
        val = self._tensors(arch, "val")
        o = self.options
        side = self._curves(arch) if o["prune"] else None
        trial = side.ask() if side is not None else None

        def report(step: int) -> None:
            if trial is None or side is None:
                return
            acc = accuracy(net, val)
            trial.report(acc if math.isfinite(acc) else 0.0, step)
            if trial.should_prune():
                side.tell(trial, state=TrialState.PRUNED)
                raise Pruned(f"pruned: {arch} at step {step} ({acc:.1f}%)")

        try:
            fit(
                net, self._tensors(arch, "train"), steps=o["steps"], batch=o["batch"],
                lr=o["lr"], seed=self.seed + index, every=max(1, o["steps"] // 4),
                callback=report,
            )  # fmt: skip
        except Pruned:
            raise
        except BaseException:
            if side is not None and trial is not None:
                side.tell(trial, state=TrialState.FAIL)
            raise
        acc = accuracy(net, val)
        if side is not None and trial is not None:
            side.tell(trial, acc if math.isfinite(acc) else 0.0)
        return acc

    def _curves(self, arch: str) -> optuna.Study:
        if arch not in self._side:
            self._side[arch] = open_curves(self.curves, self.curves_study, arch)
        return self._side[arch]
