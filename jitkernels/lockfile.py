"""``jitkernels.lock``: pin kernels to commits and record the sha256 of every source file fetched.

The format follows upstream's ``kernels.lock`` (a JSON list of
``{"dependency": {"repo-id", "version"|"revision"}, "lock": {"commit"}}``)
and adds, per kernel, what JitKernels fetched::

    {"dependency": {"repo-id": "kernels-community/relu", "version": 1},
     "lock": {"commit": "<40 hex>"},
     "jitkernels": {"provider": "hf_kernels", "backend": "cpu", "strategy": "native-jit",
                    "digest": "<sha256 of all inputs>", "files": {"build.toml": "<sha256>", ...}}}

``jitkernels lock NAME...`` writes it. With ``JITKERNELS_LOCKFILE=<path>``
every load of a locked kernel uses the locked commit and fails loudly
(:class:`LockfileError`) if a fetched file's sha256 differs, or if the caller
asks for another commit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from . import config
from .errors import LockfileError


@dataclass(frozen=True)
class LockedKernel:
    repo_id: str
    commit: str
    backend: str | None
    digest: str | None
    files: dict


def lockfile_path() -> Path | None:
    return config.lockfile()


def read_lock(path: Path) -> dict[str, LockedKernel]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LockfileError(f"Cannot read the lock file {path}: {exc}. Regenerate it with `jitkernels lock`.") from exc
    if not isinstance(data, list):
        raise LockfileError(f"{path}: a lock file is a JSON list of locked kernels.")
    locked = {}
    for item in data:
        try:
            repo_id = item["dependency"]["repo-id"]
            commit = item["lock"]["commit"]
        except (TypeError, KeyError) as exc:
            raise LockfileError(f"{path}: entry {item!r} lacks dependency.repo-id or lock.commit.") from exc
        extra = item.get("jitkernels") or {}
        locked[repo_id] = LockedKernel(repo_id, commit, extra.get("backend"), extra.get("digest"),
                                       dict(extra.get("files") or {}))
    return locked


_CACHE: dict[str, tuple[float, dict]] = {}


def active_lock() -> dict[str, LockedKernel]:
    """The kernels locked by ``JITKERNELS_LOCKFILE`` (re-read when the file changes)."""
    path = lockfile_path()
    if path is None:
        return {}
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise LockfileError(f"JITKERNELS_LOCKFILE={path}: {exc.strerror}.") from exc
    cached = _CACHE.get(str(path))
    if cached and cached[0] == mtime:
        return cached[1]
    locked = read_lock(path)
    _CACHE[str(path)] = (mtime, locked)
    return locked


def file_hashes(root: Path, files: list[str], strip: str = "") -> dict[str, str]:
    out = {}
    for rel in files:
        key = rel[len(strip) + 1:] if strip and rel.startswith(strip + "/") else rel
        out[key] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    return out


def verify(locked: LockedKernel, actual: dict[str, str]) -> None:
    """Every locked file must be there with its sha256, and nothing else may be fetched."""
    if not locked.files:
        return
    changed = sorted(p for p in locked.files if actual.get(p) != locked.files[p])
    extra = sorted(set(actual) - set(locked.files))
    if changed or extra:
        raise LockfileError(
            f"{locked.repo_id}@{locked.commit[:12]} does not match the lock file: "
            + (f"changed or missing: {', '.join(changed[:8])}" if changed else "")
            + ("; " if changed and extra else "")
            + (f"not in the lock: {', '.join(extra[:8])}" if extra else "")
            + ". Nothing was loaded. If the change is expected, regenerate the lock with `jitkernels lock`."
        )


def write_lock(path: Path, entries: list[dict]) -> None:
    """Write the lock file atomically (a crash leaves the previous one whole)."""
    from .cache import write_atomic

    try:
        write_atomic(Path(path), (json.dumps(entries, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise LockfileError(f"Cannot write the lock file {path}: {exc.strerror or exc}.") from exc
