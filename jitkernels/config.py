"""Every environment variable JitKernels reads, and its default, in one place.

Values are read on each call (never frozen at import) so tests and long-lived
processes can change them. docs/environment.md lists them all (tests/test_docs.py
checks the list against this module). Two kinds of variables are read elsewhere,
on purpose: a compiler cache's own settings (``SCCACHE_*``, ``CCACHE_*``), which
:mod:`jitkernels.build.native.compiler_cache` only looks at to leave the user's
choice alone, and ``HF_HUB_OFFLINE``, which :mod:`jitkernels.upstream.patching`
sets for the length of an upstream ``local_files_only=True`` call. Stdlib only.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The package's version (``jitkernels.__version__``; pyproject.toml reads it from here).
VERSION = "0.1.0"

#: Bumped whenever the way JitKernels prepares or builds a kernel changes, so
#: that entries made by an older recipe are never reused.
RECIPE_VERSION = "2"

DEFAULT_HF_ORG = "kernels-community"

#: Publishers trusted without asking the Hub (upstream also trusts any organisation the Hub
#: flags ``trustedKernelPublisher``). ``JITKERNELS_TRUSTED`` adds more.
DEFAULT_TRUSTED_PUBLISHERS = frozenset({"kernels-community"})

#: Aliases of the providers shipped with JitKernels (the registry in jitkernels.providers uses them).
BUILTIN_PROVIDER_ALIASES = {
    "hf_kernels": "hf_kernels",
    "hf": "hf_kernels",
    "hf-kernels": "hf_kernels",
    "huggingface": "hf_kernels",
}


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def switch(name: str) -> bool | None:
    """A yes/no variable: True (``1``, ``true``, ``yes``, ``on``), False (``0``, ``false``, ``no``, ``off``), None if unset."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def _flag(name: str) -> bool:
    return switch(name) is True


_ABSOLUTE: dict[str, Path] = {}


def cache_dir() -> Path:
    """``JITKERNELS_CACHE``, else ``$XDG_CACHE_HOME/jitkernels``, else ``~/.cache/jitkernels``."""
    explicit = os.environ.get("JITKERNELS_CACHE")
    if explicit:
        path = _ABSOLUTE.get(explicit)
        if path is None:  # a relative folder is taken from where the process was when it first asked
            path = _ABSOLUTE[explicit] = Path(os.path.abspath(Path(explicit).expanduser()))
        return path
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


def cuda_home_setting() -> tuple[str, str] | None:
    """``("CUDA_HOME", folder)`` or ``("CUDA_PATH", folder)``: the CUDA toolkit the user names, if any."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(name)
        if value:
            return name, value
    return None


def cuda_home() -> str | None:
    """``CUDA_HOME`` / ``CUDA_PATH`` (else JitKernels looks for a toolkit: jitkernels.build.toolchain)."""
    setting = cuda_home_setting()
    return setting[1] if setting else None


def cuda_inc_path() -> str | None:
    """``CUDA_INC_PATH`` (as torch and CMake read it): one more CUDA header folder, after the toolkit's."""
    return os.environ.get("CUDA_INC_PATH", "").strip() or None


def cuda_provision() -> bool:
    """``JITKERNELS_CUDA_PROVISION=0``: never download a CUDA compiler; only a local toolkit builds (default on)."""
    return switch("JITKERNELS_CUDA_PROVISION") is not False


def cuda_index() -> str | None:
    """``JITKERNELS_CUDA_INDEX``: the package indexes (URLs, space separated) CUDA compilers come from; unset: pip's."""
    return os.environ.get("JITKERNELS_CUDA_INDEX", "").strip() or None


def pip_index_url() -> str | None:
    """``PIP_INDEX_URL`` (pip's own), when pip itself cannot be asked for its settings."""
    return os.environ.get("PIP_INDEX_URL", "").strip() or None


def pip_extra_index_url() -> str | None:
    """``PIP_EXTRA_INDEX_URL`` (pip's own), when pip itself cannot be asked for its settings."""
    return os.environ.get("PIP_EXTRA_INDEX_URL", "").strip() or None


def pip_no_index() -> bool:
    """``PIP_NO_INDEX=1`` (pip's own), when pip itself cannot be asked for its settings."""
    return _flag("PIP_NO_INDEX")


