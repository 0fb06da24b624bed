"""Canonical form, readable formulas and equivalence of normalization-activation graphs.

Two graphs that compute the same expression are recognised in two ways:

1. **Canonically** (:func:`canonical`): the expression of the output, built from live nodes
   only (dead nodes vanish), with the operands of the commutative ops ``add``, ``mul`` and
   ``max`` sorted, and a few exact identities applied (``a + 0 = a``, ``a * 0 = 0``,
   ``max(a, a) = a``, ``-(-a) = a``, ``|-a| = |a|``, ``(-a)^2 = a^2``, ``||a|| = |a|``,
   ``0 / a = 0`` is *not* applied since ``a`` may be zero). Equal strings mean equal functions;
   :func:`canonical_hash` is a short digest of it.
2. **Numerically** (:func:`numerically_equal`): the same outputs, within a tolerance, on random
   inputs with random values of ``v0`` / ``v1``, in training and in eval mode — the second line
   for equivalences the rules miss (``x * x`` vs ``square(x)``).

:data:`KNOWN` holds the four reference layers as graphs: BN-ReLU and GN-ReLU
(``max((x - mean) / std * v1 + v0, 0)``, normalisation, then the learnable scale and shift
``v1``/``v0`` before the ReLU, then the layer's output affine), EvoNorm-B0 and EvoNorm-S0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from nas.compress.normact import (
    BINARY,
    INITIAL,
    Graph,
    GraphNormAct,
    check_graph,
    graph_of,
    node,
)

COMMUTATIVE = frozenset({"add", "mul", "max"})


def _norm_relu(axis: str) -> Graph:
    # 4 mean, 5 -mean, 6 x - mean, 7 std, 8 normalised, 9 * v1, 10 + v0, 11 relu
    return graph_of(
        [
            node(f"mean_{axis}", 0),
            node("neg", 4),
            node("add", 0, 5),
            node(f"std_{axis}", 0),
            node("div", 6, 7),
            node("mul", 8, 3),
            node("add", 9, 2),
            node("max", 10, 1),
        ]
    )


#: the reference layers as graphs of the space
KNOWN: dict[str, Graph] = {
    "bn-relu": _norm_relu("batch"),
    "gn-relu": _norm_relu("group"),
    # 4 std_batch(x), 5 std_instance(x), 6 v1 * x, 7 v1 * x + std_i, 8 max, 9 x / max
    "b0": graph_of(
        [
            node("std_batch", 0),
            node("std_instance", 0),
            node("mul", 3, 0),
            node("add", 6, 5),
            node("max", 4, 7),
            node("div", 0, 8),
        ]
    ),
    # 4 v1 * x, 5 sigmoid, 6 x * sigmoid, 7 std_group(x), 8 divide
    "s0": graph_of(
        [
            node("mul", 3, 0),
            node("sigmoid", 4),
            node("mul", 0, 5),
            node("std_group", 0),
            node("div", 6, 7),
        ]
    ),
}


def _expr(graph: Graph, i: int, memo: dict[int, str]) -> str:
    if i in memo:
        return memo[i]
    if i < len(INITIAL):
        return INITIAL[i]
    n = graph["nodes"][i - len(INITIAL)]
    args = [_expr(graph, j, memo) for j in n["in"]]
    memo[i] = _simplify(n["op"], args)
    return memo[i]


def _simplify(op: str, args: list[str]) -> str:
    """The canonical text of ``op(args)`` after the identities of the module docstring."""
    if op in COMMUTATIVE:
        args = sorted(args)
    a = args[0]
    if op == "add" and "zero" in args:
        return args[1] if a == "zero" else a
    if op == "mul" and "zero" in args:
        return "zero"
    if op == "max" and a == args[1]:
        return a
    if op == "neg" and a.startswith("neg(") and _whole(a):
        return a[4:-1]
    if op in ("abs", "square") and a.startswith("neg(") and _whole(a):
        return f"{op}({a[4:-1]})"
    if op == "abs" and a.startswith("abs(") and _whole(a):
        return a
    return f"{op}({','.join(args)})"


def _whole(text: str) -> bool:
    """Whether ``f(...)`` is one call (its first parenthesis closes at the end)."""
    depth = 0
    for k, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch == ")":
            return k == len(text) - 1
    return False


def canonical(graph: Mapping[str, Any]) -> str:
    """The canonical expression of a graph's output (see the module docstring)."""
    g = check_graph(graph)
    return _expr(g, g["output"], {})


