"""Lock files: upstream's ``kernels.lock`` and JitKernels' ``jitkernels.lock``, read by one reader.

Both are a JSON list of locked kernels; ours adds a ``"jitkernels"`` record to
each (what was fetched, with every file's sha256)::

    [{"dependency": {"repo-id": "kernels-community/relu", "version": 1},
      "lock": {"commit": "<40 hex>"},
      "jitkernels": {"provider": "hf_kernels", "backend": "cpu", "strategy": "native-jit",
                     "digest": "<sha256 of all inputs>", "files": {"build.toml": "<sha256>", ...}}}]

:func:`parse_lock` checks every entry against that schema (a commit is 40 or
64 hex digits; a repository is ``org/name``; every sha256 is 64 hex digits) and
refuses anything else with a :class:`~jitkernels.errors.LockfileError` naming
the file, the entry and the field; :func:`read_lock` also caps the size.

A project folder (what ``kernels lock <project>`` and ``kernels download
<project>`` take) is read by :func:`project_kernels`: its ``kernels.lock``
when there is one (as ``kernels download``), else the
``[tool.kernels.dependencies]`` table of its ``pyproject.toml`` (repo id ->
major version, as ``kernels lock``).

``jitkernels lock NAME...`` writes ours. With ``JITKERNELS_LOCKFILE=<path>``
every load of a locked kernel uses the locked commit and fails loudly if a
fetched file's sha256 differs, or if the caller asks for another commit.

Stdlib only: the import hook's pins and the warm path's callers read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..errors import LockfileError
from ..identity import is_commit

#: A lock file of a thousand kernels with a hundred files each is about 10 MB.
MAX_LOCK_BYTES = 64 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class LockedKernel:
    repo_id: str
    commit: str
    #: upstream's ``dependency`` record (``repo-id`` and ``version`` or ``revision``)
    dependency: dict = field(default_factory=dict, compare=False)
    backend: str | None = None
    digest: str | None = None
    files: dict = field(default_factory=dict, compare=False)


def _bad(where: str, index: int, what: str) -> LockfileError:
    return LockfileError(f"{where}: entry {index}: {what}. Regenerate the lock (`jitkernels lock` or `kernels lock`).")


def parse_lock(data, where: str) -> dict[str, LockedKernel]:
    """Every locked kernel of a parsed lock file (either format), by repository id; a clear error for anything else."""
    if not isinstance(data, list):
        raise LockfileError(f"{where}: a lock file is a JSON list of {{\"dependency\", \"lock\"}} entries, "
                            f"not a JSON {type(data).__name__}.")
    locked: dict[str, LockedKernel] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise _bad(where, i, f"is a JSON {type(entry).__name__}, not an object with \"dependency\" and \"lock\"")
        dependency, lock = entry.get("dependency"), entry.get("lock")
        if not isinstance(dependency, dict) or not isinstance(dependency.get("repo-id"), str):
            raise _bad(where, i, "\"dependency\" must be an object with a \"repo-id\" string")
        repo_id = dependency["repo-id"]
        if not _REPO_ID.match(repo_id) or ".." in repo_id:
            raise _bad(where, i, f"\"dependency.repo-id\" {repo_id!r} is not 'org/name'")
        commit = lock.get("commit") if isinstance(lock, dict) else None
        if not isinstance(commit, str) or not is_commit(commit.lower()):
            raise _bad(where, i, f"\"lock.commit\" of {repo_id} must be a commit hash (40 or 64 hex digits), "
                                 f"got {commit!r}")
        ours = entry.get("jitkernels", {})
        if ours is None:
            ours = {}
        if not isinstance(ours, dict):
            raise _bad(where, i, f"\"jitkernels\" of {repo_id} must be an object")
        backend, digest, files = ours.get("backend"), ours.get("digest"), ours.get("files", {})
        if backend is not None and not isinstance(backend, str):
            raise _bad(where, i, f"\"jitkernels.backend\" of {repo_id} must be a string")
        if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
            raise _bad(where, i, f"\"jitkernels.digest\" of {repo_id} must be a sha256 (64 hex digits)")
        if files is None:
            files = {}
        if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and _SHA256.match(v) for k, v in files.items()):
            raise _bad(where, i, f"\"jitkernels.files\" of {repo_id} must map file paths to sha256 strings")
        if repo_id in locked:
            raise _bad(where, i, f"{repo_id} is locked twice")
        locked[repo_id] = LockedKernel(repo_id, commit.lower(), dict(dependency), backend, digest, dict(files))
    return locked


def read_capped(path, what: str = "lock file") -> bytes:
    """The bytes of a lock, pin or list file: a regular file (or a pipe) of at most :data:`MAX_LOCK_BYTES`.

    A device (``/dev/zero``), a folder or anything larger is a :class:`LockfileError` naming the file,
    found before more than the cap is read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                raise LockfileError(f"The {what} {path} is not a regular file (a device or another special file).")
            raw = fh.read(MAX_LOCK_BYTES + 1)
    except IsADirectoryError as exc:
        raise LockfileError(f"The {what} {path} is a folder, not a file.") from exc
    except OSError as exc:
        raise LockfileError(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from exc
    if len(raw) > MAX_LOCK_BYTES:
        raise LockfileError(f"The {what} {path} is larger than {MAX_LOCK_BYTES >> 20} MiB: not a lock file.")
    return raw


def read_lock(path, what: str = "lock file") -> dict[str, LockedKernel]:
    """:func:`parse_lock` of a file, read with a size cap (:func:`read_capped`)."""
    return parse_text(read_capped(path, what), str(path))


def parse_text(raw: bytes | str, where: str) -> dict[str, LockedKernel]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise LockfileError(f"{where} is not a JSON lock file ({exc}). Regenerate it with `jitkernels lock`.") from exc
    return parse_lock(data, where)


_ACTIVE: dict[str, tuple[tuple[int, int], dict]] = {}


def active_lock() -> dict[str, LockedKernel]:
    """The kernels locked by ``JITKERNELS_LOCKFILE`` (re-read when the file changes)."""
    path = config.lockfile()
    if path is None:
        return {}
    try:
        st = path.stat()
    except OSError as exc:
        raise LockfileError(f"JITKERNELS_LOCKFILE={path}: {exc.strerror}.") from exc
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _ACTIVE.get(str(path))
    if cached and cached[0] == stamp:
        return cached[1]
    locked = read_lock(path, "lock file (JITKERNELS_LOCKFILE)")
    _ACTIVE[str(path)] = (stamp, locked)
    return locked


def file_hashes(root: Path, files, strip: str = "") -> dict[str, str]:
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
    from ..cache.files import write_atomic

    try:
        write_atomic(Path(path), (json.dumps(entries, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise LockfileError(f"Cannot write the lock file {path}: {exc.strerror or exc}.") from exc


@dataclass(frozen=True)
class ProjectKernel:
    repo_id: str
    version: int | None = None  # from pyproject.toml
    commit: str | None = None  # from kernels.lock
    backend: str | None = None


def project_dependencies(folder) -> dict[str, int]:
    """``[tool.kernels.dependencies]`` of ``folder/pyproject.toml``: repo id -> major version (as ``kernels lock``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    path = Path(folder) / "pyproject.toml"
    where = f"{path} [tool.kernels.dependencies]"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LockfileError(f"{folder} is not a project folder: it has no pyproject.toml (nor kernels.lock).") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LockfileError(f"Cannot read {path}: {exc}.") from exc
    table = data.get("tool", {}).get("kernels", {}).get("dependencies")
    if not isinstance(table, dict) or not table:
        raise LockfileError(f"{path} declares no kernels: add a [tool.kernels.dependencies] table, e.g. "
                            f"\"kernels-community/activation\" = 1 (repo id = major version), as `kernels lock` reads.")
    out = {}
    for repo_id, version in table.items():
        if not _REPO_ID.match(repo_id) or ".." in repo_id:
            raise LockfileError(f"{where}: {repo_id!r} is not 'org/name'.")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise LockfileError(f"{where}: {repo_id} = {version!r}: the value is the kernel's major version, "
                                f"an integer (e.g. 1), as upstream `kernels lock` requires.")
        out[repo_id] = version
    return out


def project_kernels(folder) -> tuple[list[ProjectKernel], str]:
    """The kernels a project folder needs, and where they were read from: ``kernels.lock``
    (commits, what ``kernels download`` reads) if present, else ``pyproject.toml`` (versions)."""
    lock = Path(folder) / "kernels.lock"
    if lock.is_file():
        return [ProjectKernel(k.repo_id, commit=k.commit, backend=k.backend)
                for k in read_lock(lock).values()], str(lock)
    deps = project_dependencies(folder)
    return [ProjectKernel(repo_id, version=v) for repo_id, v in deps.items()], str(Path(folder) / "pyproject.toml")
