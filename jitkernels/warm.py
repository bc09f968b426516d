"""The warm path: a pinned kernel already prepared here is one index read and one import.

This module imports nothing heavy (no huggingface_hub, no tomllib, no
dataclasses of ours, no cpp_extension): ``jitkernels.load`` with a commit
hash tries it before touching the rest of the pipeline. Two indexes lead to an
entry: by repository id (written after resolution) and by the name exactly as
the caller wrote it (so a pinned load needs no name mapping).

What every load needs lives here, so that the warm path is three modules of
ours (``jitkernels``, ``jitkernels.config``, this one): the index key
(:func:`env_key`), the per-load integrity rule (:func:`check_entry`), the
cache-owner check (:func:`check_owner`) and the package import
(:func:`import_package`). The cold path imports them from here too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

from . import config

MANIFEST = "manifest.json"
_HEX = frozenset("0123456789abcdef")
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-")

#: (cache root, provider, key, commit, backend) -> module, for repeated loads in one process.
LOADED: dict[tuple, ModuleType] = {}


def _is_commit(revision) -> bool:
    return isinstance(revision, str) and len(revision) in (40, 64) and set(revision) <= _HEX


def _component(text: str) -> str:
    # Same result as cache._component for the names and revisions it accepts (no urllib import).
    return "r-" + text


def name_index_file(provider: str, name: str, commit: str, backend: str, envkey: str) -> Path | None:
    """Index by the name as written (``triton_layer_norm``, ``org/name``); None for unusual names."""
    parts = name.split("/")
    org = config.hf_default_org()
    if not all(p and set(p) <= _SAFE for p in (*parts, org)) or any(p in (".", "..") for p in parts):
        return None
    return config.cache_dir().joinpath(
        "index", provider, "by-name", _component(org), *(_component(p) for p in parts), commit,
        f"{backend}-{envkey}.json",
    )


def read_record(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            record = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "entry" in record else None


def import_entry(record: dict, module_name: str | None = None) -> ModuleType | None:
    """Import a published entry after the cheap integrity check; a damaged entry is discarded (None)."""
    entry = config.cache_dir() / record["entry"]
    problem = check_entry(entry)
    if problem is not None:
        if entry.exists():
            from .entries import discard_entry
            from .log import warning_once

            warning_once(f"The cached kernel {entry.name} is damaged ({problem}); it is rebuilt.")
            discard_entry(entry)
        return None
    return import_package(module_name or record["module"], entry / record["python_name"],
                          what=record.get("repo_id", record["module"]))


def _provider_name(provider) -> str:
    value = getattr(provider, "value", provider)
    if isinstance(value, str) and value.lower() in config.BUILTIN_PROVIDER_ALIASES:
        return config.BUILTIN_PROVIDER_ALIASES[value.lower()]
    from .providers import provider_name  # registered providers, and the error for unknown ones

    return provider_name(provider)


def try_load(provider, name: str, revision: str | None, backend: str | None,
             module_name: str | None = None) -> ModuleType | None:
    """The module for a pinned, already prepared kernel, or None (the caller takes the full pipeline)."""
    if not _is_commit(revision) or config.local_kernels_spec():
        return None
    provider = _provider_name(provider)
    check_owner()
    if not isinstance(name, str):
        return None
    if backend is None:
        if "torch" not in sys.modules:
            return None  # let the pipeline report a missing torch clearly
        from . import environment

        backend = environment.local_backend()
    key = (str(config.cache_dir()), provider, "name:" + name, revision, backend)
    if key in LOADED:
        return LOADED[key]
    return load_indexed(name_index_file(provider, name, revision, backend, env_key(backend)), key, module_name)


def load_indexed(index: Path | None, key: tuple, module_name: str | None = None,
                 digest: str | None = None) -> ModuleType | None:
    """Import the entry an index file points to (memoised under ``key``); None if absent or damaged.

    ``digest``: only an entry made from exactly these inputs will do (a lock file's).
    """
    module = LOADED.get(key)
    if module is not None and digest is None:
        return module
    record = read_record(index)
    if record is None or (digest is not None and record.get("digest") != digest):
        return None
    module = import_entry(record, module_name)
    if module is not None:
        LOADED[key] = module
    return module


def env_key(backend: str) -> str:
    """A short key for everything a prepared entry depends on besides its sources (the warm index key).

    Read from attributes of already imported modules only (torch, sys, os): no import on the warm path
    except, for CUDA, :mod:`jitkernels.environment` for the GPU archs.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    parts = [
        config.RECIPE_VERSION,
        backend,
        torch.__version__,
        str(torch.version.cuda),
        sys.implementation.cache_tag or "",
        getattr(sys, "abiflags", ""),
        os.uname().machine if hasattr(os, "uname") else "",
        sys.platform,
    ]
    if backend == "cuda":
        from . import environment

        parts.append(",".join(environment.cuda_archs()))
        parts.append(config.cuda_home() or "")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def check_entry(entry: Path, full: bool = False) -> str | None:
    """``None`` if the published entry is intact, else what is wrong.

    The cheap rule, run on every load: the manifest exists and every file it
    lists has the recorded size (one ``stat`` per file, nothing read). With
    ``full=True`` every file is also re-hashed (``jitkernels verify``).
    """
    manifest_path = entry / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_bytes())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{manifest_path} is missing or unreadable"
    for rel, size in files.items():
        try:
            actual = os.stat(entry / rel).st_size
        except OSError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} is {actual} bytes, the manifest says {size}"
    if full:
        for rel, digest in manifest.get("sha256", {}).items():
            if hashlib.sha256((entry / rel).read_bytes()).hexdigest() != digest:
                return f"{rel} does not match its recorded sha256"
    return None


