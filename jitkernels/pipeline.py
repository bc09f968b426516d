"""The one pipeline every entry point uses: name -> commit -> cache lookup -> (plan -> build) -> module.

``jitkernels.load``, the ``jitkernels.hub`` import hook, the patched ``kernels``
functions and the CLI all end here (after :mod:`jitkernels.warm`, which serves
what needs no resolution)::

    load_kernel(provider, name, revision | version, backend)
      1. the name and revision, each through its one function (jitkernels.identity)
      2. the commit: pinned (a commit hash, the lock file's), else resolved by the provider
         (with the network down: the commit it resolved to last time)
      3. one cache lookup through the warm indexes                               -> module
      4. on a miss, prepare(): plan the snapshot (jitkernels.plan), load its kernel-depends
         first, fetch its sources once, check them against the lock file, build the entry
         (jitkernels.build: Python package or native library), index it          -> import

:func:`prepare_kernel` / :func:`prepare_local` stop before the import (``jitkernels build``,
``export``): nothing of the kernel's code runs, so a CUDA kernel can be compiled without a GPU.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from . import config, machine, warm
from .cache import index, layout
from .cache.entries import BuildDeferred
from .errors import (
    BuildConfigError,
    FetchError,
    InvalidKernelNameError,
    KernelNotFoundError,
    LockfileError,
    OfflineError,
    RevisionNotFoundError,
    UnsupportedKernelError,
)
from .identity import is_commit, revision_for
from .importer import import_package
from .log import warning_once
from .plan.buildconfig import BACKENDS
from .plan.inspection import Inspection
from .plan.strategy import PYTHON, UNSUPPORTED, Toolchain
from .providers import get_provider
from .providers.base import KernelRef, Snapshot
from .providers.local import LocalSnapshot, local_folder, local_override

_LOCKS_GUARD = threading.Lock()
_LOCKS: dict[tuple[str, str], threading.RLock] = {}


@dataclass(frozen=True)
class Prepared:
    """A kernel's published cache entry and what it was made from."""

    inspection: Inspection  # completed: module name, digest
    config: object  # the parsed build.toml (jitkernels.plan.buildconfig.BuildConfig); None for payloads
    entry: Path


def _kernel_lock(provider: str, repo_id: str) -> threading.RLock:
    """One lock per kernel: threads loading the same kernel wait for one another (one module, one build);
    threads loading different kernels (``jitkernels warmup --from``, a model's layers) run in parallel.
    Across processes the cache's file locks do the same."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((provider, repo_id), threading.RLock())


def _backend(backend: str | None) -> str:
    if backend is None:
        return machine.local_backend()
    if backend not in BACKENDS:
        raise InvalidKernelNameError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    return backend


def _toolchain(backend: str) -> Toolchain:
    """torch, and for CUDA every compiler a build could use (local toolkits, the package index)."""
    from .build import toolchain

    return toolchain.plan_toolchain(backend)


# -- resolution -----------------------------------------------------------------------------------

def _resolve(provider, ref: KernelRef, revision: str | None, trust_remote_code) -> Snapshot:
    try:
        return _resolve_spellings(provider, ref, revision, trust_remote_code)
    except RevisionNotFoundError:
        raise
    except (KernelNotFoundError, FetchError) as exc:  # a typo looks like this too: name the close kernels we know
        from .suggest import close_names

        hint = close_names(ref.repo_id)
        if hint and exc.args and isinstance(exc.args[0], str):
            exc.args = (exc.args[0] + hint, *exc.args[1:])
        raise


def _resolve_spellings(provider, ref: KernelRef, revision: str | None, trust_remote_code) -> Snapshot:
    offline = config.hf_offline()
    try:
        return provider.resolve(ref, revision, offline=offline, trust_remote_code=trust_remote_code)
    except RevisionNotFoundError:
        raise
    except (KernelNotFoundError, OfflineError):  # offline, "not fetched" is how a wrong spelling looks
        for candidate in provider.candidates(ref):
            try:
                return provider.resolve(candidate, revision, offline=offline, trust_remote_code=trust_remote_code)
            except (KernelNotFoundError, OfflineError):
                continue
        raise


def _snapshot_for(provider, ref: KernelRef, revision: str | None, trust_remote_code) -> Snapshot:
    local = local_override(ref)
    if local is not None:
        return local
    return _resolve(provider, ref, revision, trust_remote_code)


def _cached(prov, ref: KernelRef, name: str, commit: str, backend: str, module_name: str | None,
            locked, grant: str | None) -> ModuleType | None:
    """The one cache lookup: the entry indexed for ``commit``, by the name as written or by repo id.

    ``grant``: the trust this call gives (see :mod:`jitkernels.trust`); ``locked``: a lock-file
    entry whose digest the entry must have.
    """
    envkey = machine.env_key_here(backend)
    key = (str(layout.root()), prov.name, ref.repo_id, commit, backend)
    digest = locked.digest if locked is not None else None
    if locked is not None and locked.files and _lock_checked(locked) != digest:
        return None  # this lock entry was never checked against the sources: the cold path checks it, once
    for path in (layout.name_index_file(prov.name, name, commit, backend, envkey),
                 layout.index_file(prov.name, ref.repo_id, commit, backend, envkey)):
        module = warm.load_indexed(path, key, module_name, digest, grant)
        if module is not None:
            return module
    return None


def _lock_key(locked) -> str:
    """The identity of a lock entry's content: an edit of any file hash is another key."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([locked.repo_id, locked.commit, locked.digest, sorted(locked.files.items())])
                          .encode()).hexdigest()


