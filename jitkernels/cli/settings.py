"""``doctor``'s ``[settings]`` section: every ``JITKERNELS_*`` variable that is set, and what is wrong with it.

A misspelt name (``JITKERNELS_REMOTE_CAHCE``) or a value the code does not
understand (``JITKERNELS_COMPILER_CACHE=ccahe``, a lock file that does not
exist) is silent until the code that reads it runs, if it ever does. The
loaders stay lenient where they always were; doctor names each problem with
the fix, and says what the reader does with the value. The accepted words come
from the modules that read the variables where those modules name them
(compiler-cache and remote-cache modes, cold-start words, CUTLASS pins);
the fallback words mirror :func:`jitkernels.upstream.patching.fallback_mode`.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import stat
from pathlib import Path

from .. import config

SWITCHES = ("JITKERNELS_AUTOPATCH", "JITKERNELS_OFFLINE", "JITKERNELS_SHARED_CACHE", "JITKERNELS_VERBOSE",
            "JITKERNELS_PROGRESS", "JITKERNELS_DISABLE_BUILD", "JITKERNELS_CUDA_PROVISION",
            "JITKERNELS_IGNORE_TOOLCHAIN_BOUNDS")
#: What a switch that is neither yes nor no means where it is read (otherwise: no).
UNCLEAR_SWITCH = {"JITKERNELS_CUDA_PROVISION": "read as yes (the default)",
                  "JITKERNELS_PROGRESS": "read as unset (progress shows where huggingface_hub's switch allows)"}
#: Positive numbers; anything else is replaced by the default where they are read.
NUMBERS = ("JITKERNELS_TIMEOUT", "JITKERNELS_REMOTE_CACHE_TIMEOUT", "JITKERNELS_LOCK_TIMEOUT",
           "JITKERNELS_DOWNLOAD_DEADLINE", "JITKERNELS_DOWNLOAD_MIN_RATE", "JITKERNELS_PROGRESS_INTERVAL")
FILES = ("JITKERNELS_LOCKFILE", "JITKERNELS_PINS")
OTHERS = ("JITKERNELS_CACHE", "JITKERNELS_CUTLASS_DIR", "JITKERNELS_TRUSTED", "JITKERNELS_CUDA_INDEX",
          "JITKERNELS_CUTLASS_URL", "JITKERNELS_REMOTE_CACHE", "JITKERNELS_HF_ORG", "JITKERNELS_COLD_START",
          "JITKERNELS_FALLBACK", "JITKERNELS_COMPILER_CACHE", "JITKERNELS_REMOTE_CACHE_MODE", "JITKERNELS_LOG_LEVEL")
#: Read by the test suite and the benchmarks (a kernels-community checkout), not by the package.
FOR_TESTS = ("JITKERNELS_KC",)
KNOWN = SWITCHES + NUMBERS + FILES + OTHERS + FOR_TESTS
#: ``JITKERNELS_CUTLASS_3_8_DIR``: one CUTLASS version's source root.
VERSION_DIR = re.compile(r"^JITKERNELS_CUTLASS_\d+_\d+_DIR$")


def _choice(value: str, accepted, meaning: str, use: str) -> str | None:
    if value.strip().lower() in accepted:
        return None
    return f"not understood ({meaning}); use {use}"


def _is_pipe(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(path.stat().st_mode)
    except OSError:
        return False


def _problem(name: str, value: str) -> str | None:
    """What is wrong with ``name=value``, or None."""
    if name in SWITCHES:
        if config.switch(name) is None and value.strip():
            meaning = UNCLEAR_SWITCH.get(name, "read as no")
            return f"not understood as yes or no (1/true/yes/on or 0/false/no/off): {meaning}"
        return None
    if name == "JITKERNELS_PROGRESS_INTERVAL":  # read as max(0.1, value), not as the other numbers
        try:
            float(value)
        except ValueError:
            return "not a number of seconds: the default (5) is used"
        return None
    if name in NUMBERS:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        return None if 0 < number < 1e9 else "not a positive number of seconds (bytes per second for the rate): " \
                                               "the default is used"
    if name in FILES:  # read as their loaders read them: a missing or malformed file fails every load it serves
        from ..errors import LockfileError
        from ..hub import _pins
        from ..upstream.lockfiles import read_lock

        lockfile = config.lockfile()
        paths = ([lockfile] if lockfile else []) if name == "JITKERNELS_LOCKFILE" else config.pins_files()
        # Loads accept a pipe (<(...)); reading it here would take its content or wait for a writer.
        paths = [path for path in paths if not _is_pipe(path)]
        try:
            for path in paths:
                if name == "JITKERNELS_LOCKFILE":
                    read_lock(path, "lock file (JITKERNELS_LOCKFILE)")
                else:
                    _pins._file_pins(str(path))
        except LockfileError as exc:
            said = str(exc).rstrip().rstrip(".")
            return f"{said}. Loads that read it fail until it is fixed or the variable is unset."
        return None
    if name == "JITKERNELS_CUTLASS_DIR":
        folder = config.cutlass_dir()
        return None if folder is None or folder.is_dir() else f"{folder} is not a folder"
    if VERSION_DIR.match(name):
        from ..inputs import cutlass

        dependency = name.removeprefix("JITKERNELS_").removesuffix("_DIR").lower()
        if dependency not in cutlass.PINS:
            return f"JitKernels pins no {dependency}, so this does nothing (it pins {', '.join(sorted(cutlass.PINS))})"
        root = config.cutlass_version_dir(dependency)
        if root is not None and not (root / "include" / "cutlass" / "cutlass.h").is_file():
            return f"{root} has no include/cutlass/cutlass.h: builds that need {dependency} fail until it is fixed"
        return None
    if name == "JITKERNELS_CUTLASS_URL":
        return None if "{version}" in value else "has no {version} placeholder: every CUTLASS version gets the same URL"
    if name == "JITKERNELS_HF_ORG":
        from ..errors import InvalidKernelNameError
        from ..identity import hf_repo_id

        try:
            hf_repo_id(f"{value}/kernel")
        except InvalidKernelNameError:
            return "not a Hub organisation name (letters, digits, '-', '_', '.'): bare kernel names cannot be used"
        return None
    if name == "JITKERNELS_COLD_START":
        from ..coldstart import _OFF_WORDS, BACKGROUND

        return _choice(value, (BACKGROUND, *_OFF_WORDS), "cold builds block", "'background' or 'block'")
    if name == "JITKERNELS_FALLBACK":
        return _choice(value, ("upstream", "", "none", "off", "0", "false", "no"), "no fallback",
                       "'upstream' or unset it")
    if name == "JITKERNELS_COMPILER_CACHE":
        from ..build.native.compiler_cache import MODES

        return _choice(value, (*MODES, "0", "no", "false", "none"), "every native build fails until it is fixed",
                       " or ".join(repr(m) for m in MODES))
    if name == "JITKERNELS_REMOTE_CACHE_MODE":
        from ..cache.remote import MODES

        return _choice(value, MODES, "the remote cache is not used", " or ".join(repr(m) for m in MODES))
    if name == "JITKERNELS_LOG_LEVEL":
        level = logging.getLevelName(value.strip().upper())
        return None if value.strip().isdigit() or isinstance(level, int) else \
            "not a logging level (DEBUG, INFO, WARNING, ERROR): ignored"
    if name == "JITKERNELS_REMOTE_CACHE":
        from ..cache import remote
        from ..errors import JitKernelsError

        try:
            configured = remote.configured()
        except JitKernelsError as exc:
            return str(exc)
        if configured is None and remote._resting(config.remote_cache_url().rstrip("/")):
            return (f"could not be reached within {config.remote_cache_timeout():.0f}s or set up (the warning above "
                    f"says which): loads treat it as a miss")
        return None
    return None


def report() -> dict:
    """``{variable: value}`` for every ``JITKERNELS_*`` variable set, and ``problems``: ``{variable: what}``."""
    environ = os.environ
    values, problems = {}, {}
    for name in sorted(n for n in environ if n.startswith("JITKERNELS_")):
        value = environ[name]
        values[name] = value
        if name in KNOWN or VERSION_DIR.match(name):
            try:
                problem = _problem(name, value)
            except Exception as exc:  # doctor reports; it never fails on a setting
                problem = f"could not be checked: {type(exc).__name__}: {exc}"
        else:
            close = difflib.get_close_matches(name, KNOWN, n=2, cutoff=0.8)
            if name.startswith("JITKERNELS_CUTLASS_") and name.endswith(("_DIR", "_DIRS")):
                close = ["JITKERNELS_CUTLASS_<major>_<minor>_DIR (e.g. JITKERNELS_CUTLASS_3_8_DIR)"]
            problem = "not a JitKernels setting: it does nothing" + (
                f". Did you mean {' or '.join(close)}?" if close else "")
        if problem:
            problems[name] = problem
    return {"set": values or None, "problems": problems or None}
