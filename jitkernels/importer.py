"""A kernel's package folder -> a Python module, once per process whatever name it is asked by.

Stdlib only: the warm path's last step. :func:`alias` makes a loaded kernel
importable under its own package name (what its test suite imports).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

#: package ``__init__.py`` -> the module made from it: one entry is one module, whatever name it was asked by.
_BY_PACKAGE: dict[str, ModuleType] = {}
#: package ``__init__.py`` -> the lock its first import holds: threads asking for it by two names wait for one import.
_PACKAGE_LOCKS: dict[str, threading.RLock] = {}
_PACKAGE_LOCKS_GUARD = threading.Lock()


def _package_lock(init: str) -> threading.RLock:
    with _PACKAGE_LOCKS_GUARD:
        return _PACKAGE_LOCKS.setdefault(init, threading.RLock())


def _drop(module_name: str) -> None:
    for name in [n for n in list(sys.modules) if n == module_name or n.startswith(module_name + ".")]:
        sys.modules.pop(name, None)


def _being_imported(module) -> bool:
    """The import system's module for an import of its name in progress, not located yet (the import hook's)."""
    return getattr(module, "__file__", None) is None and getattr(getattr(module, "__spec__", None), "_initializing", False)


def import_package(module_name: str, package_dir: Path, what: str) -> ModuleType:
    """Import ``package_dir`` (a folder with ``__init__.py``) as ``module_name``; reuse it if already imported.

    A package already imported from the same entry under another name (another alias of the
    import hook, or ``jitkernels.load``) is that same module; threads importing one entry at once
    wait for one another. The module the import system put in ``sys.modules[module_name]`` for an
    import of that name in progress (``jitkernels.hub``'s) becomes the package: it is never taken out
    of ``sys.modules`` while that import holds the name's lock (a thread importing a submodule would
    then import the parent itself, holding the submodule's lock: importlib's ``_DeadlockError``).
    """
    init = package_dir / "__init__.py"
    with _package_lock(str(init)):
        return _import_package(module_name, package_dir, init, what)


def _import_package(module_name: str, package_dir: Path, init: Path, what: str) -> ModuleType:
    from .errors import KernelImportError

    known = _BY_PACKAGE.get(str(init))
    if known is not None and sys.modules.get(known.__name__) is known:
        return known
    existing = sys.modules.get(module_name)
    if existing is not None and getattr(existing, "__file__", None) == str(init):
        return existing
    placeholder = existing if _being_imported(existing) else None
    if existing is not None and placeholder is None and any(package_dir.glob(module_name + ".*so")):
        # A native library registers torch.ops.<module_name> once per process; a second
        # build of the same extension cannot be loaded next to the first.
        raise KernelImportError(
            f"{what}: {module_name} is already loaded in this process from "
            f"{getattr(existing, '__file__', '?')}; another build of it ({package_dir}) cannot be loaded "
            f"next to it (its torch ops are registered once per process). Restart the process to switch."
        )
    if existing is not None and placeholder is None:  # another package under this name: drop it and its submodules
        _drop(module_name)
    spec = importlib.util.spec_from_file_location(module_name, init, submodule_search_locations=[str(package_dir)])
    if spec is None or spec.loader is None:  # pragma: no cover - only for a missing file
        raise KernelImportError(f"{what}: cannot import {init} (missing __init__.py?).")
    if placeholder is not None:  # the package is made in it, in place (the import system returns it)
        module = placeholder
        spec._initializing = True  # set first: other threads read it to wait for this import (as importlib does)
        module.__spec__, module.__loader__, module.__package__ = spec, spec.loader, module_name
        # __path__ filled in place: a thread importing a submodule may hold the list it read before (empty);
        # __file__ last: a finder that sees it set (the package located) must also see the path.
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = spec.submodule_search_locations
        else:
            module.__path__ = spec.submodule_search_locations
        module.__cached__, module.__file__ = spec.cached, spec.origin
    else:
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        _drop(module_name)
        if isinstance(exc, ImportError):
            missing = getattr(exc, "name", None)
            outside = missing and missing != module_name and not missing.startswith(module_name + ".")
            hint = f" The kernel needs the Python package {missing!r}: pip install it." if outside else ""
            raise KernelImportError(f"{what}: importing the kernel's package failed: {exc}.{hint}") from exc
        if isinstance(exc, Exception):
            raise KernelImportError(f"{what}: the kernel's package raised while importing: {exc!r}") from exc
        raise
    finally:
        if placeholder is not None:
            spec._initializing = False
    _BY_PACKAGE[str(init)] = module
    return module


# -- a kernel under another name ------------------------------------------------------------------

#: alias (a top-level module name) -> the name the kernel's package was imported under
_ALIASES: dict[str, str] = {}
_ALIAS_LOCK = threading.Lock()


class _AliasLoader(importlib.abc.Loader):
    """``alias.sub``: the kernel's own ``<real name>.sub``, imported once under its real name."""

    def __init__(self, real_name: str):
        self.real_name = real_name

    def create_module(self, spec):
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module: ModuleType) -> None:
        real = importlib.import_module(self.real_name)
        sys.modules[module.__spec__.name] = real  # what the import statement returns


class _AliasFinder:
    """On ``sys.meta_path``: ``<alias>.<anything>`` is the same module under the kernel's real name."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        head, dot, rest = fullname.partition(".")
        real = _ALIASES.get(head) if dot else None
        if real is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(f"{real}.{rest}"))

    @staticmethod
    def invalidate_caches() -> None:
        pass


def alias(module: ModuleType, name: str) -> ModuleType:
    """Make a loaded kernel importable as ``name`` (``import flash_attn2``,
    ``from flash_attn2.flash_attn_interface import ...``), its package and every submodule being
    the very module objects already loaded, never a second execution of their files.

    Binding ``sys.modules[name]`` alone is not enough: ``import name.sub`` would then execute
    ``sub.py`` again under a second name, and a second ``torch.library.custom_op`` definition
    replaces the first (every later call through the first module fails). Submodules already
    imported are registered under ``name`` now; later ones through a finder on ``sys.meta_path``.
    A name that is already another module of this process is refused.
    """
    from .errors import KernelImportError

    real = module.__name__
    if not name.isidentifier():
        raise KernelImportError(f"alias {name!r}: not a Python module name (letters, digits, _).")
    if name == real:
        return module
    with _ALIAS_LOCK:
        existing = sys.modules.get(name)
        if existing is not None and existing is not module:
            where = getattr(existing, "__file__", None) or "built in"
            raise KernelImportError(
                f"alias {name!r}: that name is already a different module in this process ({where}); "
                f"{real} cannot be imported under it too. Use another alias, or a fresh process."
            )
        previous = _ALIASES.get(name)
        if previous is not None and previous != real:  # pragma: no cover - guarded by the check above
            raise KernelImportError(f"alias {name!r} already names {previous}.")
        sys.modules[name] = module
        prefix = real + "."
        for loaded, sub in list(sys.modules.items()):
            if loaded.startswith(prefix) and sub is not None:
                sys.modules.setdefault(name + "." + loaded[len(prefix):], sub)
        _ALIASES[name] = real
        if _AliasFinder not in sys.meta_path:
            sys.meta_path.insert(0, _AliasFinder)
    return module


def aliases() -> dict[str, str]:
    """alias -> the real module name, for every :func:`alias` made in this process."""
    return dict(_ALIASES)
