"""The cache layout, atomic publication and locks.

Layout under ``config.cache_dir()`` (``~/.cache/jitkernels`` or ``JITKERNELS_CACHE``)::

    refs/<provider>/<org>/<name>/<revision>.json     last commit a branch/tag/version resolved to
    index/<provider>/<org>/<name>/<commit>/<backend>-<envkey>.json
                                                     warm-path index: commit -> published entry
    entries/<module name>/                           published, immutable kernel packages
        manifest.json                                what it is, how it was made, file sizes
        <python_name>/                               the importable package (+ compiled library)
    sources/git/<url hash>/<commit>/                 source trees fetched with git
    logs/<module name>.log                           full compiler output of the last build
    staging/                                         private work folders (same filesystem)
    locks/                                           filelock files, one per entry being made

Entries are written in a private staging folder and published with one
``os.replace``; readers never see a half-written entry. Locks are OS locks
(filelock) that die with their holder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

from . import config
from .errors import CacheError


def root() -> Path:
    return config.cache_dir()


def _component(text: str) -> str:
    """One safe path component for arbitrary text (revisions may contain ``/`` or ``..``)."""
    return "r-" + quote(text, safe="-_")


def _repo_parts(repo_id: str) -> list[str]:
    return [_component(part) if part in (".", "..") else part for part in repo_id.split("/")]


def refs_file(provider: str, repo_id: str, revision: str) -> Path:
    return root().joinpath("refs", provider, *_repo_parts(repo_id), _component(revision) + ".json")


def index_file(provider: str, repo_id: str, commit: str, backend: str, envkey: str) -> Path:
    return root().joinpath("index", provider, *_repo_parts(repo_id), commit, f"{backend}-{envkey}.json")


def entry_dir(module_name: str) -> Path:
    return root() / "entries" / module_name


def git_source_dir(url: str, commit: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return root() / "sources" / "git" / digest / commit


def log_file(module_name: str) -> Path:
    return root() / "logs" / f"{module_name}.log"


def lock_path(key: str) -> Path:
    return root() / "locks" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock")


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or raise a :class:`CacheError` that names it and ``JITKERNELS_CACHE``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_error(path, exc) from exc
    return path


def cache_error(path: Path, exc: OSError) -> CacheError:
    return CacheError(
        f"Cannot write to the JitKernels cache at {path}: {exc.strerror or exc}. "
        f"Free some space or fix its permissions, or point JITKERNELS_CACHE at a writable folder."
    )


def file_lock(key: str, timeout: float = -1):
    """An OS file lock for ``key`` (filelock is imported only on the cold path)."""
    import filelock

    path = lock_path(key)
    ensure_dir(path.parent)
    return filelock.FileLock(str(path), timeout=timeout)


def staging_dir(prefix: str) -> Path:
    """A fresh private folder on the cache's filesystem, so publication is one rename.

    Its name carries our pid, so :func:`sweep_staging` can remove what a killed process left.
    """
    from .entries import check_owner

    check_owner()
    base = ensure_dir(root() / "staging")
    sweep_staging(base)
    try:
        return Path(tempfile.mkdtemp(prefix=f"{prefix}.{os.getpid()}.", dir=base))
    except OSError as exc:
        raise cache_error(base, exc) from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def sweep_staging(base: Path) -> None:
    """Remove staging folders whose process died (SIGKILL, power loss): never published, never loaded."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        parts = name.rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) != os.getpid() and not _alive(int(parts[1])):
            shutil.rmtree(base / name, ignore_errors=True)


def publish(staging: Path, final: Path) -> bool:
    """Atomically move ``staging`` to ``final``. False (and ``staging`` removed) if ``final`` already exists."""
    ensure_dir(final.parent)
    try:
        os.replace(staging, final)
        return True
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if final.exists():
            return False
        raise cache_error(final, exc) from exc


def read_json(path: Path) -> dict | None:
    """The JSON object at ``path``, or ``None`` if missing or unreadable (the caller rebuilds it)."""
    try:
        with open(path, "rb") as fh:
            value = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    ensure_dir(path.parent)
    data = json.dumps(value, indent=2, sort_keys=True).encode()
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)  # type: ignore[possibly-undefined]
        except (OSError, UnboundLocalError):
            pass
        raise cache_error(path, exc) from exc