def canonical_hash(graph: Mapping[str, Any]) -> str:
    """A 12-hex-digit digest of :func:`canonical`."""
    return hashlib.sha1(canonical(graph).encode()).hexdigest()[:12]


_INFIX = {"add": "+", "mul": "*", "div": "/"}
_SHORT = {"batch": "b", "instance": "i", "group": "g"}


def formula(graph: Mapping[str, Any]) -> str:
    """The layer as a readable formula, e.g. ``x / max(std_b(x), v1*x + std_i(x))``; the
    output affine (``* weight + bias``) is left implicit."""
    g = check_graph(graph)
    return _render(g, g["output"])


def _render(g: Graph, i: int, parent: str | None = None) -> str:
    if i < len(INITIAL):
        return "0" if i == 1 else INITIAL[i]
    n = g["nodes"][i - len(INITIAL)]
    op, ins = n["op"], n["in"]
    if op in _INFIX:
        a, b = (_render(g, j, op) for j in ins)
        sep = f" {_INFIX[op]} " if op == "add" else _INFIX[op]
        text = f"{a}{sep}{b}"
        tight = op != "add" and parent in ("mul", "div")
        return f"({text})" if (parent in _INFIX and (op == "add" or tight)) else text
    if op == "neg":
        return f"-{_render(g, ins[0], 'neg')}"
    if op in BINARY:  # max
        return f"max({_render(g, ins[0])}, {_render(g, ins[1])})"
    if "_" in op:
        kind, axis = op.split("_")
        return f"{kind}_{_SHORT[axis]}({_render(g, ins[0])})"
    return f"{op}({_render(g, ins[0])})"


def numerically_equal(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    channels: int = 8,
    groups: int = 4,
    tries: int = 3,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> bool:
    """Whether graphs ``a`` and ``b`` give the same outputs on random inputs and random
    ``v0`` / ``v1`` (training mode, then eval mode after the same updates). Non-finite
    outputs in the same places count as equal."""
    gen = torch.Generator().manual_seed(1234)
    la, lb = GraphNormAct(dict(a), channels, groups), GraphNormAct(dict(b), channels, groups)
    with torch.no_grad():
        for p in ("v0", "v1"):
            v = torch.randn(channels, generator=gen)
            getattr(la, p).copy_(v)
            getattr(lb, p).copy_(v)
        for mode in (True, True, False):
            la.train(mode)
            lb.train(mode)
            for _ in range(tries):
                x = torch.randn(4, channels, 5, 5, generator=gen) * 2
                if not _close(la(x), lb(x), rtol, atol):
                    return False
    return True


def _close(ya: torch.Tensor, yb: torch.Tensor, rtol: float, atol: float) -> bool:
    fa, fb = torch.isfinite(ya), torch.isfinite(yb)
    if not torch.equal(fa, fb):
        return False
    return bool(torch.allclose(ya[fa], yb[fb], rtol=rtol, atol=atol))


def equivalent_known(graph: Mapping[str, Any]) -> str | None:
    """The name of the reference layer (:data:`KNOWN`) ``graph`` is equivalent to, if any:
    canonically equal, or numerically equal."""
    key = canonical(graph)
    for name, known in KNOWN.items():
        if canonical(known) == key:
            return name
    for name, known in KNOWN.items():
        if numerically_equal(graph, known):
            return name
    return None
