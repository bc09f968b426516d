"""``jitkernels doctor``: what this machine offers JitKernels, and what would happen for one kernel.

Each section is a plain dict (the CLI prints them as a table or as JSON):
``jitkernels`` (package versions), ``python`` (free-threaded or not),
``torch`` (CUDA/ROCm, the stable-ABI versions it serves), ``toolchain``
(host compiler, ninja), ``cuda`` (which nvcc a CUDA build would use and why:
the local toolkits, provisioned compilers, whether the package index may
provide one, see :mod:`jitkernels.build.toolchain`), ``gpus`` (from the per-boot memo when there is
one, so CUDA is not initialised), ``cache`` (folder, size, entries),
``background`` (the cold-start mode; background builds running, failed or
stopped, one line each with its log), ``hub`` (reachable with a short
timeout, skipped offline), ``settings`` (every ``JITKERNELS_*`` variable set,
and what is wrong with it: :mod:`jitkernels.cli.settings`). A section that cannot be
determined says so in an ``error`` key: the doctor itself never fails.

``kernel(name)`` resolves and plans the kernel (no build, no binary
download) and says what a load would do: ``load-cached``, ``import``,
``compile`` or ``fail``, and why.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata

from .. import config, machine
from . import settings
from ..cache import layout
from ..errors import JitKernelsError, error_record

#: Seconds the Hub check waits (it only asks whether the endpoint answers).
HUB_TIMEOUT = 3.0


def _version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _safe(section):
    try:
        return section()
    except Exception as exc:  # a diagnostic reports, it never raises
        return {"error": f"{type(exc).__name__}: {exc}"}


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def packages() -> dict:
    return {name: _version_of(dist) for name, dist in (
        ("jitkernels", "jitkernels"), ("huggingface_hub", "huggingface_hub"), ("torch", "torch"),
        ("kernels", "kernels"), ("tqdm", "tqdm"), ("ninja", "ninja"), ("triton", "triton"))}


def python() -> dict:
    gil = getattr(sys, "_is_gil_enabled", None)
    return {
        "version": platform.python_version(),
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "abi": machine.python_abi_tag(),
        "free_threaded": machine.free_threaded(),
        "gil_enabled": gil() if gil is not None else True,
        "platform": machine.platform_tag(),
    }


def torch_facts() -> dict:
    import torch

    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "rocm": getattr(torch.version, "hip", None),
        "cxx11_abi": bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)),
        # A kernel declaring [torch.stable-abi] <backend> = "X.Y" builds against any torch >= X.Y.
        "stable_abi_served": f"<= {major}.{minor}",
    }


def toolchain() -> dict:
    cxx = config.cxx()
    cxx_path = shutil.which(cxx)
    try:
        from ..build.native.builder import _ninja

        ninja = _ninja()
        ninja_facts = {"path": ninja, "version": _first_line([ninja, "--version"])}
    except JitKernelsError as exc:
        ninja_facts = {"path": None, "error": str(exc)}
    return {
        "cxx": {"command": cxx, "path": cxx_path, "version": _first_line([cxx_path, "--version"]) if cxx_path else None},
        "cc": config.cc(),
        "ninja": ninja_facts,
        "max_jobs": config.max_jobs(),
    }


def cuda() -> dict:
    """Which nvcc a CUDA build would use here, and why (kernels' own bounds: ``doctor NAME`` / ``inspect``)."""
    from ..build import toolchain as cuda_toolchain

    return cuda_toolchain.describe()


def gpus() -> dict:
    """GPU backend and archs: from the per-boot memo when it exists (CUDA stays uninitialised), else detected."""
    memo = machine.machine_memo()
    if memo is not None and machine.static_backend(machine._torch()) is not None:
        facts, source = memo, "this torch build has no GPU support"
    elif memo is not None:
        facts, source = memo, "per-boot memo (CUDA not initialised)"
    else:
        facts, source = machine.gpu_facts(), "detected now (memo written)"
    override = machine.archs_override()
    return {
        "backend": facts.get("backend"),
        "archs": list(facts.get("archs", [])),
        "source": source,
        "build_archs": override if override is not None else list(facts.get("archs", [])),
        "TORCH_CUDA_ARCH_LIST": config.cuda_arch_override(),
    }


def _size(folder) -> tuple[int, int]:
    total = files = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
            files += 1
    return total, files


def _creatable(folder) -> bool:
    """Writable, or (not made yet) creatable: the nearest folder that exists is writable."""
    from pathlib import Path

    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK)


