"""What goes into a Python kernel's cache entry, and the pieces native entries share.

Python kernels: the package is copied (never modified in place: the Hub
cache is shared) and, for source trees, given the ``_ops.py`` kernel-builder
would generate. Native kernels reuse :func:`stage_package` and add the
compiled library (see :mod:`jitkernels.build.native.builder`). Making and
publishing the entry is :func:`jitkernels.cache.entries.obtain`'s job.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

from ..cache import entries
from ..cache.layout import stays_inside
from ..errors import BuildInputError
from ..plan.inspection import Inspection
from ..plan.planner import SourcePlan, Sources


def module_name_for(python_name: str, backend: str, digest: str) -> str:
    """``_<python_name>_<backend>_<digest>``: kernel-builder's op-namespace shape, unique per content."""
    return f"_{python_name}_{backend}_{digest[:10]}"


def entry_module_name(inspection: Inspection, plan: SourcePlan, digest: str) -> str:
    """The module (and, for native kernels, op namespace) name a planned kernel is imported under.

    Per content, except for a native kernel from a local folder: its op namespace is a define
    of every translation unit, so it is per folder, and editing one file recompiles only the
    units that depend on it (see :mod:`jitkernels.build.native.builder`).
    """
    if inspection.strategy != "python" and getattr(plan.snapshot, "kind", None) == "local":
        digest = hashlib.sha256(str(plan.snapshot.location).encode()).hexdigest()
    return module_name_for(inspection.python_name, inspection.backend, digest)


def ops_py(namespace: str, import_library: bool) -> str:
    """The ``_ops.py`` kernel-builder generates, bound to ``namespace``."""
    load = f"from . import {namespace}\n" if import_library else ""
    return (
        "import torch\n"
        f"{load}"
        f"ops = torch.ops.{namespace}\n\n\n"
        "def add_op_namespace_prefix(op_name: str) -> str:\n"
        '    """Prefix op by namespace."""\n'
        f'    return f"{namespace}::{{op_name}}"\n'
    )


def stage_package(plan: SourcePlan, root: Path, target: Path, native: bool) -> list[str]:
    """Copy the kernel's Python package from ``root`` into ``target``; returns the copied relative paths."""
    package_prefix = plan.package + "/" if plan.package else ""
    data_exts = tuple(
        "." + ext for ext in (plan.config.pyext if plan.config else ()) if ext not in ("py", "pyi")
    )
    copied = []
    for rel in plan.snapshot.match([f"{package_prefix}**"] if package_prefix else ["**"]):
        if "/__pycache__/" in rel or rel.endswith(".pyc"):
            continue
        inner = rel[len(package_prefix):]
        if not stays_inside(rel) or not stays_inside(inner):  # snapshots refuse these; never copy through one
            raise BuildInputError(f"{plan.snapshot.location}: the file {rel!r} would leave the kernel's folder.")
        if native and not (inner.endswith(".py") or inner.endswith(data_exts)):
            continue  # arch builds install *.py plus the pyext data files only
        source = root / rel
        if not source.is_file():
            continue
        dest = target / inner
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        copied.append(inner)
    return copied


def build_python_entry(inspection: Inspection, plan: SourcePlan, sources: Sources) -> tuple[Inspection, Path]:
    """Publish the Python package of a ``python`` kernel; returns the completed inspection and the entry folder."""
    root = sources.root
    name = module_name_for(inspection.python_name, inspection.backend, sources.digest)
    inspection = replace(inspection, module_name=name, digest=sources.digest)

    def fill(out: Path, _work) -> dict:
        package = out / inspection.python_name
        package.mkdir()
        stage_package(plan, root, package, native=False)
        if not (package / "_ops.py").exists():
            (package / "_ops.py").write_text(ops_py(name, import_library=False))
        return {}

    recipe = entries.Recipe(name=name, what=f"preparing {inspection.repo_id} ({inspection.backend})",
                            inspection=inspection, fill=fill)
    return inspection, entries.obtain(recipe)
