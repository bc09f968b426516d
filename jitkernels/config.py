"""Every environment variable JitKernels reads, and its default, in one place.

Values are read on each call (never frozen at import) so tests and long-lived
processes can change them.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Bumped whenever the way JitKernels prepares or builds a kernel changes, so
#: that entries made by an older recipe are never reused.
RECIPE_VERSION = "1"

DEFAULT_HF_ORG = "kernels-community"

#: Aliases of the providers shipped with JitKernels (the registry in jitkernels.providers uses them).
BUILTIN_PROVIDER_ALIASES = {
    "hf_kernels": "hf_kernels",
    "hf": "hf_kernels",
    "hf-kernels": "hf_kernels",
    "huggingface": "hf_kernels",
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """``JITKERNELS_CACHE``, else ``$XDG_CACHE_HOME/jitkernels``, else ``~/.cache/jitkernels``."""
    explicit = os.environ.get("JITKERNELS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "jitkernels"


def verbose() -> bool:
    """``JITKERNELS_VERBOSE=1``: show compiler commands and every step."""
    return _flag("JITKERNELS_VERBOSE")


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE=1``: huggingface_hub's own switch, honoured without importing it."""
    return _flag("HF_HUB_OFFLINE")


def local_kernels_spec() -> str:
    """``LOCAL_KERNELS="org/name=/path:org2/name2=/path2"`` (the upstream variable)."""
    return os.environ.get("LOCAL_KERNELS", "")


def hf_default_org() -> str:
    """Organisation used for bare kernel names (``JITKERNELS_HF_ORG``)."""
    return os.environ.get("JITKERNELS_HF_ORG", DEFAULT_HF_ORG)


def max_jobs() -> int:
    """Parallel compile jobs: ``MAX_JOBS`` (as torch), else the usable cores."""
    value = os.environ.get("MAX_JOBS")
    if value and value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def cuda_arch_override() -> str | None:
    """``TORCH_CUDA_ARCH_LIST`` (as torch) overrides the detected GPU archs."""
    value = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    return value or None


def ignore_toolchain_bounds() -> bool:
    """``JITKERNELS_IGNORE_TOOLCHAIN_BOUNDS=1``: try to build even outside declared CUDA/torch bounds."""
    return _flag("JITKERNELS_IGNORE_TOOLCHAIN_BOUNDS")


def disable_build() -> bool:
    """``JITKERNELS_DISABLE_BUILD=1``: a cache miss for a native kernel is an error, never a compile.

    What a fleet that ships a prebuilt cache wants.
    """
    return _flag("JITKERNELS_DISABLE_BUILD")


def cuda_home() -> str | None:
    """``CUDA_HOME`` / ``CUDA_PATH``, else the folder above the ``nvcc`` found on PATH."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(name)
        if value:
            return value
    return None


def shared_cache_ok() -> bool:
    """``JITKERNELS_SHARED_CACHE=1``: accept a cache folder owned by another (trusted) user."""
    return _flag("JITKERNELS_SHARED_CACHE")


def trusted_orgs_extra() -> list[str]:
    """``JITKERNELS_TRUSTED`` adds publishers or repo ids to the trusted set (comma separated)."""
    raw = os.environ.get("JITKERNELS_TRUSTED", "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def network_timeout() -> float:
    """Seconds before a Hub request is given up (``JITKERNELS_TIMEOUT``, default 10)."""
    try:
        return float(os.environ.get("JITKERNELS_TIMEOUT", "10"))
    except ValueError:
        return 10.0


def offline() -> bool:
    """``JITKERNELS_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``): JitKernels downloads no build inputs (CUTLASS archives).

    The Hub itself follows huggingface_hub's ``HF_HUB_OFFLINE``.
    """
    return _flag("JITKERNELS_OFFLINE") or hf_offline()


def cutlass_dir() -> Path | None:
    """``JITKERNELS_CUTLASS_DIR``: a folder holding ``cutlass-<version>/include`` for the versions it provides."""
    value = os.environ.get("JITKERNELS_CUTLASS_DIR", "").strip()
    return Path(value).expanduser() if value else None


def cutlass_version_dir(dependency: str) -> Path | None:
    """``JITKERNELS_CUTLASS_3_8_DIR`` (for ``cutlass_3_8``): the CUTLASS source root (holding ``include/``) of one version."""
    value = os.environ.get(f"JITKERNELS_{dependency.upper()}_DIR", "").strip()
    return Path(value).expanduser() if value else None


#: Where CUTLASS release archives are downloaded from; ``{version}`` is replaced by e.g. ``3.8.0``.
DEFAULT_CUTLASS_URL = "https://github.com/NVIDIA/cutlass/archive/refs/tags/v{version}.tar.gz"


def cutlass_url_template() -> str:
    """``JITKERNELS_CUTLASS_URL`` (a mirror, e.g. ``https://mirror.example/cutlass-{version}.tar.gz``)."""
    return os.environ.get("JITKERNELS_CUTLASS_URL", "").strip() or DEFAULT_CUTLASS_URL
