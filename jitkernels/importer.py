"""Import a prepared kernel package from the cache with Python's normal machinery.

The package is imported under a module name unique to the kernel, backend and
content digest (``_<python_name>_<backend>_<digest>``), so two kernels, or two
revisions of one kernel, never collide; relative imports and ``_ops.py`` work
because the package gets a real ``__path__``. Importing the same entry twice
returns the same module object.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .errors import KernelImportError


def import_package(module_name: str, package_dir: Path, what: str) -> ModuleType:
    """Import ``package_dir`` (a folder with ``__init__.py``) as ``module_name``; reuse it if already imported."""
    init = package_dir / "__init__.py"
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
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        module_name, init, submodule_search_locations=[str(package_dir)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - only for a missing file
        raise KernelImportError(f"{what}: cannot import {init} (missing __init__.py?).")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
        if isinstance(exc, ImportError):
            missing = getattr(exc, "name", None)
            hint = f" The kernel needs the Python package {missing!r}: pip install it." if missing else ""
            raise KernelImportError(f"{what}: importing the kernel's package failed: {exc}.{hint}") from exc
        if isinstance(exc, Exception):
            raise KernelImportError(f"{what}: the kernel's package raised while importing: {exc!r}") from exc
        raise
    return module
