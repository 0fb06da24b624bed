"""EvoNorm search: the layer space as a flat candidate, the rejection protocols, the task.

**Encoding.** A candidate has ``nodes`` intermediate nodes (default 8: enough for BN-ReLU and
GN-ReLU). Node ``k`` (graph index ``4 + k``) is three categorical dimensions: ``op<k>`` (one of
:data:`~nas.compress.normact.OPS`) and its inputs ``a<k>`` / ``b<k>`` over the earlier nodes
``0 .. 3 + k``; ``b<k>`` is ignored by unary ops and aggregates. The output is the last node
that makes a normalization-activation layer (:func:`~nas.compress.normact.normalises`: it
depends on ``x`` element-wise and on a statistic of ``x``), else the last node; the rest is
dead code. (With "the last node" always, 0.9 % of random candidates were layers at all; with
this decoding 3 %.) Changing one dimension is "replace one node's op or rewire one input", the
mutation of the ``aging`` strategy. Any graph of at most ``nodes`` live nodes is a point of the
space (:func:`graph_to_params`; BN-ReLU and GN-ReLU need 8, B0 6, S0 5).

**Evaluation** (:class:`EvoNormTask`), in order, each step cheaper than the next:

1. ``invalid`` (no training): the output does not depend on ``x``; or (``statistics``, the
   default) on no mean or std of a value that depends on ``x`` (a pure activation), or ``x``
   reaches it only through statistics (constant over space: such layers train to chance).
2. An equivalent graph (same canonical form) measured before in this process: the same result.
3. Stability (``stability`` / ``nan``): on the first architecture, a batch, a few steps of
   gradient *ascent on the gradient norm* with respect to the weights (double backprop, each
   tensor moved by ``perturb`` of its norm); the layer is rejected when the gradient norm
   exceeds ``grad_limit`` or anything is NaN/infinite.
4. Per architecture: ``steps`` optimizer steps on ``train_images`` proxy images (resized to
   ``input_size``); the validation top-1 (``val_images``) is reported every ``steps/4`` steps
   to a side study (``<curves_study>:curves:<arch>``, :func:`open_curves`) whose pruner stops
   hopeless trainings (:class:`~nas.search.task.Pruned`); a NaN loss is ``nan``; a final
   top-1 below chance + ``quality_margin`` is ``quality``, and so is one within
   :data:`AT_CHANCE` points of chance at the second report or later (a constant prediction;
   the four reference layers are 10 points above chance by then; it halves the cost).

**Default proxy**, chosen so that the four reference layers survive every protocol and a
BN-ReLU-like layer clearly beats a bad one, at ~5 s of one CPU thread per architecture: width
0.5, 14×14, 150 Adam steps (lr 0.002, cosine) of batch 8 on 512 images, top-1 on 500.
Measured (resnet20 / mobilenet_tiny): BN-ReLU 72 / 50 %, B0 43 / 55 %, S0 38 / 43 %, GN-ReLU
27 / 37 %, ReLU alone 15 / 19 %; with SGD (lr 0.05, batch 32, 50 steps) an identity layer
scored as well as B0. Batch 8 also makes layers that lean on batch statistics pay for it.

Rejections raise :class:`~nas.search.task.Rejected` with the kind first (``"stability: ..."``),
so the study counts them by kind (:func:`nas.compress.evonorm_job.rejection_counts`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from nas.compress.evonorm_train import stability_check as stability_check
from nas.compress.normact import (
    DEFAULT_GROUPS,
    INITIAL,
    OPS,
    Graph,
    GraphError,
    arity,
    check_graph,
    depends_on_input,
    elementwise_on_input,
    has_statistics,
    live_nodes,
    normalises,
)
from nas.compress.normact_canon import canonical
from nas.search.space import Measurement, Params, Space
from nas.search.task import Pruned, Rejected, register_task

DEFAULT_ARCHS = ("resnet20", "mobilenet_tiny")
KINDS = ("invalid", "stability", "nan", "quality", "pruned")
#: points above chance at which a training half-way or later is rejected as ``quality``
AT_CHANCE = 1.0


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
    """The graph of a candidate; the output is the last node that :func:`normalises`, else the
    last node (module docstring).

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
        graph = check_graph({"nodes": out})
    except GraphError as e:
        raise ValueError(str(e)) from None
    for i in range(graph["output"], len(INITIAL) - 1, -1):
        if normalises(dict(graph, output=i)):
            return dict(graph, output=i)
    return graph


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
def open_curves(
    storage: str | None, name: str, arch: str, *, percentile: float = 25.0, startup: int = 10,
    warmup: int = 1,
) -> optuna.Study:  # fmt: skip
    """The side study of ``arch``'s training curves (single objective). Its pruner stops a
    training whose accuracy at a report is below the ``percentile``-th percentile of the
    finished trainings at that step, once ``startup`` trainings have finished and from step
    ``warmup`` on (a PercentilePruner: 25 prunes only the clearly hopeless, 50 is the median)."""
    from nas.search.study import MEMORY, make_storage

    store = None
    if storage and storage != MEMORY:
        make_storage(storage)  # prepares SQLite (WAL) and says clearly when it cannot
        kw = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
        store = optuna.storages.RDBStorage(storage, engine_kwargs=kw)  # no heartbeat: ask/tell
    pruner = optuna.pruners.PercentilePruner(
        percentile, n_startup_trials=startup, n_warmup_steps=warmup
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(
            study_name=f"{name}:curves:{arch}",
            storage=store,
            direction="maximize",
            pruner=pruner,
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
        train_images, val_images, steps, batch, lr, optimizer: the brief training per
            architecture (:func:`~nas.compress.evonorm_train.fit`: ``sgd`` or ``adam``).
        nodes, groups, plain: the space's node count, the groups of group aggregates, and what
            replaces BNs without activation (:mod:`nas.compress.evonorm_train`).
        prune: use the side-study pruner; ``curves`` is its storage URL (default in memory,
            this process only) and ``curves_study`` the name its studies start with;
            ``prune_percentile`` and ``prune_startup`` configure it (:func:`open_curves`; it
            never prunes at the first report, a quarter into the training).
        statistics: reject up front (``invalid``) a layer that computes no statistic of ``x``.
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
        width: float = 0.5,
        input_size: int = 14,
        train_images: int = 512,
        val_images: int = 500,
        steps: int = 150,
        batch: int = 8,
        lr: float = 0.002,
        optimizer: str = "adam",
        nodes: int = 8,
        groups: int = DEFAULT_GROUPS,
        plain: str = "gn",
        prune: bool = True,
        curves: str | None = None,
        curves_study: str = "evonorm",
        prune_percentile: float = 25.0,
        prune_startup: int = 10,
        statistics: bool = True,
        grad_limit: float = 1e3,
        perturb: float = 0.05,
        stability_steps: int = 3,
        quality_margin: float = 10.0,
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
            steps=steps, batch=batch, lr=lr, optimizer=optimizer, nodes=nodes, groups=groups,
            plain=plain, prune=prune, prune_percentile=prune_percentile,
            prune_startup=prune_startup, statistics=statistics, grad_limit=grad_limit,
            perturb=perturb, stability_steps=stability_steps, quality_margin=quality_margin,
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
        if self.options["statistics"] and not has_statistics(graph):
            raise Rejected("invalid: no statistic of x (a pure activation, no normalisation)")
        if self.options["statistics"] and not elementwise_on_input(graph):
            raise Rejected("invalid: x reaches the output only through statistics")
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
            chance = self._chance(arch)
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

    def _chance(self, arch: str) -> float:
        return 100.0 / len(self._tensors(arch, "val")[1].unique())

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

        every = max(1, o["steps"] // 4)

        def report(step: int) -> None:
            acc = accuracy(net, val)
            near = self._chance(arch) + min(AT_CHANCE, o["quality_margin"])
            if step >= 2 * every and not acc > near:
                raise Rejected(f"quality: top1@{arch} {acc:.1f}% at chance at step {step}")
            if trial is None or side is None:
                return
            trial.report(acc if math.isfinite(acc) else 0.0, step)
            if trial.should_prune():
                side.tell(trial, state=TrialState.PRUNED)
                raise Pruned(f"pruned: {arch} at step {step} ({acc:.1f}%)")

        try:
            fit(
                net, self._tensors(arch, "train"), steps=o["steps"], batch=o["batch"],
                lr=o["lr"], seed=self.seed + index, every=every,
                callback=report, optimizer=o["optimizer"],
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
            o = self.options
            kw = {"percentile": o["prune_percentile"], "startup": o["prune_startup"]}
            kw["warmup"] = max(1, o["steps"] // 4) + 1  # the first report is never pruned
            self._side[arch] = open_curves(self.curves, self.curves_study, arch, **kw)
        return self._side[arch]
