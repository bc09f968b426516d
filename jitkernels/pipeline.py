"""The one pipeline every entry point uses: name -> snapshot -> inspection -> prepared entry -> module.

``load``, the ``jitkernels.hub`` import hook, the patched ``kernels`` functions
and the CLI all call :func:`load_kernel` / :func:`inspect_kernel`.

The warm path (a pinned commit already prepared for this environment) reads
one small index file and imports the cached package: no huggingface_hub, no
network, no compiler.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType

from . import cache, config, entries, environment, warm
from .buildconfig import BACKENDS
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
from .inspection import PYTHON, UNSUPPORTED, Inspection, Toolchain
from .log import warning_once
from .providers import KernelProvider, get_provider
from .providers.base import KernelRef, Snapshot
from .warm import import_package, is_commit
from .sources import LocalSnapshot, local_override

_LOCKS_GUARD = threading.Lock()
_LOCKS: dict[tuple[str, str], threading.RLock] = {}


def _kernel_lock(provider: str, repo_id: str) -> threading.RLock:
    """One lock per kernel: threads loading the same kernel wait for one another (one module, one build);
    threads loading different kernels (``jitkernels warmup --from``, a model's layers) run in parallel.
    Across processes the cache's file locks do the same."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((provider, repo_id), threading.RLock())

def revision_for(revision: str | None, version: int | None) -> str | None:
    """``version=N`` is the branch ``vN`` (upstream's convention); both at once is an error."""
    if revision is not None and version is not None:
        raise InvalidKernelNameError(f"Pass revision= or version=, not both (got revision={revision!r}, version={version!r}).")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidKernelNameError(f"version must be a non-negative integer (the vN branch), got {version!r}.")
        return f"v{version}"
    if revision is not None:
        if not isinstance(revision, str) or not revision.strip() or "\x00" in revision or ".." in revision:
            raise InvalidKernelNameError(f"Invalid revision {revision!r}: use a branch, tag or commit hash.")
        return revision.strip()
    return None


def _backend(backend: str | None) -> str:
    if backend is None:
        return environment.local_backend()
    if backend not in BACKENDS:
        raise InvalidKernelNameError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    return backend


def _toolchain(backend: str) -> Toolchain:
    return Toolchain(
        torch=environment.torch_version(),
        cuda=environment.nvcc_version() if backend == "cuda" else None,
    )


# -- resolution ---------------------------------------------------------------

def _resolve(provider, ref: KernelRef, revision: str | None, trust_remote_code) -> Snapshot:
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


def _cached(prov, ref: KernelRef, name: str, commit: str, backend: str, module_name: str | None,
            locked, grant: str | None) -> ModuleType | None:
    """The one cache lookup: the entry indexed for ``commit``, by the name as written or by repo id.

    ``grant``: the trust this call gives (see :func:`jitkernels.warm.trusted`); ``locked``: a
    lock-file entry whose digest the entry must have.
    """
    envkey = entries.index_env_key(backend)
    key = (str(cache.root()), prov.name, ref.repo_id, commit, backend)
    digest = locked.digest if locked is not None else None
    for index in (warm.name_index_file(prov.name, name, commit, backend, envkey),
                  cache.index_file(prov.name, ref.repo_id, commit, backend, envkey)):
        module = warm.load_indexed(index, key, module_name, digest, grant)
        if module is not None:
            return module
    return None


# -- the pipeline --------------------------------------------------------------

def _snapshot_for(provider, ref: KernelRef, revision: str | None, trust_remote_code) -> Snapshot:
    local = local_override(ref)
    if local is not None:
        return local
    return _resolve(provider, ref, revision, trust_remote_code)


def _plan(snapshot: Snapshot, name: str, backend: str):
    from .planning import plan

    return plan(snapshot, name, backend, _toolchain(backend), ignore_bounds=config.ignore_toolchain_bounds())


def _planned(provider, name: str, revision, version, backend):
    """Resolve and plan without loading (inspection runs no kernel code, so no trust check)."""
    prov = get_provider(provider)
    ref = prov.parse_name(name)
    rev = revision_for(revision, version)
    backend = _backend(backend)
    snapshot = _snapshot_for(prov, ref, rev, trust_remote_code=True)
    inspection, source_plan = _plan(snapshot, name, backend)
    return snapshot, rev, backend, inspection, source_plan


def inspect_kernel(provider, name: str, *, revision=None, version=None, backend=None) -> Inspection:
    """Decide what would happen, fetching only small source files (never a binary, never a build)."""
    _snapshot, _rev, _backend_, inspection, source_plan = _planned(provider, name, revision, version, backend)
    if source_plan is not None:
        inspection = _complete(inspection, source_plan)
    return inspection


def _complete(inspection: Inspection, source_plan) -> Inspection:
    """Fill in the digest-derived names (module, extension) by hashing the planned inputs."""
    from dataclasses import replace

    from .planning import digest_files
    from .prepare import entry_module_name, fetch_inputs

    root, files = fetch_inputs(source_plan)
    digest = digest_files(root, files)
    name = entry_module_name(inspection, source_plan, digest)
    return replace(
        inspection,
        digest=digest,
        module_name=name,
        expected_extension_name=name if inspection.strategy != PYTHON else None,
    )


def load_snapshot(snapshot: Snapshot, name: str, backend: str, index_ids: set[str] = frozenset(),
                  module_name: str | None = None, locked=None) -> ModuleType:
    """Plan, prepare (or build) and import a kernel from a resolved snapshot.

    ``module_name`` (default: the unique ``_<python_name>_<backend>_<digest>``)
    is the name the package is imported under; the ``jitkernels.hub`` import
    hook passes its own (``jitkernels.hub.hf.<name>``).
    """
    inspection, entry, _plan_ = prepare_snapshot(snapshot, name, backend, index_ids, locked)
    return import_package(module_name or inspection.module_name, entry / inspection.python_name, what=inspection.repo_id)


def prepare_snapshot(snapshot: Snapshot, name: str, backend: str, index_ids=frozenset(), locked=None):
    """Plan, prepare (or build) and index a kernel without importing it: ``(inspection, entry folder, plan)``."""
    warm.check_owner()  # its entries are code we run, even when they are found, not made
    inspection, source_plan = _plan(snapshot, name, backend)
    if inspection.strategy == UNSUPPORTED or source_plan is None:
        raise UnsupportedKernelError(
            f"Cannot load kernel {inspection.repo_id} for {backend} ({inspection.reason}): {inspection.detail}",
            inspection,
        )
    from .inputs import kernels as kernel_depends, python_deps

    python_deps.check(inspection)  # the exact pip install line; never installs
    kernel_depends.load_first(inspection, backend)  # kernel-depends, pinned, through this pipeline
    if locked is not None:
        from .lockfile import file_hashes, verify
        from .prepare import fetch_inputs

        root, files = fetch_inputs(source_plan)
        verify(locked, file_hashes(root, files, strip=source_plan.root))
    if inspection.strategy == PYTHON:
        from .prepare import prepare_python

        inspection, entry = prepare_python(inspection, source_plan)
    else:
        from .native.builder import build_native

        inspection, entry = build_native(inspection, source_plan)
    if isinstance(snapshot, LocalSnapshot):  # local folders change under us: a memo checked by stat
        if snapshot.stats is not None:
            entries.remember_local(snapshot.path, snapshot.stats, backend, inspection, entry)
    else:
        entries.index(inspection.provider, set(index_ids) | {snapshot.ref.repo_id, inspection.repo_id}, (name,),
                      inspection.revision or snapshot.commit, backend, inspection, entry, snapshot.trust)
    return inspection, entry, source_plan


def load_kernel(provider, name: str, *, revision=None, version=None, backend=None, trust_remote_code=False,
                module_name: str | None = None) -> ModuleType:
    """Load a kernel's package; ``module_name`` overrides the name a *first* import uses.

    A kernel already loaded in this process (same provider, repo, commit and
    backend) is returned as is, whatever name it was imported under. The
    commit is the pinned one (a commit hash, or the lock file's), else what
    the provider resolves (or, with the network down, what it resolved to last
    time); then one cache lookup, and only on a miss a fetch and a build.
    """
    prov = get_provider(provider)
    ref = prov.parse_name(name)
    rev = revision_for(revision, version)
    backend = _backend(backend)
    with _kernel_lock(prov.name, ref.repo_id):
        local = local_override(ref)
        if local is not None:
            return load_snapshot(local, name, backend, module_name=module_name)
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
        grant = snapshot.trust if snapshot is not None else warm.caller_grant(ref.repo_id, trust_remote_code)
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
        module = load_snapshot(snapshot, name, backend, index_ids={ref.repo_id}, module_name=module_name,
                               locked=locked)
        warm.remember((str(cache.root()), prov.name, ref.repo_id, snapshot.commit, backend), module, snapshot.trust)
        return module


def _locked(prov, ref: KernelRef, rev: str | None):
    """The lock-file entry for ``ref`` (``JITKERNELS_LOCKFILE``), checked against the asked revision."""
    from .lockfile import active_lock, lockfile_path

    lock = active_lock()
    if not lock:
        return None
    locked = lock.get(ref.repo_id) or next(
        (lock[c.repo_id] for c in prov.candidates(ref) if c.repo_id in lock), None)
    if locked is None:
        return None
    if is_commit(rev) and rev != locked.commit:
        raise LockfileError(
            f"{ref.repo_id}: revision {rev[:12]} was asked but the lock file {lockfile_path()} pins "
            f"{locked.commit[:12]}. Update the lock (`jitkernels lock`) or ask for the locked commit."
        )
    return locked


def lock_entry(provider, name: str, *, revision=None, version=None, backend=None) -> dict:
    """One ``jitkernels.lock`` entry: the resolved commit and the sha256 of every input file."""
    from .lockfile import file_hashes
    from .prepare import fetch_inputs

    snapshot, rev, backend, inspection, source_plan = _planned(provider, name, revision, version, backend)
    if snapshot.commit is None:
        raise InvalidKernelNameError(f"{name} is served from a local folder ({snapshot.location}); it cannot be locked.")
    if source_plan is None:
        raise UnsupportedKernelError(f"Cannot lock {inspection.repo_id} for {backend}: {inspection.detail}", inspection)
    inspection = _complete(inspection, source_plan)
    root, files = fetch_inputs(source_plan)
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
            "files": file_hashes(root, files, strip=source_plan.root),
        },
    }


