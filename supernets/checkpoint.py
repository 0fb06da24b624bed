"""The one public loader of supernet weights: safetensors, or torch checkpoints as tensors only.

``torch.load`` always runs with ``weights_only=True``, so a file whose unpickling would execute
code is refused. Once-for-All checkpoints (``{"state_dict": ...}``, keys possibly prefixed by
``module.``) load here too; each supernet may rename keys on the way in
(its ``convert_state_dict``).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.search.errors import UserError

StateDict = dict[str, torch.Tensor]
#: keys under which training scripts commonly nest the state_dict
WRAPPERS = ("state_dict", "model", "model_state_dict", "net", "weights")


def read_state_dict(
    path: str | Path, *, label: str = "--weights"
) -> tuple[StateDict, dict[str, str]]:
    """Read the tensors of ``path`` and its metadata (safetensors header; ``{}`` otherwise).

    ``label`` starts every error message (the option that named the file).

    Raises:
        UserError: missing file, a pickle that would run code, or no state_dict inside.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{label} {p}: no such file")
    if p.suffix == ".safetensors":
        return _read_safetensors(p, label)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # garbage, not a refused callable
            raise UserError(f"{label} {p}: not a torch checkpoint (unreadable pickle)") from None
        raise UserError(
            f"{label} {p}: refused, the file holds more than tensors ({_why(e)}); "
            "only state_dicts are loaded"
        ) from None
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        reason = f"{type(e).__name__}: {str(e)[:120]}"
        raise UserError(f"{label} {p}: not a torch checkpoint ({reason})") from None
    return _unwrap(obj, p, label), {}


def _why(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if "global" in ln.lower()]
    return lines[0][:160] if lines else "code or objects beyond tensors"


def _read_safetensors(p: Path, label: str) -> tuple[StateDict, dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    from nas.compress.sparse_io import to_dense

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return to_dense(tensors, meta), meta  # pruned weights stored sparsely by nas
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{label} {p}: not a safetensors file ({str(e)[:160]})") from None


def _unwrap(obj: Any, p: Path, label: str) -> StateDict:
    for _ in range(3):
        tensors_only = all(isinstance(v, torch.Tensor) for v in getattr(obj, "values", list)())
        if isinstance(obj, Mapping) and obj and tensors_only:
            return _strip_prefix({str(k): v for k, v in obj.items()})
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in WRAPPERS if k in obj), None)
            if inner is not None:
                obj = inner
                continue
            tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return _strip_prefix(tensors)
        break
    raise UserError(f"{label} {p}: not a state_dict (found {type(obj).__name__})")


def _strip_prefix(sd: StateDict) -> StateDict:
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_into(
    model: nn.Module,
    sd: StateDict,
    *,
    source: str = "--weights",
    convert: Callable[[StateDict], StateDict] | None = None,
    ignore: tuple[str, ...] = (),
    display: Callable[[str], str] | None = None,
) -> None:
    """Copy ``sd`` into ``model`` after checking every key and shape.

    Keys ending in one of ``ignore`` (e.g. ``num_batches_tracked``) may be absent. ``display``
    turns the model's key names into the checkpoint's for messages (after a renaming).

    Raises:
        UserError: a missing or unexpected key, or a tensor whose shape does not fit; the message
            names the first mismatching key and both shapes.
    """
    if convert is not None:
        sd = convert(sd)
    own = model.state_dict()
    shown = display or (lambda k: k)
    for key, want in own.items():
        if key not in sd:
            if key.endswith(ignore):
                continue
            raise UserError(f"{source}: key {shown(key)!r} is missing from the checkpoint")
        if tuple(sd[key].shape) != tuple(want.shape):
            raise UserError(
                f"{source}: tensor {shown(key)!r} has shape {tuple(sd[key].shape)} in the "
                f"checkpoint but {tuple(want.shape)} in the model"
            )
    extra = [k for k in sd if k not in own]
    if extra:
        raise UserError(f"{source}: unexpected key {extra[0]!r} ({len(extra)} not in the model)")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def metadata_json(meta: Mapping[str, str], key: str) -> Any:
    """A JSON value stored in safetensors metadata under ``key`` (None when absent)."""
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise UserError(f"checkpoint metadata {key!r} is not JSON") from None
