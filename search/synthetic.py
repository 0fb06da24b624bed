"""``synthetic``: a known two-objective problem with a settable evaluation time.

For checking a set-up before an overnight job — many workers on one PostgreSQL study, the
kill-and-resume path, the budget — without training anything: ``nas search --task synthetic
--hw cpu --task-option seconds=1``. Each candidate (``dims`` categorical choices of ``choices``
values) maps to a point of a ZDT1-like front: ``error`` (minimised) against ``reward``
(maximised), both deterministic in the params (so a retried trial measures the same), and the
evaluation sleeps ``seconds`` to stand in for the cost of a real one. The metrics are labelled
``proxy:synthetic``: they describe no model.
"""

from __future__ import annotations

import math
import time
import zlib
from typing import Any

from optuna.distributions import CategoricalDistribution

from nas.search.space import Measurement, Params, Space, contains
from nas.search.task import register_task

SOURCE = "proxy:synthetic"


@register_task("synthetic")
class SyntheticTask:
    """A deterministic two-objective benchmark function; see the module docstring.

    Args:
        seconds: wall time each evaluation sleeps (the stand-in evaluation cost).
        dims: number of categorical dimensions.
        choices: values per dimension.
        hw, data, batch_size, device, seed: accepted for the job interface, unused.
    """

    name = "synthetic"
    default_strategy = "random"
    default_objectives = ("error", "reward")

    def __init__(
        self,
        seconds: float = 0.0,
        dims: int = 6,
        choices: int = 5,
        hw: str | None = None,
        data: str | None = None,
        batch_size: int | None = None,
        device: str = "cpu",
        seed: int = 0,
    ):
        seconds, dims, choices = float(seconds), int(dims), int(choices)
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"synthetic: seconds must be >= 0, not {seconds}")
        if dims < 2 or choices < 2:
            raise ValueError("synthetic: needs dims >= 2 and choices >= 2")
        self.seconds, self.dims, self.choices = seconds, dims, choices
        self._space: Space = {
            f"x{i}": CategoricalDistribution(list(range(choices))) for i in range(dims)
        }

    def space(self) -> Space:
        return self._space

    def evaluate(self, params: Params) -> Measurement:
        """``error`` and ``reward`` of ``params`` after sleeping :attr:`seconds`."""
        if not contains(self._space, params):
            raise ValueError(f"synthetic: {params} is not in the space")
        if self.seconds:
            time.sleep(self.seconds)
        xs = [int(params[f"x{i}"]) / (self.choices - 1) for i in range(self.dims)]
        f1 = xs[0]
        g = 1.0 + 9.0 * sum(xs[1:]) / (self.dims - 1)
        f2 = g * (1.0 - math.sqrt(f1 / g))
        # a small deterministic ripple so that candidates rarely tie
        ripple = (zlib.crc32(repr(sorted(params.items())).encode()) % 1000) / 1e6
        return {"error": round(f2 + ripple, 9), "reward": round(1.0 - f1, 9)}

    def sources(self) -> dict[str, str]:
        return {"error": SOURCE, "reward": SOURCE}

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "seconds": self.seconds,
            "dims": self.dims,
            "choices": self.choices,
        }
