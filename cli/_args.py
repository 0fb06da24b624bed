"""Argument helpers every ``nas`` command shares: user errors, durations, key=value options."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from nas.cli.output import err
from nas.search.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a :class:`UserError` (or a file error) into one line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"error: {e}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
            err.print(f"error: {e.strerror}: {e.filename}", markup=False, highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str | None) -> float | None:
    """``90s``, ``10m``, ``8h``, ``1d`` or plain seconds → seconds."""
    if text is None:
        return None
    m = _DURATION.match(text)
    if not m:
        raise UserError(f"duration {text!r} must look like 90s, 10m or 8h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_options(items: list[str]) -> dict[str, Any]:
    """``key=value`` options; values are read as JSON when they parse, else text."""
    out_: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"option {item!r} must look like key=value")
        try:
            out_[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out_[key.replace("-", "_")] = value
    return out_
