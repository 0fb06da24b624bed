"""Sub-network extraction as a search task: ``nas search --supernet resnet50 --hw gpu``.

A candidate is a sub-network of an elastic supernet (its params, resolution ``r`` included).
Evaluating one extracts it as a standalone model and measures it:

- ``macs_m`` and ``params_m``: counted on the extracted model at resolution ``r``;
- ``top1``: *measured* when the supernet has trained weights and ``--data`` is given (BatchNorm
  statistics recalibrated on training images, then top-1 on the validation split — never the
  test split), else a training-free *proxy* score computed on the sub-network (NASWOT by
  default, at batch 16 and half resolution): a ranking signal, not a percentage;
- ``latency_ms``: *predicted* by the per-block lookup table of the ``--hw`` device (``cpu``:
  this CPU, built on first use and cached; ``gpu``: this CUDA device, else a table shipped for a
  named card), or a *roofline* estimate for an H100 when no GPU and no table exist
  (nas.predictors.latency says which, and every output repeats it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from optuna.distributions import CategoricalDistribution

from nas.compress.arch import Network, count_macs, count_params
from nas.search.errors import UserError
from nas.search.space import Measurement, Params, Space
from nas.supernets._registry import register_supernet
from nas.supernets.elastic import ElasticSupernet
from nas.supernets.families import FAMILIES, load_supernet

if TYPE_CHECKING:
    from nas.predictors.latency import SubnetLatency

ACCURACY = ("auto", "measured", "proxy")
#: recalibration images and proxy batch
CALIBRATION_IMAGES = 1000
PROXY_BATCH = 16


class SubnetTask:
    """Search the sub-networks of one elastic supernet."""

    default_strategy = "linas"
    default_objectives = ("top1", "latency_ms")

    def __init__(
        self,
        supernet: str,
        *,
        hw: str = "gpu",
        data: str | None = None,
        batch_size: int | None = None,
        weights: str | None = None,
        accuracy: str = "auto",
        device: str = "cpu",
    ):
        self.name = supernet
        self.hw, self.batch_size, self.weights, self.data = hw, batch_size or 1, weights, data
        self.device = _check_device(device)
        self.mode, self.proxy = _accuracy_mode(accuracy, weights, data)
        if data is not None:
            from nas.compress.datasets import load_data

            self._train = load_data(data, "train")
            self._val = load_data(data, "val")
        self.net: ElasticSupernet = load_supernet(supernet, weights)
        if data is not None and self.mode == "measured":
            self._check_classes()
        self._space: Space = {
            k: CategoricalDistribution(list(v)) for k, v in self.net.dimensions().items()
        }
        self.latency = self._resolve_latency(build=False)

    def _resolve_latency(self, build: bool) -> SubnetLatency | None:
        """The latency source; None when it is a table not built yet (and ``build`` is False)."""
        from nas.predictors.hardware import ProfileError
        from nas.predictors.latency import resolve_latency
        from nas.predictors.lut import TableError

        try:
            return resolve_latency(self.net, self.hw, batch_size=self.batch_size, build=build)
        except ProfileError as e:
            raise UserError(str(e)) from None
        except TableError as e:
            if build or "no latency table" not in str(e):
                raise UserError(str(e)) from None
            return None

    def require(self, metrics: set[str]) -> None:
        """Called with the metrics the search uses: a latency table is built only if needed."""
        if "latency_ms" in metrics and self.latency is None:
            self.latency = self._resolve_latency(build=True)

    def _check_classes(self) -> None:
        n = len(self._train.classes)
        if n > self.net.n_classes:
            raise UserError(
                f"--data {self.data} has {n} classes but the supernet's classifier "
                f"has {self.net.n_classes}"
            )

    # -- Task ------------------------------------------------------------------------------
    def space(self) -> Space:
        return self._space

    def sources(self) -> Mapping[str, str]:
        acc = "measured" if self.mode == "measured" else f"proxy:{self.proxy}"
        out = {"top1": acc, "macs_m": "counted", "params_m": "counted"}
        # a table not built yet is still offered: require() builds it when a search uses it
        out["latency_ms"] = self.latency.source if self.latency is not None else "predicted"
        return out

    def notes(self) -> list[str]:
        """Lines that explain the sources, printed before a search."""
        if self.mode == "measured":
            acc = (
                f"top1: measured on {self.data} (validation split) after BatchNorm "
                f"recalibration on {CALIBRATION_IMAGES} training images, on {self.device}"
            )
        else:
            acc = (
                f"top1: training-free proxy {self.proxy} (a score, not a percentage) at batch "
                f"{PROXY_BATCH} and half the candidate's resolution, on "
                + (f"{self.data} images" if self.data else "Gaussian-noise inputs")
            )
        lat = (
            self.latency.label
            if self.latency is not None
            else f"lookup table of this machine for {self.hw}, built when a search needs it"
        )
        return [acc, f"latency_ms: {lat}"]

    def describe(self) -> dict[str, Any]:
        return {
            "supernet": self.name,
            "hw": self.hw,
            "weights": self.weights,
            "weights_sha256": _sha256(self.weights) if self.weights else None,
            "data": self.data,
            "accuracy": self.sources()["top1"],
            "resolutions": list(self.net.resolutions),
            "notes": self.notes(),
        }

    def evaluate(self, params: Params) -> Measurement:
        sub = self.build(params)
        r = int(params["r"])
        m = {
            "macs_m": count_macs(sub, torch.zeros(1, sub.preprocessing.channels, r, r)) / 1e6,
            "params_m": count_params(sub) / 1e6,
        }
        m["top1"] = self._measure(sub) if self.mode == "measured" else self._proxy(sub, r)
        if self.latency is not None:
            m["latency_ms"] = self.latency(self.net, self.net.check(params), sub)
        return m

    def build(self, params: Params) -> Network:
        """Sub-network ``params`` as a standalone model, BatchNorm recalibrated when measured."""
        try:
            p = self.net.check(params)
        except ValueError as e:
            raise UserError(str(e)) from None
        sub = self.net.extract(p).eval()
        if self.mode == "measured":
            from nas.compress.datasets import batches
            from nas.compress.evaluate import recalibrate_bn

            train = _head(self._train, CALIBRATION_IMAGES)
            recalibrate_bn(sub, batches(train, sub.preprocessing, 100), self.device)
        sub.origin = {"supernet": self.name, "params": dict(p), "weights": self.weights}
        return sub.cpu()

    # -- accuracy --------------------------------------------------------------------------
    def _measure(self, sub: Network) -> float:
        from nas.compress.datasets import batches
        from nas.compress.evaluate import top1

        return top1(sub, batches(self._val, sub.preprocessing, 100), self.device)

    def _proxy(self, sub: Network, r: int) -> float:
        from nas.predictors.zero_cost import score

        x = self._proxy_input(max(16, r // 2))
        return float(score(self.proxy, sub.to(self.device), x.to(self.device)))

    def _proxy_input(self, size: int) -> torch.Tensor:
        return _proxy_batch(self.data, size, self.net.preprocessing.channels)


@lru_cache(maxsize=16)
def _proxy_batch(data: str | None, size: int, channels: int) -> torch.Tensor:
    """The fixed proxy batch at ``size`` px: data images, or seeded Gaussian noise."""
    if data is None:
        g = torch.Generator().manual_seed(0)
        return torch.randn(PROXY_BATCH, channels, size, size, generator=g)
    from nas.compress.arch import Preprocessing
    from nas.compress.datasets import batches, load_data

    d = _head(load_data(data, "train"), PROXY_BATCH)
    pre = Preprocessing(input_size=(size, size), channels=channels)
    return next(iter(batches(d, pre, PROXY_BATCH)))[0]


def _head(data: Any, n: int) -> Any:
    """The first ``n`` samples of an ImageData (already shuffled by its split)."""
    import dataclasses

    return dataclasses.replace(data, x=data.x[:n], y=data.y[:n])


def _accuracy_mode(accuracy: str, weights: str | None, data: str | None) -> tuple[str, str]:
    kind, _, proxy = accuracy.partition(":")
    if kind not in ACCURACY or (proxy and kind != "proxy"):
        raise UserError(
            f"unknown --accuracy {accuracy!r}; known: auto, measured, proxy, proxy:<name>"
        )
    if proxy:
        from nas.predictors.zero_cost import list_proxies

        if proxy not in list_proxies():
            raise UserError(f"unknown proxy {proxy!r}; known: {', '.join(list_proxies())}")
    if kind == "measured" and not (weights and data):
        raise UserError("--accuracy measured needs trained --weights and --data")
    if kind == "auto":
        kind = "measured" if weights and data else "proxy"
    return kind, proxy or "naswot"


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown --device {device!r}; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    return device


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _register(name: str, doc: str) -> None:
    def factory(**options: Any) -> SubnetTask:
        options.pop("name", None)
        return SubnetTask(name, **options)

    factory.__doc__ = doc
    register_supernet(name)(factory)


_DOCS = {
    "resnet50": "Once-for-All ResNet50-D: depth, expand ratio, width and resolution (OFA's "
    "encoding).",
    "mobilenetv3": "Once-for-All MobileNetV3 (width 1.0): kernel, expand, depth, resolution.",
    "mobilenetv3_w12": "Once-for-All MobileNetV3 (width 1.2): kernel, expand, depth, resolution.",
}
for _name in FAMILIES:
    _register(_name, _DOCS[_name])
