"""``python-depends``: Python packages a kernel imports, checked before it loads; never installed.

The table is upstream's, transcribed from huggingface/kernels
``kernels-data/src/python_dependencies.json`` (commit 8ac69fc5; the
``kernels`` package ships the same table as ``python_depends.json``): each
name maps, in general or for one backend, to PyPI packages and the module
each provides (``tvm-ffi`` -> ``apache-tvm-ffi`` / ``tvm_ffi``). As upstream,
a name the table does not know is an unsupported dependency, and a package
without a module (``onednn-devel``: native libraries only) is not checked.
"""

from __future__ import annotations

import importlib.util
import sys

from ..errors import MissingPythonDependencyError
from .base import PYTHON_DEPENDS, ResolvedInput, Resolver

#: name -> ((pip package, import name or None), ...); from kernels-data/src/python_dependencies.json.
GENERAL = {
    "einops": (("einops", "einops"),),
    "helion": (("helion", "helion"),),
    "tvm-ffi": (("apache-tvm-ffi", "tvm_ffi"),),
}
BACKENDS = {
    "cpu": {},
    "cuda": {"nvidia-cutlass-dsl": (("nvidia-cutlass-dsl", "cutlass"),)},
    "metal": {},
    "neuron": {"nki": (("nki", "nki"),)},
    "rocm": {},
    "xpu": {"onednn": (("onednn-devel", None),)},
}


def packages(name: str, backend: str):
    """The (pip package, import name) pairs of ``name`` for ``backend``; None if the table does not know it."""
    if name in GENERAL:
        return GENERAL[name]
    return BACKENDS.get(backend, {}).get(name)


def _importable(module: str) -> bool:
    try:
        return module in sys.modules or importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def missing_packages(names, backend: str) -> list[str]:
    """The pip packages of ``names`` whose module cannot be imported here (unknown names are not checked here)."""
    missing = []
    for name in names:
        for package, module in packages(name, backend) or ():
            if module is not None and not _importable(module) and package not in missing:
                missing.append(package)
    return missing


def check(inspection) -> None:
    """Raise :class:`MissingPythonDependencyError` with the exact ``pip install`` line if a package is missing."""
    missing = missing_packages(inspection.python_depends, inspection.backend)
    if missing:
        raise MissingPythonDependencyError(
            f"Kernel {inspection.repo_id} needs Python packages that are not installed: {', '.join(missing)}. "
            f"Install them with: pip install {' '.join(missing)}"
        )


class PythonDependsResolver(Resolver):
    kind = "python-depends"
    declared_in = PYTHON_DEPENDS

    def handles(self, name, backend: str) -> bool:
        return packages(name, backend) is not None

    def describe(self, name, backend: str) -> ResolvedInput:
        pairs = packages(name, backend)
        missing = missing_packages([name], backend)
        versions = [v for v in (_version(p) for p, m in pairs if m) if v]
        if missing:
            return ResolvedInput(name, self.kind, None, "not installed", "missing",
                                 detail=f"pip install {' '.join(missing)}")
        return ResolvedInput(name, self.kind, ", ".join(versions) or None, "installed", "ready",
                             detail=", ".join(p for p, _ in pairs))


RESOLVER = PythonDependsResolver()
