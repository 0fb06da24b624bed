"""NAS-Bench-201 networks in torch: the benchmark's macro skeleton around one cell.

The network (Dong and Yang 2020, "NAS-Bench-201", the ``TinyNetwork`` of their code) is a stem
(3×3 conv, no bias, then BatchNorm), three stages of ``N`` cells with ``C``, ``2C`` and ``4C``
channels, a ResNet basic block of stride 2 between stages (ReLU-conv 3×3 stride 2-BN, ReLU-conv
3×3-BN, and the shortcut 2×2 average pooling then a 1×1 conv without bias), then BatchNorm,
ReLU, global average pooling and a linear classifier. Every BatchNorm is affine.

A cell has four nodes: node 0 is the cell's input, node j the sum over i < j of the operation
on edge i→j applied to node i, and node 3 the output. Operations: ``none`` (the edge is left
out: it adds zeros), ``skip_connect`` (identity), ``nor_conv_1x1`` / ``nor_conv_3x3`` (ReLU,
conv without bias, BatchNorm) and ``avg_pool_3x3`` (3×3 average pooling, stride 1, padding 1,
padding not counted). A node that receives no edge is zeros; operations on it still run, as
in the benchmark, so parameters and MACs count them.

Networks are :class:`nas.compress.arch.Network` objects built from a JSON spec, so they are
saved, reloaded and exported like every other model. Only torch is needed here.
"""

from __future__ import annotations

from collections.abc import Mapping

from nas.compress.arch import LayerSpec, Network, Preprocessing, build

#: operation names, in the vendored table's id order
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: the cell's edges (i -> j) in the order of the architecture string
EDGES = ("e01", "e02", "e12", "e03", "e13", "e23")
#: CIFAR's per-channel mean and std, as the benchmark normalises its inputs
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def parse_arch(params_or_arch: Mapping[str, object] | str) -> dict[str, str]:
    """The operation of each edge (``EDGES`` order) of a candidate or an architecture string.

    Args:
        params_or_arch: edge name -> operation name (a search candidate; other keys are
            ignored), or the benchmark's string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.

    Raises:
        ValueError: a missing edge, an unknown operation or a malformed string.
    """
    if isinstance(params_or_arch, str):
        nodes = params_or_arch.split("+")
        tokens = [t for node in nodes for t in node.strip("|").split("|")]
        want = [f"~{i}" for j in range(1, 4) for i in range(j)]
        if len(nodes) != 3 or [t[t.rfind("~") :] for t in tokens] != want:
            raise ValueError(f"not a NAS-Bench-201 architecture string: {params_or_arch!r}")
        ops = dict(zip(EDGES, (t[: t.rfind("~")] for t in tokens), strict=True))
    else:
        missing = [e for e in EDGES if e not in params_or_arch]
        if missing:
            raise ValueError(f"NAS-Bench-201 candidate lacks the edges {', '.join(missing)}")
        ops = {e: str(params_or_arch[e]) for e in EDGES}
    unknown = sorted({o for o in ops.values() if o not in OPS})
    if unknown:
        raise ValueError(f"unknown NAS-Bench-201 operations {unknown}; known: {', '.join(OPS)}")
    return ops


def arch_string(ops: Mapping[str, str]) -> str:
    """The benchmark's architecture string of ``ops`` (edge name -> operation name)."""
    nodes = ["|" + "|".join(f"{ops[f'e{i}{j}']}~{i}" for i in range(j)) + "|" for j in (1, 2, 3)]
    return "+".join(nodes)


def _relu_conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> list[LayerSpec]:
    conv = {"type": "conv", "in": c_in, "out": c_out, "kernel": kernel, "stride": stride}
    return [{"type": "act", "fn": "relu"}, conv]


def _op_layers(op: str, c: int) -> list[LayerSpec]:
    if op == "skip_connect":
        return []
    if op == "avg_pool_3x3":
        return [
            {"type": "avgpool", "kernel": 3, "stride": 1, "padding": 1, "count_include_pad": False}
        ]
    return _relu_conv_bn(c, c, 1 if op == "nor_conv_1x1" else 3, 1)


def cell_spec(ops: Mapping[str, str], channels: int) -> LayerSpec:
    """The layer spec of one cell (``none`` edges left out)."""
    edges = [
        {"from": int(e[1]), "to": int(e[2]), "layers": _op_layers(ops[e], channels)}
        for e in EDGES
        if ops[e] != "none"
    ]
    return {"type": "cell", "nodes": 4, "edges": edges}


def _reduction(c_in: int, c_out: int) -> LayerSpec:
    shortcut = [
        {"type": "avgpool", "kernel": 2, "stride": 2},
        {"type": "conv", "in": c_in, "out": c_out, "kernel": 1, "stride": 1, "bn": False},
    ]
    body = _relu_conv_bn(c_in, c_out, 3, 2) + _relu_conv_bn(c_out, c_out, 3, 1)
    return {"type": "residual", "body": body, "shortcut": shortcut}


def nb201_spec(
    ops: Mapping[str, str], num_classes: int = 10, C: int = 16, N: int = 5
) -> list[LayerSpec]:
    """The layer spec of the whole network (see the module docstring).

    Args:
        ops: edge name -> operation name (:func:`parse_arch`).
        num_classes: outputs of the classifier.
        C: channels of the first stage (16 in the benchmark).
        N: cells per stage (5 in the benchmark).
    """
    spec: list[LayerSpec] = [{"type": "conv", "in": 3, "out": C, "kernel": 3, "stride": 1}]
    for stage, width in enumerate((C, 2 * C, 4 * C)):
        if stage:
            spec.append(_reduction(width // 2, width))
        spec += [cell_spec(ops, width) for _ in range(N)]
    return [
        *spec,
        {"type": "bn", "channels": 4 * C},
        {"type": "act", "fn": "relu"},
        {"type": "gap"},
        {"type": "flatten"},
        {"type": "linear", "in": 4 * C, "out": num_classes},
    ]


def nb201_network(
    params_or_arch: Mapping[str, object] | str, num_classes: int = 10, C: int = 16, N: int = 5
) -> Network:
    """The NAS-Bench-201 network of one cell, with fresh random weights (torch's default init).

    Args:
        params_or_arch: edge name -> operation name, or the architecture string.
        num_classes: outputs of the classifier (10 for CIFAR-10, 100 for CIFAR-100).
        C: channels of the first stage.
        N: cells per stage.

    Returns:
        A :class:`Network` taking (N, 3, 32, 32) CIFAR-normalised images; its ``origin`` names
        the architecture string.

    Raises:
        ValueError: a malformed architecture (:func:`parse_arch`), or C, N or num_classes < 1.
    """
    if min(num_classes, C, N) < 1:
        raise ValueError(f"num_classes, C and N must be at least 1, not {num_classes}, {C}, {N}")
    ops = parse_arch(params_or_arch)
    pre = Preprocessing(input_size=(32, 32), channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)
    net = build(nb201_spec(ops, num_classes, C, N), pre)
    net.origin = {"supernet": "nb201", "arch_str": arch_string(ops), "params": dict(ops)}
    return net
