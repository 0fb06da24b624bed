"""The common ground of compression methods: a trained model in, candidates measured out.

A compression method is a :class:`~nas.search.task.Task` registered by name
(``register_task``). :class:`CompressionTask` does everything but the method's own change: it
loads the checkpoint (a zoo name or import path plus a state_dict, or a model this project
saved), measures every candidate the same way — sizes counted, dense and non-zero; top-1 on the
data's validation split when there is data; output drift against the original on the fixed probe
set when there is not; latency on this machine when an objective or constraint asks for it — and
says where each figure came from. A method subclasses it and writes :meth:`space` and
:meth:`apply`.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch

from nas.compress.arch import Network
from nas.compress.pruning import count_nonzero
from nas.search.errors import UserError
from nas.search.space import Measurement, Params, Space, contains

log = logging.getLogger("nas")

#: training images BatchNorm statistics are re-estimated on after a change
RECALIBRATION_IMAGES = 1024
EVAL_BATCH = 250


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, hex (identifies the checkpoint a study compresses)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CompressionTask(ABC):
    """A trained model and how candidates of one compression method are measured.

    Args:
        checkpoint: safetensors or torch state_dict file (or a model this project saved).
        arch: zoo name or ``package.module:factory``; None for a model this project saved.
        arch_kwargs: the factory's keyword arguments (a mapping or JSON text).
        data: ``mnist``, ``digits``, a folder or an ``.npz``; None judges candidates by drift.
        hw: where ``latency_ms`` is measured: ``cpu`` (this machine) or ``gpu`` (CUDA).
        batch_size: batch of the latency measurement (default 1).
        device: where accuracy is measured (``cpu``, ``cuda``).
        seed: seed of whatever the method draws.
        checkpoint_sha256: the checkpoint's digest when the study was created; a different file
            under the same name is an error.
    """

    name: str = "compress"
    default_strategy: ClassVar[str] = "tpe"
    #: re-estimate BatchNorm statistics on training images after :meth:`apply` (with data)
    recalibrate: ClassVar[bool] = True

    def __init__(
        self,
        checkpoint: str,
        arch: str | None = None,
        arch_kwargs: Mapping[str, Any] | str | None = None,
        data: str | None = None,
        hw: str = "cpu",
        batch_size: int | None = None,
        device: str = "cpu",
        seed: int = 0,
        checkpoint_sha256: str | None = None,
    ) -> None:
        from nas.compress.loading import load_checkpoint, parse_kwargs

        self.checkpoint = str(checkpoint)
        self.arch = arch
        self.arch_kwargs = parse_kwargs(arch_kwargs)
        self.data = data
        self.hw = hw
        self.batch_size = batch_size or 1
        self.device = device
        self.seed = seed
        if hw not in ("cpu", "gpu"):
            raise UserError(f"--hw {hw!r}: compression measures latency on cpu or gpu")
        if not Path(self.checkpoint).is_file():
            raise UserError(f"checkpoint {self.checkpoint}: no such file")
        self.digest = file_digest(self.checkpoint)
        if checkpoint_sha256 is not None and checkpoint_sha256 != self.digest:
            raise UserError(
                f"checkpoint {self.checkpoint} changed since this study began (its SHA-256 "
                "differs); name a new --study"
            )
        model = load_checkpoint(self.checkpoint, arch, self.arch_kwargs)
        if not isinstance(model, Network):
            raise UserError(
                f"{arch}: nas compress needs a model with a layer spec (a zoo architecture or a "
                "model saved by nas) to write the compressed architecture; "
                f"zoo: {', '.join(_zoo())}"
            )
        self.original: Network = model.eval()
        self.heads = self.original.output_names
        if data is not None and len(self.heads) > 1:
            raise UserError(
                f"the model has {len(self.heads)} outputs ({', '.join(self.heads)}): it is judged "
                "by output drift, not by labelled data; leave out --data"
            )
        self._required: set[str] = set()

    # -- what a method writes ----------------------------------------------------------------
    @abstractmethod
    def space(self) -> Space:
        """The method's choices; the same object on every call."""

    @abstractmethod
    def apply(self, model: Network, params: Params) -> Network:
        """The candidate ``params`` made from ``model`` (a new model; ``model`` is unchanged).

        Raises:
            Rejected: a candidate the method refuses (counts against the budget).
        """

    def invalid_params(self) -> Params:
        """A candidate the method must refuse (for the conformance suite); by default one with a
        value outside the space."""
        name, dist = next(iter(self.space().items()))
        high = getattr(dist, "high", None)
        bad: Any = high + 1 if isinstance(high, int | float) else "no-such-choice"
        return {k: (bad if k == name else _any(d)) for k, d in self.space().items()}

    def initial_candidates(self) -> list[Params]:
        """Candidates evaluated first in a new study (none by default); the strategy takes over
        after them."""
        return []

    def options(self) -> dict[str, Any]:
        """The method's own settings, stored with the study."""
        return {}

    # -- the Task protocol -------------------------------------------------------------------
    @property
    def default_objectives(self) -> tuple[str, ...]:
        return ("top1", "nnz_params_m") if self.data else ("cosine", "nnz_params_m")

    def sources(self) -> dict[str, str]:
        out = {
            m: "counted" for m in ("params_m", "nnz_params_m", "macs_m", "nnz_macs_m", "sparsity")
        }
        if self.data:
            out["top1"] = f"measured:{self.data} validation split"
        else:
            out["cosine"] = "measured:output drift on the probe set"
            out["max_abs_diff"] = "measured:output drift on the probe set"
        if self.hw == "cpu" or torch.cuda.is_available():
            out["latency_ms"] = f"measured:{self.hw}, torch eager, batch {self.batch_size}"
        return out

    @property
    def unavailable(self) -> dict[str, str]:
        out = {"top1": "no --data: judged by output drift"} if not self.data else {}
        if self.hw == "gpu" and not torch.cuda.is_available():
            out["latency_ms"] = "--hw gpu needs a CUDA device here"
        return out

    def require(self, metrics: set[str]) -> None:
        """Measure latency only when an objective or constraint needs it."""
        self._required = set(metrics)

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.digest,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "data": self.data,
            "hw": self.hw,
            "seed": self.seed,
            "options": self.options(),
        }

    def notes(self) -> list[str]:
        judged = (
            f"top1 on the {self.data} validation split"
            if self.data
            else "output drift on 512 noise + 512 digit-crop probes"
        )
        c = self.baseline_counts
        return [
            f"{self.name}: {self.checkpoint} ({c['params_m']:.3f} M params, "
            f"{c['macs_m']:.2f} M MACs); candidates judged by {judged}"
        ]

    def evaluate(self, params: Params) -> Measurement:
        model = self.build(params)
        m: Measurement = dict(count_nonzero(model).metrics())
        m.update(self.quality(model))
        if "latency_ms" in self._required:
            m["latency_ms"] = self.latency(model)
        return m

    def build(self, params: Params) -> Network:
        """The compressed model of candidate ``params`` (deterministic).

        Raises:
            ValueError: ``params`` not in :meth:`space`.
        """
        space = self.space()
        if set(params) != set(space) or not contains(space, params):
            raise ValueError(f"{self.name}: {params} is not a candidate of its space")
        model = self.apply(self.original, params)
        if self.data and self.recalibrate:
            self._recalibrate(model)
        return model.eval()

    # -- measurements ------------------------------------------------------------------------
    def quality(self, model: Network) -> Measurement:
        """top1 on the validation split, or drift (``cosine``, ``max_abs_diff``) without data."""
        if self.data:
            return {"top1": self.top1(model, "val")}
        from nas.compress.drift import drift, outputs

        d = drift(self._reference_outputs, outputs(model, self._probes), self.heads)
        return {
            "cosine": min(h.cosine for h in d),
            "max_abs_diff": max(h.max_abs for h in d),
            **{f"cosine_{h.head}": h.cosine for h in d if len(d) > 1},
        }

    def top1(self, model: Network, split: str) -> float:
        from nas.compress.datasets import batches, load_data
        from nas.compress.evaluate import top1

        assert self.data is not None
        data = load_data(self.data, split)
        return top1(model, batches(data, model.preprocessing, EVAL_BATCH), self.device)

    def latency(self, model: Network) -> float:
        """Median milliseconds on this machine (torch eager; CUDA for ``--hw gpu``)."""
        from nas.predictors.measure import measure_latency

        device = "cuda" if self.hw == "gpu" else "cpu"
        shape = tuple(model.example_input(1).shape[1:])
        return measure_latency(model, shape, batch_size=self.batch_size, device=device).median_ms

    @cached_property
    def baseline_counts(self) -> dict[str, float]:
        return count_nonzero(self.original).metrics()

    @cached_property
    def _probes(self) -> torch.Tensor:
        from nas.compress.drift import probe_images

        return probe_images(self.original.preprocessing)

    @cached_property
    def _reference_outputs(self) -> list[torch.Tensor]:
        from nas.compress.drift import outputs

        return outputs(self.original, self._probes)

    def _recalibrate(self, model: Network) -> None:
        from nas.compress.datasets import batches, load_data
        from nas.compress.evaluate import recalibrate_bn

        assert self.data is not None
        train = load_data(self.data, "train", limit=RECALIBRATION_IMAGES)
        recalibrate_bn(model, batches(train, model.preprocessing, EVAL_BATCH), self.device)


def _any(dist: Any) -> Any:
    choices = getattr(dist, "choices", None)
    return choices[0] if choices is not None else dist.low


def _zoo() -> list[str]:
    from nas.compress.zoo import list_models

    return list_models()