_OWNER_CHECKED: set[str] = set()


def check_owner(path: Path | None = None) -> None:
    """Refuse a cache owned by another user: its entries are code we would run.

    Shared caches: make the folder yours (or a group's, with JITKERNELS_SHARED_CACHE=1
    to accept a folder owned by another user you trust, e.g. a read-only fleet cache).
    """
    path = path or config.cache_dir()
    key = str(path)
    if key in _OWNER_CHECKED or not hasattr(os, "geteuid"):
        return
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return  # not created yet: we will create it, as ours
    if owner != os.geteuid() and not config.shared_cache_ok():
        from .errors import CacheError  # noqa: F811

        raise CacheError(
            f"The JitKernels cache {path} belongs to another user (uid {owner}); loading kernels from it "
            f"would run code they control. Use your own cache (JITKERNELS_CACHE=<your folder>), or set "
            f"JITKERNELS_SHARED_CACHE=1 if you trust its owner (e.g. a read-only cache shipped to a fleet)."
        )
    _OWNER_CHECKED.add(key)


def import_package(module_name: str, package_dir: Path, what: str) -> ModuleType:
    """Import ``package_dir`` (a folder with ``__init__.py``) as ``module_name``; reuse it if already imported."""
    init = package_dir / "__init__.py"
    existing = sys.modules.get(module_name)
    if existing is not None and getattr(existing, "__file__", None) == str(init):
        return existing
    if existing is not None and any(package_dir.glob(module_name + ".*so")):
        from .errors import KernelImportError

        # A native library registers torch.ops.<module_name> once per process; a second
        # build of the same extension cannot be loaded next to the first.
        raise KernelImportError(
            f"{what}: {module_name} is already loaded in this process from "
            f"{getattr(existing, '__file__', '?')}; another build of it ({package_dir}) cannot be loaded "
            f"next to it (its torch ops are registered once per process). Restart the process to switch."
        )
    if existing is not None:  # another package under this name: drop it and its submodules
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        module_name, init, submodule_search_locations=[str(package_dir)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - only for a missing file
        from .errors import KernelImportError

        raise KernelImportError(f"{what}: cannot import {init} (missing __init__.py?).")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        from .errors import KernelImportError

        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
        if isinstance(exc, ImportError):
            missing = getattr(exc, "name", None)
            hint = f" The kernel needs the Python package {missing!r}: pip install it." if missing else ""
            raise KernelImportError(f"{what}: importing the kernel's package failed: {exc}.{hint}") from exc
        if isinstance(exc, Exception):
            raise KernelImportError(f"{what}: the kernel's package raised while importing: {exc!r}") from exc
        raise
    return module
