"""What this machine and process are: backend, torch, CUDA, Python ABI, GPU archs, and the keys made of them.

The warm path needs the backend and the GPU archs without initialising CUDA
(which costs far more than loading a cached kernel). So the GPU facts are
detected once per boot and remembered in ``<cache>/machine/<key>.json``
(:func:`machine_memo`; the key is the kernel boot id, the visible-device
variables and the NVIDIA device nodes: any change of those gives a fresh
detection). If CUDA is already initialised in the process, torch is asked
directly. ``TORCH_CUDA_ARCH_LIST`` overrides the archs.

:func:`env_key` is what a prepared entry depends on besides its sources: the
warm index is keyed by it. Stdlib only at import; torch is imported when asked.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from functools import lru_cache

from . import config
from .cache import layout
from .cache.files import read_json, write_json
from .errors import CacheError


def _torch():
    import torch  # also waits for another thread still importing it (sys.modules alone may hold half of it)

    return torch


def static_backend(torch) -> str | None:
    """``cpu`` when this torch build has no accelerator support at all; None when the GPUs must be asked."""
    if torch.version.cuda is None and torch.version.hip is None and not getattr(torch.version, "xpu", None) \
            and sys.platform != "darwin":
        return "cpu"
    return None


def machine_key() -> str:
    """Boot id, visible-device variables, NVIDIA device nodes and torch: any change means a new detection."""
    parts = [*config.visible_devices(), _torch().__version__]
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            parts.append(fh.read().strip())
    except OSError:
        parts.append(str(os.getpid()))  # no boot id: never share the memo between processes
    try:
        parts.append(",".join(sorted(n for n in os.listdir("/dev") if re.match(r"^nvidia\d+$", n))))
    except OSError:
        pass
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def machine_memo_file():
    return layout.machine_memo_file(machine_key())


def machine_memo() -> dict | None:
    """``{"backend": "cuda", "archs": ["9.0"]}`` without asking the GPUs, or None (detection needed)."""
    torch = _torch()
    backend = static_backend(torch)
    if backend is not None:
        return {"backend": backend, "archs": []}
    facts = read_json(machine_memo_file())
    return facts if facts is not None and isinstance(facts.get("backend"), str) else None


def archs_override() -> list[str] | None:
    """``TORCH_CUDA_ARCH_LIST`` as a list, or None."""
    value = config.cuda_arch_override()
    return [a for a in re.split(r"[;\s,]+", value) if a] if value else None


def env_key(backend: str, archs: list[str] | tuple[str, ...] = ()) -> str:
    """A short key for everything a prepared entry depends on besides its sources (the warm index key).

    Read from attributes of already imported modules and environment variables only (no
    subprocess): torch's full version (``+cu130`` included), CUDA, Python ABI, platform, the
    compiler variables and, for CUDA, the GPU archs. The compiler's own version is in the build
    key (:mod:`jitkernels.build.native.spec`), checked when a kernel is resolved again.
    """
    torch = _torch()
    parts = [
        config.RECIPE_VERSION,
        backend,
        torch.__version__,
        str(torch.version.cuda),
        sys.implementation.cache_tag or "",
        getattr(sys, "abiflags", ""),
        os.uname().machine if hasattr(os, "uname") else "",
        sys.platform,
        config.cxx(),
        config.cc() or "",
    ]
    if backend == "cuda":
        parts.append(",".join(archs))
        parts.append(config.cuda_home() or "")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def known_env_key(backend: str) -> str | None:
    """:func:`env_key` from what is known without detecting GPUs (the memo, the override); None if unknown."""
    if backend != "cuda":
        return env_key(backend)
    archs = archs_override()
    if archs is None:
        memo = machine_memo()
        if memo is None:
            return None
        archs = memo.get("archs") or []
    return env_key(backend, archs)


def env_key_here(backend: str) -> str:
    """:func:`env_key` of this machine, detecting the GPUs if needed (the cold path)."""
    return env_key(backend, cuda_archs() if backend == "cuda" else ())


def known_backend(backend: str | None) -> str | None:
    """``backend``, else this machine's if known without detecting GPUs (torch imported, memo present); else None."""
    if backend is not None:
        return backend
    if "torch" not in sys.modules:
        return None  # let the pipeline report a missing torch clearly
    memo = machine_memo()
    return memo["backend"] if memo is not None else None


def torch_version() -> str:
    """``2.13.0`` (without the ``+cpu`` local part)."""
    return _torch().__version__.split("+", 1)[0]


def torch_major_minor() -> tuple[int, int]:
    major, minor = torch_version().split(".")[:2]
    return int(major), int(minor)


def free_threaded() -> bool:
    """True on a free-threaded (``3.13t``) interpreter (its ABI flags carry a ``t``)."""
    return "t" in getattr(sys, "abiflags", "")


def python_abi_tag() -> str:
    """``cp311``, or ``cp313t`` on a free-threaded build: part of every native cache key."""
    if sys.implementation.name == "cpython":
        tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    else:
        tag = sys.implementation.cache_tag or sys.implementation.name
    return tag + ("t" if free_threaded() else "")


def extension_suffix() -> str:
    """The running interpreter's own suffix (never ``.abi3.so``: free-threaded builds have no stable ABI)."""
    import sysconfig

    return sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def platform_tag() -> str:
    import platform

    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{machine}-{sys.platform}"


def cxx11_abi() -> bool:
    return bool(getattr(_torch()._C, "_GLIBCXX_USE_CXX11_ABI", True))


def torch_cuda_version() -> str | None:
    return _torch().version.cuda


def _detect_gpus() -> dict:
    torch = _torch()
    facts = {"backend": "cpu", "archs": []}
    if torch.version.hip is not None:
        if torch.cuda.is_available():
            facts["backend"] = "rocm"
        return facts
    if torch.version.cuda is not None and torch.cuda.is_available():
        facts["backend"] = "cuda"
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        facts["archs"] = sorted(f"{major}.{minor}" for major, minor in caps)
        return facts
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and getattr(torch.version, "xpu", None) and xpu.is_available():
        facts["backend"] = "xpu"
        return facts
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        facts["backend"] = "metal"
    return facts


@lru_cache(maxsize=1)
def gpu_facts() -> dict:
    """``{"backend": "cuda", "archs": ["9.0"]}`` for this machine, memoised per boot (see module doc)."""
    torch = _torch()
    if torch.version.cuda is not None and torch.cuda.is_initialized():
        return _detect_gpus()
    facts = machine_memo()
    if facts is None:
        facts = _detect_gpus()
        try:
            write_json(machine_memo_file(), facts)
        except CacheError:
            pass  # a read-only cache: detect again next time
    return facts


def local_backend() -> str:
    """The backend kernels are loaded for when none is asked: ``cuda``, ``rocm``, ``xpu``, ``metal`` or ``cpu``."""
    return gpu_facts()["backend"]


def cuda_archs() -> list[str]:
    """GPU capabilities to build for: ``TORCH_CUDA_ARCH_LIST`` if set, else the visible GPUs' (``["9.0"]``)."""
    override = archs_override()
    if override is not None:
        return override
    return list(gpu_facts().get("archs", []))
