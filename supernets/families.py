"""The elastic supernet families by name, and the one public way to load their weights.

``load_supernet(name, weights)`` builds the family's supernet and, given a checkpoint, loads it
through :mod:`nas.supernets.checkpoint` (safetensors written by ``nas supernet train``, or a
Once-for-All ``.pth``/``.pt`` state_dict). A checkpoint written by us carries the supernet's
name, constructor arguments, resolutions and preprocessing in its metadata; for a foreign one the
number of classes is read off the classifier's weight.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from nas.compress.arch import Preprocessing
from nas.supernets.elastic import ElasticSupernet

#: metadata key of our supernet checkpoints
META_KEY = "nas:supernet"
META_VERSION = 1


def _resnet50(**kw: Any) -> ElasticSupernet:
    from nas.supernets.ofa_resnet import OFAResNet50

    return OFAResNet50(**kw)


def _mbv3(width: float) -> Callable[..., ElasticSupernet]:
    def make(**kw: Any) -> ElasticSupernet:
        from nas.supernets.ofa_mbv3 import OFAMobileNetV3

        kw.setdefault("width_mult", width)
        return OFAMobileNetV3(**kw)

    return make


#: family name -> constructor (keyword arguments of the supernet class)
FAMILIES: dict[str, Callable[..., ElasticSupernet]] = {
    "resnet50": _resnet50,
    "mobilenetv3": _mbv3(1.0),
    "mobilenetv3_w12": _mbv3(1.2),
}


def build_supernet(name: str, **config: Any) -> ElasticSupernet:
    """A freshly initialised supernet of family ``name``.

    Raises:
        ValueError: unknown family (the message lists the known ones).
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown supernet {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name](**config)


def _classes_of(sd: Mapping[str, torch.Tensor]) -> int | None:
    keys = [k for k in sd if "classifier" in k and k.endswith("weight") and sd[k].ndim == 2]
    return int(sd[keys[-1]].shape[0]) if keys else None


def load_supernet(
    name: str, weights: str | Path | None = None, init_seed: int = 0
) -> ElasticSupernet:
    """Build supernet ``name`` and load ``weights`` into it.

    Without weights the supernet is randomly initialised from ``init_seed``, so the same
    sub-network extracted in another process (``nas export``) has the same weights.

    Raises:
        UserError: the checkpoint is unreadable, refused, of another supernet, or its tensors do
            not fit (the first mismatching key and both shapes are named).
    """
    from nas.search.errors import UserError
    from nas.supernets.checkpoint import load_into, metadata_json, read_state_dict

    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            return build_supernet(name).eval()
    sd, meta = read_state_dict(weights)
    info = metadata_json(meta, META_KEY) or {}
    if info and info.get("name") != name:
        raise UserError(f"--weights {weights}: a {info.get('name')} checkpoint, not {name}")
    config = dict(info.get("config", {}))
    if "n_classes" not in config:
        config["n_classes"] = _classes_of(sd) or 1000
    try:
        net = build_supernet(name, **config)
    except TypeError as e:
        raise UserError(f"--weights {weights}: bad supernet configuration ({e})") from None
    load_into(
        net,
        sd,
        source=f"--weights {weights}",
        convert=net.convert_state_dict,
        ignore=("num_batches_tracked",),
    )
    if info.get("resolutions"):
        net.resolutions = tuple(int(r) for r in info["resolutions"])
    if info.get("preprocessing"):
        net.preprocessing = Preprocessing.from_json(info["preprocessing"])
    return net.eval()


def checkpoint_metadata(net: ElasticSupernet) -> dict[str, str]:
    """safetensors metadata that lets :func:`load_supernet` rebuild ``net`` exactly."""
    info = {
        "version": META_VERSION,
        "name": net.name,
        "config": net.config(),
        "resolutions": list(net.resolutions),
        "preprocessing": net.preprocessing.to_json(),
    }
    return {META_KEY: json.dumps(info)}


def save_supernet(
    net: ElasticSupernet, path: str | Path, extra: Mapping[str, str] | None = None
) -> Path:
    """Write ``net``'s weights and metadata (plus ``extra`` string entries), atomically."""
    from safetensors.torch import save

    from nas.compress.model_io import atomic_write_bytes

    out = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {**dict(extra or {}), **checkpoint_metadata(net)}
    atomic_write_bytes(out, save(tensors, metadata=meta))
    return out
