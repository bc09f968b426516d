"""Import kernels as Python modules: ``from jitkernels.hub.hf import triton_layer_norm``.

Import forms
------------
``jitkernels.hub.<provider>.<kernel>`` for every provider alias that is a
Python identifier (``hf``, ``hf_kernels``, ``huggingface``)::

    from jitkernels.hub.hf import triton_layer_norm
    import jitkernels.hub.hf_kernels.activation as act
    from jitkernels.hub.hf.triton_layer_norm.layers import LayerNorm   # submodules too

``<kernel>`` is a kernel name as :func:`jitkernels.load` takes it, spelled as
an identifier: ``triton_layer_norm`` is ``kernels-community/triton-layer-norm``
(underscores become hyphens, the organisation is ``JITKERNELS_HF_ORG``); a
double underscore separates another organisation: ``jitkernels_examples__rms_norm``
is ``jitkernels-examples/rms-norm``.

The module *is* the kernel's own package, resolved, fetched and prepared (or
built) by the same pipeline as :func:`jitkernels.load`, imported from the
JitKernels cache directly under its hub name (``jitkernels.hub.hf.<kernel>``)
with the standard source loader: ``importlib.reload``, ``inspect.getsource``,
tracebacks (real files in the cache) and pickling by reference (a function's
``__module__`` is ``jitkernels.hub.hf.<kernel>...``, importable again in a
fresh process) behave as for any package. The same kernel imported through
another alias, or already loaded by ``jitkernels.load``, is the *same* module
object (registered under the second name too; its ``__name__`` stays the
first name, which is what pickles refer to).

``jitkernels.hub`` and ``jitkernels.hub.<alias>`` list nothing eagerly
(``dir()`` shows only kernels already imported) and never touch the network;
only importing (or reading the attribute of) a kernel does. A missing,
unsupported or (offline) uncached kernel raises :class:`KernelModuleNotFoundError`,
a ``ModuleNotFoundError`` carrying ``reason`` (the inspection's reason, e.g.
``missing-source``, or ``not-found`` / ``revision-not-found`` / ``offline`` /
``invalid-name``) and ``inspection`` when there is one, so::

    try:
        from jitkernels.hub.hf import activation
    except ImportError:
        activation = None

behaves. Build failures, network errors and errors raised by the kernel's
own code propagate unchanged.

The finder
----------
A :pep:`451` meta-path finder installed first on ``sys.meta_path`` by
``import jitkernels.hub`` (which every ``jitkernels.hub.*`` import goes
through first). ``import jitkernels`` only appends a bootstrap finder (see
``jitkernels._HubBootstrap``) that serves a thread which sees
``jitkernels.hub`` half-imported by another thread. The finder claims only ``jitkernels.hub.<alias>`` and
``jitkernels.hub.<alias>.<kernel>`` (and submodules reached through a
second alias); for every other name it returns ``None`` after one
``str.startswith`` (see ``benchmarks/bench_import_hook.py``). Importing
torch/huggingface_hub happens only when a kernel is imported.

Revision pinning
----------------
Without a pin, an import resolves like ``jitkernels.load(provider, name)``:
the newest ``vN`` branch, else ``main``. To make imports reproducible:

* ``jitkernels.pin("hf", "triton_layer_norm", revision="<commit>")``
  (or ``revision="main"``, ``version=1``; also ``backend=``,
  ``trust_remote_code=``) before the import; ``jitkernels.hub.unpin`` removes it.
* ``JITKERNELS_PINS=/path/jitkernels.lock.json`` (several files separated
  by ``os.pathsep``; earlier files win; :func:`pin` wins over files). A file is either

  - the upstream ``kernels`` lock (``kernels lock`` writes it), pinning each
    ``repo-id`` to its locked ``commit``::

        [{"dependency": {"repo-id": "kernels-community/activation", "version": 1},
          "lock": {"commit": "0123456789abcdef0123456789abcdef01234567"}}]

  - or a JitKernels pin file (:func:`write_pins` writes the current pins)::

        {"version": 1, "pins": [
          {"provider": "hf_kernels", "name": "kernels-community/triton-layer-norm",
           "revision": "0123456789abcdef0123456789abcdef01234567"},
          {"provider": "hf", "name": "rms-norm", "version": 1, "backend": "cpu"}]}

Pins are keyed by provider and repository (``"hf", "triton_layer_norm"`` and
``"hf_kernels", "kernels-community/triton-layer-norm"`` are one key). They
apply to imports made after they are set; ``importlib.reload(module)``
resolves again with the current pin (a different commit gives a new module
object under the same name). A pinned commit that is already prepared loads
from the cache without huggingface_hub or the network.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import time
import weakref
from types import ModuleType

from ..errors import JitKernelsError
from ._pins import PINS_ENV, Pin

PREFIX = __name__ + "."  # "jitkernels.hub."

__all__ = [
    "KernelModuleNotFoundError",
    "HubFinder",
    "PINS_ENV",
    "Pin",
    "pin",
    "unpin",
    "pins",
    "clear_pins",
    "write_pins",
    "install",
    "uninstall",
    "module_name_for",
]


class KernelModuleNotFoundError(ModuleNotFoundError, JitKernelsError):
    """``jitkernels.hub.<alias>.<kernel>`` cannot be imported: the kernel is missing or unsupported.

    ``reason`` is the inspection's reason (``missing-source``, ``no-backend``...)
    or one of ``not-found``, ``revision-not-found``, ``offline``, ``invalid-name``, or ``interrupted``
    (a submodule import that waited for its kernel's import in another thread, which was interrupted);
    ``inspection`` is the full :class:`~jitkernels.plan.inspection.Inspection` when one was made.
    """

    def __init__(self, message: str, *, name: str | None = None, reason: str | None = None,
                 inspection=None, kernel: str | None = None, provider: str | None = None):
        super().__init__(message, name=name)
        self.reason = reason
        self.inspection = inspection
        self.kernel = kernel
        self.provider = provider


# -- names ------------------------------------------------------------------------

def _provider_for_alias(alias: str) -> str | None:
    if not alias.isidentifier() or alias.startswith("_"):
        return None
    from ..providers import known_aliases

    return known_aliases().get(alias)


def kernel_name(identifier: str) -> str:
    """``triton_layer_norm`` -> ``triton-layer-norm``; ``org_name__kernel_x`` -> ``org-name/kernel-x``.

    Hyphens throughout: kernel-builder names never contain ``_``, and the
    spelling ``jitkernels.load`` callers use keeps one module per kernel.
    """
    if "__" in identifier:
        org, short = identifier.split("__", 1)
        return f"{org.replace('_', '-')}/{short.replace('_', '-')}"
    return identifier.replace("_", "-")


def module_name_for(provider: str, name: str) -> str:
    """The hub module name of a kernel: ``("hf", "jitkernels-examples/rms-norm")`` -> ``jitkernels.hub.hf.jitkernels_examples__rms_norm``."""
    ident = name.replace("-", "_").replace("/", "__")
    if not ident.isidentifier():
        raise ValueError(f"{name!r} cannot be spelled as a module name.")
    if _provider_for_alias(provider) is None:
        raise ValueError(f"{provider!r} is not a provider alias usable in a module name.")
    return f"{PREFIX}{provider}.{ident}"


# -- loaders ------------------------------------------------------------------------

class _ProviderPackageLoader(importlib.abc.Loader):
    """``jitkernels.hub.<alias>``: an empty package whose attributes import kernels on first access."""

    def __init__(self, provider: str):
        self.provider = provider

    def create_module(self, spec):
        return None

    def exec_module(self, module: ModuleType) -> None:
        package = module.__name__
        module.__path__ = []  # a package, but nothing on disk: kernels come from the finder
        module.__all__ = []  # "from jitkernels.hub.hf import *" imports nothing eagerly
        module.__doc__ = (f"Kernels of provider {self.provider!r}: `from {package} import <kernel>` "
                          f"(see jitkernels.hub). Lists nothing until imported.")

        def __getattr__(attr: str):
            # PEP 562: ``from jitkernels.hub.hf import x`` checks hasattr() first; importing here
            # lets a missing kernel's KernelModuleNotFoundError (and its reason) reach the user.
            if attr.startswith("_") or not attr.isidentifier():
                raise AttributeError(f"module {package!r} has no attribute {attr!r}")
            return importlib.import_module(f"{package}.{attr}")

        def __dir__():
            prefix = package + "."
            return sorted(n[len(prefix):] for n in list(sys.modules)
                          if n.startswith(prefix) and "." not in n[len(prefix):])

        module.__getattr__ = __getattr__
        module.__dir__ = __dir__


class _AliasLoader(importlib.abc.Loader):
    """A name that is another name: the module registered under both (never executed twice)."""

    def __init__(self, real_name: str):
        self.real_name = real_name

    def create_module(self, spec):
        return None

    def exec_module(self, module: ModuleType) -> None:
        real = importlib.import_module(self.real_name)
        sys.modules[module.__spec__.name] = real  # the import system returns what sys.modules holds


#: a kernel's module whose import failed -> its error, for the threads that waited for it (_AfterParentLoader)
_FAILED_IMPORTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _being_found(module) -> bool:
    """A kernel's module whose import (``_KernelLoader``, or the bootstrap's) has not located its package yet."""
    spec = getattr(module, "__spec__", None)
    return (module is not None and getattr(module, "__file__", None) is None and getattr(spec, "_initializing", False)
            and (isinstance(spec.loader, _KernelLoader) or getattr(spec.loader, "__qualname__", None) == "_HubBootstrap"))


class _AfterParentLoader(importlib.abc.Loader):
    """``<kernel>.<sub>`` while another thread's import of ``<kernel>`` is still finding it (resolving,
    building): wait until that import has located the package (or ended), then load ``<sub>`` as the
    import system does for a package being initialised. The wait holds only ``<kernel>.<sub>``'s
    module lock, which the kernel's import takes only once located (its ``__init__`` importing
    ``<sub>``); waiting for ``<kernel>``'s module lock instead would be importlib's ``_DeadlockError``.

    The wait is in :meth:`create_module`, before the import system puts a module in ``sys.modules``:
    the module it puts there is then the submodule's own, made by its own loader (a package has its
    ``__path__``, an extension module is initialised), and the kernel's ``from .<sub> import x``,
    waiting on the same lock, reads that very object.
    """

    def __init__(self, parent: ModuleType):
        self.parent = parent
        self.found = None  # the submodule's own spec, once the kernel is located
        self.alias = None  # its name under the kernel's real name, when the kernel is a module of another name

    def create_module(self, spec):
        fullname = spec.name
        parent_name, _, child = fullname.rpartition(".")
        parent, delay = self.parent, 0.001
        while True:  # another thread's retry puts a new module there: wait for that one too
            current = sys.modules.get(parent_name)
            if current is not None and getattr(current, "__file__", None) is not None:
                parent = current
                break
            if not _being_found(current):
                raise self._failed(fullname, parent)
            parent = current
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        if parent.__name__ != parent_name:
            self.alias = f"{parent.__name__}.{child}"
            return None
        self.found = importlib.machinery.PathFinder.find_spec(fullname, parent.__path__)
        if self.found is None:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return importlib.util.module_from_spec(self.found)

    def exec_module(self, module: ModuleType) -> None:
        if self.alias is not None:  # never execute a file twice: the module under the kernel's real name
            sys.modules[module.__spec__.name] = importlib.import_module(self.alias)
            return
        found = self.found
        found._initializing = True  # set first: other threads read it to wait for this import (as importlib does)
        module.__spec__ = found  # the import system set ours; the module's own loader runs it
        try:
            found.loader.exec_module(module)
        finally:
            found._initializing = False

    @staticmethod
    def _failed(fullname: str, parent: ModuleType) -> BaseException:
        """The error for ``<kernel>.<sub>`` when the kernel's import, in another thread, failed."""
        error = _FAILED_IMPORTS.get(parent)
        if isinstance(error, Exception) and not isinstance(error, KernelModuleNotFoundError):
            return error  # the same error the kernel's import raised (a network error stays one)
        loader = getattr(getattr(parent, "__spec__", None), "loader", None)
        failure = KernelModuleNotFoundError(
            f"No kernel module named {fullname!r}: the import of its kernel in another thread failed"
            + (f": {str(error) or type(error).__name__}" if error is not None else ""),
            name=fullname, reason=getattr(error, "reason", None) or ("interrupted" if error is not None else None),
            inspection=getattr(error, "inspection", None),
            kernel=getattr(loader, "name", None), provider=getattr(loader, "provider", None))
        failure.__cause__ = error
        return failure


