"""Conformance suite every compression method passes.

Use it from a test with a small trained-or-not model saved to a file::

    from nas.compress.testing import check_method
    check_method(create_task("magnitude", checkpoint=path, data="mnist"))

:func:`check_method` asserts, for the task it is given:

- its space is non-empty, uses supported distributions, is the same object on every call, and
  serialises to JSON (optuna's ``distribution_to_json``); sampled candidates are JSON too;
- applying a random candidate (one the method does not reject) yields a model with finite
  outputs of the original's shapes, and the model is self-describing: saved as safetensors +
  JSON and loaded back with no plugin code, it computes the same outputs;
- the same candidate gives the same model (every tensor equal, the same architecture);
- :meth:`~nas.compress.task.CompressionTask.evaluate` returns every metric the task declares
  (latency only when asked for), all finite, and the original is left unchanged;
- the candidate of :meth:`~nas.compress.task.CompressionTask.invalid_params` is refused
  (``ValueError`` or :class:`~nas.search.task.Rejected`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from optuna.distributions import distribution_to_json

from nas.compress.arch import Network
from nas.compress.model_io import load_model, save_model
from nas.compress.task import CompressionTask
from nas.search.space import sample, validate_space
from nas.search.task import Rejected, Task

#: random candidates drawn before a method that rejects all of them fails
MAX_DRAWS = 50


def _outputs(model: Network, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        y = model.eval()(x)
    return list(y) if isinstance(y, tuple) else [y]


def _buildable(task: CompressionTask, rng: np.random.Generator) -> tuple[dict[str, Any], Network]:
    """A random candidate the method builds (some spaces hold candidates it rejects)."""
    for _ in range(MAX_DRAWS):
        params = sample(task.space(), rng)
        try:
            return params, task.build(params)
        except Rejected:
            continue
    raise AssertionError(f"{task.name} rejected {MAX_DRAWS} random candidates in a row")


def check_method(task: CompressionTask, *, candidates: int = 2, seed: int = 0) -> None:
    """Assert the plugin contract (see the module docstring); raises ``AssertionError``."""
    assert isinstance(task, Task), f"{type(task).__name__} is not a Task"
    space = task.space()
    validate_space(space)
    assert task.space() is space, "space() must return the same object on every call"
    json.dumps({k: distribution_to_json(d) for k, d in space.items()})
    x = task.original.example_input(4)
    before = {k: v.clone() for k, v in task.original.state_dict().items()}
    want = _outputs(task.original, x)
    rng = np.random.default_rng(seed)
    for _ in range(candidates):
        params, a = _buildable(task, rng)
        json.dumps(params)
        b = task.build(params)
        assert a.spec == b.spec, f"{params}: two builds have different architectures"
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), (
            f"{params}: two builds have different weights"
        )
        got = _outputs(a, x)
        assert [g.shape for g in got] == [w.shape for w in want], (
            f"{params}: output shapes {[tuple(g.shape) for g in got]}, "
            f"expected {[tuple(w.shape) for w in want]}"
        )
        assert all(torch.isfinite(g).all() for g in got), f"{params}: non-finite outputs"
        with tempfile.TemporaryDirectory() as tmp:
            save_model(a, Path(tmp) / "m")
            again = _outputs(load_model(Path(tmp) / "m.safetensors"), x)
        assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(got, again, strict=True)), (
            f"{params}: the saved model does not compute what the built one does"
        )
        m = task.evaluate(params)
        declared = set(task.sources()) - {"latency_ms"}
        assert declared <= set(m), f"{params}: evaluate() lacks {sorted(declared - set(m))}"
        assert all(np.isfinite(v) for v in m.values()), f"{params}: non-finite metrics {m}"
    after = task.original.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the original was modified"
    bad = task.invalid_params()
    try:
        task.evaluate(bad)
    except (ValueError, Rejected):
        pass
    else:
        raise AssertionError(f"{task.name} accepted {bad}, which it must refuse")