def cache_facts() -> dict:
    folder = config.cache_dir()
    size, files = _size(folder) if folder.is_dir() else (0, 0)
    entries = layout.entries_dir()
    try:
        from huggingface_hub import constants

        hub_cache = config.kernels_hub_cache() or constants.HF_HUB_CACHE
    except ImportError:  # pragma: no cover
        hub_cache = config.kernels_hub_cache()
    return {
        "folder": str(folder),
        "exists": folder.is_dir(),
        "writable": _creatable(folder),
        "size_bytes": size,
        "files": files,
        "entries": sum(1 for p in entries.iterdir() if p.is_dir()) if entries.is_dir() else 0,
        "hub_downloads": str(hub_cache) if hub_cache else None,
        "build_disabled": config.disable_build(),
        "remote": config.remote_cache_url(),
        "remote_mode": config.remote_cache_mode() if config.remote_cache_url() else None,
        "compiler_cache": config.compiler_cache(),
    }


def background() -> dict:
    """The cold-start mode, and each background build of the cache (:mod:`jitkernels.coldstart`) with its log."""
    from .. import coldstart
    from ..cache import admin

    builds = admin.background_builds()
    out = {"cold_start": coldstart.mode(), "building": sum(b.state == "building" for b in builds),
           "failed": sum(b.state == "failed" for b in builds)}
    for b in builds:
        if b.state == "building":
            what = f"building (pid {b.pid} on {b.host})"
        elif b.state == "failed":
            what = f"FAILED: {b.error}" + (f"; compiler output {b.build_log}" if b.build_log else "")
        else:
            what = "stopped (its builder died)"
        out[b.entry] = f"{b.kernel}: {what}; log {b.log}"
    return out


def hub() -> dict:
    endpoint = config.hf_endpoint().rstrip("/")
    if config.hf_offline():
        return {"endpoint": endpoint, "checked": False, "reason": "HF_HUB_OFFLINE=1"}
    import urllib.error
    import urllib.request

    url = f"{endpoint}/api/organizations/{config.hf_default_org()}/overview"
    start = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "jitkernels-doctor"}),
                                    timeout=min(HUB_TIMEOUT, config.network_timeout())) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # an answer, even an error, means the Hub is reachable
        status = exc.code
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"endpoint": endpoint, "checked": True, "reachable": False, "error": str(reason),
                "seconds": round(time.monotonic() - start, 2)}
    return {"endpoint": endpoint, "checked": True, "reachable": True, "status": status,
            "seconds": round(time.monotonic() - start, 2)}


def report(name: str | None = None, *, provider="hf_kernels", revision=None, version=None, backend=None) -> dict:
    """Every section, and ``kernel`` when a name is given."""
    out = {
        "packages": _safe(packages),
        "python": _safe(python),
        "torch": _safe(torch_facts),
        "toolchain": _safe(toolchain),
        "cuda": _safe(cuda),
        "gpus": _safe(gpus),
        "cache": _safe(cache_facts),
        "background": _safe(background),
        "hub": _safe(hub),
        "settings": _safe(settings.report),
    }
    if name is not None:
        out["kernel"] = kernel(name, provider=provider, revision=revision, version=version, backend=backend)
    return out


def kernel(name: str, *, provider="hf_kernels", revision=None, version=None, backend=None) -> dict:
    """What loading ``name`` would do here, and why (resolves and plans; never builds)."""
    from .. import pipeline
    from ..inputs import python_deps
    from ..plan.strategy import NATIVE_JIT, UNSUPPORTED

    try:
        inspection = pipeline.inspect_kernel(provider, name, revision=revision, version=version, backend=backend)
    except JitKernelsError as exc:
        return {"name": name, "would": "fail", "why": str(exc).strip().splitlines()[0], "error": error_record(exc)}
    out = {"name": name, "repo_id": inspection.repo_id, "revision": inspection.revision,
           "backend": inspection.backend, "strategy": inspection.strategy, "reason": inspection.reason,
           "module": inspection.module_name, "considered": [str(o) for o in inspection.considered]}
    if inspection.strategy == UNSUPPORTED:
        return {**out, "would": "fail", "why": f"{inspection.reason}: {inspection.detail}"}
    try:
        python_deps.check(inspection)
    except JitKernelsError as exc:
        return {**out, "would": "fail", "why": str(exc)}
    missing = [i for i in inspection.inputs if i.status == "missing"]
    if missing:
        return {**out, "would": "fail", "why": "build inputs missing: " + "; ".join(
            f"{i.name} ({i.detail or i.origin})" for i in missing)}
    problem = _dependency_problem(inspection, provider, backend, (inspection.repo_id,))
    if problem:
        return {**out, "would": "fail", "why": problem}
    if _prepared(inspection):
        return {**out, "would": "load-cached", "why": "prepared in the cache for this environment: a plain import"}
    if inspection.strategy != NATIVE_JIT:
        return {**out, "would": "import", "why": f"{inspection.detail} Its files are fetched and imported."}
    if config.disable_build():
        return {**out, "would": "fail", "why": "not in the cache and JITKERNELS_DISABLE_BUILD=1 forbids compiling"}
    problem = _build_problem(inspection)
    if problem:
        return {**out, "would": "fail", "why": problem}
    return {**out, "would": "compile",
            "why": f"{inspection.detail} Not in the cache: compiled here once ({_build_tools(inspection)}), "
                   f"then cached."}