def shared_cache_ok() -> bool:
    """``JITKERNELS_SHARED_CACHE=1``: accept a cache folder owned by another (trusted) user, or writable by all."""
    return _flag("JITKERNELS_SHARED_CACHE")


def trusted_orgs_extra() -> list[str]:
    """``JITKERNELS_TRUSTED`` adds publishers or repo ids to the trusted set (comma separated)."""
    raw = os.environ.get("JITKERNELS_TRUSTED", "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def _seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if 0 < value < 1e9 else default  # nan, inf and absurd values: the default (inf broke every load)


def network_timeout() -> float:
    """Seconds before a Hub request is given up (``JITKERNELS_TIMEOUT``, default 10)."""
    return _seconds("JITKERNELS_TIMEOUT", 10.0)


def download_deadline() -> float:
    """``JITKERNELS_DOWNLOAD_DEADLINE``: seconds one build-input download (a CUTLASS release, a CUDA compiler wheel) may take in all
    (default 900): a mirror that trickles bytes never trips the per-read ``JITKERNELS_TIMEOUT``."""
    return _seconds("JITKERNELS_DOWNLOAD_DEADLINE", 900.0)


def download_min_rate() -> float:
    """``JITKERNELS_DOWNLOAD_MIN_RATE``: bytes per second a build-input download must average once it has run
    ``JITKERNELS_TIMEOUT`` seconds (default 10240); slower is given up."""
    return _seconds("JITKERNELS_DOWNLOAD_MIN_RATE", 10240.0)


#: Default of ``JITKERNELS_LOCK_TIMEOUT``: half an hour without any sign of life from the holder.
DEFAULT_LOCK_TIMEOUT = 1800.0


def lock_timeout() -> float:
    """``JITKERNELS_LOCK_TIMEOUT``: seconds a waiter allows the holder of a cache lock to show no progress.

    Progress is the holder's heartbeat (every few seconds while its process runs) or its build log
    growing; a stopped (SIGSTOP) or hung holder shows none. Default 1800.
    """
    return _seconds("JITKERNELS_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT)


def lockfile() -> Path | None:
    """``JITKERNELS_LOCKFILE``: a ``jitkernels lock`` file every load is checked against."""
    value = os.environ.get("JITKERNELS_LOCKFILE")
    return Path(value).expanduser() if value else None


def pins_files() -> list[Path]:
    """``JITKERNELS_PINS``: pin files for the import hook, separated by ``os.pathsep`` (earlier wins)."""
    return [Path(p).expanduser() for p in os.environ.get("JITKERNELS_PINS", "").split(os.pathsep) if p]


def nvcc_threads() -> int | None:
    """``NVCC_THREADS``: ``--threads=N`` for nvcc (as kernel-builder and torch read it)."""
    value = os.environ.get("NVCC_THREADS", "")
    return int(value) if value.isdigit() else None


def cxx() -> str:
    """``CXX``: the host C++ compiler (default ``c++``); part of every native build key."""
    return os.environ.get("CXX") or "c++"


def cc() -> str | None:
    """``CC``: passed to nvcc as ``-ccbin`` when set; part of every native build key."""
    return os.environ.get("CC") or None


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` (huggingface_hub's own), for messages."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def remote_cache_url() -> str | None:
    """``JITKERNELS_REMOTE_CACHE``: an fsspec URL (``s3://``, ``gs://``, ``file://``, ``hf://``); unset: off."""
    return os.environ.get("JITKERNELS_REMOTE_CACHE", "").strip() or None


#: Default of ``JITKERNELS_REMOTE_CACHE_TIMEOUT``.
DEFAULT_REMOTE_CACHE_TIMEOUT = 60.0


def remote_cache_timeout() -> float:
    """``JITKERNELS_REMOTE_CACHE_TIMEOUT``: seconds one remote-cache operation (a lookup with its download, an
    upload) may take; past it, a miss with one warning (default 60)."""
    return _seconds("JITKERNELS_REMOTE_CACHE_TIMEOUT", DEFAULT_REMOTE_CACHE_TIMEOUT)


def remote_cache_mode() -> str:
    """``JITKERNELS_REMOTE_CACHE_MODE``: ``read`` (default: the fleet) or ``write`` (the builder)."""
    return os.environ.get("JITKERNELS_REMOTE_CACHE_MODE", "read").strip().lower() or "read"


def compiler_cache() -> str:
    """``JITKERNELS_COMPILER_CACHE``: ``sccache``, ``ccache``, ``auto`` or ``off`` (default)."""
    return os.environ.get("JITKERNELS_COMPILER_CACHE", "").strip().lower() or "off"


def offline() -> bool:
    """``JITKERNELS_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``): JitKernels downloads no build inputs (CUTLASS archives,
    CUDA compilers).

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


def kernels_hub_cache() -> str | None:
    """Where Hub downloads of kernel repositories go: upstream ``kernels``' ``KERNELS_CACHE``.

    Same meaning as upstream (a huggingface_hub cache folder, so both share
    their downloads); its older name ``HF_KERNELS_CACHE`` is honoured with the
    deprecation warning upstream gives. Unset: huggingface_hub's own cache
    (``HF_HUB_CACHE``). This is not JitKernels' build cache (``JITKERNELS_CACHE``).
    """
    value = os.environ.get("KERNELS_CACHE")
    if value:
        return str(Path(value).expanduser())
    old = os.environ.get("HF_KERNELS_CACHE")
    if old:
        if not _DEPRECATION_SAID:
            import logging

            _DEPRECATION_SAID.append(old)
            logging.getLogger("jitkernels").warning(
                "HF_KERNELS_CACHE will be removed in the future, use KERNELS_CACHE instead "
                "(JitKernels, like upstream kernels, reads kernel downloads from it).")
        return str(Path(old).expanduser())
    return None


_DEPRECATION_SAID: list[str] = []


# -- messages and progress (jitkernels.log, jitkernels.progress) ---------------------------------

def log_level() -> str:
    """``JITKERNELS_LOG_LEVEL``: the ``jitkernels`` logger's level (a name or a number), raw; "" if unset."""
    return os.environ.get("JITKERNELS_LOG_LEVEL", "").strip()


def progress() -> bool | None:
    """``JITKERNELS_PROGRESS``: show (1) or hide (0) progress; None: huggingface_hub's switch decides."""
    return switch("JITKERNELS_PROGRESS")


def hf_progress_bars_disabled() -> bool:
    """``HF_HUB_DISABLE_PROGRESS_BARS=1`` (huggingface_hub's own) also silences JitKernels' progress."""
    return _flag("HF_HUB_DISABLE_PROGRESS_BARS")


def progress_interval() -> float:
    """Seconds between two plain progress lines (``JITKERNELS_PROGRESS_INTERVAL``, default 5, at least 0.1)."""
    try:
        return max(0.1, float(os.environ.get("JITKERNELS_PROGRESS_INTERVAL", "5")))
    except ValueError:
        return 5.0


# -- the upstream kernels package (jitkernels.upstream) -------------------------------------------

def autopatch() -> bool:
    """``JITKERNELS_AUTOPATCH=1``: patch upstream ``kernels`` in every Python process (hooks/README.md)."""
    return _flag("JITKERNELS_AUTOPATCH")


def fallback() -> str:
    """``JITKERNELS_FALLBACK``: ``upstream`` hands kernels JitKernels cannot build to upstream's loader; raw."""
    return os.environ.get("JITKERNELS_FALLBACK", "").strip().lower()


def cold_start() -> str:
    """``JITKERNELS_COLD_START``: ``background`` serves layers with their own code while a cold native kernel
    builds in another process (:mod:`jitkernels.coldstart`); ``block`` (default, or unset) waits; raw."""
    return os.environ.get("JITKERNELS_COLD_START", "").strip().lower()


# -- the machine ----------------------------------------------------------------------------------

def visible_devices() -> tuple[str, str, str]:
    """``CUDA_VISIBLE_DEVICES``, ``NVIDIA_VISIBLE_DEVICES``, ``HIP_VISIBLE_DEVICES`` (``<unset>`` if unset):
    part of the per-boot machine memo's key."""
    return tuple(os.environ.get(name, "<unset>")
                 for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"))
