"""The cache layout, atomic file writes and private work folders.

Layout under ``config.cache_dir()`` (``~/.cache/jitkernels`` or ``JITKERNELS_CACHE``)::

    refs/<provider>/<org>/<name>/<revision>.json     last commit a branch/tag/version resolved to
    index/<provider>/<org>/<name>/<commit>/<backend>-<envkey>.json
                                                     warm-path index: commit -> published entry (+ trust)
    trust/<provider>/<org>/<name>/<commit>.json      durable trust grants (the Hub's publisher flag)
    entries/<entry name>/                            published, immutable: a kernel package or a git source
        manifest.json                                what it is, how it was made, file sizes and sha256
        <python_name>/ | tree/                       the importable package (+ library) | the source tree
    builds/<workspace>/                              a native build's sources and objects, kept across
                                                     interrupted builds (resume) and local edits (incremental)
    logs/<extension>.log                             full compiler output of the last build
    staging/<prefix>.<host>.<boot>.<pid>.<random>/   private work folders (same filesystem as entries/)
    locks/                                           filelock files and their holders' records
    machine/<key>.json                               GPU backend/archs detected once per boot

Entries are written in a staging folder and published with one ``os.replace``;
readers never see a half-written entry. Every private folder (staging or
build workspace) is owned by an OS file lock that dies with its holder, so a
folder is swept only when no process anywhere holds its lock: liveness never
depends on a pid, which means nothing across containers or hosts. The entry
lifecycle that uses all this is :mod:`jitkernels.entries`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from . import config
from .errors import CacheError, JitKernelsError
from .warm import component

#: Private folders whose lock is free are swept; a folder without a lock file is left for this long.
ORPHAN_AGE = 24 * 3600.0
#: Build workspaces not used for this long are swept (their lock must be free too).
WORKSPACE_AGE = 7 * 24 * 3600.0


def root() -> Path:
    return config.cache_dir()


def _repo_parts(repo_id: str) -> list[str]:
    return [component(part) if part in (".", "..") else part for part in repo_id.split("/")]


def index_file(provider: str, repo_id: str, commit: str, backend: str, envkey: str) -> Path:
    return root().joinpath("index", provider, *_repo_parts(repo_id), commit, f"{backend}-{envkey}.json")


def trust_file(provider: str, repo_id: str, commit: str) -> Path:
    return root().joinpath("trust", provider, *_repo_parts(repo_id), f"{commit}.json")


def entry_dir(name: str) -> Path:
    return root() / "entries" / name


def log_file(name: str) -> Path:
    return root() / "logs" / f"{name}.log"


def lock_path(key: str) -> Path:
    return root() / "locks" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock")


# -- errors and atomic writes -------------------------------------------------------------------

def cache_error(path: Path, exc: OSError) -> CacheError:
    return CacheError(
        f"Cannot write to the JitKernels cache at {path}: {exc.strerror or exc}. "
        f"Free some space or fix its permissions, or point JITKERNELS_CACHE at a writable folder."
    )


@contextlib.contextmanager
def guard(path: Path):
    """Turn any filesystem failure inside the block into a :class:`CacheError` naming ``path``."""
    try:
        yield
    except JitKernelsError:  # FetchError is an OSError too: ours pass through unchanged
        raise
    except OSError as exc:
        raise cache_error(path, exc) from exc


_UMASK: list[int] = []


def umask() -> int:
    """The process umask (read once: reading it means setting it)."""
    if not _UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK.append(mask)
    return _UMASK[0]


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose folders are never world-writable, whatever the umask (cache folders hold code)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o775)
        except FileExistsError:
            continue
        os.chmod(folder, 0o777 & ~umask() & ~0o002)


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or raise a :class:`CacheError` that names it and ``JITKERNELS_CACHE``."""
    with guard(path):
        make_dirs(path)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and one rename: never half a file. Raises OSError.

    The file gets the user's umask (never world-writable), as a plain write would: a cache
    prebuilt by one user is read by others.
    """
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask() & ~0o002)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def write_json(path: Path, value) -> None:
    """Write JSON into the cache atomically; a :class:`CacheError` if the cache is not writable."""
    with guard(path):
        write_atomic(path, json_bytes(value))


# -- private folders ------------------------------------------------------------------------------

def _owner_tag() -> str:
    """``<host>.<boot id>.<pid>``: who made a private folder, for people reading the cache (never for liveness)."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in os.uname().nodename)[:40] or "host"
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()[:8]
    except OSError:
        boot = "noboot"
    return f"{host}.{boot}.{os.getpid()}"


@contextlib.contextmanager
def staging(prefix: str):
    """A fresh private folder on the cache's filesystem (so publication is one rename), removed on exit.

    The folder is owned by the file lock ``<folder>.lock`` while the block runs: :func:`sweep`
    removes a staging folder only when that lock is free, i.e. its owner died (SIGKILL, OOM,
    power loss) wherever it ran.
    """
    base = ensure_dir(root() / "staging")
    sweep(base)
    import filelock

    folder = base / f"{prefix}.{_owner_tag()}.{secrets.token_hex(4)}"
    lock = filelock.FileLock(str(folder) + ".lock", is_singleton=False)
    with guard(folder):
        lock.acquire()
    try:
        with guard(folder):
            folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(str(folder) + ".lock")
        lock.release()


def workspace(key: str) -> Path:
    """``builds/<key>/``: a native build's persistent folder, owned by the lock ``workspace_lock_key(key)``."""
    return ensure_dir(root() / "builds" / key)


def workspace_lock_key(key: str) -> str:
    return f"workspace:{key}"


def sweep_workspaces() -> None:
    """Remove build workspaces unused for :data:`WORKSPACE_AGE` whose lock is free."""
    sweep(root() / "builds", lambda folder: lock_path(workspace_lock_key(folder.name)), max_idle=WORKSPACE_AGE)


def sweep(base: Path, lock_of=None, max_idle: float | None = None) -> None:
    """Remove the folders under ``base`` whose lock is free (their owner is gone).

    ``lock_of(folder)``: the lock file that owns a folder (default: ``<folder>.lock``, as
    :func:`staging` makes). ``max_idle``: only folders untouched for that many seconds.
    """
    try:
        names = os.listdir(base)
    except OSError:
        return
    import filelock

    now = time.time()
    for name in names:
        folder = base / name
        if lock_of is None and name.endswith(".lock") and not (base / name[:-5]).exists():
            _remove_orphan_lock(base / name)
            continue
        if name.endswith(".lock") or not folder.is_dir():
            continue
        try:
            idle = now - folder.stat().st_mtime
        except OSError:
            continue
        if max_idle is not None and idle < max_idle:
            continue
        lock_file = lock_of(folder) if lock_of else Path(str(folder) + ".lock")
        if not lock_file.exists():
            if idle > ORPHAN_AGE:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        lock = filelock.FileLock(str(lock_file), is_singleton=False)
        try:
            lock.acquire(timeout=0)
        except (filelock.Timeout, OSError):
            continue  # alive somewhere (or unreadable): not ours to remove
        try:
            shutil.rmtree(folder, ignore_errors=True)
            if lock_of is None:
                with contextlib.suppress(OSError):
                    os.unlink(lock_file)
        finally:
            lock.release()


def _remove_orphan_lock(lock_file: Path) -> None:
    """A staging lock whose folder is gone: removed once nobody holds it."""
    import filelock

    lock = filelock.FileLock(str(lock_file), is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except (filelock.Timeout, OSError):
        return
    try:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)
    finally:
        lock.release()
