"""The cache entry lifecycle, in one place: look up, lock, look up again, stage, fill, verify, publish, index.

Python payloads (:mod:`jitkernels.build.python`), native builds
(:mod:`jitkernels.build.native.builder`), git sources (:mod:`jitkernels.providers.git`)
and CUTLASS headers (:mod:`jitkernels.inputs.cutlass`) describe *what* goes into an
entry as a :class:`Recipe`; :func:`obtain` is the whole policy::

    entry intact?                      -> use it (no lock: read-only caches load)
    hold the entry's lock               (waits, reports the holder, gives up on a stopped one)
        intact now?                    -> use it (another process made it meanwhile)
        damaged?                       -> report once, discard
        [native: in the remote cache?  -> fetch, verify every sha256, publish; done]
        JITKERNELS_DISABLE_BUILD and native -> BuildError (a fleet's prebuilt cache missed)
        inside deferring() and native   -> BuildDeferred (the caller builds it elsewhere; see below)
        [native: hold the build workspace, kept across interruptions and local edits]
        stage -> recipe.fill -> manifest -> verify -> bytecode -> umask -> one rename
        [native: store to the remote cache, in write mode]

Nothing half-made is ever published, and every filesystem failure is a
:class:`~jitkernels.errors.CacheError` naming the path and ``JITKERNELS_CACHE``.
After publication the pipeline records the warm-path indexes (:mod:`.index`).

Inside :func:`deferring` (the background cold start, :mod:`jitkernels.coldstart`) a
compiled entry that is neither published nor in the remote cache is not built in
this process: :class:`BuildDeferred` is raised instead, also when another process
holds the entry's lock (it is building it: nobody waits). The builder that runs
later, elsewhere, goes through this same function.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import config
from ..errors import BuildError, CacheError, LockTimeoutError
from ..log import logger, warning_once
from . import layout, locks, workspaces
from .files import cache_error, check_owner, ensure_dir, guard, umask
from .manifest import check_entry, write_manifest


@dataclass(frozen=True)
class Recipe:
    """What one cache entry holds and how to make it.

    ``fill(out, work)`` writes the entry's files (the package folder ``<python_name>/``) into
    ``out`` and returns extra manifest fields; ``work`` is the persistent build workspace
    ``builds/<workspace>/`` (None when ``workspace`` is None). ``compiled`` entries obey
    ``JITKERNELS_DISABLE_BUILD``; with a ``build_key`` they are also looked up in (and stored to)
    the remote artifact cache (:mod:`.remote`).
    """

    name: str
    what: str
    inspection: object
    fill: Callable[[Path, Path | None], dict]
    compiled: bool = False
    build_key: str | None = None
    workspace: str | None = None
    keep_workspace: bool = False
    log: Path | None = None


class BuildDeferred(Exception):
    """Raised inside :func:`deferring` where a compiled entry would be built (a signal, not a JitKernelsError).

    ``name`` is the cache entry that is missing (``log`` its build log), ``busy`` is True when another process holds
    its lock (building it now). The pipeline fills ``load``: what to prepare in the process
    that builds it (the outermost load: a kernel whose kernel-depends is cold is deferred whole).
    """

    def __init__(self, name: str, what: str, log: Path | None, busy: bool):
        super().__init__(f"{what}: deferred ({'another process is building it' if busy else 'not built yet'})")
        self.name, self.what, self.log, self.busy = name, what, log, busy
        self.load: dict | None = None


_DEFERRING: contextvars.ContextVar[bool] = contextvars.ContextVar("jitkernels_deferring", default=False)


@contextlib.contextmanager
def deferring():
    """While the block runs (in this thread), compiled entries are not built here: :class:`BuildDeferred`."""
    token = _DEFERRING.set(True)
    try:
        yield
    finally:
        _DEFERRING.reset(token)


def deferring_builds() -> bool:
    return _DEFERRING.get()


def obtain(recipe: Recipe) -> Path:
    """The published entry for ``recipe``, made (once, across processes) if needed."""
    entry = layout.entry_dir(recipe.name)
    if check_entry(entry) is None:
        return entry
    check_owner()
    remote = _remote(recipe)
    if remote is None:
        _check_build_allowed(recipe, entry)
    defer = recipe.compiled and deferring_builds()
    with _entry_lock(recipe, defer):
        problem = check_entry(entry)
        if problem is None:
            return entry
        if entry.exists():
            warning_once(f"The cached kernel {entry.name} is damaged ({problem}); it is rebuilt.")
            discard(entry)
        if defer and remote is None:
            raise BuildDeferred(recipe.name, recipe.what, recipe.log, busy=False)
        with workspaces.staging(recipe.name) as out:
            if remote is not None and remote.fetch(recipe.name, recipe.build_key, out, _kernel_of(recipe)):
                with guard(out):
                    _publish(out, entry, None, None, fetched=True)  # its manifest is the remote one, verified
                logger.info("jitkernels: %s came from the remote cache %s", recipe.name, remote)
                return entry
            _check_build_allowed(recipe, entry)
            if defer:
                raise BuildDeferred(recipe.name, recipe.what, recipe.log, busy=False)
            with _workspace(recipe) if recipe.workspace else contextlib.nullcontext() as work:
                with guard(out):
                    extra = recipe.fill(out, work)
                    _publish(out, entry, recipe.inspection, extra)
                if work is not None and not recipe.keep_workspace:
                    shutil.rmtree(work, ignore_errors=True)
        if remote is not None:
            remote.store(recipe.name, entry)
    return entry


@contextlib.contextmanager
def _entry_lock(recipe: Recipe, defer: bool):
    """The entry's lock; when deferring, a held lock is a :class:`BuildDeferred` (someone builds it), never a wait."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locks.hold(f"entry:{recipe.name}", recipe.what, recipe.log, wait=not defer))
        except LockTimeoutError:
            if not defer:
                raise
            raise BuildDeferred(recipe.name, recipe.what, recipe.log, busy=True) from None
        yield


