"""What this machine and process are: backend, torch, CUDA, Python ABI, GPU archs.

The warm path needs the backend and the GPU archs without initialising CUDA
(which costs far more than loading a cached kernel). So the GPU facts are
detected once per boot and remembered in ``<cache>/machine/<key>.json``
(:func:`jitkernels.warm.machine_memo` reads it; the key is the kernel boot id,
the visible-device variables and the NVIDIA device nodes: any change of those
gives a fresh detection). If CUDA is already
initialised in the process, torch is asked directly. ``TORCH_CUDA_ARCH_LIST``
overrides the archs.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from functools import lru_cache

from . import cache, config, warm
from .errors import CacheError


def _torch():
    import torch

    return torch


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
    facts = warm.machine_memo()
    if facts is None:
        facts = _detect_gpus()
        try:
            cache.write_json(warm.machine_memo_file(), facts)
        except CacheError:
            pass  # a read-only cache: detect again next time
    return facts


def local_backend() -> str:
    """The backend kernels are loaded for when none is asked: ``cuda``, ``rocm``, ``xpu``, ``metal`` or ``cpu``."""
    return gpu_facts()["backend"]


def cuda_archs() -> list[str]:
    """GPU capabilities to build for: ``TORCH_CUDA_ARCH_LIST`` if set, else the visible GPUs' (``["9.0"]``)."""
    override = warm.archs_override()
    if override is not None:
        return override
    return list(gpu_facts().get("archs", []))


@lru_cache(maxsize=None)
def _nvcc_version_for(home: str | None) -> str | None:
    nvcc = os.path.join(home, "bin", "nvcc") if home else "nvcc"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def cuda_home() -> str | None:
    """The CUDA toolkit: ``CUDA_HOME``/``CUDA_PATH``, else the real folder of the ``nvcc`` on PATH."""
    home = config.cuda_home()
    if home:
        return home
    import shutil

    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        # A wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`) hides the real toolkit.
        try:
            with open(real, "rb") as fh:
                head = fh.read(512)
            if head.startswith(b"#!"):
                match = re.search(rb"(/\S+)/bin/nvcc", head)
                if match:
                    return match.group(1).decode()
        except OSError:
            pass
        return os.path.dirname(os.path.dirname(real))
    for candidate in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    return None


def nvcc_version() -> str | None:
    """The local CUDA toolkit's ``major.minor`` (what kernel-builder checks ``[general.cuda]`` bounds against)."""
    return _nvcc_version_for(cuda_home())

