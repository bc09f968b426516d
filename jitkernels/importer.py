"""A kernel's package folder -> a Python module, once per process whatever name it is asked by.

Stdlib only: the warm path's last step.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

#: package ``__init__.py`` -> the module made from it: one entry is one module, whatever name it was asked by.
_BY_PACKAGE: dict[str, ModuleType] = {}


def _drop(module_name: str) -> None:
    for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
        del sys.modules[name]


def import_package(module_name: str, package_dir: Path, what: str) -> ModuleType:
    """Import ``package_dir`` (a folder with ``__init__.py``) as ``module_name``; reuse it if already imported.

    A package already imported from the same entry under another name (another alias of the
    import hook, or ``jitkernels.load``) is that same module.
    """
    from .errors import KernelImportError

    init = package_dir / "__init__.py"
    known = _BY_PACKAGE.get(str(init))
    if known is not None and sys.modules.get(known.__name__) is known:
        return known
    existing = sys.modules.get(module_name)
    if existing is not None and getattr(existing, "__file__", None) == str(init):
        return existing
    if existing is not None and any(package_dir.glob(module_name + ".*so")):
        # A native library registers torch.ops.<module_name> once per process; a second
        # build of the same extension cannot be loaded next to the first.
        raise KernelImportError(
            f"{what}: {module_name} is already loaded in this process from "
            f"{getattr(existing, '__file__', '?')}; another build of it ({package_dir}) cannot be loaded "
            f"next to it (its torch ops are registered once per process). Restart the process to switch."
        )
    if existing is not None:  # another package under this name: drop it and its submodules
        _drop(module_name)
    spec = importlib.util.spec_from_file_location(module_name, init, submodule_search_locations=[str(package_dir)])
    if spec is None or spec.loader is None:  # pragma: no cover - only for a missing file
        raise KernelImportError(f"{what}: cannot import {init} (missing __init__.py?).")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        _drop(module_name)
        if isinstance(exc, ImportError):
            missing = getattr(exc, "name", None)
            hint = f" The kernel needs the Python package {missing!r}: pip install it." if missing else ""
            raise KernelImportError(f"{what}: importing the kernel's package failed: {exc}.{hint}") from exc
        if isinstance(exc, Exception):
            raise KernelImportError(f"{what}: the kernel's package raised while importing: {exc!r}") from exc
        raise
    _BY_PACKAGE[str(init)] = module
    return module
