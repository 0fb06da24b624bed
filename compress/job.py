"""``nas compress``: search a method's choices with the search core, select, export, report.

The search itself is an ordinary study (any strategy, resumable, many workers) over the method's
space; this module adds what happens after it:

1. **select** the model to ship: by default the smallest (fewest non-zero parameters, or the
   ``--select`` metric) whose validation top-1 is within ``--max-drop`` points of the original's,
   or, without data, whose output cosine similarity is at least ``--min-cosine`` on every head;
2. rebuild it, optionally **distil** it from the original (``--finetune-epochs``);
3. **write** it as safetensors + JSON, export ONNX (checked by onnxruntime against torch), and with
   ``--int8`` a statically quantised ONNX model;
4. **measure** the original and the selected model the same way — test-split top-1 (or drift),
   dense and non-zero size, CPU latency (torch eager and onnxruntime) — and write ``report.json``,
   ``report.md`` and ``pareto/trial-<n>.{json,md}`` for every front member.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.compress.arch import Network
from nas.compress.model_io import export_onnx, save_model
from nas.compress.pruning import count_nonzero
from nas.compress.report import REPORT_FORMAT, REPORT_VERSION, finite, trial_row, write_reports
from nas.compress.task import EVAL_BATCH, CompressionTask, file_digest
from nas.search.errors import UserError
from nas.search.export import pareto_trials
from nas.search.job import Prepared, SearchResult, prepare, run_search
from nas.search.objectives import METRICS
from nas.search.strategies._base import completed, is_feasible
from nas.search.study import SearchConfig

log = logging.getLogger("nas")

SIZE_METRICS = ("nnz_params_m", "params_m", "nnz_macs_m", "macs_m", "latency_ms")


@dataclass(frozen=True)
class CompressConfig:
    """What ``nas compress`` is asked; the search part becomes a :class:`SearchConfig`."""

    checkpoint: str
    method: str = "magnitude"
    arch: str | None = None
    arch_kwargs: str | None = None
    data: str | None = None
    hw: str = "cpu"
    strategy: str | None = None
    objectives: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    budget: int = 20
    seed: int = 0
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    timeout: float | None = None
    max_failures: int = 10
    out: str | None = None
    batch_size: int | None = None
    device: str = "cpu"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    method_options: Mapping[str, Any] = field(default_factory=dict)
    max_drop: float = 1.0
    min_cosine: float = 0.99
    select: str | None = None
    finetune_epochs: int = 0
    int8: bool = False

    def search_config(self) -> SearchConfig:
        """The study's configuration (the checkpoint's digest is part of its identity).

        Raises:
            UserError: a missing checkpoint or bad numbers.
        """
        from nas.search.task import list_tasks

        if self.method not in list_tasks():
            raise UserError(
                f"unknown compression method {self.method!r}; known: {', '.join(list_tasks())}"
            )
        path = Path(self.checkpoint)
        if not path.is_file():
            raise UserError(f"checkpoint {path}: no such file")
        if self.max_drop < 0:
            raise UserError("--max-drop must be at least 0 (points of top-1)")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise UserError("--min-cosine must be between -1 and 1")
        if self.finetune_epochs < 0:
            raise UserError("--finetune-epochs must be at least 0")
        if self.select is not None and self.select not in METRICS:
            raise UserError(
                f"--select {self.select!r}: unknown metric; known: {', '.join(METRICS)}"
            )
        options: dict[str, Any] = {
            "checkpoint": str(path),
            "checkpoint_sha256": file_digest(path),
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
        }
        clash = set(self.method_options) & (set(options) | {"hw", "data", "device", "seed"})
        if clash:
            raise UserError(f"--set {sorted(clash)[0]}: not a method option")
        options.update(self.method_options)
        return SearchConfig(
            supernet=path.with_suffix("").name,
            hw=self.hw,
            strategy=self.strategy,
            objectives=self.objectives,
            constraints=self.constraints,
            data=self.data,
            budget=self.budget,
            seed=self.seed,
            storage=self.storage,
            study=self.study,
            workers=self.workers,
            timeout=self.timeout,
            max_failures=self.max_failures,
            out=self.out,
            batch_size=self.batch_size,
            device=self.device,
            strategy_options=dict(self.strategy_options),
            task=self.method,
            task_options=options,
        )


@dataclass
class CompressResult:
    """The search result, the report written, and the selected trial (None: no candidate
    passed the selection rule)."""

    search: SearchResult
    report: dict[str, Any]
    selected: optuna.trial.FrozenTrial | None
    files: dict[str, Path]


def prepare_compress(cfg: CompressConfig) -> Prepared:
    """Validate ``cfg`` and build its task (what ``nas compress`` does before running)."""
    p = prepare(cfg.search_config())
    if not isinstance(p.task, CompressionTask):
        raise UserError(f"{cfg.method} is not a compression method")
    return p


def run_compress(
    cfg: CompressConfig,
    *,
    prepared: Prepared | None = None,
    progress: Callable[[int, int, optuna.Study], None] | None = None,
    handle_signals: bool = True,
) -> CompressResult:
    """Search, select, export and report (see the module docstring)."""
    p = prepared if prepared is not None else prepare_compress(cfg)
    task = p.task
    assert isinstance(task, CompressionTask)
    result = run_search(p.config, progress=progress, prepared=p, handle_signals=handle_signals)
    out_dir = p.config.out_dir
    files = dict(result.files)
    baseline = _baseline(task)
    rule = _rule(cfg, task, baseline, [o.metric for o in p.objectives])
    front = pareto_trials(result.study, p.objectives)
    pool = _candidates(result.study)
    chosen = rule.pick(pool)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "method": task.name,
        "task": task.describe(),
        "study": result.study.study_name,
        "evaluated": result.evaluated,
        "budget": p.config.budget,
        "strategy": p.config.strategy,
        "objectives": [str(o) for o in p.objectives],
        "constraints": list(p.config.constraints),
        "sources": dict(task.sources()),
        "selection": rule.describe(),
        "original": baseline,
        "front": [trial_row(t) for t in front],
        "selected": None,
        "stopped": result.reason,
    }
    if chosen is not None and result.complete:
        report["selected"], model_files = _finish(cfg, task, chosen, baseline, out_dir)
        files.update(model_files)
    elif chosen is not None:
        report["selected_trial_so_far"] = chosen.number
    policy = _save_policy(p, result.study, out_dir)
    if policy is not None:
        files["policy"] = report["policy"] = policy
    files.update(write_reports(report, out_dir, front))
    return CompressResult(result, report, chosen if result.complete else None, files)


def _save_policy(p: Prepared, study: optuna.Study, out_dir: Path) -> Path | None:
    """A strategy with a learned policy (N2N's) writes it next to the report."""
    from nas.search.job import make_strategy

    strategy = make_strategy(p, 0)
    save = getattr(strategy, "save_policy", None)
    if save is None:
        return None
    strategy.learn(study)  # type: ignore[attr-defined]
    path: Path = save(out_dir / "policy.safetensors")
    return path


# -- selection ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """Smallest ``size`` among candidates whose ``quality`` is at least ``floor``; with
    ``best``, the highest ``quality`` above ``floor`` (size breaks ties)."""

    quality: str
    floor: float
    size: str
    text: str
    best: bool = False

    def pick(self, trials: Sequence[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
        ok = [
            t
            for t in trials
            if finite(t.user_attrs.get(self.quality))
            and t.user_attrs[self.quality] >= self.floor
            and finite(t.user_attrs.get(self.size))
        ]
        if not ok:
            return None
        if self.best:
            return max(ok, key=lambda t: (t.user_attrs[self.quality], -t.user_attrs[self.size]))
        return min(ok, key=lambda t: (t.user_attrs[self.size], -t.user_attrs[self.quality]))

    def describe(self) -> dict[str, Any]:
        return {"rule": self.text, "quality": self.quality, "floor": self.floor, "size": self.size}


def _rule(
    cfg: CompressConfig, task: CompressionTask, baseline: Mapping[str, Any], objectives: list[str]
) -> Rule:
    size = cfg.select or next((m for m in objectives if m in SIZE_METRICS), "nnz_params_m")
    if objectives[:1] == ["reward"] and cfg.select is None:
        return Rule("reward", -1.0 + 1e-9, size, "the highest reward (invalid children: -1)", True)
    if task.data:
        floor = float(baseline["val_top1"]) - cfg.max_drop
        text = (
            f"the smallest {size} whose validation top1 is within {cfg.max_drop:g} points of "
            f"the original's {baseline['val_top1']:.2f}% (>= {floor:.2f}%)"
        )
        return Rule("top1", floor, size, text)
    text = (
        f"the smallest {size} whose output cosine similarity is >= {cfg.min_cosine:g} on every head"
    )
    return Rule("cosine", cfg.min_cosine, size, text)


def _candidates(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials that satisfy every constraint."""
    return [t for t in completed(study) if is_feasible(t)]


# -- measuring the original and the selected model ---------------------------------------------
def _measure(task: CompressionTask, model: Network) -> dict[str, Any]:
    """Sizes, quality (test top-1 or drift per head) and CPU latency of ``model``."""
    row: dict[str, Any] = dict(count_nonzero(model).metrics())
    if task.data:
        row["val_top1"] = task.top1(model, "val")
        row["test_top1"] = task.top1(model, "test")
    else:
        from nas.compress.drift import drift, outputs

        heads = drift(task._reference_outputs, outputs(model, task._probes), task.heads)
        row["drift"] = [asdict(h) for h in heads]
        row["cosine"] = min(h.cosine for h in heads)
    row["latency_ms"] = task.latency(model) if task.hw == "cpu" else None
    return row


def _baseline(task: CompressionTask) -> dict[str, Any]:
    row = _measure(task, task.original)
    row["onnx_latency_ms"] = _onnx_latency(task.original)
    return row


def _onnx_latency(model: Network, path: Path | None = None) -> float:
    import tempfile

    from nas.predictors.measure import measure_onnx_file

    shape = tuple(model.example_input(1).shape[1:])
    if path is not None:
        return measure_onnx_file(path, shape).median_ms
    with tempfile.TemporaryDirectory(prefix="nas-onnx-") as tmp:
        f = Path(tmp) / "m.onnx"
        export_onnx(model, f, check=False)
        return measure_onnx_file(f, shape).median_ms


def _finish(
    cfg: CompressConfig,
    task: CompressionTask,
    trial: optuna.trial.FrozenTrial,
    baseline: Mapping[str, Any],
    out_dir: Path,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Rebuild, fine-tune, save, export and measure the selected candidate."""
    params = dict(trial.params)
    model = task.build(params)
    selected: dict[str, Any] = {"trial": trial.number, "params": params}
    selected["search_metrics"] = {k: v for k, v in trial.user_attrs.items() if finite(v)}
    if cfg.finetune_epochs:
        from nas.compress.finetune import distill

        before = task.quality(model)
        history = distill(
            model,
            task.original,
            epochs=cfg.finetune_epochs,
            data=task.data,
            seed=cfg.seed,
            device=task.device,
        )
        selected["finetune"] = {
            "epochs": cfg.finetune_epochs,
            "method": "distillation from the original",
            "before": before,
            "history": history,
        }
    model.origin = {
        "compressed_from": task.checkpoint,
        "checkpoint_sha256": task.digest,
        "method": task.name,
        "params": params,
        "trial": trial.number,
        "finetune_epochs": cfg.finetune_epochs,
    }
    files: dict[str, Path] = {}
    files["weights"], files["architecture"] = save_model(model, out_dir / "model", model.origin)
    onnx_path = out_dir / "model.onnx"
    selected["onnx_max_abs_diff"] = export_onnx(model, onnx_path)
    files["onnx"] = onnx_path
    selected.update(_measure(task, model))
    selected["onnx_latency_ms"] = _onnx_latency(model, onnx_path)
    if cfg.int8:
        selected["int8"], files["int8"] = _int8(task, model, onnx_path, out_dir)
    return selected, files


def _inputs(task: CompressionTask, model: Network, split: str) -> tuple[torch.Tensor, Any]:
    from nas.compress.datasets import batches, load_data

    assert task.data is not None
    data = load_data(task.data, split)
    xs, ys = zip(*batches(data, model.preprocessing, EVAL_BATCH), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _int8(
    task: CompressionTask, model: Network, onnx_path: Path, out_dir: Path
) -> tuple[dict[str, Any], Path]:
    from nas.compress.drift import drift, probe_images
    from nas.compress.int8 import CALIBRATION_IMAGES, quantize, run

    if task.data:
        calibration = _inputs(task, model, "train")[0][:CALIBRATION_IMAGES]
    else:
        half = CALIBRATION_IMAGES // 2
        calibration = probe_images(model.preprocessing, noise=half, digits=half, seed=2)
    path = quantize(onnx_path, out_dir / "model.int8.onnx", calibration)
    row: dict[str, Any] = {
        "file": path.name,
        "format": "QDQ, weights int8 per channel, activations uint8, min-max calibration",
        "calibration_images": len(calibration),
        "bytes": path.stat().st_size,
        "fp32_bytes": onnx_path.stat().st_size,
    }
    if task.data:
        x, y = _inputs(task, model, "test")
        logits = run(path, x)[0]
        row["test_top1"] = 100.0 * int((logits.argmax(1) == y).sum()) / len(y)
    else:
        heads = drift(task._reference_outputs, run(path, task._probes), task.heads)
        row["drift"] = [asdict(h) for h in heads]
        row["cosine"] = min(h.cosine for h in heads)
    row["latency_ms"] = _onnx_latency(model, path)
    return row, path


__all__ = ["CompressConfig", "CompressResult", "prepare_compress", "run_compress"]
