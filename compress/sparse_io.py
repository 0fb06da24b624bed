"""Sparse tensors inside safetensors files, loadable dense.

A weight that is mostly zeros (a pruned model's) is stored as two tensors, ``<key>::indices``
(int32 flat positions of the non-zero entries) and ``<key>::values``, and described in the file's
metadata under ``nas-sparse`` (JSON: dense shape, dtype, sparsity, per key). Reading restores
the dense tensor, so a sparse file loads wherever a dense one does; files without the metadata
are untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch

META_KEY = "nas-sparse"
INDICES, VALUES = "::indices", "::values"
#: store a tensor sparsely when at least this share of it is zero (and it is not tiny)
MIN_SPARSITY = 0.5
MIN_NUMEL = 64


def to_sparse(
    tensors: Mapping[str, torch.Tensor], min_sparsity: float = MIN_SPARSITY
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to write (sparse ones split in two) and the metadata entry describing them."""
    out: dict[str, torch.Tensor] = {}
    described: dict[str, dict[str, object]] = {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        nnz = int(torch.count_nonzero(t)) if t.is_floating_point() else t.numel()
        sparsity = 1.0 - nnz / t.numel() if t.numel() else 0.0
        if not t.is_floating_point() or t.numel() < MIN_NUMEL or sparsity < min_sparsity:
            out[key] = t
            continue
        flat = t.flatten()
        idx = flat.nonzero().flatten()
        out[key + INDICES] = idx.to(torch.int32)
        out[key + VALUES] = flat[idx].clone()
        described[key] = {
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "sparsity": round(sparsity, 6),
        }
    return out, ({META_KEY: json.dumps(described)} if described else {})


def to_dense(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None
) -> dict[str, torch.Tensor]:
    """The dense tensors of a file written with :func:`to_sparse` (others pass through).

    Raises:
        ValueError: the metadata and the stored tensors disagree.
    """
    described = json.loads((metadata or {}).get(META_KEY, "{}") or "{}")
    out = {k: v for k, v in tensors.items() if not k.endswith((INDICES, VALUES))}
    for key, d in described.items():
        idx, values = tensors.get(key + INDICES), tensors.get(key + VALUES)
        if idx is None or values is None:
            raise ValueError(f"sparse tensor {key!r} lacks its indices or values")
        shape = [int(s) for s in d["shape"]]
        dense = torch.zeros(int(torch.tensor(shape).prod()), dtype=getattr(torch, d["dtype"]))
        if len(idx) != len(values) or (len(idx) and int(idx.max()) >= dense.numel()):
            raise ValueError(f"sparse tensor {key!r}: indices do not fit its shape {shape}")
        dense[idx.long()] = values.to(dense.dtype)
        out[key] = dense.view(shape)
    return out
