"""``nas evonorm``: the search as a study, the best layers as formulas, and applying a layer.

The search is an ordinary study of the registered ``evonorm`` task (any strategy; ``aging`` by
default), so budget, workers, time limit and resume come from the search core. The pruner's
side studies (``<study>:curves:<arch>``) live in the same storage.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.compress.evonorm import KINDS, graph_to_params, params_to_graph
from nas.compress.normact import FIXED, Graph, GraphError, check_graph
from nas.compress.normact_canon import (
    canonical_hash,
    equivalent_known,
    formula,
    numerically_equal,
)
from nas.search.errors import UserError
from nas.search.study import SearchConfig

#: layers ``apply`` and the benchmark name (``gn`` is only the stand-in for plain BNs)
LAYER_NAMES = ("bn-relu", "gn-relu", "b0", "s0")


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


@dataclass(frozen=True)
class EvoNormSearch:
    """What ``nas evonorm search`` is asked."""

    data: str = "mnist"
    archs: tuple[str, ...] = ("resnet20", "mobilenet_tiny")
    budget: int = 300
    seed: int = 0
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    timeout: float | None = None
    max_failures: int = 10
    out: str | None = None
    strategy: str | None = None
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    task_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def study_name(self) -> str:
        """``--study``, or ``evonorm-<data>-<arch>+<arch>...``."""
        return self.study or f"evonorm-{Path(self.data).stem}-{'+'.join(self.archs)}"

    def search_config(self) -> SearchConfig:
        """The study's configuration; the pruner's curves share its storage and name.

        Raises:
            UserError: a task option the task does not take (the job reports it).
        """
        from nas.search.study import DEFAULT_STORAGE

        clash = set(self.task_options) & {"archs", "data", "seed", "curves", "curves_study"}
        if clash:
            raise UserError(f"--set {sorted(clash)[0]}: set it with its own option")
        options = {
            "archs": list(self.archs),
            "curves": self.storage or DEFAULT_STORAGE,
            "curves_study": self.study_name,
            **dict(self.task_options),
        }
        return SearchConfig(
            supernet="evonorm",
            hw="cpu",
            strategy=self.strategy,
            data=self.data,
            budget=self.budget,
            seed=self.seed,
            storage=self.storage,
            study=self.study_name,
            workers=self.workers,
            timeout=self.timeout,
            max_failures=self.max_failures,
            out=self.out,
            strategy_options=dict(self.strategy_options),
            task="evonorm",
            task_options=options,
        )


def load_study(storage: str | None, study: str) -> optuna.Study:
    """An existing evonorm study.

    Raises:
        UserError: no such study in the storage, or not an evonorm study.
    """
    from nas.search.study import make_storage, stored_config

    try:
        s = optuna.load_study(study_name=study, storage=make_storage(storage))
    except KeyError:
        raise UserError(f"no study {study!r} in {storage or 'sqlite:///nas.db'}") from None
    if stored_config(s).task != "evonorm":
        raise UserError(f"study {study!r} is not an evonorm search")
    return s


def _nodes(study: optuna.Study) -> int:
    from nas.search.study import stored_config

    return int(stored_config(study).task_options.get("nodes", 8))


def best_layers(study: optuna.Study, top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` measured layers by mean accuracy over the architectures (equivalent graphs
    once: the same canonical form, or numerically equal to a layer listed above, as ``x*x`` and
    ``square(x)``), each with its formula, canonical hash, accuracies and known equivalent."""
    nodes = _nodes(study)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
    for t in sorted(done, key=lambda t: -sum(t.values) / len(t.values)):
        graph = params_to_graph(t.params, nodes)
        key = canonical_hash(graph)
        if key in seen or any(numerically_equal(graph, r["graph"]) for r in rows):
            seen.add(key)
            continue
        seen.add(key)
        accs = {k: v for k, v in t.user_attrs.items() if k.startswith("top1@")}
        rows.append(
            {
                "trial": t.number,
                "formula": formula(graph),
                "canonical": key,
                "equivalent_to": equivalent_known(graph),
                "mean_top1": round(sum(t.values) / len(t.values), 2),
                **accs,
                "graph": graph,
            }
        )
        if len(rows) == top:
            break
    return rows


def summary(study: optuna.Study) -> dict[str, int]:
    """Rejections by protocol, pruned and evaluated trials of a study."""
    return rejection_counts(study.get_trials(deepcopy=False))


