"""Export a built cache entry in upstream's layout, so plain ``kernels`` (no JitKernels) loads it.

``<to>/build/<variant>/`` holds the kernel's Python package, its compiled
library and a ``metadata.json``, as kernel-builder's install target writes
them; ``kernels.get_local_kernel(<to>)``, or ``get_kernel`` once the folder
is uploaded to a Hub kernel repo (``hf upload <org>/<name> <to>/build build
--repo-type kernel --revision v1``), picks the variant.

Variant names follow kernel-builder's ``generate_build_name`` and upstream
``kernels`` 0.17.2's parser (``kernels.variants.parse_variant``):

- ``torch<M><m>-cxx11-<compute>-<cpu>-<os>`` for a build against torch's own ABI
  (``-cxx11`` only on Linux: kernel-builder adds it there),
- ``torch-stable-abi<M><m>-<compute>-<cpu>-<os>`` for a ``[torch.stable-abi]`` build,
- ``torch-<backend>`` for a Python-only kernel,

with ``<compute>`` = ``cpu`` or ``cu<M><m>`` (the CUDA toolkit that compiled it).
``metadata.json`` carries what upstream's ``Metadata`` reads (``name``, ``id``
= the op namespace, ``version``, ``license``, ``python-depends``, ``backend``
with the compiled ``archs`` for CUDA) and a ``digest`` in upstream's format
(sha256 of every file, base64), which ``kernels`` can verify.

Two limits of the upstream format: JitKernels compiles against the running
interpreter (``.cpython-311-x86_64-linux-gnu.so``, never ``abi3``), which the
variant name cannot say, so an export serves that Python version only; and
upstream 0.17.2 refuses every compiled variant on free-threaded Python before
3.15, whatever the library supports.
"""

from __future__ import annotations

import sys

import base64
import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

from ..errors import CacheError, InvalidKernelNameError
from ..log import logger

METADATA = "metadata.json"


def variant_name(backend: str, *, python_only: bool = False, torch_version: str | None = None,
                 cxx11_abi: bool = True, stable_abi: str | None = None, cuda_version: str | None = None,
                 cpu: str | None = None, os_name: str | None = None) -> str:
    """The ``build/`` folder name upstream ``kernels`` selects for this build (see the module doc)."""
    if python_only:
        return f"torch-{backend}"
    cpu = cpu or _cpu()
    os_name = os_name or platform.system().lower()
    if stable_abi:
        framework = f"torch-stable-abi{_flat(stable_abi)}"
    else:
        if not torch_version:
            raise InvalidKernelNameError("A compiled kernel's variant name needs the torch version.")
        framework = f"torch{_flat(torch_version)}" + ("-cxx11" if os_name == "linux" and cxx11_abi else "")
    if backend == "cpu":
        compute = "cpu"
    elif backend == "cuda":
        if not cuda_version:
            raise InvalidKernelNameError("A CUDA kernel's variant name needs the CUDA toolkit version.")
        compute = f"cu{_flat(cuda_version)}"
    else:
        raise InvalidKernelNameError(f"Exporting compiled {backend} kernels is not supported (cpu, cuda only).")
    return f"{framework}-{compute}-{cpu}-{os_name}"


def local_variant_name(inspection) -> str:
    """The variant name of an entry built here (the entry's build key pins torch, CUDA and platform to ours)."""
    from .. import machine
    from ..plan.strategy import PYTHON

    if inspection.strategy == PYTHON:
        return variant_name(inspection.backend, python_only=True)
    return variant_name(
        inspection.backend,
        torch_version=machine.torch_version(),
        cxx11_abi=machine.cxx11_abi(),
        stable_abi=inspection.stable_abi,
        # upstream picks the variant by torch's CUDA (torch.version.cuda), whatever nvcc built it
        cuda_version=machine.torch_cuda_version() if inspection.backend == "cuda" else None,
    )


def metadata_for(inspection, config, variant_dir: Path, archs: list[str] | None = None) -> dict:
    """``metadata.json`` as upstream's ``Metadata`` reads it, with the digest of the files in ``variant_dir``."""
    name = getattr(config, "name", None) or inspection.repo_id.split("/")[-1]
    backend: dict = {"type": inspection.backend}
    if archs:
        backend["archs"] = sorted(set(archs))
    data = {
        "name": name,
        "id": inspection.module_name,
        "version": getattr(config, "version", None) or 1,
        "license": getattr(config, "license", None) or "unknown",
        "python-depends": list(inspection.python_depends),
        "kernel-depends": [],
        "backend": backend,
        "digest": {"algorithm": "sha256", "files": variant_digest(variant_dir)},
    }
    for key in ("upstream", "source"):
        value = getattr(config, key, None)
        if value:
            data[key] = value
    return data