def _lock_checked(locked) -> str | None:
    """The digest whose sources matched this lock entry's file hashes (None: never checked here)."""
    from .cache.files import read_json

    record = read_json(layout.lock_check_file(_lock_key(locked)))
    return record.get("digest") if isinstance(record, dict) else None


def _note_lock_checked(locked, digest: str | None) -> None:
    from .cache.files import json_bytes, write_atomic

    if digest:
        try:
            write_atomic(layout.lock_check_file(_lock_key(locked)), json_bytes({"repo_id": locked.repo_id,
                                                                                  "digest": digest}))
        except OSError:
            pass  # a read-only cache: every load under this lock then checks the sources again


# -- planning ---------------------------------------------------------------------------------------

def _plan(snapshot: Snapshot, name: str, backend: str):
    from .plan.planner import plan

    return plan(snapshot, name, backend, _toolchain(backend), ignore_bounds=config.ignore_toolchain_bounds())


def _planned(provider, name: str, revision, version, backend, trust_remote_code=False):
    """Resolve and plan without loading.

    Inspection runs no kernel code, so an untrusted publisher's kernel is planned too (its
    snapshot's ``trust`` is then None), but nothing is fetched from a URL that publisher chose
    (a ``metadata.json`` git ``source``): see :mod:`jitkernels.plan.planner`.
    """
    from .errors import TrustError

    prov = get_provider(provider)
    ref = prov.parse_name(name)
    rev = revision_for(revision, version)
    backend = _backend(backend)
    try:
        snapshot = _snapshot_for(prov, ref, rev, trust_remote_code=trust_remote_code)
    except TrustError:
        snapshot = _snapshot_for(prov, ref, rev, trust_remote_code=True)
        snapshot.trust = None  # looked at, not trusted
    inspection, source_plan = _plan(snapshot, name, backend)
    return snapshot, rev, backend, inspection, source_plan


def _complete(inspection: Inspection, source_plan, sources=None) -> Inspection:
    """Fill in the digest-derived names (module, extension) from the planned sources (fetched if not given)."""
    from .build.python import entry_module_name
    from .plan.planner import fetch_sources

    sources = sources if sources is not None else fetch_sources(source_plan)
    name = entry_module_name(inspection, source_plan, sources.digest)
    return replace(inspection, digest=sources.digest, module_name=name,
                   expected_extension_name=name if inspection.strategy != PYTHON else None)


def inspect_kernel(provider, name: str, *, revision=None, version=None, backend=None,
                   trust_remote_code=False) -> Inspection:
    """Decide what would happen, fetching only small source files (never a binary, never a build).

    ``trust_remote_code`` matters only for a source an untrusted publisher names outside the Hub
    (a ``metadata.json`` git ``source``): it is fetched only with trust.
    """
    _snapshot, _rev, _backend_, inspection, source_plan = _planned(provider, name, revision, version, backend,
                                                                   trust_remote_code)
    return _complete(inspection, source_plan) if source_plan is not None else inspection


