"""JitKernels: load Hugging Face Hub compute kernels JIT-first.

Python/Triton kernels are imported from source; native kernels with a
``build.toml`` are compiled here on first use and cached. ``import jitkernels``
is cheap: everything heavy (torch, huggingface_hub, cpp_extension, wrapt) is
imported on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "KernelProvider",
    "load",
    "has",
    "inspect",
    "load_local",
    "inspect_local",
    "warmup",
    "JitKernelsError",
    "__version__",
]


def __getattr__(name: str):
    # Resolved lazily (PEP 562) so the warm path imports neither the registry nor the errors.
    if name == "KernelProvider":
        from .providers import KernelProvider

        return KernelProvider
    if name.endswith("Error"):
        from . import errors

        if hasattr(errors, name):
            return getattr(errors, name)
    raise AttributeError(f"module 'jitkernels' has no attribute {name!r}")


def _locked_env() -> bool:
    import os

    return bool(os.environ.get("JITKERNELS_LOCKFILE"))


def load(provider, name: str, *, revision: str | None = None, version: int | None = None,
         backend: str | None = None, trust_remote_code: bool | list[str] = False):
    """Load kernel ``name`` of ``provider`` and return its Python module.

    ``revision`` is a branch, tag or commit; ``version=N`` means the newest
    commit of branch ``vN``; ``backend`` defaults to this machine's
    (``cuda`` if a GPU is visible, else ``cpu``). Python kernels are imported
    from source, native ones compiled on first use and cached.
    """
    if version is None and isinstance(revision, str) and len(revision) in (40, 64) and not _locked_env():
        from .warm import try_load  # a pinned, prepared kernel: one index read, one import

        module = try_load(provider, name, revision, backend)
        if module is not None:
            return module
    from .pipeline import load_kernel

    return load_kernel(provider, name, revision=revision, version=version, backend=backend,
                       trust_remote_code=trust_remote_code)


def has(provider, name: str, *, revision: str | None = None, version: int | None = None,
        backend: str | None = None) -> bool:
    """True if the kernel exists and can be loaded for the backend; never raises for "not there"."""
    from .pipeline import has_kernel

    return has_kernel(provider, name, revision=revision, version=version, backend=backend)


def inspect(provider, name: str, *, revision: str | None = None, version: int | None = None,
            backend: str | None = None):
    """What JitKernels would do with the kernel (strategy, reason, extension name...), without building."""
    from .pipeline import inspect_kernel

    return inspect_kernel(provider, name, revision=revision, version=version, backend=backend)


def load_local(path, *, backend: str | None = None, name: str | None = None):
    """Load a kernel from a local source tree, a folder with ``build/``, or one build variant."""
    from .pipeline import load_local_path

    return load_local_path(path, backend=backend, name=name)


def inspect_local(path, *, backend: str | None = None, name: str | None = None):
    """Like :func:`inspect` for a local folder."""
    from .pipeline import inspect_local_path

    return inspect_local_path(path, backend=backend, name=name)


def warmup(provider, names, *, revision: str | None = None, version: int | None = None,
           backend: str | None = None, progress=None):
    """Fetch and prepare (build) several kernels ahead of time; returns their inspections."""
    from .pipeline import warmup_kernels

    return warmup_kernels(provider, names, revision=revision, version=version, backend=backend,
                          progress=progress)


# -- issue 4: import hook pins, patch()/unpatch() of the upstream ``kernels`` package -------------

__all__ += ["patch", "unpatch", "pin"]


def patch(provider="hf_kernels"):
    """Redirect the upstream ``kernels`` package (``get_kernel``, ``kernelize``...) to JitKernels.

    Idempotent and thread safe; works before or after ``import kernels``;
    usable as ``with jitkernels.patch(): ...`` and ``@jitkernels.patch()``.
    See :mod:`jitkernels.patching`.
    """
    from .patching import patch as _patch

    return _patch(provider)


def unpatch() -> None:
    """Undo :func:`patch`: the exact upstream function objects are put back."""
    from .patching import unpatch as _unpatch

    _unpatch()


def pin(provider, name: str, *, revision: str | None = None, version: int | None = None,
        backend: str | None = None, trust_remote_code: bool = False):
    """Pin what ``import jitkernels.hub.<provider>.<name>`` resolves to (see :mod:`jitkernels.hub`)."""
    from .hub import pin as _pin

    return _pin(provider, name, revision=revision, version=version, backend=backend,
                trust_remote_code=trust_remote_code)
