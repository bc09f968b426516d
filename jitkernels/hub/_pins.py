"""Revision pins for the ``jitkernels.hub`` import form: :func:`pin`, and ``JITKERNELS_PINS`` files.

Stdlib only (plus the light provider registry): imported by ``import jitkernels.hub``.
See :mod:`jitkernels.hub` for the documented formats; upstream's ``kernels.lock``
is read by :mod:`jitkernels.upstream.lockfiles`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import config
from ..errors import InvalidKernelNameError, LockfileError

PINS_ENV = "JITKERNELS_PINS"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Pin:
    """What an import of one kernel resolves to: exactly one of ``revision``/``version``."""

    provider: str
    name: str
    revision: str | None = None
    version: int | None = None
    backend: str | None = None
    trust_remote_code: bool = False
    source: str = "pin()"

    def load_kwargs(self) -> dict:
        return {"revision": self.revision, "version": self.version, "backend": self.backend,
                "trust_remote_code": self.trust_remote_code}


_LOCK = threading.RLock()
_EXPLICIT: dict[tuple[str, str], Pin] = {}
_FILE_CACHE: dict[str, tuple[tuple[int, int], dict[tuple[str, str], Pin]]] = {}


def key(provider, name: str) -> tuple[str, str]:
    """``(canonical provider, normalised repo id)``: ``"hf", "triton_layer_norm"`` and
    ``"hf_kernels", "kernels-community/triton-layer-norm"`` are the same key."""
    from ..providers import get_provider, provider_name

    canonical = provider_name(provider)
    ref = get_provider(canonical).parse_name(name)
    return canonical, ref.repo_id.lower().replace("_", "-")


def _check(revision, version) -> None:
    from ..identity import revision_for

    if revision is None and version is None:
        raise InvalidKernelNameError("pin() needs revision= (branch, tag or commit) or version=N.")
    revision_for(revision, version)


def pin(provider, name: str, *, revision: str | None = None, version: int | None = None,
        backend: str | None = None, trust_remote_code: bool = False) -> Pin:
    _check(revision, version)
    k = key(provider, name)
    value = Pin(k[0], name, revision, version, backend, bool(trust_remote_code))
    with _LOCK:
        _EXPLICIT[k] = value
    return value


def unpin(provider, name: str) -> Pin | None:
    with _LOCK:
        return _EXPLICIT.pop(key(provider, name), None)


def clear() -> None:
    with _LOCK:
        _EXPLICIT.clear()


def explicit() -> dict[tuple[str, str], Pin]:
    with _LOCK:
        return dict(_EXPLICIT)


# -- files ----------------------------------------------------------------------

def _parse_file(path: Path) -> dict[tuple[str, str], Pin]:
    from ..upstream.lockfiles import read_capped

    raw = read_capped(path, f"pin file ({PINS_ENV})")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise LockfileError(f"{PINS_ENV}: cannot read pin file {path}: {exc}") from exc
    pins: dict[tuple[str, str], Pin] = {}
    source = str(path)
    if isinstance(data, list):  # a kernels.lock (upstream's or ours)
        from ..upstream.lockfiles import parse_lock

        for repo_id, locked in parse_lock(data, source).items():
            k = key("hf_kernels", repo_id)
            pins.setdefault(k, Pin(k[0], repo_id, revision=locked.commit, source=source))
        return pins
    if not isinstance(data, dict) or not isinstance(data.get("pins"), list):
        raise LockfileError(f"{source}: a JitKernels pin file is {{\"version\": 1, \"pins\": [...]}} "
                            f"(or an upstream kernels.lock list).")
    for i, entry in enumerate(data["pins"]):
        try:
            provider, name = entry["provider"], entry["name"]
            revision, version = entry.get("revision"), entry.get("version")
            _check(revision, version)
            k = key(provider, name)
            unknown = set(entry) - {"provider", "name", "revision", "version", "backend", "trust_remote_code"}
            if unknown:
                raise LockfileError(f"unknown keys {sorted(unknown)}")
            pins.setdefault(k, Pin(k[0], name, revision, version, entry.get("backend"),
                                   bool(entry.get("trust_remote_code", False)), source))
        except (KeyError, TypeError, ValueError) as exc:
            raise LockfileError(f"{source}: pin {i} ({entry!r}) is invalid: {exc}") from exc
    return pins


def _file_pins(path: str) -> dict[tuple[str, str], Pin]:
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as exc:
        raise LockfileError(f"{PINS_ENV} names {p}, which cannot be read: {exc}") from exc
    stamp = (st.st_mtime_ns, st.st_size)
    with _LOCK:
        cached = _FILE_CACHE.get(str(p))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        pins = _parse_file(p)
        _FILE_CACHE[str(p)] = (stamp, pins)
        return pins


def lookup(provider, name: str) -> Pin | None:
    """The pin for a kernel: ``pin()`` first, then the ``JITKERNELS_PINS`` files in order."""
    k = key(provider, name)
    with _LOCK:
        found = _EXPLICIT.get(k)
    if found is not None:
        return found
    for path in config.pins_files():
        found = _file_pins(path).get(k)
        if found is not None:
            return found
    return None


def write(path, pins=None) -> Path:
    """Write ``pins`` (default: every :func:`pin` made in this process) as a JitKernels pin file."""
    items = list((pins if pins is not None else explicit()).values())
    data = {"version": FORMAT_VERSION, "pins": []}
    for p in sorted(items, key=lambda p: (p.provider, p.name)):
        entry = {k: v for k, v in asdict(p).items() if k != "source" and v not in (None, False)}
        data["pins"].append(entry)
    path = Path(path)
    from ..cache.files import write_atomic

    try:
        write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())
    except OSError as exc:
        raise LockfileError(f"Cannot write the pin file {path}: {exc.strerror or exc}.") from exc
    return path
