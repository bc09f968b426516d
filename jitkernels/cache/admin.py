"""What an operator does with a cache: list its entries, look at one, prune, clear.

Every removal takes the entry's lock without waiting (the same lock a load
holds while it makes or replaces the entry) and skips the entry if someone
holds it, then moves it out with one rename (:func:`jitkernels.cache.entries.discard`):
a load racing a prune either finds the whole entry or none, and rebuilds it.
Indexes that pointed to a removed entry are harmless: a load finds the entry
gone and takes the cold path.

Background builds (:mod:`jitkernels.coldstart`) are listed from their records:
``building`` while their builder holds the lock ``background:<entry>``, ``failed``
(with the error and the logs) until the cache is cleared or a later build
succeeds, ``stopped`` when the builder died without a word (SIGKILL, OOM).

"Last use" is when a load last imported the entry: the warm path refreshes the
entry folder's mtime at most once an hour (:func:`jitkernels.cache.index.note_use`;
a read-only cache keeps its publication time). A long-lived process that
imported a kernel keeps its modules after a prune; only later loads rebuild.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CacheError, LockTimeoutError
from . import entries, layout, locks, workspaces
from .files import read_json
from .layout import MANIFEST
from .manifest import check_entry, manifest_problem


@dataclass(frozen=True)
class EntryInfo:
    name: str
    kernel: str | None
    revision: str | None
    backend: str | None
    kind: str  # "python" | "native" | "git-source" | "cuda-compiler" | "unknown" (a damaged manifest)
    archs: list
    abi: str | None
    torch: str | None
    size: int
    created: float | None
    last_use: float | None
    intact: bool
    problem: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _size_and_last_use(folder: Path) -> tuple[int, float | None]:
    """Total size, and the last load (the folder's mtime, see :func:`jitkernels.cache.index.note_use`)."""
    size = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                size += path.stat().st_size
        except OSError:
            continue
    try:
        last = folder.stat().st_mtime
    except OSError:
        last = None
    return size, last


def describe(folder: Path, full: bool = False) -> EntryInfo:
    """What ``cache list``/``info`` show of an entry; never raises for a damaged one (it is shown as damaged).

    ``full``: the intact flag comes from the full check (every sha256, as ``jitkernels verify``).
    """
    problem = check_entry(folder, full=full)
    manifest = read_json(folder / MANIFEST) or {}
    if manifest_problem(manifest) is not None:
        manifest = {}  # fields of a manifest that fails the schema are not shown (nor trusted)
    inspection = manifest.get("inspection") or {}
    toolchain = manifest.get("toolchain") or {}
    if not manifest:
        kind = "unknown"  # no readable manifest: nothing it says is shown
    elif "git" in manifest:
        kind = "git-source"
    elif "cuda_toolkit" in manifest:
        kind = "cuda-compiler"
    elif "build_key" in manifest:
        kind = "native"
    else:
        kind = "python"
    size, last = _size_and_last_use(folder)
    return EntryInfo(
        name=folder.name,
        kernel=inspection.get("repo_id") or (manifest.get("git") or {}).get("url"),
        revision=inspection.get("revision") or (manifest.get("git") or {}).get("commit"),
        backend=inspection.get("backend"),
        kind=kind,
        archs=list(manifest.get("archs") or []),
        abi=toolchain.get("python"),
        torch=toolchain.get("torch_build"),
        size=size,
        created=manifest.get("created") if isinstance(manifest.get("created"), (int, float)) else None,
        last_use=last,
        intact=problem is None,
        problem=problem,
    )


@dataclass(frozen=True)
class BackgroundBuildInfo:
    """A background build as ``cache list`` and ``doctor`` show it."""

    entry: str
    kernel: str | None
    state: str  # "building" | "failed" | "stopped"
    pid: int | None
    host: str | None
    requested_by: str | None  # <host>.<pid> of the process that asked for it
    started: float | None
    finished: float | None
    log: str | None  # the builder's whole output
    build_log: str | None  # the compiler output (failures)
    error: str | None

    def to_dict(self) -> dict:
        return {"kind": "background-build", **asdict(self)}


def background_builds() -> list[BackgroundBuildInfo]:
    """Background builds in progress, failed, or stopped, from ``background/<entry>.json``."""
    folder = layout.root() / "background"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        record = read_json(path) or {}
        entry = path.name[: -len(".json")]
        running = locks.holder(f"background:{entry}")
        state = "building" if running is not None else ("failed" if record.get("state") == "failed" else "stopped")
        if state == "building" and not record:  # its builder has the lock but did not write yet
            record = {"pid": running.get("pid"), "host": running.get("host"), "log": running.get("log")}
        found.append(BackgroundBuildInfo(
            entry=entry, kernel=record.get("kernel"), state=state, pid=_number(record, "pid"), host=record.get("host"),
            requested_by=record.get("requested_by"), started=_number(record, "started"),
            finished=_number(record, "finished"),
            log=record.get("log"), build_log=record.get("build_log"), error=record.get("error"),
        ))
    return found


def _number(record: dict, key: str):
    value = record.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def list_entries(full: bool = False) -> list[EntryInfo]:
    folder = layout.entries_dir()
    if not folder.is_dir():
        return []
    return [describe(p, full) for p in sorted(folder.iterdir()) if p.is_dir() and not p.is_symlink()]


def find(name: str) -> list[EntryInfo]:
    """Entries whose folder name, or kernel (repo id), or kernel short name is ``name``."""
    return [e for e in list_entries()
            if name in (e.name, e.kernel) or (e.kernel and e.kernel.rsplit("/", 1)[-1] == name)]


def loadable_with(info: EntryInfo, python_abi: str, torch_build: str) -> bool:
    """Could an interpreter with this Python ABI tag and torch build load the entry? Only native entries care."""
    return info.kind != "native" or (info.abi == python_abi and info.torch == torch_build)


def remove(info: EntryInfo, dry_run: bool = False) -> bool:
    """Remove one entry unless its lock is held (a load is making or replacing it). True if removed."""
    folder = layout.entry_dir(info.name)
    if dry_run:
        return True
    try:
        with locks.hold(f"entry:{info.name}", "removing a cache entry", wait=False):
            if folder.exists():
                entries.discard(folder)
            return True
    except LockTimeoutError:
        return False


def prune(older_than_days: float | None = None, unloadable: tuple[str, str] | None = None, damaged: bool = False,
          dry_run: bool = False) -> tuple[list[EntryInfo], list[EntryInfo]]:
    """Remove entries unused for ``older_than_days``, or not loadable with ``unloadable`` (the Python ABI tag and
    torch build of the interpreter that asks), or damaged (the full check: what ``jitkernels verify`` sees).

    Returns (removed, kept because in use).
    """
    now = time.time()
    removed, busy = [], []
    for info in list_entries(full=damaged):
        stale = older_than_days is not None and (info.last_use or info.created or 0) < now - older_than_days * 86400
        if stale or (unloadable and not loadable_with(info, *unloadable)) or (damaged and not info.intact):
            (removed if remove(info, dry_run) else busy).append(info)
    return removed, busy


def clear(dry_run: bool = False) -> tuple[list[EntryInfo], list[EntryInfo]]:
    """Remove every entry (skipping those in use) and the indexes, memos, logs and idle workspaces."""
    removed, busy = [], []
    for info in list_entries():
        (removed if remove(info, dry_run) else busy).append(info)
    if not dry_run:
        for sub in layout.DERIVED:
            shutil.rmtree(layout.root() / sub, ignore_errors=True)
        workspaces.sweep_workspaces(max_idle=0)
        workspaces.sweep(layout.staging_dir())
    return removed, busy


def verify(remove_damaged: bool = True) -> tuple[int, list[dict]]:
    """Re-hash every published entry (the full check; loads only compare sizes): ``(entries, damaged)``.

    A damaged entry is removed (``removed``: True), so that its next load makes it again: loads compare
    sizes only and would otherwise import a same-size alteration. One in use (its lock is held) or in a
    cache this process cannot write is left, and ``kept`` says why.
    """
    folder = layout.entries_dir()
    names = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()) if folder.is_dir() else []
    damaged = []
    for entry in names:
        problem = check_entry(entry, full=True)
        if problem:
            record = {"entry": entry.name, "problem": problem, "removed": False, "kept": None}
            if remove_damaged:
                try:
                    record["removed"] = remove(describe(entry))
                    record["kept"] = None if record["removed"] else "in use by another process"
                except CacheError as exc:
                    record["kept"] = str(exc)
            damaged.append(record)
    return len(names), damaged
