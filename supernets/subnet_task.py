"""Sub-network extraction as a search task: ``nas search --supernet resnet50 --hw gpu``.

A candidate is a sub-network of an elastic supernet (its params, resolution ``r`` included).
Evaluating one extracts it as a standalone model and measures it:

- ``macs_m`` and ``params_m``: counted on the extracted model at resolution ``r``;
- ``top1``: *measured* when the supernet has trained weights and ``--data`` is given (BatchNorm
  statistics recalibrated on training images, then top-1 on the validation split — never the
  test split); *predicted* (``--accuracy predicted``) by an accuracy surrogate fitted on
  :data:`PREDICTOR_SAMPLES` measured sub-networks (cached under ``$NAS_HOME/predictors``) or read
  from a file (``predicted:FILE``, see ``nas predictor fit``); else a training-free *proxy*
  score computed on the sub-network at batch 16 and half resolution: by default the ensemble
  of :mod:`nas.predictors.ensemble` (several zero-cost metrics, normalised over
  :data:`REFERENCE_SUBNETS` random sub-networks and weighted), or one metric
  (``proxy:naswot``, ...). A ranking signal, not a percentage; each metric's own score is kept
  as ``zc_<metric>``;
- ``latency_ms``: *predicted* by the per-block lookup table of the ``--hw`` device (``cpu``:
  this CPU, built on first use and cached; ``gpu``: this CUDA device, else a table shipped for a
  named card), or a *roofline* estimate for an H100 when no GPU and no table exist
  (nas.predictors.latency says which, and every output repeats it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from optuna.distributions import CategoricalDistribution

from nas.compress.arch import Network, count_macs, count_params
from nas.search.errors import UserError
from nas.search.space import Measurement, Params, Space
from nas.supernets._registry import register_supernet
from nas.supernets.elastic import ElasticSupernet
from nas.supernets.families import FAMILIES, load_supernet

if TYPE_CHECKING:
    from nas.predictors.accuracy import AccuracyModel
    from nas.predictors.ensemble import Ensemble, Reference
    from nas.predictors.latency import SubnetLatency
    from nas.search.task import TrainingFree

ACCURACY = ("auto", "measured", "predicted", "proxy")
#: recalibration images and proxy batch
CALIBRATION_IMAGES = 1000
PROXY_BATCH = 16
#: sub-networks measured to fit the accuracy predictor of ``--accuracy predicted``
PREDICTOR_SAMPLES = 40
#: random sub-networks whose scores normalise the ensemble proxy's metrics
REFERENCE_SUBNETS = 10
#: the default proxy
ENSEMBLE = "ensemble"
#: candidate pool of the ``robot`` strategy on a supernet, and the metrics it weighs
ROBOT_POOL = 300
ROBOT_METRICS = ("naswot", "synflow", "snip", "grad_norm", "jacob_cov", "fisher", "flops", "params")


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
        measure: bool = False,
        workers: int = 1,
    ):
        self.name = supernet
        self.hw, self.batch_size, self.weights, self.data = hw, batch_size or 1, weights, data
        self.device = _check_device(device)
        self.mode, self.proxy, predictor = _accuracy_mode(accuracy, weights, data)
        self.accuracy_model: AccuracyModel | None = None
        self.ensemble: Ensemble | None = None
        self._reference: Reference | None = None
        if self.mode == "proxy" and self.proxy == ENSEMBLE:
            from nas.predictors.ensemble import load_ensemble

            try:
                self.ensemble = load_ensemble()
            except ValueError as e:
                raise UserError(str(e)) from None
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
        self.measure, self.workers = measure, workers
        self.latency = self._resolve_latency(build=False)
        if predictor:
            self.accuracy_model = _load_accuracy_model(predictor, self._space)

    def _resolve_latency(self, build: bool) -> SubnetLatency | None:
        """The latency source; None when it is a table not built yet (and ``build`` is False)."""
        from nas.predictors.hardware import ProfileError
        from nas.predictors.latency import resolve_latency
        from nas.predictors.lut import TableError

        try:
            if self.measure:
                from nas.predictors.latency import measured_latency

                return measured_latency(self.hw, batch_size=self.batch_size, workers=self.workers)
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
        if "top1" in metrics and self.mode == "predicted" and self.accuracy_model is None:
            self.accuracy_model = self.fit_accuracy(PREDICTOR_SAMPLES)
        if "top1" in metrics and self.ensemble is not None and self._reference is None:
            self._reference = self._ensemble_reference()

    def _random_subnets(self, n: int, seed: int) -> list[Params]:
        """``n`` distinct random sub-networks (fewer only if the space is smaller)."""
        rng = np.random.default_rng(seed)
        dims = self.net.dimensions()
        n = min(n, _space_size(dims))
        chosen: list[Params] = []
        while len(chosen) < n:
            p: Params = {k: v[int(rng.integers(len(v)))] for k, v in dims.items()}
            if p not in chosen:
                chosen.append(p)
        return chosen

    def _zero_cost(self, params: Params, names: tuple[str, ...]) -> dict[str, float]:
        """Zero-cost scores of sub-network ``params`` (NaN: undefined); see :meth:`_scores`."""
        return self._scores(self.build(params, calibrate=False), int(params["r"]), names)

    def _scores(self, sub: Network, r: int, names: Sequence[str]) -> dict[str, float]:
        """Zero-cost scores of ``sub`` on the proxy batch (half resolution, batch 16).

        ``flops`` and ``params`` are counted at the candidate's own resolution (MACs and
        parameters in millions, as ``macs_m`` and ``params_m``), not at the proxy's.
        """
        from nas.predictors.zero_cost import score_all

        counted = {
            "flops": lambda: (
                count_macs(sub, torch.zeros(1, sub.preprocessing.channels, r, r)) / 1e6
            ),
            "params": lambda: count_params(sub) / 1e6,
        }
        rest = [n for n in names if n not in counted]
        out = {n: float(counted[n]()) for n in names if n in counted}
        if rest:
            x, y = self._proxy_input(max(16, r // 2))
            model, x, y = sub.to(self.device), x.to(self.device), y.to(self.device)
            out |= score_all(model, x, y, rest)
        return {n: out[n] for n in names}

    def _ensemble_reference(self) -> Reference:
        import logging

        assert self.ensemble is not None
        log = logging.getLogger("nas")
        names = self.ensemble.metrics
        rows = []
        for i, p in enumerate(self._random_subnets(REFERENCE_SUBNETS, seed=0), 1):
            s = self._zero_cost(p, names)
            rows.append([s[m] for m in names])
            log.info("proxy ensemble: scored reference sub-network %d/%d", i, REFERENCE_SUBNETS)
        try:
            return self.ensemble.reference(np.array(rows))
        except ValueError as e:
            raise UserError(f"proxy ensemble on {self.name}: {e}") from None

    def training_free(self, seed: int) -> TrainingFree:
        """RoBoT's view of this space: :data:`ROBOT_POOL` random sub-networks and metrics."""
        from nas.search.task import TrainingFree

        def metrics(candidates: Sequence[Params]) -> np.ndarray:
            out = [self._zero_cost(dict(p), ROBOT_METRICS) for p in candidates]
            return np.array([[s[m] for m in ROBOT_METRICS] for s in out], dtype=float)

        pool = self._random_subnets(ROBOT_POOL, seed)
        return TrainingFree(pool=pool, metrics=metrics, names=ROBOT_METRICS)

    def fit_accuracy(
        self, samples: int = PREDICTOR_SAMPLES, seed: int = 0, *, cache: bool = True
    ) -> AccuracyModel:
        """Measure ``samples`` random sub-networks and fit an accuracy predictor on them.

        The model is cached under ``$NAS_HOME/predictors`` by supernet, weights digest, data,
        samples and seed, and reused when its space matches.
        """
        import logging

        from nas.predictors._home import nas_home
        from nas.predictors.accuracy import AccuracyModel

        if not (self.weights and self.data):
            raise UserError("fitting an accuracy predictor needs trained --weights and --data")
        digest = _sha256(self.weights)
        key = hashlib.sha256(str(self.data).encode()).hexdigest()[:8]
        path = (
            nas_home() / "predictors" / f"{self.name}-{digest[:12]}-{key}-n{samples}-s{seed}.json"
        )
        if cache and path.is_file():
            try:
                return _load_accuracy_model(str(path), self._space)
            except UserError:
                pass  # another space or version: refit and overwrite
        log = logging.getLogger("nas")
        chosen = self._random_subnets(samples, seed)
        top1 = []
        for i, p in enumerate(chosen, 1):
            top1.append(self._measure(self.build(p, calibrate=True)))
            log.info("accuracy predictor: measured %d/%d sub-networks", i, samples)
        meta = {"supernet": self.name, "weights_sha256": digest, "data": str(self.data)}
        model = AccuracyModel.fit(self._space, chosen, top1, seed=seed, meta=meta)
        if cache:
            model.save(path)
        return model

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
        acc = {"measured": "measured", "predicted": "predicted"}.get(
            self.mode, f"proxy:{self.proxy}"
        )
        out = {"top1": acc, "macs_m": "counted", "params_m": "counted"}
        if self.ensemble is not None:
            out |= {f"zc_{m}": "proxy" for m in self.ensemble.metrics}
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
        elif self.mode == "predicted":
            how = (
                self.accuracy_model.describe()
                if self.accuracy_model is not None
                else f"fitted on {PREDICTOR_SAMPLES} sub-networks measured on {self.data} "
                "when the search starts"
            )
            acc = f"top1: predicted by an accuracy surrogate ({how})"
        else:
            what = (
                f"{self.ensemble.describe()}; normalised over {REFERENCE_SUBNETS} random "
                "sub-networks"
                if self.ensemble is not None
                else self.proxy
            )
            acc = (
                f"top1: training-free proxy {what} (a score, not a percentage) at batch "
                f"{PROXY_BATCH} and half the candidate's resolution, on "
                + (f"{self.data} images" if self.data else "MNIST digits (no --data)")
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
        sub = self.build(params, calibrate=self.mode == "measured")
        r = int(params["r"])
        m = {
            "macs_m": count_macs(sub, torch.zeros(1, sub.preprocessing.channels, r, r)) / 1e6,
            "params_m": count_params(sub) / 1e6,
        }
        if self.mode == "measured":
            m["top1"] = self._measure(sub)
        elif self.mode == "predicted":
            if self.accuracy_model is None:
                self.require({"top1"})
            assert self.accuracy_model is not None
            m["top1"] = float(self.accuracy_model.predict([self.net.check(params)])[0])
        else:
            m |= self._proxy(sub, r)
        if self.latency is not None:
            m["latency_ms"] = self.latency(self.net, self.net.check(params), sub)
        return m

    def build(self, params: Params, calibrate: bool | None = None) -> Network:
        """Sub-network ``params`` as a standalone model.

        BatchNorm is recalibrated on training images when ``calibrate`` (default: when
        ``--data`` is given and accuracy is measured or predicted).
        """
        try:
            p = self.net.check(params)
        except ValueError as e:
            raise UserError(str(e)) from None
        sub = self.net.extract(p).eval()
        if calibrate is None:
            calibrate = self.data is not None and self.mode in ("measured", "predicted")
        if calibrate:
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

    def _proxy(self, sub: Network, r: int) -> dict[str, float]:
        """``top1`` (the proxy's score) and, for the ensemble, each metric as ``zc_<name>``.

        Raises:
            RuntimeError: the proxy is undefined (NaN) for this sub-network: a failed trial.
        """
        if self.ensemble is None:
            value = self._scores(sub, r, [self.proxy])[self.proxy]
            if not np.isfinite(value):
                raise RuntimeError(f"proxy {self.proxy} is undefined for this sub-network")
            return {"top1": value}
        if self._reference is None:
            self.require({"top1"})
        assert self._reference is not None
        scores = self._scores(sub, r, self.ensemble.metrics)
        out = {f"zc_{k}": v for k, v in scores.items() if np.isfinite(v)}
        return {"top1": self.ensemble.combine(scores, self._reference), **out}

    def _proxy_input(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _proxy_batch(self.data, size, self.net.preprocessing.channels)


@lru_cache(maxsize=16)
def _proxy_batch(data: str | None, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed proxy batch at ``size`` px and its labels: data images, or MNIST digits."""
    if data is None:
        from nas.predictors.zero_cost import reference_batch

        x, y = reference_batch(PROXY_BATCH, size, seed=0)
        return (x if channels == 3 else x[:, :1].expand(-1, channels, -1, -1).contiguous()), y
    from nas.compress.arch import Preprocessing
    from nas.compress.datasets import batches, load_data

    d = _head(load_data(data, "train"), PROXY_BATCH)
    pre = Preprocessing(input_size=(size, size), channels=channels)
    x, y = next(iter(batches(d, pre, PROXY_BATCH)))
    return x, y


def _head(data: Any, n: int) -> Any:
    """The first ``n`` samples of an ImageData (already shuffled by its split)."""
    import dataclasses

    return dataclasses.replace(data, x=data.x[:n], y=data.y[:n])


def _accuracy_mode(accuracy: str, weights: str | None, data: str | None) -> tuple[str, str, str]:
    """``(mode, proxy name, predictor file)`` of an ``--accuracy`` value."""
    kind, _, arg = accuracy.partition(":")
    if kind not in ACCURACY or (arg and kind not in ("proxy", "predicted")):
        raise UserError(
            f"unknown --accuracy {accuracy!r}; known: auto, measured, predicted, "
            "predicted:<file>, proxy, proxy:<name>"
        )
    if kind == "predicted":
        if not arg and not (weights and data):
            raise UserError(
                "--accuracy predicted measures sub-networks to fit its predictor: give trained "
                "--weights and --data, or a fitted predictor file as predicted:<file> "
                "(nas predictor fit)"
            )
        return kind, ENSEMBLE, arg
    proxy = arg
    if proxy and proxy != ENSEMBLE:
        from nas.predictors.zero_cost import list_proxies

        if proxy not in list_proxies():
            known = ", ".join([ENSEMBLE, *list_proxies()])
            raise UserError(f"unknown proxy {proxy!r}; known: {known}")
    if kind == "measured" and not (weights and data):
        raise UserError("--accuracy measured needs trained --weights and --data")
    if kind == "auto":
        kind = "measured" if weights and data else "proxy"
    return kind, proxy or ENSEMBLE, ""


def _load_accuracy_model(path: str, space: Space) -> AccuracyModel:
    """Read an accuracy predictor file and check it was fitted on ``space``."""
    from nas.predictors.accuracy import load_accuracy_model

    try:
        model = load_accuracy_model(path)
        model.check_space(space)
    except ValueError as e:
        raise UserError(str(e)) from None
    return model


def _space_size(dims: Mapping[str, Any]) -> int:
    n = 1
    for v in dims.values():
        n *= len(v)
    return n


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