def _remote(recipe: Recipe):
    """The remote artifact cache (``JITKERNELS_REMOTE_CACHE``) for compiled entries, or None."""
    if not recipe.compiled or recipe.build_key is None:
        return None
    from . import remote

    return remote.configured()


def _kernel_of(recipe: Recipe) -> dict | None:
    """What a remote entry must hold for ``recipe``: its package and module names."""
    inspection = recipe.inspection
    if inspection is None:
        return None
    return {"python_name": inspection.python_name, "module_name": inspection.module_name}


def _check_build_allowed(recipe: Recipe, entry: Path) -> None:
    if recipe.compiled and config.disable_build():
        where = " or the remote cache" if recipe.build_key is not None and config.remote_cache_url() else ""
        raise BuildError(
            f"{recipe.what}: not in the cache at {entry}{where}, and JITKERNELS_DISABLE_BUILD=1 forbids "
            f"compiling it. Prebuild it with `jitkernels build` (or `warmup`) on a machine of this kind (same "
            f"torch, CUDA, Python and GPU arch) and ship the cache, or fill the remote cache."
        )


@contextlib.contextmanager
def _workspace(recipe: Recipe):
    workspaces.sweep_workspaces()
    with locks.hold(workspaces.workspace_lock_key(recipe.workspace), recipe.what, recipe.log):
        work = workspaces.workspace(recipe.workspace)
        os.utime(work)  # in use: not swept by age
        yield work


def _publish(staged: Path, entry: Path, inspection, extra: dict | None, fetched: bool = False) -> None:
    """Manifest (unless ``fetched``: it came with the files), verify, bytecode, umask, one rename."""
    if not fetched:
        write_manifest(staged, inspection, extra)
    problem = check_entry(staged, full=True)
    if problem is not None:  # the disk lost what we just wrote
        raise CacheError(f"Preparing {entry.name} in the JitKernels cache failed: {problem}. "
                         f"Check the disk under {staged.parent} (JITKERNELS_CACHE).")
    precompile(staged, entry)
    _apply_umask(staged)
    ensure_dir(entry.parent)
    try:
        os.replace(staged, entry)
    except OSError as exc:
        if check_entry(entry) is None:
            return  # published meanwhile by a process holding another lock on the same content
        raise cache_error(entry, exc) from exc


def precompile(staged: Path, final: Path) -> None:
    """Write the package's bytecode now (named as at ``final``): first loads and read-only caches stay fast."""
    import compileall

    compileall.compile_dir(str(staged), ddir=str(final), quiet=2, force=True)


def _apply_umask(folder: Path) -> None:
    """mkdtemp/mkstemp make private (0700/0600) items; published entries get the user's umask instead."""
    mask = umask()
    for path in [folder, *folder.rglob("*")]:
        mode = 0o777 if path.is_dir() or os.stat(path).st_mode & 0o111 else 0o666
        with contextlib.suppress(OSError):
            os.chmod(path, mode & ~mask & ~0o002)  # never world-writable


def damaged_after_failed_import(entry: Path, package: str) -> str | None:
    """An entry whose package just failed to import: is it damage (then reported once and discarded) or the
    kernel's own error (None)?

    The full check runs (every sha256, no file the manifest does not list) and the package's
    ``__init__.py`` must be there. A damaged entry is removed under its lock, so that the caller's next
    prepare makes it again; if it cannot be removed (in use, a read-only cache) it stays, and None is
    returned: the import error is then the caller's to raise.
    """
    problem = check_entry(entry, full=True)
    if problem is None and not (entry / package / "__init__.py").is_file():
        problem = f"{package}/__init__.py is missing"
    if problem is None:
        return None
    warning_once(f"The cached kernel {entry.name} is damaged ({problem}); it is rebuilt.")
    try:
        with locks.hold(f"entry:{entry.name}", "removing a damaged entry", wait=False):
            if entry.exists():
                discard(entry)
    except CacheError:  # held by another process (LockTimeoutError), or a cache we cannot write
        return None
    return problem


def discard(entry: Path) -> None:
    """Move a damaged entry out of the way (one rename, so no reader sees half of it) and delete it."""
    with workspaces.staging("discarded") as trash:
        with guard(entry):
            os.replace(entry, trash / "entry")
