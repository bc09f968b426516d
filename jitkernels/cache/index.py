"""How loads find entries without planning anything: index records, local-folder memos, refs, trust records.

Two indexes lead to an entry: by repository id (written after resolution) and
by the name exactly as the caller wrote it (so a pinned load needs no name
mapping). A local folder (``LOCAL_KERNELS``, ``load_local``) has a memo
instead: the stats of its files when it was prepared; while they are
unchanged, its entry is loaded directly. ``refs/`` remembers the commit a
branch, tag or ``vN`` resolved to (offline loads use it); ``trust/`` records
that the Hub flagged a publisher, per commit. An index is only a shortcut: a
cache where it cannot be written (read-only, shipped to a fleet) still loads,
through the pipeline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import CacheError
from ..identity import is_commit
from . import layout
from .files import read_json, write_json

#: Folders never part of a local kernel.
SKIP_DIRS = frozenset({".git", "__pycache__", ".pytest_cache", ".mypy_cache", "result"})

#: ``jitkernels cache`` reads "last use" from an entry folder's mtime, refreshed at most this often.
USE_STAMP_EVERY = 3600.0


# -- records ---------------------------------------------------------------------------------------

def record(inspection, entry: Path, trust: str | None) -> dict:
    """What the warm path needs to import an entry (see :func:`jitkernels.warm.import_entry`)."""
    return {
        "module": inspection.module_name,
        "python_name": inspection.python_name,
        "entry": str(entry.relative_to(layout.root())),
        "repo_id": inspection.repo_id,
        "strategy": inspection.strategy,
        "digest": inspection.digest,
        "trust": trust,
        "kernel_depends": list(getattr(inspection, "kernel_depends", ()) or ()),
    }


def valid_record(value) -> bool:
    """An index record the warm path may follow: its entry is one folder under ``entries/``, its names are
    identifiers, and it needs no other kernel loaded first (``kernel-depends`` take the pipeline)."""
    if not isinstance(value, dict) or value.get("kernel_depends"):
        return False
    entry, module, package = value.get("entry"), value.get("module"), value.get("python_name")
    if not isinstance(entry, str) or not isinstance(module, str) or not isinstance(package, str):
        return False
    parts = entry.split("/")
    return (len(parts) == 2 and parts[0] == "entries" and parts[1] not in ("", ".", "..") and "\0" not in entry
            and package.isidentifier() and all(p.isidentifier() for p in module.split(".")))


def index(provider: str, repo_ids, names, commit: str, backend: str, envkey: str, inspection, entry: Path,
          trust: str | None) -> None:
    """Point the warm path at ``entry`` for ``commit`` in the environment ``envkey`` (:func:`jitkernels.machine.env_key`):
    by repository id and by the names the caller used."""
    value = record(inspection, entry, trust)
    paths = [layout.index_file(provider, repo_id, commit, backend, envkey) for repo_id in sorted(set(repo_ids))]
    paths += [p for p in (layout.name_index_file(provider, n, commit, backend, envkey) for n in names) if p]
    for path in paths:
        try:
            write_json(path, value)
        except CacheError as exc:
            from ..log import logger

            logger.debug("jitkernels: warm index not written: %s", exc)


def note_use(entry: Path) -> None:
    """Record that ``entry`` was loaded (its folder's mtime; one ``stat``, a ``utime`` once an hour).

    Access times are no record of use (``noatime`` mounts, ``jitkernels verify`` reads every file).
    A cache this process cannot write (read-only, another user's) is left as it is.
    """
    try:
        if time.time() - os.stat(entry).st_mtime > USE_STAMP_EVERY:
            os.utime(entry)
    except OSError:
        pass


# -- local folders ---------------------------------------------------------------------------------

def tree_stats(root: str) -> list[list]:
    """``[[path, size, mtime_ns, ctime_ns, inode], ...]`` for every file of a local kernel folder (sorted).

    What a local kernel's memo is checked against: any file added, removed or touched
    anywhere in the folder means the kernel is planned, hashed and prepared again.
    """
    stats = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            st = os.stat(os.path.join(dirpath, name))  # the target of a link: what the build reads
            # ctime and inode too: copies that keep the mtime (cp -p, rsync -a, tar) still change those
            stats.append([name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"), st.st_size,
                          st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return stats


def remember_local(path: Path, stats: list, backend: str, envkey: str, inspection, entry: Path) -> None:
    """Memo of a local kernel folder: while no file in it changes, loads import ``entry`` directly.

    ``stats`` were taken before the files were hashed (see :func:`tree_stats`).
    """
    memo = {"path": str(path), "tree": stats, "record": record(inspection, entry, "local")}
    try:
        write_json(layout.local_memo_file(os.path.realpath(path), backend, envkey), memo)
    except CacheError as exc:
        from ..log import logger

        logger.debug("jitkernels: local memo not written: %s", exc)


def local_record(path: str, backend: str, envkey: str) -> dict | None:
    """The index record of a local folder if none of its files changed since it was prepared, else None."""
    memo = read_json(layout.local_memo_file(path, backend, envkey))
    value = memo.get("record") if memo else None
    if not valid_record(value):
        return None
    try:
        return value if tree_stats(path) == memo.get("tree") else None
    except OSError:
        return None


# -- refs and trust records ------------------------------------------------------------------------

def remember_ref(provider: str, repo_id: str, revision: str | None, commit: str, repo_type: str) -> None:
    """Remember what ``revision`` resolved to (offline loads use it); never fails a load."""
    try:
        write_json(layout.refs_file(provider, repo_id, revision),
                   {"commit": commit, "repo_type": repo_type, "repo_id": repo_id, "revision": revision})
    except OSError:
        pass


def last_resolved(provider: str, repo_id: str, revision: str | None) -> str | None:
    value = read_json(layout.refs_file(provider, repo_id, revision))
    commit = value.get("commit") if value else None
    return commit if is_commit(commit) else None


def last_repo_type(provider: str, repo_id: str) -> str | None:
    value = read_json(layout.refs_file(provider, repo_id, None))
    return value.get("repo_type") if value else None


def record_hub_grant(provider: str, repo_id: str, commit: str) -> None:
    """The Hub flagged this commit's publisher trusted: offline loads of it may rely on that."""
    try:
        write_json(layout.trust_file(provider, repo_id, commit),
                   {"repo_id": repo_id, "commit": commit, "granted_by": "hub-flag", "time": time.time()})
    except OSError:
        pass  # a read-only cache: offline loads of this commit will need trust_remote_code


def hub_grant_recorded(provider: str, repo_id: str, commit: str) -> bool:
    value = read_json(layout.trust_file(provider, repo_id, commit))
    return bool(value) and value.get("granted_by") == "hub-flag" and value.get("commit") == commit