def inspect_local_path(path, *, backend=None, name: str | None = None) -> Inspection:
    snapshot, asked = local_folder(path, name, what="inspect_local")
    inspection, source_plan = _plan(snapshot, asked, _backend(backend))
    return _complete(inspection, source_plan) if source_plan is not None else inspection


def has_kernel(provider, name: str, *, revision=None, version=None, backend=None, trust_remote_code=False) -> bool:
    """True if the kernel exists and JitKernels can load it for the backend; False for "not there", broken,
    unreachable (a ``FetchError``), or a source an untrusted publisher names outside the Hub (never fetched)."""
    try:
        return inspect_kernel(provider, name, revision=revision, version=version, backend=backend,
                              trust_remote_code=trust_remote_code).supported
    except (KernelNotFoundError, FetchError, BuildConfigError):  # FetchError includes OfflineError
        return False


# -- preparing ------------------------------------------------------------------------------------

_DEPENDING = threading.local()


def load_dependencies(inspection: Inspection, backend: str, trust_remote_code=False) -> None:
    """Load every ``kernel-depends`` of ``inspection`` (pinned) before it is prepared; refuse cycles.

    The caller's ``trust_remote_code`` reaches the dependencies as it is: ``True`` trusts every
    kernel of the call, a list trusts the repositories it names (dependencies included). A
    dependency nobody trusts is a :class:`TrustError` that names the kernel needing it.
    """
    if not inspection.kernel_depends:
        return
    from .errors import TrustError
    from .inputs.kernels import KernelDependency

    stack = _DEPENDING.__dict__.setdefault("stack", [])
    me = (inspection.provider, inspection.repo_id)
    pushed = me not in stack
    if pushed:
        stack.append(me)
    try:
        for text in inspection.kernel_depends:
            dep = KernelDependency.parse(text)
            key = (inspection.provider, dep.repo_id)
            if key in stack:
                chain = [repo for _, repo in stack[stack.index(key):]] + [dep.repo_id]
                raise BuildConfigError(
                    f"Kernel dependency cycle: {' -> '.join(chain)} (kernel-depends). A kernel cannot need itself; "
                    f"fix the kernel-depends of {inspection.repo_id}."
                )
            try:
                load_kernel(inspection.provider, dep.repo_id, version=dep.version, revision=dep.revision,
                            backend=backend, trust_remote_code=trust_remote_code)
            except TrustError as exc:
                raise TrustError(f"{inspection.repo_id} needs kernel {dep} (kernel-depends): {exc}") from exc
            except KernelNotFoundError as exc:
                kind = RevisionNotFoundError if isinstance(exc, RevisionNotFoundError) else KernelNotFoundError
                raise kind(
                    f"{inspection.repo_id} needs kernel {dep} (kernel-depends), which cannot be found: {exc}"
                ) from exc
    finally:
        if pushed:
            stack.pop()


def prepare(snapshot: Snapshot, name: str, backend: str, index_ids=frozenset(), locked=None,
            trust_remote_code=False) -> Prepared:
    """Plan, check, prepare (or build) and index a kernel without importing it.

    ``trust_remote_code``: the caller's grant, for the kernel's ``kernel-depends`` (see :func:`load_dependencies`).
    """
    from .cache.files import check_owner
    from .inputs import python_deps
    from .plan.planner import fetch_sources

    check_owner()  # its entries are code we run, even when they are found, not made
    inspection, source_plan = _plan(snapshot, name, backend)
    if inspection.strategy == UNSUPPORTED or source_plan is None:
        raise UnsupportedKernelError(
            f"Cannot load kernel {inspection.repo_id} for {backend} ({inspection.reason}): {inspection.detail}",
            inspection,
        )
    python_deps.check(inspection)  # the exact pip install line; never installs
    load_dependencies(inspection, backend, trust_remote_code)  # kernel-depends, pinned, through this pipeline
    sources = fetch_sources(source_plan)  # once: everything below is handed these files
    if locked is not None:
        from .upstream.lockfiles import file_hashes, verify

        verify(locked, file_hashes(sources.root, sources.files, strip=source_plan.root))
        _note_lock_checked(locked, sources.digest)
    if inspection.strategy == PYTHON:
        from .build.python import build_python_entry

        inspection, entry = build_python_entry(inspection, source_plan, sources)
    else:
        from .build.native.builder import build_native_entry

        inspection, entry = build_native_entry(inspection, source_plan, sources)
    if isinstance(snapshot, LocalSnapshot):  # local folders change under us: a memo checked by stat
        if snapshot.stats is not None:
            index.remember_local(snapshot.path, snapshot.stats, backend, machine.env_key_here(backend), inspection,
                                 entry)
    else:
        index.index(inspection.provider, set(index_ids) | {snapshot.ref.repo_id, inspection.repo_id}, (name,),
                    inspection.revision or snapshot.commit, backend, machine.env_key_here(backend), inspection, entry,
                    snapshot.trust)
    return Prepared(inspection, source_plan.config, entry)


