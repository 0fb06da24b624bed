"""INT8 post-training quantisation of an exported ONNX model (``onnxruntime.quantization``).

Static quantisation in QDQ format: weights int8 per output channel, activations uint8, ranges
calibrated (min-max) on real inputs — training images when there is data, probe images of another
seed when the model is judged by drift. The quantised file is then run by onnxruntime for its
accuracy (or drift) and latency.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.compress.model_io import atomic_write_bytes

CALIBRATION_IMAGES = 256


class _Reader:
    """onnxruntime's CalibrationDataReader over a tensor of inputs, in batches."""

    def __init__(self, name: str, x: torch.Tensor, batch: int = 32):
        self._it: Iterator[dict[str, np.ndarray]] = (
            {name: x[i : i + batch].numpy()} for i in range(0, len(x), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize(onnx_in: str | Path, onnx_out: str | Path, calibration: torch.Tensor) -> Path:
    """Write the INT8 (QDQ) version of ``onnx_in`` to ``onnx_out`` (atomically).

    Args:
        calibration: preprocessed model inputs (N, C, H, W), float32.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(onnx_out)
    with tempfile.TemporaryDirectory(prefix="nas-int8-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(onnx_in), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(q),
                _Reader("input", calibration.float().contiguous()),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        atomic_write_bytes(out, q.read_bytes())
    return out


def session(path: str | Path) -> Any:
    """An onnxruntime CPU session of ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(path: str | Path, x: torch.Tensor, batch: int = 250) -> list[torch.Tensor]:
    """Every output of the ONNX model ``path`` on inputs ``x``, as tensors."""
    s = session(path)
    chunks = [s.run(None, {"input": x[i : i + batch].numpy()}) for i in range(0, len(x), batch)]
    return [torch.from_numpy(np.concatenate([c[k] for c in chunks])) for k in range(len(chunks[0]))]
