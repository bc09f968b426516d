"""JitKernels: load Hugging Face Hub compute kernels JIT-first.

Python/Triton kernels are imported from source; native kernels with a
``build.toml`` are compiled here on first use and cached. ``import jitkernels``
is cheap: everything heavy (torch, huggingface_hub, cpp_extension, wrapt) is
imported on first use.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"  # config.VERSION too (a test checks they agree)

__all__ = [
    "KernelProvider",
    "load",
    "has",
    "inspect",
    "load_local",
    "inspect_local",
    "warmup",
    "function",
    "JitKernelsError",
    "__version__",
]


class _HubBootstrap:
    """Last on ``sys.meta_path``: makes ``jitkernels.hub.<alias>`` importable from any thread.

    The real finder (:class:`jitkernels.hub.HubFinder`) is installed when the package
    ``jitkernels.hub`` has run, but another thread can see that package in ``sys.modules``
    while it still runs, and would then find no finder for ``jitkernels.hub.hf``, nor (while
    ``jitkernels.hub.hf`` waits for it, in ``sys.modules`` too) for ``jitkernels.hub.hf.<kernel>``.
    A finder must not wait (the import system calls it under its global lock), so this one
    answers those two depths with a loader that waits (under the module locks) for the parent
    and hands over to the real finder. Deeper names are a kernel's submodules: their parent is
    a kernel, whose own import may be waiting for them. Every other name costs one
    ``str.startswith``, and only for names no other finder found.
    """

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if not fullname.startswith("jitkernels.hub.") or fullname.count(".") not in (2, 3):
            return None
        hub = sys.modules.get("jitkernels.hub")
        if hub is not None and not getattr(getattr(hub, "__spec__", None), "_initializing", False):
            return None  # jitkernels.hub has run: its finder answers, unless uninstalled on purpose
        import importlib.machinery

        return importlib.machinery.ModuleSpec(fullname, _HubBootstrap, is_package=True)

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        import importlib

        importlib.import_module(module.__name__.rpartition(".")[0])  # waits for a concurrent import of it to finish
        real = sys.modules["jitkernels.hub"].HubFinder.find_spec(module.__name__)
        if real is None:
            raise ModuleNotFoundError(f"No module named {module.__name__!r}", name=module.__name__)
        module.__spec__, module.__loader__ = real, real.loader
        real._initializing = True  # as the import system marks a spec: other threads wait for this module
        try:
            real.loader.exec_module(module)
        finally:
            real._initializing = False


if _HubBootstrap.__qualname__ not in {getattr(f, "__qualname__", None) for f in sys.meta_path}:
    sys.meta_path.append(_HubBootstrap)


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


def load(provider, name: str, *, revision: str | None = None, version: int | None = None,
         backend: str | None = None, trust_remote_code: bool | list[str] = False,
         alias: str | bool | None = None):
    """Load kernel ``name`` of ``provider`` and return its Python module.

    ``revision`` is a branch, tag or commit; ``version=N`` means the newest
    commit of branch ``vN``; ``backend`` defaults to this machine's
    (``cuda`` if a GPU is visible, else ``cpu``). Python kernels are imported
    from source, native ones compiled on first use and cached.

    ``alias="flash_attn2"`` (or ``True``: the kernel's own package name) also makes it
    importable by that name, submodules included, as the same module objects
    (``from flash_attn2.flash_attn_interface import ...``): what a kernel's test suite does.
    """
    from . import warm  # a prepared kernel that needs no resolution: one index read, one import

    module = warm.try_load(provider, name, revision, backend, trust_remote_code=trust_remote_code, version=version)
    if module is None:
        from .pipeline import load_kernel

        module = load_kernel(provider, name, revision=revision, version=version, backend=backend,
                             trust_remote_code=trust_remote_code)
    return _aliased(module, alias)


def _aliased(module, alias):
    if alias is None or alias is False:
        return module
    from .importer import alias as make_alias

    if alias is True:  # the kernel's own package name: the folder its __init__.py is in
        from pathlib import Path

        alias = Path(module.__file__).parent.name
    return make_alias(module, alias)


def function(provider, name: str, function: str, *, fallback=None, revision: str | None = None,
             version: int | None = None, backend: str | None = None, trust_remote_code: bool | list[str] = False,
             cold_start: str | None = None):
    """The function ``function`` of kernel ``name``; with ``cold_start="background"``, never waiting for a build.

    ``cold_start="block"`` (the default, or ``JITKERNELS_COLD_START`` when None): the kernel is
    loaded as :func:`load` does (building it if needed) and its function returned.
    ``"background"``: a native kernel in neither the local nor the remote cache is built in
    another process, and a callable is returned at once that runs ``fallback`` (required:
    the same signature, e.g. the PyTorch code the kernel replaces) until the build is
    published, then the kernel's function (see :mod:`jitkernels.coldstart`).
    """
    from . import coldstart
    from .errors import ColdStartError, KernelNotFoundError

    mode = coldstart.mode(cold_start)

    def resolve():
        module = load(provider, name, revision=revision, version=version, backend=backend,
                      trust_remote_code=trust_remote_code)
        found = getattr(module, function, None)
        if not callable(found):
            raise KernelNotFoundError(f"Kernel {name} has no function {function!r} "
                                      f"(it has: {', '.join(n for n in dir(module) if not n.startswith('_'))}).")
        return found

    if mode == coldstart.BLOCK:
        return resolve()
    if not callable(fallback):
        raise ColdStartError(f"jitkernels.function({name!r}, {function!r}, cold_start='background') needs "
                             f"fallback=<the code to run until the kernel is built>.")
    found, build = coldstart.load_or_defer(resolve)
    if build is None:
        return found
    return coldstart.SwitchingFunction(f"{name}.{function}", fallback, build, resolve)


def has(provider, name: str, *, revision: str | None = None, version: int | None = None,
        backend: str | None = None, trust_remote_code: bool | list[str] = False) -> bool:
    """True if the kernel exists and can be loaded for the backend; never raises for "not there" or a network failure.

    A binary-only kernel whose source an untrusted publisher names outside the Hub is False unless
    ``trust_remote_code`` grants trust: that source is not fetched before.
    """
    from .pipeline import has_kernel

    return has_kernel(provider, name, revision=revision, version=version, backend=backend,
                      trust_remote_code=trust_remote_code)


def inspect(provider, name: str, *, revision: str | None = None, version: int | None = None,
            backend: str | None = None, trust_remote_code: bool | list[str] = False):
    """What JitKernels would do with the kernel (strategy, reason, extension name...), without building.

    Nothing is fetched from a URL an untrusted publisher chose (a binary-only kernel's git ``source``)
    unless ``trust_remote_code`` grants trust; the inspection then says ``untrusted-source``.
    """
    from .pipeline import inspect_kernel

    return inspect_kernel(provider, name, revision=revision, version=version, backend=backend,
                          trust_remote_code=trust_remote_code)


def load_local(path, *, backend: str | None = None, name: str | None = None, alias: str | bool | None = None):
    """Load a kernel from a local source tree, a folder with ``build/``, or one build variant
    (``alias``: as for :func:`load`)."""
    from . import warm  # unchanged since it was prepared: one stat per file, one import

    module = warm.try_load_local(str(path), backend) if isinstance(path, str) or hasattr(path, "__fspath__") else None
    if module is None:
        from .pipeline import load_local_path

        module = load_local_path(path, backend=backend, name=name)
    return _aliased(module, alias)


def inspect_local(path, *, backend: str | None = None, name: str | None = None):
    """Like :func:`inspect` for a local folder."""
    from .pipeline import inspect_local_path

    return inspect_local_path(path, backend=backend, name=name)


def warmup(provider, names, *, revision: str | None = None, version: int | None = None,
           backend: str | None = None, jobs: int | None = None):
    """Fetch and prepare (build) several kernels ahead of time, ``jobs`` at once (as ``jitkernels warmup``).

    Returns their inspections; the first failure is raised once all have run.
    """
    from . import batch
    from .pipeline import inspect_kernel

    targets = [batch.Target(n, revision=revision, version=version, backend=backend) for n in names]
    outcomes = batch.run(provider, targets, jobs=jobs)
    failed = next((o for o in outcomes if not o.ok), None)
    if failed is not None:
        raise failed.exception
    return [inspect_kernel(provider, n, revision=revision, version=version, backend=backend) for n in names]


# -- the import hook's pins and patch()/unpatch() of the upstream ``kernels`` package ---------------

__all__ += ["patch", "unpatch", "pin"]


def patch(provider="hf_kernels", *, fallback: str | None = None, cold_start: str | None = None):
    """Redirect the upstream ``kernels`` package (``get_kernel``, ``kernelize``...) to JitKernels.

    Idempotent and thread safe; works before or after ``import kernels``;
    usable as ``with jitkernels.patch(): ...`` and ``@jitkernels.patch()``.
    ``fallback="upstream"`` (or ``JITKERNELS_FALLBACK=upstream``) hands kernels
    JitKernels cannot build to upstream's binary loader. ``cold_start="background"``
    (or ``JITKERNELS_COLD_START=background``): kernelized layers run their own forward
    while a cold native kernel builds in another process, then switch (see
    :mod:`jitkernels.coldstart`). See :mod:`jitkernels.upstream.patching`.
    """
    from .upstream.patching import patch as _patch

    return _patch(provider, fallback=fallback, cold_start=cold_start)


def unpatch() -> None:
    """Undo :func:`patch`: the exact upstream function objects are put back."""
    from .upstream.patching import unpatch as _unpatch

    _unpatch()


def pin(provider, name: str, *, revision: str | None = None, version: int | None = None,
        backend: str | None = None, trust_remote_code: bool = False):
    """Pin what ``import jitkernels.hub.<provider>.<name>`` resolves to (see :mod:`jitkernels.hub`)."""
    from .hub import pin as _pin

    return _pin(provider, name, revision=revision, version=version, backend=backend,
                trust_remote_code=trust_remote_code)
