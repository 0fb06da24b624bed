"""Per-block latency lookup tables for elastic supernets, as Once-for-All builds for phones.

A sub-network is a sequence of top-level blocks (its layer spec, nas.compress.arch). Each
distinct block — its spec and its input shape — is timed once on the target device; a
sub-network's latency is predicted as the sum of its blocks plus a constant fitted on a few
whole sub-networks measured end to end (what a sum of parts misses: framework overhead between
blocks, caches)::

    table = build_table(net, hardware=profile_fields("cpu"))   # minutes, once per device
    table.predict(net, params)                                 # microseconds per candidate

Which blocks exist is found without enumerating the space: :func:`covering_configs` makes every
dimension family (``k``, ``e``, ``d``, ``w``, ...) take each value uniformly and every ordered pair
of values alternating along its positions, for every resolution, which reaches every block of
OFA-style spaces (a block depends on its own choices and its neighbour's width). A block still
missing at prediction time is an error naming it, or, for a table of this machine, is timed and
added (:meth:`LookupTable.extend`).

Tables are JSON (gzip when the name ends in ``.gz``) with a format version. This module imports
torch alone (no optuna), so tables build on a bare GPU machine.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import logging
import math
import os
import random
import statistics
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nas.compress.arch import LayerSpec, Shape, build, build_layer, input_shapes
from nas.supernets.elastic import ElasticSupernet, SubnetParams

log = logging.getLogger("nas")

FORMAT = "nas-latency-table"
VERSION = 1

Progress = Callable[[int, int], None]


class TableError(ValueError):
    """A table file that cannot be used: wrong format or version, another supernet, a gap."""


def block_key(spec: LayerSpec, shape: Shape) -> str:
    """The table key of one block: its canonical spec and its input shape."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":")) + "@" + "x".join(map(str, shape))


def blocks(net: ElasticSupernet, params: Mapping[str, Any]) -> list[tuple[str, LayerSpec, Shape]]:
    """``(key, spec, input shape)`` of each top-level block of sub-network ``params``."""
    r = int(params["r"])
    spec = net.arch_spec(params)
    shapes = input_shapes(spec, (net.preprocessing.channels, r, r))
    return [(block_key(s, sh), s, sh) for s, sh in zip(spec, shapes, strict=True)]


def covering_configs(net: ElasticSupernet) -> list[SubnetParams]:
    """Sub-networks whose blocks include every block of the space (see the module docstring)."""
    families: dict[str, list[str]] = {}
    for name in net.choices():
        families.setdefault(name.rstrip("0123456789"), []).append(name)
    choices = net.choices()
    patterns: list[list[dict[str, Any]]] = []
    for dims in families.values():
        n = max(len(choices[d]) for d in dims)
        fam = []
        for a, b in itertools.product(range(n), repeat=2):
            fam.append(
                {
                    d: choices[d][min(a if i % 2 == 0 else b, len(choices[d]) - 1)]
                    for i, d in enumerate(dims)
                }
            )
        patterns.append(fam)
    configs = []
    for r in net.resolutions:
        for combo in itertools.product(*patterns):
            p: SubnetParams = {"r": r}
            for part in combo:
                p.update(part)
            configs.append(p)
    return configs