def load_snapshot(snapshot: Snapshot, name: str, backend: str, index_ids=frozenset(),
                  module_name: str | None = None, locked=None, trust_remote_code=False) -> ModuleType:
    """Prepare a kernel from a resolved snapshot and import it.

    ``module_name`` (default: the unique ``_<python_name>_<backend>_<digest>``) is the name the
    package is imported under; the ``jitkernels.hub`` import hook passes its own.
    """
    from .cache.entries import damaged_after_failed_import

    prepared = prepare(snapshot, name, backend, index_ids, locked, trust_remote_code)
    i = prepared.inspection
    try:
        return import_package(module_name or i.module_name, prepared.entry / i.python_name, what=i.repo_id)
    except ImportError:
        if damaged_after_failed_import(prepared.entry, i.python_name) is None:
            raise  # the kernel's own error: its entry is intact
    prepared = prepare(snapshot, name, backend, index_ids, locked, trust_remote_code)  # made again, once
    i = prepared.inspection
    return import_package(module_name or i.module_name, prepared.entry / i.python_name, what=i.repo_id)


def prepare_kernel(provider, name: str, *, revision=None, version=None, backend=None,
                   trust_remote_code=False) -> Prepared:
    """Fetch, plan and prepare (compile) ``name`` from a provider (or ``LOCAL_KERNELS``) into the cache."""
    prov = get_provider(provider)
    ref = prov.parse_name(name)
    snapshot = _snapshot_for(prov, ref, revision_for(revision, version), trust_remote_code)
    return prepare(snapshot, name, _backend(backend), trust_remote_code=trust_remote_code)


def prepare_local(path, *, backend=None, name: str | None = None) -> Prepared:
    """The same for a local folder (a source tree, a repo with ``build/``, or one variant)."""
    snapshot, asked = local_folder(path, name, what="build")
    return prepare(snapshot, asked, _backend(backend))


# -- loading ----------------------------------------------------------------------------------------

def load_kernel(provider, name: str, *, revision=None, version=None, backend=None, trust_remote_code=False,
                module_name: str | None = None) -> ModuleType:
    """Load a kernel's package; ``module_name`` overrides the name a *first* import uses.

    A kernel already loaded in this process (same provider, repo, commit and backend) is
    returned as is, whatever name it was imported under. The commit is the pinned one (a
    commit hash, or the lock file's), else what the provider resolves (or, with the network
    down, what it resolved to last time); then one cache lookup, and only on a miss a fetch
    and a build.
    """
    prov = get_provider(provider)
    ref = prov.parse_name(name)
    rev = revision_for(revision, version)
    backend = _backend(backend)
    with _kernel_lock(prov.name, ref.repo_id), _deferred_as(provider=prov.name, name=name, revision=rev,
                                                           backend=backend, trust_remote_code=trust_remote_code) as load:
        local = local_override(ref)
        if local is not None:
            return load_snapshot(local, name, backend, module_name=module_name, trust_remote_code=trust_remote_code)
        locked = _locked(prov, ref, rev)
        commit = locked.commit if locked is not None else (rev if is_commit(rev) else None)
        snapshot = unreachable = None
        if commit is None:
            try:
                snapshot = _resolve(prov, ref, rev, trust_remote_code)
                commit = snapshot.commit
            except FetchError as exc:
                commit, unreachable = prov.last_resolved(ref, rev), exc
                if commit is None:
                    raise
        from .trust import caller_grant

        grant = snapshot.trust if snapshot is not None else caller_grant(ref.repo_id, trust_remote_code)
        module = _cached(prov, ref, name, commit, backend, module_name, locked, grant)
        if module is not None:
            if unreachable is not None:
                warning_once(
                    f"Could not reach the provider to resolve {ref.repo_id}@{rev or 'default'} "
                    f"({unreachable.__class__.__name__}); loaded {commit[:12]}, the commit it resolved to last time."
                )
            return module
        if unreachable is not None:
            raise unreachable
        if snapshot is None:
            snapshot = _resolve(prov, ref, commit, trust_remote_code)
        load["revision"] = snapshot.commit  # a background builder prepares exactly this commit
        module = load_snapshot(snapshot, name, backend, index_ids={ref.repo_id}, module_name=module_name,
                               locked=locked, trust_remote_code=trust_remote_code)
        warm.remember((str(layout.root()), prov.name, ref.repo_id, snapshot.commit, backend), module, snapshot.trust)
        return module


