"""Trained models from a checkpoint and an architecture: a zoo name or ``package.module:factory``.

A checkpoint is a safetensors file or a torch state_dict, read by the one weights loader
(:func:`nas.supernets.checkpoint.read_state_dict`: ``weights_only=True``, so a pickle that would
run code is refused). Every key and shape is checked before anything is copied, and a mismatch
names the first missing or unexpected key and both shapes. A model this project saved
(safetensors + JSON layer spec) needs no architecture at all: :func:`nas.compress.load_model`.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from nas.search.errors import UserError

ArchKwargs = Mapping[str, Any] | str | None


def parse_kwargs(kwargs: ArchKwargs) -> dict[str, Any]:
    """Architecture keyword arguments from a mapping or a JSON object text (None: none)."""
    if kwargs is None:
        return {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs) if kwargs.strip() else {}
        except json.JSONDecodeError as e:
            raise UserError(f"architecture arguments are not JSON ({e}): {kwargs!r}") from None
    if not isinstance(kwargs, Mapping):
        raise UserError('architecture arguments must be a JSON object like {"width": 0.5}')
    return {str(k): v for k, v in kwargs.items()}


def resolve_arch(arch: str) -> tuple[Any, str]:
    """The factory of ``arch`` (a zoo name or ``package.module:factory``) and a display name."""
    from nas.compress.zoo import MODELS, list_models

    if ":" not in arch:
        if arch not in MODELS:
            raise UserError(
                f"unknown architecture {arch!r}; the zoo has {', '.join(list_models())}, "
                "or give an import path package.module:factory"
            )
        return MODELS.get(arch), f"model {arch}"
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr.isidentifier():
        raise UserError(f"architecture {arch!r}: an import path looks like package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module failing at import
        raise UserError(f"architecture {arch!r}: cannot import {module_name} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"architecture {arch!r}: {module_name} has no callable {attr!r}")
    return factory, arch


def build_model(arch: str, kwargs: ArchKwargs = None) -> nn.Module:
    """Build ``arch`` (zoo name or import path) with keyword arguments (random weights).

    Raises:
        UserError: unknown name, unimportable path, arguments the factory does not take or
            rejects, or a factory that does not return an ``nn.Module``.
    """
    factory, what = resolve_arch(arch)
    args = parse_kwargs(kwargs)
    _check_arguments(factory, args, what)
    try:
        model = factory(**args)
    except (TypeError, ValueError) as e:
        raise UserError(f"{what}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{what} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def factory_arguments(arch: str) -> list[str] | None:
    """Keyword arguments the factory of ``arch`` takes (None when it takes any)."""
    return _accepted(resolve_arch(arch)[0])


def _accepted(factory: Any) -> list[str] | None:
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _check_arguments(factory: Any, args: Mapping[str, Any], what: str) -> None:
    names = _accepted(factory)
    unknown = [k for k in args if names is not None and k not in names]
    if unknown:
        takes = ", ".join(names or []) or "no arguments"
        raise UserError(f"{what} takes no argument {unknown[0]!r}; it takes {takes}")


def load_checkpoint(
    path: str | Path,
    arch: str | None = None,
    arch_kwargs: ArchKwargs = None,
    *,
    label: str = "checkpoint",
) -> nn.Module:
    """A trained model: the architecture ``arch`` built with ``arch_kwargs``, then ``path``'s
    tensors copied in after checking every key and shape. Returned in eval mode.

    Args:
        path: a ``.safetensors`` file or a torch state_dict (``.pt`` / ``.pth``; common wrappers
            such as ``{"state_dict": ...}`` and a ``module.`` prefix are unwrapped).
        arch: a zoo name (:func:`nas.compress.zoo.list_models`) or ``package.module:factory``;
            None for a model this project saved (safetensors + JSON architecture).
        arch_kwargs: keyword arguments of the factory, a mapping or a JSON object text.
        label: what named the file, at the start of error messages.

    Raises:
        UserError: missing or unreadable file, a pickle that would run code, an unknown
            architecture, or tensors that do not fit (the first mismatching key, both shapes).
    """
    from nas.compress.zoo import KEY_ALIASES, list_models, rename_keys
    from nas.supernets.checkpoint import load_into, read_state_dict

    if arch is None:
        return _load_own(Path(path), label, list_models())
    model = build_model(arch, arch_kwargs)
    sd, _ = read_state_dict(path, label=label)
    renamed = rename_keys(arch, sd)
    display = None
    if renamed.keys() != sd.keys():  # foreign key names: report mismatches in the file's names
        ours = {v: k for k, v in KEY_ALIASES[arch].items()}
        display = _display(ours)
    load_into(
        model,
        renamed,
        source=f"{label} {path}",
        ignore=("num_batches_tracked",),
        display=display,
    )
    return model.eval()


def _display(ours: Mapping[str, str]) -> Any:
    def show(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        return f"{ours[module]}.{leaf}" if module in ours else key

    return show


def _load_own(path: Path, label: str, zoo: list[str]) -> nn.Module:
    from nas.compress.model_io import ModelFileError, load_model

    if not path.is_file():
        raise UserError(f"{label} {path}: no such file")
    if path.suffix in (".safetensors", ".json"):
        try:
            return load_model(path)
        except ModelFileError as e:
            raise UserError(f"{label} {e}; or name its architecture") from None
    raise UserError(
        f"{label} {path}: name its architecture: one of {', '.join(zoo)}, "
        "or an import path package.module:factory"
    )
