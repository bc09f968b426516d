"""Private folders: staging folders (an entry being made) and build workspaces (a native build's objects).

Every private folder is owned by an OS file lock that dies with its holder, so
a folder is swept only when no process anywhere holds its lock: liveness never
depends on a pid, which means nothing across containers or hosts. Staging
folders live on the cache's filesystem, so publishing an entry is one rename.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from pathlib import Path

from . import layout
from .files import ensure_dir, guard

#: Private folders whose lock is free are swept; a folder without a lock file is left for this long.
ORPHAN_AGE = 24 * 3600.0
#: Build workspaces not used for this long are swept (their lock must be free too).
WORKSPACE_AGE = 7 * 24 * 3600.0


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
    base = ensure_dir(layout.staging_dir())
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
    return ensure_dir(layout.builds_dir() / key)


def workspace_lock_key(key: str) -> str:
    return f"workspace:{key}"


def _workspace_lock(folder: Path) -> Path:
    return layout.lock_path(workspace_lock_key(folder.name))


def sweep_workspaces(max_idle: float = WORKSPACE_AGE) -> None:
    """Remove build workspaces unused for ``max_idle`` seconds whose lock is free."""
    sweep(layout.builds_dir(), _workspace_lock, max_idle=max_idle)


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