_ERRORS_AS_NOT_FOUND = None


def _not_found_types():
    global _ERRORS_AS_NOT_FOUND
    if _ERRORS_AS_NOT_FOUND is None:
        from ..errors import (
            InvalidKernelNameError,
            KernelNotFoundError,
            OfflineError,
            RevisionNotFoundError,
            UnsupportedKernelError,
        )

        _ERRORS_AS_NOT_FOUND = (
            (UnsupportedKernelError, None),
            (RevisionNotFoundError, "revision-not-found"),
            (KernelNotFoundError, "not-found"),
            (OfflineError, "offline"),
            (InvalidKernelNameError, "invalid-name"),
        )
    return _ERRORS_AS_NOT_FOUND


class _KernelLoader(importlib.abc.Loader):
    """``jitkernels.hub.<alias>.<kernel>``: load through the pipeline under this very name."""

    def __init__(self, provider: str, identifier: str):
        self.provider = provider
        self.identifier = identifier
        self.name = kernel_name(identifier)

    def create_module(self, spec):
        return None

    def _load(self, fullname: str) -> ModuleType:
        from . import _pins

        chosen = None
        try:
            chosen = _pins.lookup(self.provider, self.name)
            kwargs = chosen.load_kwargs() if chosen is not None else {}
            module = _warm(self.provider, self.name, fullname, kwargs)
            if module is not None:
                return module
            from .. import pipeline

            return pipeline.load_kernel(self.provider, self.name, module_name=fullname, **kwargs)
        except Exception as exc:
            for kind, reason in _not_found_types():
                if isinstance(exc, kind):
                    inspection = getattr(exc, "inspection", None)
                    if reason is None:
                        reason = getattr(inspection, "reason", None) or "unsupported"
                    where = f" ({_describe(chosen)})" if chosen is not None else ""
                    raise KernelModuleNotFoundError(
                        f"No kernel module named {fullname!r}: {exc}{where}",
                        name=fullname, reason=reason, inspection=inspection,
                        kernel=self.name, provider=self.provider,
                    ) from exc
            raise

    def exec_module(self, module: ModuleType) -> None:
        fullname = module.__spec__.name
        reloading = sys.modules.get(fullname) is module and getattr(module, "__file__", None)
        # On reload, set the package's submodules aside: if the pin now gives another commit, the new
        # package must import its own submodules, not find the old ones in sys.modules.
        prefix = fullname + "."
        aside = {n: sys.modules.pop(n) for n in [n for n in list(sys.modules) if n.startswith(prefix)]} if reloading else {}
        try:
            loaded = self._load(fullname)
        except BaseException as exc:
            sys.modules.update(aside)
            _FAILED_IMPORTS[module] = exc  # for a thread whose submodule import waited for this one
            raise
        if loaded is module:
            sys.modules.update(aside)  # same package: a normal reload keeps its submodules
        if loaded is module and reloading:
            # importlib.reload of an unchanged kernel: run its package code again, as for any package.
            spec = importlib.util.spec_from_file_location(  # (importlib.reload set __path__ from our spec: [])
                loaded.__name__, module.__file__, submodule_search_locations=[os.path.dirname(module.__file__)])
            # importlib set __spec__/__loader__/__package__ from our spec: back to the package's own
            module.__spec__, module.__loader__ = spec, spec.loader
            module.__package__ = spec.name
            module.__path__ = spec.submodule_search_locations
            spec.loader.exec_module(module)
            return
        sys.modules[fullname] = loaded  # already there when imported under this name; an alias otherwise


