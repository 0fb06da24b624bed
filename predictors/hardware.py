"""Hardware profiles: what a latency figure was measured on, by name.

A :class:`HardwareProfile` says where latencies come from: ``measured`` on this machine (``cpu``,
``gpu``, or a profile a user saved), a benchmark ``table`` column (``nb201:raspi4``), or a
``roofline`` estimate. Profiles are found by name through a registry filled by
:func:`register_hardware` (the built-ins below) and, after it, the user's saved profiles in
``$NAS_HOME/profiles/<name>.json``. Table profiles are named ``<space>:<device>``; a bare device
name resolves within the space given to :func:`get_hardware`.

A profile file is JSON with ``"format": "nas-hardware-profile", "version": 1``. Loading a
measured profile on a machine that differs from the one it was measured on (CPU or GPU model,
torch version, thread count) warns with :class:`ProfileMismatchWarning`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from nas.predictors._home import nas_home

__all__ = [
    "FBNET_DEVICES",
    "FORMAT",
    "KINDS",
    "NB201_DEVICES",
    "VERSION",
    "HardwareProfile",
    "ProfileError",
    "ProfileMismatchWarning",
    "current_machine",
    "get_hardware",
    "list_hardware",
    "load_profile",
    "measured_profile",
    "nas_home",
    "register_hardware",
    "save_profile",
]

FORMAT = "nas-hardware-profile"
VERSION = 1
KINDS = ("measured", "table", "roofline")
#: NAS-Bench-201 latency table columns with their batch size (nas.supernets.nb201 uses these)
NB201_DEVICES: dict[str, int] = {
    "1080ti_1": 1,
    "1080ti_32": 32,
    "2080ti_1": 1,
    "gold_6226": 1,
    "pixel3": 1,
    "raspi4": 1,
    "eyeriss": 1,
}
#: FBNet latency table columns with their batch size (as in nas.predictors.tables)
FBNET_DEVICES: dict[str, int] = {"1080ti_1": 1, "gold_6226": 1, "pixel3": 1, "raspi4": 1}
#: bare names that mean a device column of every table space
TABLE_ALIASES = {"gpu": "1080ti_1"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ProfileError(ValueError):
    """A profile that cannot be used: unknown name, unreadable or mismatched file."""


class ProfileMismatchWarning(UserWarning):
    """A measured profile loaded on a machine other than the one it was measured on."""


@dataclass(frozen=True)
class HardwareProfile:
    """Where latencies come from, and under which conditions they were measured.

    Attributes:
        name: the registry name (``cpu``, ``nb201:raspi4``, a saved profile's name).
        kind: ``measured``, ``table`` or ``roofline``.
        device: ``cpu``, ``cuda``, or a table's device column such as ``raspi4``.
        space: the search space a table profile belongs to; None for any space.
        batch_size: the batch size the latencies hold for.
        backend: ``torch``, ``onnxruntime``, or None where unknown (tables).
        threads: CPU threads used when measuring; None where unknown.
        cpu_model, gpu_model, torch_version: the measuring machine; None where unknown.
        created: ISO 8601 UTC time the profile was made; None for built-in tables.
        notes: free text.
    """

    name: str
    kind: str
    device: str
    space: str | None = None
    batch_size: int = 1
    backend: str | None = None
    threads: int | None = None
    cpu_model: str | None = None
    gpu_model: str | None = None
    torch_version: str | None = None
    created: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProfileError(f"profile kind {self.kind!r} unknown; known: {', '.join(KINDS)}")
        if self.batch_size < 1:
            raise ProfileError(f"profile batch_size must be >= 1, got {self.batch_size}")

    def check_batch_size(self, batch_size: int | None) -> None:
        """Refuse this profile as a latency source at another batch size (None means 1).

        Raises:
            ProfileError: ``batch_size`` differs from the profile's.
        """
        want = 1 if batch_size is None else batch_size
        if want != self.batch_size:
            raise ProfileError(
                f"{self.name} was measured at batch size {self.batch_size}; "
                f"pass --batch-size {self.batch_size} to use it"
            )

    def to_json(self) -> dict[str, Any]:
        """The profile as a JSON-able dict, with format and version."""
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "profile") -> HardwareProfile:
        """Read :meth:`to_json`'s dict back.

        Raises:
            ProfileError: another format or version, a missing, unknown or mistyped field.
        """
        if data.get("format") != FORMAT:
            raise ProfileError(f"{source}: not a hardware profile (format {data.get('format')!r})")
        if data.get("version") != VERSION:
            raise ProfileError(
                f"{source}: hardware profile version {data.get('version')!r} is not supported "
                f"(this nas reads version {VERSION})"
            )
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        known = {f.name for f in fields(cls)}
        missing = [n for n in ("name", "kind", "device", "batch_size") if n not in body]
        unknown = sorted(set(body) - known)
        problems = [f"missing field(s) {', '.join(missing)}"] if missing else []
        problems += [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        if problems:
            raise ProfileError(f"{source}: {'; '.join(problems)}")
        _check_types(body, source)
        try:
            return cls(**body)
        except ProfileError as e:
            raise ProfileError(f"{source}: {e}") from None


def _check_types(body: Mapping[str, Any], source: str) -> None:
    for key, value in body.items():
        if key in ("batch_size", "threads"):
            ok = (value is None and key == "threads") or (
                isinstance(value, int) and not isinstance(value, bool)
            )
        elif key in ("name", "kind", "device", "notes"):
            ok = isinstance(value, str)
        else:
            ok = value is None or isinstance(value, str)
        if not ok:
            raise ProfileError(f"{source}: field {key!r} has the wrong type ({value!r})")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def current_machine(device: str = "cpu") -> dict[str, Any]:
    """This machine as a profile sees it.

    Returns:
        ``cpu_model``, ``cores`` (usable by this process), ``threads`` (torch's intra-op
        thread count now: the share of the cores this worker is set to use),
        ``torch_version`` and ``gpu_model`` (None unless ``device`` is a CUDA device).

    Raises:
        ProfileError: ``device`` is CUDA and torch sees no CUDA device.
    """
    dev = torch.device(device)
    gpu = None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ProfileError(f"device {device!r} asked for, but torch sees no CUDA device")
        gpu = torch.cuda.get_device_name(dev)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return {
        "cpu_model": _cpu_model(),
        "cores": cores,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "gpu_model": gpu,
    }


def measured_profile(
    name: str,
    *,
    device: str = "cpu",
    batch_size: int = 1,
    backend: str = "torch",
    threads: int | None = None,
    space: str | None = None,
    notes: str = "",
) -> HardwareProfile:
    """A ``measured`` profile of this machine (``threads`` None: torch's current count)."""
    machine = current_machine(device)
    return HardwareProfile(
        name=name,
        kind="measured",
        device=torch.device(device).type,
        space=space,
        batch_size=batch_size,
        backend=backend,
        threads=machine["threads"] if threads is None else threads,
        cpu_model=machine["cpu_model"],
        gpu_model=machine["gpu_model"],
        torch_version=machine["torch_version"],
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        notes=notes,
    )


def _mismatches(profile: HardwareProfile) -> list[str]:
    """Fields of a measured profile that differ from this machine, as ``field a != b``."""
    if profile.kind != "measured":
        return []
    device = "cuda" if profile.device == "cuda" and torch.cuda.is_available() else "cpu"
    here = current_machine(device)
    out = []
    for key in ("cpu_model", "gpu_model", "torch_version", "threads"):
        theirs = getattr(profile, key)
        if theirs is not None and theirs != here[key]:
            out.append(f"{key} {theirs!r} (here {here[key]!r})")
    return out


def load_profile(path: str | Path) -> HardwareProfile:
    """Read a profile file; warn (:class:`ProfileMismatchWarning`) if measured elsewhere.

    Raises:
        ProfileError: the file is missing, not JSON, or not a version-1 hardware profile.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"no hardware profile file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{path}: cannot read hardware profile ({e})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: not a hardware profile (a JSON object is expected)")
    profile = HardwareProfile.from_json(data, source=str(path))
    diff = _mismatches(profile)
    if diff:
        warnings.warn(
            f"hardware profile {profile.name!r} was measured on another setup: {'; '.join(diff)}",
            ProfileMismatchWarning,
            stacklevel=2,
        )
    return profile


def profiles_dir() -> Path:
    """Where saved profiles live: ``$NAS_HOME/profiles``."""
    return nas_home() / "profiles"


def save_profile(profile: HardwareProfile, name: str | None = None) -> Path:
    """Write ``profile`` as ``$NAS_HOME/profiles/<name>.json`` atomically; return the path.

    The stored profile's ``name`` is ``name`` (default: the profile's own name).

    Raises:
        ProfileError: a name that is not a plain file name, or that a built-in already uses.
    """
    name = profile.name if name is None else name
    if not _NAME.fullmatch(name):
        raise ProfileError(f"profile name {name!r}: use letters, digits, '_', '.', '-' only")
    if name in _REGISTRY:
        raise ProfileError(f"profile name {name!r} is a built-in hardware name; choose another")
    path = profiles_dir() / f"{name}.json"
    text = json.dumps(replace(profile, name=name).to_json(), indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


Factory = Callable[[], HardwareProfile]
_REGISTRY: dict[str, Factory] = {}


def register_hardware(name: str) -> Callable[[Factory], Factory]:
    """Register ``factory`` (no arguments, returns the profile) as hardware ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def deco(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"hardware {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def _user_profiles() -> dict[str, Path]:
    folder = profiles_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.json")) if _NAME.fullmatch(p.stem)}


def list_hardware(space: str | None = None) -> list[str]:
    """Known hardware names: all of them, or with ``space`` only that space's table columns."""
    if space is not None:
        return sorted(n for n in _REGISTRY if n.startswith(f"{space}:"))
    return sorted({*_REGISTRY, *_user_profiles()})


def get_hardware(name: str, space: str | None = None) -> HardwareProfile:
    """The profile called ``name``; a bare device name first resolves within ``space``.

    Order: ``<space>:<name>`` (``gpu`` standing for the space's GPU column), then a registered
    name, then ``$NAS_HOME/profiles/<name>.json``.

    Raises:
        ProfileError: an unknown name (the message lists the known ones), a profile of another
            space, or no CUDA device for ``gpu``.
    """
    profile: HardwareProfile | None = None
    scoped = f"{space}:{TABLE_ALIASES.get(name, name)}" if space and ":" not in name else None
    if scoped in _REGISTRY:
        profile = _REGISTRY[scoped]()
    elif name in _REGISTRY:
        profile = _REGISTRY[name]()
    elif name in (users := _user_profiles()):
        profile = load_profile(users[name])
    if profile is None:
        within = space or (name.split(":", 1)[0] if ":" in name else None)
        where = f" for {within}" if within else ""
        known = ", ".join(_known(within))
        raise ProfileError(f"unknown hardware {name!r}{where}; known: {known}")
    if space and profile.space and profile.space != space:
        raise ProfileError(f"hardware {name!r} belongs to space {profile.space}, not {space}")
    return profile


def _known(space: str | None) -> list[str]:
    if space is None:
        return list_hardware()
    scoped = [n.split(":", 1)[1] for n in list_hardware(space)]
    aliases = [a for a, d in TABLE_ALIASES.items() if d in scoped]
    bare = [n for n in list_hardware() if ":" not in n and n not in aliases]
    return [*scoped, *aliases, *bare]


@register_hardware("cpu")
def _cpu() -> HardwareProfile:
    return measured_profile("cpu", device="cpu", notes="this machine's CPU, measured")


@register_hardware("gpu")
def _gpu() -> HardwareProfile:
    if not torch.cuda.is_available():
        raise ProfileError("hardware 'gpu' needs a CUDA device, and torch sees none")
    return measured_profile("gpu", device="cuda", notes="this machine's GPU, measured")


def _table_factory(space: str, device: str, batch_size: int) -> Factory:
    def factory() -> HardwareProfile:
        return HardwareProfile(
            name=f"{space}:{device}",
            kind="table",
            device=device,
            space=space,
            batch_size=batch_size,
            notes=f"latency column {device!r} of the {space} benchmark table",
        )

    return factory


for _space, _devices in (("nb201", NB201_DEVICES), ("fbnet", FBNET_DEVICES)):
    for _device, _batch in _devices.items():
        register_hardware(f"{_space}:{_device}")(_table_factory(_space, _device, _batch))