def variant_digest(variant_dir: Path) -> dict[str, str]:
    """Upstream's ``Digest.hash_variant``: base64 sha256 of every file but the top ``metadata.json`` and bytecode."""
    files = {}
    for path in sorted(variant_dir.rglob("*")):
        rel = path.relative_to(variant_dir)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        if len(rel.parts) == 1 and rel.name in (METADATA, METADATA + ".sigstore"):
            continue
        digest = hashlib.sha256(path.read_bytes()).digest()
        files[str(rel).replace(os.sep, "/")] = base64.b64encode(digest).decode()
    return files


def compiled_archs(inspection, config) -> list[str]:
    """The CUDA archs the entry holds code for: the targets, and each kernel's pick among its capabilities."""
    from .. import machine
    from ..build.native import flags

    if inspection.backend != "cuda":
        return []
    targets = machine.cuda_archs()
    archs = set(targets)
    for section in (config.kernels_for("cuda") if config is not None else ()):
        if section.name in inspection.kernels:
            archs.update(flags.kernel_archs(section.cuda_capabilities, targets))
    return sorted(archs)


def export_entry(prepared, to: Path) -> Path:
    """Write ``prepared`` (a :class:`jitkernels.pipeline.Prepared`) to ``<to>/build/<variant>/``; returns that folder.

    The folder is assembled beside its final place and renamed into it, replacing an older export.
    """
    from .. import machine
    from ..plan.strategy import PYTHON

    inspection = prepared.inspection
    package = prepared.entry / inspection.python_name
    if not (package / "__init__.py").is_file():
        raise CacheError(f"The cache entry {prepared.entry} has no package {inspection.python_name}/; "
                         f"run `jitkernels verify` and build it again.")
    variant = local_variant_name(inspection)
    target = Path(to).expanduser().resolve()
    _refuse_cache_targets(target)
    build = target / "build"
    final = build / variant
    tmp = build / f".{variant}.{os.getpid()}.tmp"
    try:
        build.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(package, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        except shutil.Error as exc:  # one (source, target, why) per file: name the first, count the rest
            failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
            first = failures[0][2] if failures and len(failures[0]) == 3 else str(exc)[:300]
            raise OSError(f"{first}" + (f" (and {len(failures) - 1} more files)" if len(failures) > 1 else "")) from exc
        archs = compiled_archs(inspection, prepared.config) if inspection.strategy != PYTHON else []
        metadata = metadata_for(inspection, prepared.config, tmp, archs)
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        if final.exists():
            old = build / f".{variant}.{os.getpid()}.old"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(f"Cannot write the export to {final}: {exc.strerror or exc}.") from exc
    if inspection.strategy != PYTHON and machine.free_threaded():
        logger.warning(
            "Exported %s from a free-threaded interpreter: upstream kernels 0.17.2 does not load compiled "
            "variants on free-threaded Python before 3.15 (JitKernels does).", variant)
    return final


def _caches() -> list[tuple[str, Path]]:
    """The folders an export must stay out of: JitKernels' cache and the Hugging Face cache kernels come from."""
    from .. import config

    found = [("the JitKernels cache (JITKERNELS_CACHE)", config.cache_dir())]
    hub = config.kernels_hub_cache()
    if hub is None:
        try:
            from huggingface_hub import constants

            hub = constants.HF_HUB_CACHE
        except ImportError:  # pragma: no cover - huggingface_hub is a dependency
            hub = None
    if hub:
        found.append(("the Hugging Face cache kernels are downloaded to", Path(hub)))
    return found


def _refuse_cache_targets(target: Path) -> None:
    """Published entries are never written after they are published, and the Hub cache is not ours to add to."""
    for what, folder in _caches():
        folder = Path(os.path.realpath(folder))
        if target == folder or folder in target.parents:
            raise CacheError(
                f"Refusing to export into {target}: it is inside {what} ({folder}), whose entries are never "
                f"written after they are published. Export to a folder of your own (e.g. --to ./out)."
            )


def _flat(version: str) -> str:
    major, _, rest = version.partition(".")
    minor = rest.split(".")[0] if rest else "0"
    return f"{major}{minor}"


def _cpu() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "AMD64": "x86_64", "arm64": "aarch64", "ARM64": "aarch64"}.get(machine, machine)


def publish_hint(folder: Path, repo_id: str | None = None) -> str:
    """The command that publishes an export to a Hub kernel repository (never run by JitKernels)."""
    build = folder.parent
    return (f"hf upload {repo_id or '<org>/<name>'} {build} build --repo-type kernel --revision v1  "
            f"# creates the v1 branch's build/{folder.name}/ (version=1). The library is built for this "
            f"Python only ({sys.implementation.cache_tag}) and the variant name cannot say so: publish it where "
            f"every user runs that Python, or not on a shared branch")

