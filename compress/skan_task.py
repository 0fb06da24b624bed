"""The ``skan`` search task: the search core chooses an S-KAN's (or S-ConvKAN's) sizes.

Without ``data`` the task fits a function (``fit``, one of
:data:`~nas.compress.skan.FIT_TASKS`) and its objective is ``error`` (validation RMSE: 1,000
points of their own seed, never the test points of the benchmark); with ``data`` (``mnist``,
``digits``, any source of :func:`~nas.compress.datasets.load_data`) it trains an S-ConvKAN
classifier on ``limit`` training images and reports ``top1`` on the validation split.

The space: ``depth`` (hidden KAN layers, or ConvKAN layers for images), ``width_<i>`` per layer
(only the first ``depth`` count), ``grid`` and ``order`` of the bases, and ``pool_<i>``, the
candidate spaces of each layer (a name of :data:`~nas.compress.skan.POOLS`). Every candidate
trains briefly through the three phases (``steps`` for fitting, ``epochs`` for images) with a
fixed seed, so the same candidate measures the same; ``params_m`` is counted after pruning and
``latency_ms`` (batch 1, this CPU, torch eager) is measured only when an objective or a
constraint asks for it.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import torch
from optuna.distributions import CategoricalDistribution, IntDistribution

from nas.compress.arch import Network
from nas.compress.skan import POOLS, count_params, fit_network, fit_task, kan_spec
from nas.search.errors import UserError
from nas.search.space import Measurement, Params, Space, contains
from nas.search.task import Rejected, register_task

MAX_DEPTH = 3


@register_task("skan")
class SKANTask:
    """Search S-KAN sizes for a fitting task (``error``) or an image data set (``top1``).

    Args:
        hw: where latency is measured: ``cpu`` only.
        data: None to fit ``fit``; else the images to classify.
        batch_size: batch of the latency measurement (default 1).
        device: unused (training runs on the CPU); accepted for the core's factory call.
        seed: seed of the data and of every candidate's initialisation.
        fit: the fitting task without ``data``.
        steps: optimiser steps per fitting candidate.
        epochs: epochs per image candidate.
        limit: training images per image candidate.
    """

    name = "skan"
    default_strategy: ClassVar[str] = "tpe"

    def __init__(
        self,
        hw: str = "cpu",
        data: str | None = None,
        batch_size: int | None = None,
        device: str = "cpu",
        seed: int = 0,
        fit: str = "compose4",
        steps: int = 300,
        epochs: int = 1,
        limit: int = 1000,
    ) -> None:
        if hw != "cpu":
            raise UserError(f"--hw {hw!r}: the skan task measures latency on this cpu only")
        if min(steps, epochs, limit) < 1:
            raise UserError("skan steps, epochs and limit must be at least 1")
        self.hw, self.data, self.seed = hw, data, seed
        self.batch_size = batch_size or 1
        self.fit = fit_task(fit) if data is None else None
        self.steps, self.epochs, self.limit = steps, epochs, limit
        self._required: set[str] = set()

    @property
    def default_objectives(self) -> tuple[str, ...]:
        return ("error", "params_m") if self.data is None else ("top1", "params_m")

    @cached_property
    def _space(self) -> Space:
        widths = (2, 3, 4, 5, 6, 8) if self.data is None else (4, 8, 12, 16)
        depth = (1, MAX_DEPTH) if self.data is None else (1, 2)
        space: Space = {"depth": IntDistribution(*depth)}
        layers = depth[1] + (1 if self.data is None else 0)  # fitting: hidden + output layer
        space |= {f"width_{i}": CategoricalDistribution(widths) for i in range(depth[1])}
        space["grid"] = IntDistribution(3, 10)
        space["order"] = IntDistribution(1, 3)
        space |= {f"pool_{i}": CategoricalDistribution(list(POOLS)) for i in range(layers)}
        return space

    def space(self) -> Space:
        return self._space

    def sources(self) -> dict[str, str]:
        out = {
            "params_m": "counted",
            "latency_ms": f"measured:cpu, torch eager, batch {self.batch_size}",
        }
        if self.fit is not None:
            out["error"] = f"measured:{self.fit.name} validation RMSE after {self.steps} steps"
        else:
            out["top1"] = f"measured:{self.data} validation split after {self.epochs} epoch(s)"
        return out

    def require(self, metrics: set[str]) -> None:
        """Measure latency only when an objective or constraint needs it."""
        self._required = set(metrics)

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "fit": self.fit.name if self.fit else None,
            "data": self.data,
            "seed": self.seed,
            "steps": self.steps,
            "epochs": self.epochs,
            "limit": self.limit,
            "hw": self.hw,
        }

    def _layers(self, params: Params) -> tuple[list[int], list[list[str]]]:
        space = self.space()
        if set(params) != set(space) or not contains(space, params):
            raise ValueError(f"skan: {params} is not a candidate of its space")
        depth = int(params["depth"])
        widths = [int(params[f"width_{i}"]) for i in range(depth)]
        n_pools = depth + (1 if self.fit is not None else 0)
        return widths, [POOLS[str(params[f"pool_{i}"])] for i in range(n_pools)]

    def build(self, params: Params) -> Network:
        """The untrained (mixed) network of candidate ``params``.

        Raises:
            ValueError: ``params`` not in :meth:`space`.
        """
        widths, pools = self._layers(params)
        grid, order = int(params["grid"]), int(params["order"])
        torch.manual_seed(self.seed)
        if self.fit is not None:
            sizes = [self.fit.n_in, *widths, 1]
            return fit_network(self.fit.n_in, kan_spec(sizes, pools, grid, order))
        from nas.compress.skan_images import classifier, convkan_spec

        train = self._train
        c, size = train.channels, int(train.x.shape[-1])
        spec = convkan_spec(c, size, len(train.classes), widths, pools, grid, order)
        return classifier(train, spec)

    @cached_property
    def _train(self) -> Any:
        from nas.compress.datasets import load_data

        return load_data(str(self.data), "train", limit=self.limit)

    def evaluate(self, params: Params) -> Measurement:
        net = self.build(params)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny networks: more threads only add overhead (and noise)
        try:
            m = self._fit(net) if self.fit is not None else self._classify(net)
        except (UserError, ValueError) as e:  # diverged: evaluated, never retried
            raise Rejected(str(e)) from None
        finally:
            torch.set_num_threads(threads)
        m["params_m"] = count_params(net) / 1e6
        if "latency_ms" in self._required:
            from nas.predictors.measure import measure_latency

            shape = (
                (self.fit.n_in,) if self.fit is not None else tuple(net.example_input(1).shape[1:])
            )
            m["latency_ms"] = measure_latency(
                net.eval(), shape, batch_size=self.batch_size, threads=1
            ).median_ms
        return m

    def _fit(self, net: Network) -> Measurement:
        from nas.compress.skan import Phases, fit_data, train_skan

        assert self.fit is not None
        torch.manual_seed(self.seed)
        x, y = fit_data(self.fit, 1000, self.seed)
        xv, yv = fit_data(self.fit, 1000, 20_000 + self.seed)
        loss = lambda p, t: torch.mean((p - t) ** 2)  # noqa: E731
        train_skan(net, lambda s: (x, y), loss, Phases.split(self.steps), grid_every=100)
        with torch.no_grad():
            return {"error": float(torch.sqrt(loss(net.eval()(xv), yv)))}

    def _classify(self, net: Network) -> Measurement:
        from nas.compress.datasets import load_data
        from nas.compress.skan_images import top1, train_classifier

        train_classifier(net, self._train, self.epochs, self.seed)
        return {"top1": top1(net, load_data(str(self.data), "val"))}