def has_kernel(provider, name: str, *, revision=None, version=None, backend=None) -> bool:
    """True if the kernel exists and JitKernels can load it for the backend; False for "not there" or broken."""
    try:
        return inspect_kernel(provider, name, revision=revision, version=version, backend=backend).supported
    except (KernelNotFoundError, OfflineError, BuildConfigError):
        return False


def load_local_path(path, *, backend=None, name: str | None = None) -> ModuleType:
    """Load a kernel from a local source tree, repo folder with ``build/``, or one build variant folder."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidKernelNameError(f"load_local: {folder} is not a folder.")
    short = (name or folder.name).replace("_", "-")
    ref = KernelRef(KernelProvider.HF_KERNELS.value, f"local/{short}")
    snapshot = LocalSnapshot(ref, folder)
    return load_snapshot(snapshot, name or folder.name, _backend(backend))


def inspect_local_path(path, *, backend=None, name: str | None = None) -> Inspection:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidKernelNameError(f"inspect_local: {folder} is not a folder.")
    ref = KernelRef(KernelProvider.HF_KERNELS.value, f"local/{(name or folder.name).replace('_', '-')}")
    backend = _backend(backend)
    inspection, source_plan = _plan(LocalSnapshot(ref, folder), name or folder.name, backend)
    return _complete(inspection, source_plan) if source_plan is not None else inspection


def warmup_kernels(provider, names, *, revision=None, version=None, backend=None, progress=None) -> list[Inspection]:
    """Fetch and prepare (compile) each kernel; ``progress(index, total, name, seconds)`` after each one."""
    import time

    results = []
    for index, name in enumerate(names, 1):
        start = time.monotonic()
        load_kernel(provider, name, revision=revision, version=version, backend=backend)
        results.append(inspect_kernel(provider, name, revision=revision, version=version, backend=backend))
        if progress is not None:
            progress(index, len(names), name, time.monotonic() - start)
    return results
