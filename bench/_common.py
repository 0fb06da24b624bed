"""Helpers shared by the benchmark scripts in ``bench/``.

Every benchmark is resumable: it writes one JSON file per configuration (atomically), skips a
configuration whose file exists, and regenerates its Markdown report from all files present.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

#: the repository root (``bench/`` lives directly under it)
ROOT = Path(__file__).resolve().parent.parent
#: where results go: ``bench/results/<name>/`` (one file per configuration) and ``<name>.md``
RESULTS = ROOT / "bench" / "results"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository, ``-dirty`` appended when tracked files differ.

    Read-only: ``GIT_OPTIONAL_LOCKS=0`` stops ``git status`` from refreshing the index, so it
    never takes ``index.lock`` from someone committing at the same time.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if dirty else "")


@lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """CPU model (from ``/proc/cpuinfo``), core count, Python and host platform."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def describe_machine(m: dict[str, Any]) -> str:
    """One line: ``<cpu>, <n> cores``."""
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"


def now_iso() -> str:
    """The current UTC time, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(folder: Path) -> Iterator[dict[str, Any]]:
    """Every ``*.json`` result in ``folder`` (unreadable or half-written files are skipped)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            yield json.loads(path.read_text())
        except (OSError, ValueError):
            continue


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))


def fmt_mean_std(xs: Sequence[float], digits: int = 3, n_expected: int | None = None) -> str:
    """``mean ± std (n=k)``, or ``–`` when ``xs`` is empty; ``n`` is shown when it differs."""
    if not xs:
        return "–"
    m, s = mean_std(xs)
    text = f"{m:.{digits}f} ± {s:.{digits}f}"
    if n_expected is None or len(xs) != n_expected:
        text += f" (n={len(xs)})"
    return text


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class Deadline:
    """``--max-minutes``: say when no new configuration should be started."""

    def __init__(self, minutes: float | None) -> None:
        self.start = time.monotonic()
        self.seconds = None if minutes is None else 60.0 * minutes

    def passed(self) -> bool:
        """True once the time is up (never when no limit was given)."""
        return self.seconds is not None and time.monotonic() - self.start >= self.seconds


def teacher_weights(teacher: str) -> Path:
    """The model file of a ``bench/teachers.py`` teacher (seed 0), trained first if missing."""
    import sys

    folder = ROOT / "build" / "bench" / "teachers" / f"{teacher}-seed0"
    if not list(folder.glob("*.safetensors")):
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "teachers.py"), "--only", teacher], check=True
        )
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise RuntimeError(f"expected one teacher model in {folder}, found {len(found)}")
    return found[0]