def _warm(provider: str, name: str, fullname: str, kwargs: dict):
    """The warm path (:func:`jitkernels.warm.try_load`) for an import."""
    from .. import warm

    return warm.try_load(provider, name, kwargs.get("revision"), kwargs.get("backend"), module_name=fullname,
                         trust_remote_code=kwargs.get("trust_remote_code", False), version=kwargs.get("version"))


def _describe(p: Pin) -> str:
    what = f"revision={p.revision!r}" if p.revision is not None else f"version={p.version!r}"
    return f"pinned to {what} by {p.source}"


# -- the finder -------------------------------------------------------------------------

class HubFinder:
    """Meta-path finder for ``jitkernels.hub.<alias>[.<kernel>]``; ``None`` for every other name."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if not fullname.startswith(PREFIX):
            return None
        parts = fullname[len(PREFIX):].split(".")
        provider = _provider_for_alias(parts[0])
        if provider is None:
            return None
        if len(parts) == 1:
            return importlib.machinery.ModuleSpec(fullname, _ProviderPackageLoader(provider), is_package=True)
        if len(parts) == 2:
            if not parts[1].isidentifier() or parts[1].startswith("_"):
                return None
            # A package from the start: another thread importing a submodule meanwhile finds a package
            # (whose submodules are served below), never "not a package".
            return importlib.machinery.ModuleSpec(fullname, _KernelLoader(provider, parts[1]), is_package=True)
        # A submodule: the normal path finder handles it through the parent's __path__, unless the
        # parent is an alias of a kernel imported under another name (never execute a file twice),
        # or is still being found by another thread's import (its __path__ is not known yet).
        parent = sys.modules.get(fullname.rpartition(".")[0])
        real_parent = getattr(parent, "__name__", None)
        if len(parts) == 3 and real_parent == fullname.rpartition(".")[0] and _being_found(parent):
            return importlib.machinery.ModuleSpec(fullname, _AfterParentLoader(parent))
        if parent is None or real_parent == fullname.rpartition(".")[0]:
            return None
        return importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(f"{real_parent}.{fullname.rpartition('.')[2]}"))

    @classmethod
    def invalidate_caches(cls) -> None:
        pass


_INSTALL_LOCK = threading.Lock()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (done by ``import jitkernels.hub``; idempotent)."""
    with _INSTALL_LOCK:
        if HubFinder not in sys.meta_path:
            sys.meta_path.insert(0, HubFinder)