def _dependency_problem(inspection, provider, backend, chain: tuple) -> str | None:
    """Why a ``kernel-depends`` of ``inspection`` (transitively) cannot be loaded, or None."""
    from .. import pipeline
    from ..inputs.kernels import KernelDependency
    from ..plan.strategy import UNSUPPORTED

    for text in inspection.kernel_depends:
        dep = KernelDependency.parse(text)
        if dep.repo_id in chain:
            return f"kernel dependency cycle: {' -> '.join((*chain, dep.repo_id))} (kernel-depends)"
        try:
            sub = pipeline.inspect_kernel(provider, dep.repo_id, revision=dep.revision, version=dep.version,
                                          backend=backend)
        except JitKernelsError as exc:
            return f"{inspection.repo_id} needs kernel {dep} (kernel-depends): {str(exc).splitlines()[0]}"
        if sub.strategy == UNSUPPORTED:
            return f"{inspection.repo_id} needs kernel {dep} (kernel-depends), which is unsupported: {sub.detail}"
        problem = _dependency_problem(sub, provider, backend, (*chain, dep.repo_id))
        if problem:
            return problem
    return None


def _prepared(inspection) -> bool:
    """True if the warm index points at an intact entry for this commit and machine."""
    try:
        from ..cache import layout
        from ..cache.files import read_json
        from ..cache.manifest import check_entry

        envkey = machine.env_key_here(inspection.backend)
        if not inspection.revision:  # a local folder (LOCAL_KERNELS): its memo, while no file in it changed
            location = inspection.source_location
            if not location or not os.path.isdir(location):
                return False
            from ..cache.index import local_record

            record = local_record(os.path.realpath(location), inspection.backend, envkey)
            return bool(record) and check_entry(layout.root() / record["entry"]) is None
        index = layout.index_file(inspection.provider, inspection.repo_id, inspection.revision, inspection.backend,
                                  envkey)
        record = read_json(index)
        return bool(record) and check_entry(layout.root() / record["entry"]) is None
    except Exception:
        return False


def _build_problem(inspection) -> str | None:
    facts = toolchain()
    if facts["ninja"].get("path") is None:
        return facts["ninja"].get("error") or "ninja is not installed (pip install ninja)"
    if facts["cxx"]["path"] is None:
        return f"the C++ compiler {facts['cxx']['command']!r} (CXX) is not on PATH"
    if inspection.backend == "cuda":
        if not inspection.cuda_compiler:
            from ..build import toolchain as cuda_toolchain

            return cuda_toolchain.no_compiler_message(inspection.repo_id)
        if not machine.cuda_archs():
            return "no GPU arch to build for: no visible GPU and TORCH_CUDA_ARCH_LIST is unset"
    return None


def _build_tools(inspection) -> str:
    if inspection.backend == "cuda":
        return f"{inspection.cuda_compiler}, archs {', '.join(machine.cuda_archs())}"
    return f"{config.cxx()}, {config.max_jobs()} jobs"


def render(data: dict) -> str:
    """The report as aligned ``section.key  value`` lines."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        items = values.items() if isinstance(values, dict) else [("value", values)]
        flat = []
        for key, value in items:
            if isinstance(value, dict):
                flat += [(f"{key}.{k}", v) for k, v in value.items()]
            else:
                flat.append((key, value))
        width = max((len(k) for k, _ in flat), default=0)
        for key, value in flat:
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value) or "-"
            lines.append(f"  {key:<{width}}  {'-' if value is None else _printable(str(value))}")
    return "\n".join(lines)


def _printable(text: str) -> str:
    """A value as one printable line: a newline in a setting cannot fake a row, nor a stray byte fail the print."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)
