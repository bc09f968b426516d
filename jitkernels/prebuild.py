"""Prepare a kernel's cache entry without importing it: what ``jitkernels build`` and ``export`` need.

The same steps as :func:`jitkernels.pipeline.load_snapshot` up to the import:
resolve (with the same trust rule as a load), plan, prepare or compile into
the cache, index. Nothing of the kernel's Python code runs, so a CUDA kernel
can be compiled on a machine without a GPU (``TORCH_CUDA_ARCH_LIST`` names the
archs) and a fleet fills its cache from a build box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidKernelNameError


@dataclass(frozen=True)
class Prepared:
    """A kernel's published cache entry and what it was made from."""

    inspection: object  # jitkernels.inspection.Inspection, completed (module name, digest)
    config: object  # the parsed build.toml (jitkernels.buildconfig.BuildConfig), None for payload-only kernels
    entry: Path


def prepare_kernel(provider, name: str, *, revision=None, version=None, backend=None,
                   trust_remote_code=False) -> Prepared:
    """Fetch, plan and prepare (compile) ``name`` from a provider (or ``LOCAL_KERNELS``) into the cache."""
    from .pipeline import _backend, _snapshot_for, revision_for
    from .providers import get_provider

    prov = get_provider(provider)
    ref = prov.parse_name(name)
    snapshot = _snapshot_for(prov, ref, revision_for(revision, version), trust_remote_code)
    return _prepare_snapshot(snapshot, name, _backend(backend))


def prepare_local(path, *, backend=None, name: str | None = None) -> Prepared:
    """The same for a local folder (a source tree, a repo with ``build/``, or one variant)."""
    from .pipeline import _backend
    from .providers import KernelProvider
    from .providers.base import KernelRef
    from .sources import LocalSnapshot

    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidKernelNameError(f"{folder} is not a folder.")
    ref = KernelRef(KernelProvider.HF_KERNELS.value, f"local/{(name or folder.name).replace('_', '-')}")
    return _prepare_snapshot(LocalSnapshot(ref, folder), name or folder.name, _backend(backend))


def _prepare_snapshot(snapshot, name: str, backend: str) -> Prepared:
    from .pipeline import prepare_snapshot

    inspection, entry, plan = prepare_snapshot(snapshot, name, backend)
    return Prepared(inspection, plan.config, entry)