def load_local_path(path, *, backend=None, name: str | None = None) -> ModuleType:
    """Load a kernel from a local source tree, repo folder with ``build/``, or one build variant folder."""
    snapshot, asked = local_folder(path, name)
    backend = _backend(backend)
    with _deferred_as(path=os.path.abspath(os.fspath(path)), name=name, backend=backend):
        return load_snapshot(snapshot, asked, backend)


@contextmanager
def _deferred_as(**load):
    """A build deferred below (:class:`BuildDeferred`) is described as this load, which its builder repeats
    (:mod:`jitkernels.coldstart`); the outermost load's description wins (kernel-depends build with it)."""
    try:
        yield load
    except BuildDeferred as deferred:
        deferred.load = dict(load)
        raise


def _locked(prov, ref: KernelRef, rev: str | None):
    """The lock-file entry for ``ref`` (``JITKERNELS_LOCKFILE``), checked against the asked revision."""
    from .upstream.lockfiles import active_lock

    lock = active_lock()
    if not lock:
        return None
    locked = lock.get(ref.repo_id) or next(
        (lock[c.repo_id] for c in prov.candidates(ref) if c.repo_id in lock), None)
    if locked is None:
        return None
    if is_commit(rev) and rev != locked.commit:
        raise LockfileError(
            f"{ref.repo_id}: revision {rev[:12]} was asked but the lock file {config.lockfile()} pins "
            f"{locked.commit[:12]}. Update the lock (`jitkernels lock`) or ask for the locked commit."
        )
    return locked


def lock_entry(provider, name: str, *, revision=None, version=None, backend=None, trust_remote_code=False) -> dict:
    """One ``jitkernels.lock`` entry: the resolved commit and the sha256 of every input file."""
    from .plan.planner import fetch_sources
    from .upstream.lockfiles import file_hashes

    snapshot, rev, backend, inspection, source_plan = _planned(provider, name, revision, version, backend,
                                                               trust_remote_code)
    if snapshot.commit is None:
        raise InvalidKernelNameError(f"{name} is served from a local folder ({snapshot.location}); it cannot be locked.")
    if source_plan is None:
        raise UnsupportedKernelError(f"Cannot lock {inspection.repo_id} for {backend}: {inspection.detail}", inspection)
    sources = fetch_sources(source_plan)
    changed = snapshot.tampered(sources.root, sources.files)
    if changed:  # a lock must pin what the Hub serves, not what a local copy became
        raise LockfileError(
            f"{inspection.repo_id}@{snapshot.commit[:12]}: the local copy of {', '.join(changed[:8])} differs from "
            f"what the Hub publishes for it (its blob id), so it was not locked. The Hugging Face cache was modified: "
            f"delete that repository from it (`hf cache delete`) and lock again.")
    inspection = _complete(inspection, source_plan, sources)
    dependency = {"repo-id": inspection.repo_id}
    if version is not None:
        dependency["version"] = version
    else:
        dependency["revision"] = rev or snapshot.requested or inspection.revision
    return {
        "dependency": dependency,
        "lock": {"commit": inspection.revision},
        "jitkernels": {
            "provider": inspection.provider,
            "backend": backend,
            "strategy": inspection.strategy,
            "digest": inspection.digest,
            "files": file_hashes(sources.root, sources.files, strip=source_plan.root),
        },
    }
