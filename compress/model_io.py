"""Save, load and export standalone models: safetensors + JSON architecture, and ONNX.

A saved model is two files side by side, written atomically: ``<stem>.safetensors`` (the
tensors, with the architecture JSON repeated in its metadata) and ``<stem>.json`` (the layer spec
of :mod:`nas.compress.arch`, the preprocessing, and where the model came from). Nothing is a
pickle, and :func:`load_model` needs no plugin code: the JSON says everything.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nas.compress.arch import Network, Preprocessing, SpecError, build

FORMAT = "nas-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that cannot be read (missing, corrupt, another format version)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_document(net: Network, origin: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document describing ``net`` (format, spec, preprocessing, origin)."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "preprocessing": net.preprocessing.to_json(),
        "origin": dict(origin or {}),
        "spec": net.spec,
    }


def save_model(
    net: Network, path: str | Path, origin: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``net`` as ``<stem>.safetensors`` + ``<stem>.json``; returns both paths.

    Weights that are mostly zeros (pruned) are stored sparsely (flat indices and values, see
    :mod:`nas.compress.sparse_io`); every reader of this project restores them dense.
    """
    from safetensors.torch import save

    from nas.compress.sparse_io import to_sparse

    base = Path(path)
    stem = base.with_suffix("") if base.suffix in (".safetensors", ".json") else base
    doc = model_document(net, origin)
    text = json.dumps(doc, indent=1)
    tensors, sparse_meta = to_sparse(net.state_dict())
    weights, arch = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    atomic_write_bytes(weights, save(tensors, metadata={FORMAT: text, **sparse_meta}))
    atomic_write_bytes(arch, (text + "\n").encode())
    return weights, arch


def _read_document(path: Path) -> tuple[dict[str, Any], Path]:
    """The JSON document and the safetensors path of a saved model given either file."""
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    weights, arch = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not weights.is_file():
        raise ModelFileError(f"{weights}: no such file")
    if arch.is_file():
        text = arch.read_text()
    else:  # the architecture is repeated in the weights' metadata
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                text = (f.metadata() or {}).get(FORMAT, "")
        except (SafetensorError, OSError) as e:
            raise ModelFileError(f"{weights}: not a readable safetensors file ({e})") from None
        if not text:
            raise ModelFileError(f"{arch}: no such file, and {weights.name} does not embed one")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{arch}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"{arch}: not a {FORMAT} architecture file")
    if doc.get("version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{arch}: format version {doc.get('version')}; this nas reads {FORMAT_VERSION}"
        )
    return doc, weights


def load_model(path: str | Path) -> Network:
    """Rebuild a saved model (either file of the pair, or their common stem).

    The returned :class:`~nas.compress.arch.Network` is in eval mode and carries its
    ``preprocessing`` (input size, channels, mean/std, classes) and ``origin`` (a dict).

    Raises:
        ModelFileError: missing files, another format version, or tensors that do not fit.
    """
    from safetensors import SafetensorError, safe_open

    from nas.compress.sparse_io import to_dense

    doc, weights = _read_document(Path(path))
    try:
        net = build(doc["spec"], Preprocessing.from_json(doc["preprocessing"]))
    except (SpecError, KeyError) as e:
        raise ModelFileError(f"{weights.with_suffix('.json')}: {e}") from None
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = to_dense({k: f.get_tensor(k) for k in f.keys()}, f.metadata())  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{weights}: not a readable safetensors file ({e})") from None
    own = net.state_dict()
    for key, want in own.items():
        got = tensors.get(key)
        if got is None:
            raise ModelFileError(f"{weights}: tensor {key!r} is missing")
        if tuple(got.shape) != tuple(want.shape):
            raise ModelFileError(
                f"{weights}: tensor {key!r} has shape {tuple(got.shape)}, "
                f"the architecture needs {tuple(want.shape)}"
            )
    net.load_state_dict(tensors, strict=True)
    net.origin = dict(doc.get("origin", {}))
    return net.eval()


def export_onnx(
    net: Network, path: str | Path, *, check: bool = True, atol: float = 1e-4, opset: int = 17
) -> float | None:
    """Write ``net`` as ONNX (batch dimension dynamic) and, with ``check``, run it.

    Uses torch's legacy TorchScript-based exporter (``dynamo=False``): it needs no onnxscript
    and takes a fraction of a second for small models, where the dynamo exporter took seconds.

    The outputs are named by ``net.output_names`` (``logits``, or the names of a final
    ``heads`` layer, e.g. MTCNN's ``box``, ``landmarks``, ``prob``).

    Returns:
        The largest absolute difference between onnxruntime's and torch's outputs (over all
        outputs) on a random batch of two, or None without ``check``.

    Raises:
        ValueError: the outputs differ by more than ``atol``.
    """
    import onnx

    out = Path(path)
    net = net.eval()
    x = net.example_input(2)
    names = net.output_names
    fd, tmp = tempfile.mkstemp(dir=out.parent if out.parent.exists() else None, suffix=".onnx")
    os.close(fd)
    try:
        torch.onnx.export(
            net,
            (x,),
            tmp,
            input_names=["input"],
            output_names=names,
            dynamic_axes={"input": {0: "batch"}} | {n: {0: "batch"} for n in names},
            opset_version=opset,
            dynamo=False,
        )
        model = onnx.load(tmp)
        onnx.checker.check_model(model)
        meta = model.metadata_props.add()
        meta.key, meta.value = "preprocessing", json.dumps(net.preprocessing.to_json())
        diff = _check_onnx(net, model.SerializeToString(), x, atol) if check else None
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, model.SerializeToString())
    finally:
        Path(tmp).unlink(missing_ok=True)
    return diff


def _check_onnx(net: Network, blob: bytes, x: torch.Tensor, atol: float) -> float:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        y = net(x)
    want = [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]
    if len(got) != len(want):
        raise ValueError(f"ONNX has {len(got)} outputs, torch {len(want)}")
    diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
    if not diff <= atol:
        raise ValueError(f"ONNX output differs from torch by {diff:.2e} (> {atol:g})")
    return diff