@dataclass
class LookupTable:
    """Block latencies (ms) of one supernet on one device, and the fitted constant."""

    supernet: str
    hardware: dict[str, Any]
    n_classes: int
    entries: dict[str, float] = field(default_factory=dict)
    constant_ms: float = 0.0
    calibration: list[dict[str, Any]] = field(default_factory=list)

    def missing(self, net: ElasticSupernet, params: Mapping[str, Any]) -> list[str]:
        """Keys of the blocks of ``params`` the table lacks."""
        return [k for k, _, _ in blocks(net, params) if k not in self.entries]

    def sum_ms(self, net: ElasticSupernet, params: Mapping[str, Any]) -> float:
        """Sum of the block latencies of ``params``.

        Raises:
            TableError: a block is not in the table.
        """
        total = 0.0
        for key, _, _ in blocks(net, params):
            try:
                total += self.entries[key]
            except KeyError:
                raise TableError(
                    f"the {self.supernet} table for {self.hardware.get('name')} lacks the block "
                    f"{key[:120]}...; rebuild it (nas hw profile)"
                ) from None
        return total

    def predict(self, net: ElasticSupernet, params: Mapping[str, Any]) -> float:
        """Predicted latency (ms) of sub-network ``params``: block sum + constant.

        Never below 1% of the block sum: a constant fitted on noisy timings must not make a
        latency negative.
        """
        total = self.sum_ms(net, params)
        return max(total + self.constant_ms, 0.01 * total)

    def extend(self, net: ElasticSupernet, params: Mapping[str, Any], **measure: Any) -> int:
        """Time and add the blocks of ``params`` the table lacks; how many were added."""
        todo = {k: (s, sh) for k, s, sh in blocks(net, params) if k not in self.entries}
        for key, (spec, shape) in todo.items():
            self.entries[key] = time_block(spec, shape, **measure)
        return len(todo)

    # -- files -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "supernet": self.supernet,
            "hardware": self.hardware,
            "n_classes": self.n_classes,
            "constant_ms": self.constant_ms,
            "calibration": self.calibration,
            "entries": self.entries,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], source: str = "table") -> LookupTable:
        if doc.get("format") != FORMAT:
            raise TableError(f"{source} is not a latency table (format {doc.get('format')!r})")
        if doc.get("version") != VERSION:
            raise TableError(
                f"{source} is a version {doc.get('version')} latency table; this nas reads "
                f"version {VERSION}: rebuild it"
            )
        try:
            return cls(
                supernet=str(doc["supernet"]),
                hardware=dict(doc["hardware"]),
                n_classes=int(doc["n_classes"]),
                entries={str(k): float(v) for k, v in doc["entries"].items()},
                constant_ms=float(doc["constant_ms"]),
                calibration=list(doc.get("calibration", [])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise TableError(f"{source} is a damaged latency table ({e})") from None

    def save(self, path: Path) -> None:
        """Write the table atomically (gzip when ``path`` ends in ``.gz``)."""
        data = (json.dumps(self.to_json(), indent=0, sort_keys=True) + "\n").encode()
        if path.suffix == ".gz":
            data = gzip.compress(data, mtime=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared table from other users
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> LookupTable:
        """Read a table written by :meth:`save`.

        Raises:
            TableError: not a table, another version, or damaged.
        """
        try:
            raw = path.read_bytes()
            text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            doc = json.loads(text)
        except (OSError, ValueError, EOFError) as e:
            raise TableError(f"cannot read the latency table {path}: {e}") from None
        if not isinstance(doc, dict):
            raise TableError(f"{path} is not a latency table")
        return cls.from_json(doc, str(path))


def time_block(spec: LayerSpec | Sequence[LayerSpec], shape: Shape, **measure: Any) -> float:
    """Median latency (ms) of one block (or a whole spec) built with random weights."""
    from nas.predictors.measure import measure_latency

    torch.manual_seed(0)
    module = build_layer(spec) if isinstance(spec, dict) else build(list(spec))
    return float(measure_latency(module.eval(), tuple(shape), **measure).median_ms)


def build_table(
    net: ElasticSupernet,
    *,
    hardware: Mapping[str, Any],
    calibrate: int = 10,
    seed: int = 0,
    configs: Iterable[Mapping[str, Any]] | None = None,
    progress: Progress | None = None,
    **measure: Any,
) -> LookupTable:
    """Time every distinct block of ``net``'s space, then fit the constant.

    Args:
        net: the supernet (its weights do not matter, only its shapes).
        hardware: the profile's fields, stored with the table (name, device, batch size, ...).
        calibrate: random sub-networks measured whole to fit the constant (their median
            difference from the sum of their blocks).
        seed: seed of those sub-networks.
        configs: sub-networks whose blocks to time (default :func:`covering_configs`).
        progress: called as ``progress(done, total)`` after each block.
        **measure: passed to :func:`nas.predictors.measure.measure_latency` (``device``,
            ``backend``, ``batch_size``, ``threads``, ``warmup``, ``runs``).
    """
    todo: dict[str, tuple[LayerSpec, Shape]] = {}
    for p in covering_configs(net) if configs is None else configs:
        for key, spec, shape in blocks(net, p):
            todo.setdefault(key, (spec, shape))
    table = LookupTable(supernet=net.name, hardware=dict(hardware), n_classes=net.n_classes)
    log.info("timing %d distinct blocks of %s", len(todo), net.name)
    for i, (key, (spec, shape)) in enumerate(todo.items()):
        table.entries[key] = time_block(spec, shape, **measure)
        if progress is not None:
            progress(i + 1, len(todo))
    fit_constant(table, net, calibrate, seed, **measure)
    return table


def fit_constant(
    table: LookupTable, net: ElasticSupernet, n: int, seed: int, **measure: Any
) -> None:
    """Measure ``n`` random sub-networks whole; the constant is the median shortfall of the sum."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    diffs: list[float] = []
    sums: list[float] = []
    for _ in range(n):
        p = net.sample(rng)
        table.extend(net, p, **measure)
        r = int(p["r"])
        whole = time_block(net.arch_spec(p), (net.preprocessing.channels, r, r), **measure)
        total = table.sum_ms(net, p)
        rows.append({"params": p, "measured_ms": whole, "sum_ms": total})
        diffs.append(whole - total)
        sums.append(total)
    table.calibration = rows
    table.constant_ms = float(statistics.median(diffs)) if diffs else 0.0
    if sums and table.constant_ms < -0.5 * statistics.median(sums):
        log.warning(
            "whole %s sub-networks ran at under half their blocks' summed time (constant %.3f "
            "ms): were the blocks timed on a busy machine? Rebuild the table on an idle one",
            net.name,
            table.constant_ms,
        )


def table_digest(fields: Mapping[str, Any]) -> str:
    """A short stable hash of what makes two tables interchangeable."""
    text = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def relative_error(pred: float, measured: float) -> float:
    """|pred - measured| / measured (inf when measured is 0)."""
    return abs(pred - measured) / measured if measured > 0 else math.inf
