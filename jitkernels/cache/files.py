"""Files in the cache: read and write JSON, atomic writes, folders never world-writable, the owner check.

Every filesystem failure while writing becomes a :class:`~jitkernels.errors.CacheError`
naming the path and ``JITKERNELS_CACHE`` (:func:`guard`). Stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .. import config
from ..errors import CacheError, JitKernelsError


def read_json(path: Path | None) -> dict | None:
    """The JSON object at ``path``, or ``None`` if missing, unreadable or not an object."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            value = json.loads(fh.read())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


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
    import tempfile

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


_OWNER_CHECKED: set[str] = set()


def check_owner(path: Path | None = None) -> None:
    """Refuse a cache owned by another user: its entries are code we would run.

    Shared caches: make the folder yours (or a group's, with JITKERNELS_SHARED_CACHE=1
    to accept a folder owned by another user you trust, e.g. a read-only fleet cache).
    """
    path = path or config.cache_dir()
    key = str(path)
    if key in _OWNER_CHECKED or not hasattr(os, "geteuid"):
        return
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return  # not created yet: we will create it, as ours
    if owner != os.geteuid() and not config.shared_cache_ok():
        raise CacheError(
            f"The JitKernels cache {path} belongs to another user (uid {owner}); loading kernels from it "
            f"would run code they control. Use your own cache (JITKERNELS_CACHE=<your folder>), or set "
            f"JITKERNELS_SHARED_CACHE=1 if you trust its owner (e.g. a read-only cache shipped to a fleet)."
        )
    for folder in (path, path / "entries"):
        try:
            mode = os.stat(folder).st_mode
        except OSError:
            continue
        if mode & 0o002 and not config.shared_cache_ok():  # a group-writable fleet cache is fine; everyone is not
            raise CacheError(
                f"The JitKernels cache folder {folder} is writable by every user (mode {mode & 0o7777:o}): anyone on "
                f"this machine could replace the code loaded from it. Run `chmod o-w {folder}`, or set "
                f"JITKERNELS_SHARED_CACHE=1 if every user of this machine is trusted."
            )
    _OWNER_CHECKED.add(key)