def resolve_layer(text: str, storage: str | None = None) -> Graph | str:
    """A layer from ``bn-relu`` / ``gn-relu`` / ``b0`` / ``s0``, ``STUDY/TRIAL``, a JSON graph,
    or a ``.json`` file holding one.

    Raises:
        UserError: an unknown name, a malformed graph, or a missing study or trial.
    """
    if text in FIXED:
        return text
    try:
        if text.lstrip().startswith("{"):
            return check_graph(json.loads(text))
        if text.endswith(".json"):
            return check_graph(json.loads(Path(text).read_text()))
    except (json.JSONDecodeError, GraphError, OSError) as e:
        raise UserError(f"--layer: not a layer graph ({e})") from None
    study, sep, number = text.rpartition("/")
    if not sep or not number.isdigit():
        raise UserError(
            f"--layer {text!r}: expected {', '.join(LAYER_NAMES)}, STUDY/TRIAL or a JSON graph"
        )
    s = load_study(storage, study)
    found = [t for t in s.trials if t.number == int(number)]
    if not found or not found[0].params:
        raise UserError(f"--layer {text!r}: study {study!r} has no trial {number}")
    return params_to_graph(found[0].params, _nodes(s))


def known_points(nodes: int = 8) -> dict[str, dict[str, Any]]:
    """Each reference layer as a candidate of the space (the proof it is a point of it)."""
    from nas.compress.normact_canon import KNOWN

    return {name: graph_to_params(g, nodes) for name, g in KNOWN.items()}


@dataclass(frozen=True)
class ApplyConfig:
    """``nas evonorm apply``: put ``layer`` into a trained model and fine-tune it."""

    checkpoint: str
    layer: str
    arch: str | None = None
    arch_kwargs: str | None = None
    data: str = "mnist"
    epochs: int = 3
    batch: int = 64
    lr: float = 0.02
    limit: int | None = None
    groups: int = 4
    plain: str = "gn"
    seed: int = 0
    storage: str | None = None
    out: str = "nas-out/evonorm-apply"


def apply_layer(cfg: ApplyConfig) -> dict[str, Any]:
    """Replace the model's BN-activations by the layer, copy the weights that still fit,
    fine-tune, and write ``<out>/model.{safetensors,json}`` (and ONNX).

    Returns:
        A report: the layer, test top-1 of the original, of the new model before and after
        fine-tuning, the files written.

    Raises:
        UserError: bad layer, checkpoint, architecture or numbers.
    """
    import torch

    from nas.compress.arch import Network
    from nas.compress.evonorm_train import PLAIN, Diverged, accuracy, fit, tensors, with_layer
    from nas.compress.loading import load_checkpoint
    from nas.compress.model_io import export_onnx, save_model

    if cfg.epochs < 0 or cfg.batch < 1 or not cfg.lr > 0 or cfg.plain not in PLAIN:
        raise UserError("--epochs >= 0, --batch >= 1, --lr > 0, --plain gn|layer|keep")
    layer = resolve_layer(cfg.layer, cfg.storage)
    original = load_checkpoint(cfg.checkpoint, cfg.arch, cfg.arch_kwargs)
    if not isinstance(original, Network):
        raise UserError(f"{cfg.checkpoint}: not a model described by a layer spec")
    torch.manual_seed(cfg.seed)
    net = with_layer(original, layer, cfg.groups, cfg.plain)
    test = tensors(cfg.data, "test", net)
    train = tensors(cfg.data, "train", net, cfg.limit)
    report: dict[str, Any] = {"layer": layer, "original_test_top1": accuracy(original, test)}
    report["before_test_top1"] = accuracy(net, test)
    if cfg.epochs:
        steps = cfg.epochs * -(-len(train[1]) // cfg.batch)
        try:
            fit(net, train, steps=steps, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed)
        except Diverged as e:
            raise UserError(f"fine-tuning diverged: {e} (lower --lr)") from None
    report["after_test_top1"] = accuracy(net, test)
    report["formula"] = layer if isinstance(layer, str) else formula(layer)
    net.origin = dict(net.origin) | {"evonorm_apply": {k: v for k, v in report.items()}}
    out = Path(cfg.out)
    weights, arch = save_model(net, out / "model", net.origin)
    report["files"] = {"weights": str(weights), "architecture": str(arch)}
    try:
        export_onnx(net, out / "model.onnx")
        report["files"]["onnx"] = str(out / "model.onnx")
    except Exception as e:  # export is a bonus; the saved model is the result
        report["onnx_error"] = f"{type(e).__name__}: {e}"[:300]
    return report
