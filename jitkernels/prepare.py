"""Turn a planned kernel into a published cache entry holding its importable Python package.

Python kernels: the package is copied (never modified in place: the Hub
cache is shared) and, for source trees, given the ``_ops.py`` kernel-builder
would generate. Native kernels reuse :func:`stage_package` and add the
compiled library (see :mod:`jitkernels.native.builder`).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from . import cache
from .inspection import Inspection
from .planning import SourcePlan, digest_files

from .entries import MANIFEST, check_entry, discard_entry, precompile, write_manifest  # noqa: F401


def module_name_for(python_name: str, backend: str, digest: str) -> str:
    """``_<python_name>_<backend>_<digest>``: kernel-builder's op-namespace shape, unique per content."""
    return f"_{python_name}_{backend}_{digest[:10]}"


def fetch_inputs(plan: SourcePlan) -> tuple[Path, list[str]]:
    """Fetch what the plan needs; return the snapshot root and the input files (sorted, snapshot-relative)."""
    root = plan.snapshot.fetch(list(plan.patterns))
    files = [
        f for f in plan.snapshot.match(list(plan.patterns))
        if "/__pycache__/" not in f and not f.endswith(".pyc") and (root / f).is_file()
    ]
    return root, files


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


def prepare_python(inspection: Inspection, plan: SourcePlan) -> tuple[Inspection, Path]:
    """Publish the Python package of a ``python`` kernel; returns the completed inspection and the entry folder."""
    root, files = fetch_inputs(plan)
    digest = digest_files(root, files)
    name = module_name_for(inspection.python_name, inspection.backend, digest)
    inspection = replace(inspection, module_name=name, digest=digest)
    entry = cache.entry_dir(name)
    if check_entry(entry) is None:
        return inspection, entry
    with cache.file_lock(f"entry:{name}"):
        if check_entry(entry) is None:
            return inspection, entry
        staging = cache.staging_dir(name)
        try:
            package = staging / inspection.python_name
            package.mkdir()
            stage_package(plan, root, package, native=False)
            if not (package / "_ops.py").exists():
                (package / "_ops.py").write_text(ops_py(name, import_library=False))
            write_manifest(staging, inspection)
            precompile(staging, entry)
            if entry.exists():  # damaged, or a leftover without manifest: replace it
                discard_entry(entry)
            cache.publish(staging, entry)
        except OSError as exc:
            raise cache.cache_error(staging, exc) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return inspection, entry