def uninstall() -> None:
    """Remove the finder (kernels already imported stay in ``sys.modules``)."""
    with _INSTALL_LOCK:
        while HubFinder in sys.meta_path:
            sys.meta_path.remove(HubFinder)


# -- pinning API ------------------------------------------------------------------------

def pin(provider, name: str, *, revision: str | None = None, version: int | None = None,
        backend: str | None = None, trust_remote_code: bool = False) -> Pin:
    """Pin what ``import jitkernels.hub.<provider>.<name>`` resolves to (exactly one of revision/version)."""
    from . import _pins

    return _pins.pin(provider, name, revision=revision, version=version, backend=backend,
                     trust_remote_code=trust_remote_code)


def unpin(provider, name: str) -> Pin | None:
    """Remove a :func:`pin` (file pins from ``JITKERNELS_PINS`` stay)."""
    from . import _pins

    return _pins.unpin(provider, name)


def pins() -> dict:
    """The pins made with :func:`pin` in this process, keyed ``(provider, repo_id)``."""
    from . import _pins

    return _pins.explicit()


def clear_pins() -> None:
    from . import _pins

    _pins.clear()


def write_pins(path) -> "object":
    """Write the current :func:`pin` pins as a JitKernels pin file (use with ``JITKERNELS_PINS``)."""
    from . import _pins

    return _pins.write(path)


install()
