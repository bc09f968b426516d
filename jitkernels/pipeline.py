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

from . import cache, config, environment, warm
from .buildconfig import BACKENDS
from .errors import (
    FetchError,
    InvalidKernelNameError,
    KernelNotFoundError,
    LockfileError,
    OfflineError,
    RevisionNotFoundError,
    UnsupportedKernelError,
)
from .warm import import_package
from .inspection import NATIVE_JIT, PYTHON, UNSUPPORTED, Inspection, Toolchain
from .log import warning_once
from .providers import KernelProvider, get_provider
from .providers.base import KernelRef, Snapshot, is_commit
from .sources import LocalSnapshot, local_override

_LOCK = threading.RLock()

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
    except KernelNotFoundError:
        for candidate in provider.candidates(ref):
            try:
                return provider.resolve(candidate, revision, offline=offline, trust_remote_code=trust_remote_code)
            except KernelNotFoundError:
                continue
        raise


def _warm(provider: str, repo_id: str, commit: str, backend: str, module_name: str | None = None,
          digest: str | None = None) -> ModuleType | None:
    """The warm path by repository id (after resolution); see :func:`jitkernels.warm.load_indexed`."""
    index = cache.index_file(provider, repo_id, commit, backend, environment.env_key(backend))
    return warm.load_indexed(index, (str(cache.root()), provider, repo_id, commit, backend), module_name, digest)


def _write_index(provider: str, repo_ids: set[str], commit: str, backend: str, inspection: Inspection, entry: Path,
                 names: tuple[str, ...] = ()) -> None:
    """Index the published entry by repo id and by the names the caller used (see :mod:`jitkernels.warm`)."""
    record = {
        "module": inspection.module_name,
        "python_name": inspection.python_name,
        "entry": str(entry.relative_to(cache.root())),
        "repo_id": inspection.repo_id,
        "strategy": inspection.strategy,
        "digest": inspection.digest,
    }
    envkey = environment.env_key(backend)
    for repo_id in repo_ids:
        cache.write_json(cache.index_file(provider, repo_id, commit, backend, envkey), record)
    for name in names:
        path = warm.name_index_file(provider, name, commit, backend, envkey)
        if path is not None:
            cache.write_json(path, record)


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
    from .prepare import fetch_inputs, module_name_for

    root, files = fetch_inputs(source_plan)
    digest = digest_files(root, files)
    name = module_name_for(inspection.python_name, inspection.backend, digest)
    return replace(
        inspection,
        digest=digest,
        module_name=name,
        expected_extension_name=name if inspection.strategy == NATIVE_JIT else None,
    )


def load_snapshot(snapshot: Snapshot, name: str, backend: str, index_ids: set[str] = frozenset(),
                  module_name: str | None = None, locked=None) -> ModuleType:
    """Plan, prepare (or build) and import a kernel from a resolved snapshot.

    ``module_name`` (default: the unique ``_<python_name>_<backend>_<digest>``)
    is the name the package is imported under; the ``jitkernels.hub`` import
    hook passes its own (``jitkernels.hub.hf.<name>``).
    """
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
    if not isinstance(snapshot, LocalSnapshot):  # local folders change under us: never indexed
        _write_index(inspection.provider, set(index_ids) | {snapshot.ref.repo_id, inspection.repo_id},
                     inspection.revision or snapshot.commit, backend, inspection, entry, names=(name,))
    return import_package(module_name or inspection.module_name, entry / inspection.python_name, what=inspection.repo_id)


def load_kernel(provider, name: str, *, revision=None, version=None, backend=None, trust_remote_code=False,
                module_name: str | None = None) -> ModuleType:
    """Load a kernel's package; ``module_name`` overrides the name a *first* import uses.

    A kernel already loaded in this process (same provider, repo, commit and
    backend) is returned as is, whatever name it was imported under.
    """
    prov = get_provider(provider)
    ref = prov.parse_name(name)
    rev = revision_for(revision, version)
    backend = _backend(backend)
    with _LOCK:
        locked = _locked(prov, ref, rev)
        if locked is not None:
            rev = locked.commit
        else:
            module = warm.try_load(prov.name, name, rev, backend, module_name)
            if module is not None:
                return module
        local = local_override(ref)
        if local is None and is_commit(rev):
            module = _warm(prov.name, ref.repo_id, rev, backend, module_name,
                           digest=locked.digest if locked is not None else None)
            if module is not None:
                return module
        if local is not None:
            return load_snapshot(local, name, backend, module_name=module_name)
        try:
            snapshot = _resolve(prov, ref, rev, trust_remote_code)
        except FetchError as exc:
            module = _fallback_last_resolved(prov, ref, rev, backend, exc, module_name)
            if module is not None:
                return module
            raise
        module = _warm(prov.name, ref.repo_id, snapshot.commit, backend, module_name,
                       digest=locked.digest if locked is not None else None)
        if module is not None:
            return module
        module = load_snapshot(snapshot, name, backend, index_ids={ref.repo_id}, module_name=module_name,
                               locked=locked)
        warm.LOADED[(str(cache.root()), prov.name, ref.repo_id, snapshot.commit, backend)] = module
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


def _fallback_last_resolved(prov, ref: KernelRef, rev: str | None, backend: str, exc: Exception,
                            module_name: str | None = None):
    """Network down for an unpinned revision: load the commit it resolved to last time, and say so once."""
    commit = rev if is_commit(rev) else prov.last_resolved(ref, rev)
    if commit is None:
        return None
    module = _warm(prov.name, ref.repo_id, commit, backend, module_name)
    if module is not None and not is_commit(rev):
        warning_once(
            f"Could not reach the provider to resolve {ref.repo_id}@{rev or 'default'} ({exc.__class__.__name__}); "
            f"loaded {commit[:12]}, the commit it resolved to last time."
        )
    return module


def has_kernel(provider, name: str, *, revision=None, version=None, backend=None) -> bool:
    """True if the kernel exists and JitKernels can load it for the backend; False for "not there"."""
    try:
        return inspect_kernel(provider, name, revision=revision, version=version, backend=backend).supported
    except (KernelNotFoundError, OfflineError):
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
