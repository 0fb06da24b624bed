"""A roofline latency *estimate* for named GPUs, used only when nothing measured exists.

Each leaf module call is one kernel that takes ``max(flops / peak, bytes / bandwidth)``, plus a
fixed launch overhead per kernel; the model's estimate is the sum. This ignores everything that
makes real GPUs slower (low occupancy at batch 1, cuDNN algorithm choice, caches, clocks below
boost) or faster (fusion, TF32 on Ampere and later), and work done outside modules (functional
calls in ``forward``, residual additions) is not counted. Every figure it gives is labelled
``"roofline estimate"``; a measurement or a benchmark table always takes precedence.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "GPUS",
    "LABEL",
    "Estimate",
    "GPUPeak",
    "LayerCost",
    "bound",
    "gpu_key",
    "gpu_peak",
    "layer_costs",
    "match_gpu",
    "roofline_ms",
]

LABEL = "roofline estimate"
DType = Literal["fp32", "fp16", "bf16"]
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class GPUPeak:
    """Published peak figures of one GPU (dense, no sparsity, boost clock)."""

    fp32_tflops: float  # CUDA cores, non-tensor
    tensor16_tflops: float  # FP16 (and BF16 where supported) tensor cores, FP32 accumulate
    bandwidth_gbs: float  # device memory, GB/s
    bf16: bool  # BF16 supported (Ampere and later)


# Sources, by vendor datasheet / whitepaper name (dense figures: the "with sparsity" ones halved):
#   h100      NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column
#   h200      NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column
#   a100_*    NVIDIA A100 Tensor Core GPU datasheet, A100 40GB / 80GB SXM columns
#   v100      NVIDIA Tesla V100 GPU accelerator datasheet, V100 SXM2 column
#   t4        NVIDIA T4 Tensor Core GPU datasheet
#   l4        NVIDIA L4 Tensor Core GPU datasheet
#   a10       NVIDIA A10 Tensor Core GPU datasheet
#   rtx4090   NVIDIA Ada Lovelace GPU Architecture whitepaper (GeForce RTX 4090, FP16 tensor
#             with FP32 accumulate)
#   rtx3090   NVIDIA Ampere GA102 GPU Architecture whitepaper (GeForce RTX 3090, idem)
#   2080ti    NVIDIA Turing GPU Architecture whitepaper (GeForce RTX 2080 Ti reference, idem)
#   1080ti    NVIDIA GeForce GTX 1080 Ti specifications; Pascal GP102 has no tensor cores and
#             runs FP16 arithmetic at 1/64 rate, so frameworks compute FP16 layers in FP32:
#             the FP32 peak is used for both
GPUS: dict[str, GPUPeak] = {
    "h100": GPUPeak(67.0, 989.4, 3350.0, bf16=True),
    "h200": GPUPeak(67.0, 989.4, 4800.0, bf16=True),
    "a100_40gb": GPUPeak(19.5, 312.0, 1555.0, bf16=True),
    "a100_80gb": GPUPeak(19.5, 312.0, 2039.0, bf16=True),
    "v100": GPUPeak(15.7, 125.0, 900.0, bf16=False),
    "t4": GPUPeak(8.1, 65.0, 320.0, bf16=False),
    "l4": GPUPeak(30.3, 121.0, 300.0, bf16=True),
    "a10": GPUPeak(31.2, 125.0, 600.0, bf16=True),
    "rtx4090": GPUPeak(82.6, 165.2, 1008.0, bf16=True),
    "rtx3090": GPUPeak(35.6, 71.0, 936.0, bf16=True),
    "2080ti": GPUPeak(13.4, 53.8, 616.0, bf16=False),
    "1080ti": GPUPeak(11.3, 11.3, 484.0, bf16=False),
}
_ALIASES = {"a100": "a100_80gb", "4090": "rtx4090", "3090": "rtx3090", "rtx2080ti": "2080ti"}
#: substrings of torch.cuda.get_device_name() -> table key, most specific first
_DEVICE_NAMES = (
    ("H200", "h200"),
    ("H100", "h100"),
    ("A100-SXM4-40GB", "a100_40gb"),
    ("A100", "a100_80gb"),
    ("V100", "v100"),
    ("T4", "t4"),
    ("L4", "l4"),
    ("A10", "a10"),
    ("4090", "rtx4090"),
    ("3090", "rtx3090"),
    ("2080 Ti", "2080ti"),
    ("1080 Ti", "1080ti"),
)


def gpu_key(gpu: str) -> str:
    """The :data:`GPUS` key of ``gpu`` (case, ``-`` and spaces ignored; ``a100`` is 80GB SXM).

    Raises:
        ValueError: an unknown GPU; the message lists the known ones.
    """
    key = gpu.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r} for the roofline estimate; known: {', '.join(GPUS)}")
    return key


def gpu_peak(gpu: str) -> GPUPeak:
    """The peak figures of ``gpu`` (see :func:`gpu_key`)."""
    return GPUS[gpu_key(gpu)]


def match_gpu(device_name: str) -> str | None:
    """The table key for a CUDA device name (``torch.cuda.get_device_name()``), or None."""
    for needle, key in _DEVICE_NAMES:
        if needle in device_name:
            return key
    return None


@dataclass(frozen=True)
class LayerCost:
    """The work of one leaf-module call: floating-point operations and bytes moved."""

    name: str
    kind: str  # conv, linear, norm, act, pool, other
    flops: float
    bytes: float

    @property
    def matmul(self) -> bool:
        """Runs on tensor cores in half precision (convolutions and linear layers)."""
        return self.kind in ("conv", "linear")


@dataclass(frozen=True)
class Estimate:
    """A roofline latency estimate in milliseconds, always labelled as such."""

    ms: float
    compute_ms: float  # sum over layers of flops / peak
    memory_ms: float  # sum over layers of bytes / bandwidth
    overhead_ms: float  # kernels × overhead
    kernels: int
    gpu: str
    dtype: str
    batch_size: int
    label: str = LABEL


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_ACTS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softmax,
    nn.LogSoftmax,
)
#: modules that launch no kernel in eval mode (views and no-ops)
_FREE = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout2d, nn.Dropout3d)


def _flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[str, float]:
    """``(kind, flops)`` of one call; a multiply-add counts two."""
    n_out = out.numel()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        k = math.prod(module.kernel_size) * module.out_channels // module.groups
        return "conv", 2.0 * inp.numel() * k + (n_out if module.bias is not None else 0)
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size) * module.in_channels // module.groups
        return "conv", 2.0 * n_out * k + (n_out if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        return "linear", 2.0 * n_out * module.in_features + (
            n_out if module.bias is not None else 0
        )
    if isinstance(module, _NORMS):
        per = 2 if isinstance(module, nn.modules.batchnorm._BatchNorm) else 5
        return "norm", float(per * n_out)
    if isinstance(module, _ACTS):
        return "act", float(n_out)
    if isinstance(module, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AvgPoolNd):
        return "pool", float(n_out * _window(module.kernel_size, max(1, out.dim() - 2)))
    if isinstance(
        module, nn.modules.pooling._AdaptiveAvgPoolNd | nn.modules.pooling._AdaptiveMaxPoolNd
    ):
        return "pool", float(inp.numel())
    return "other", float(n_out)


def _window(kernel_size: object, spatial: int) -> int:
    """Elements in a pooling window over ``spatial`` dimensions (an int is a square window)."""
    if isinstance(kernel_size, int):
        return int(kernel_size**spatial)
    sizes = [int(k) for k in kernel_size] if isinstance(kernel_size, tuple | list) else [1]
    return math.prod(sizes)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _numel(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, tuple | list):
        return sum(_numel(v) for v in value)
    return 0


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def layer_costs(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1, dtype: DType = "fp32"
) -> list[LayerCost]:
    """The cost of every leaf-module call of one forward pass, in call order.

    Runs the model once in eval mode on zeros of ``(batch_size, *input_shape)`` on the device
    of its parameters; bytes are (inputs + outputs + the module's own parameters and buffers)
    × the size of ``dtype``. Modules that launch no kernel (Identity, Flatten, Dropout) are left
    out.
    """
    size = _BYTES[_check_dtype(dtype)]
    names = {m: n for n, m in model.named_modules()}
    costs: list[LayerCost] = []

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        inp, res = _first_tensor(args), _first_tensor(out)
        if isinstance(module, _FREE) or inp is None or res is None:
            return
        kind, flops = _flops(module, inp, res)
        own = sum(t.numel() for t in (*module.parameters(False), *module.buffers(False)))
        moved = (_numel(args) + _numel(out) + own) * size
        costs.append(LayerCost(names.get(module, "?") or "model", kind, flops, float(moved)))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dt = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        with _eval(model), torch.inference_mode():
            model(torch.zeros(batch_size, *input_shape, device=device, dtype=dt))
    finally:
        for h in handles:
            h.remove()
    return costs


def _check_dtype(dtype: str) -> str:
    if dtype not in _BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(_BYTES)}")
    return dtype


def _peak_flops(peak: GPUPeak, cost: LayerCost, dtype: str) -> float:
    """FLOP/s available to ``cost`` at ``dtype``: tensor cores only for matmul layers."""
    if dtype != "fp32" and cost.matmul:
        return peak.tensor16_tflops * 1e12
    return peak.fp32_tflops * 1e12


def bound(cost: LayerCost, gpu: str, dtype: DType = "fp32") -> Literal["compute", "memory"]:
    """Whether ``cost`` is limited by arithmetic or by memory traffic on ``gpu``."""
    peak = gpu_peak(gpu)
    compute = cost.flops / _peak_flops(peak, cost, dtype)
    return "compute" if compute > cost.bytes / (peak.bandwidth_gbs * 1e9) else "memory"


def roofline_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    gpu: str = "h100",
    batch_size: int = 1,
    dtype: DType = "fp32",
    overhead_us: float = 5.0,
) -> Estimate:
    """Estimate ``model``'s latency on ``gpu``: Σ max(flops/peak, bytes/bandwidth) + overheads.

    Args:
        model: the network (run once on this machine to find its layers).
        input_shape: one sample's shape, without the batch dimension.
        gpu: a key of :data:`GPUS` (``h100``, ``a100``, ``t4``, ...).
        batch_size: the leading dimension of the input.
        dtype: ``fp32`` (CUDA cores; no TF32), ``fp16`` or ``bf16`` (tensor cores for
            convolutions and linear layers).
        overhead_us: launch overhead per kernel (one per leaf-module call), microseconds.

    Raises:
        ValueError: an unknown GPU or dtype, or bf16 on a GPU without it.
    """
    key = gpu_key(gpu)
    peak = GPUS[key]
    if _check_dtype(dtype) == "bf16" and not peak.bf16:
        raise ValueError(f"GPU {key!r} has no bf16 support; use fp16 or fp32")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    compute = memory = total = 0.0
    costs = layer_costs(model, input_shape, batch_size, dtype)
    for cost in costs:
        c = cost.flops / _peak_flops(peak, cost, dtype)
        m = cost.bytes / (peak.bandwidth_gbs * 1e9)
        compute, memory, total = compute + c, memory + m, total + max(c, m)
    overhead = len(costs) * overhead_us * 1e-6
    return Estimate(
        ms=(total + overhead) * 1e3,
        compute_ms=compute * 1e3,
        memory_ms=memory * 1e3,
        overhead_ms=overhead * 1e3,
        kernels=len(costs),
        gpu=key,
        dtype=dtype,
        batch_size=batch_size,
    )
