"""The files a study reads (checkpoint, weights, data), and their digests.

A study stores the SHA-256 of every input file its configuration names when it is created, so
that a worker joining it later — on another machine, from ``nas worker --study NAME`` without the
job file — or a rerun can check it reads the same bytes, and stop with one clear line if not.
A folder (images sorted by class) is digested over its relative paths and file contents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.search.errors import UserError

if TYPE_CHECKING:
    from nas.search.study import SearchConfig

INPUTS_ATTR = "nas:inputs"
_CHUNK = 1 << 20


def digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's relative paths and file contents."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            h.update(digest(f).encode())
        return h.hexdigest()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def named_inputs(config: SearchConfig) -> dict[str, str]:
    """Role -> path of each existing file or folder the configuration names.

    Roles: ``weights``, ``data`` (unless it is a built-in data set name) and ``task:<option>``
    for a task option whose text value is an existing path (a compression checkpoint, ...).
    """
    found: dict[str, str] = {}
    candidates: dict[str, Any] = {"weights": config.weights, "data": config.data}
    candidates.update({f"task:{k}": v for k, v in config.task_options.items()})
    for role, value in candidates.items():
        if isinstance(value, str) and value and Path(value).exists():
            found[role] = value
    return found


def record(config: SearchConfig) -> dict[str, dict[str, str]]:
    """``{role: {"path", "sha256"}}`` for :func:`named_inputs`, stored with a new study."""
    return {
        role: {"path": path, "sha256": digest(Path(path))}
        for role, path in named_inputs(config).items()
    }


def check(stored: Mapping[str, Mapping[str, str]], study: str) -> None:
    """Raise :class:`UserError` unless every stored input exists here with its stored digest."""
    for role, entry in stored.items():
        path = Path(entry["path"])
        what = role.removeprefix("task:")
        if not path.exists():
            raise UserError(
                f"study {study!r} reads {what} {path}, which is not on this machine "
                f"(working directory {Path.cwd()}); copy it there first"
            )
        got = digest(path)
        if got != entry["sha256"]:
            raise UserError(
                f"{what} {path} differs from the one study {study!r} was started with "
                f"(SHA-256 {got[:12]}… here, {entry['sha256'][:12]}… stored)"
            )
