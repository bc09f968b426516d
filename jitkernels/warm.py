"""The warm path: a pinned kernel already prepared here is one index read and one import.

This module imports nothing heavy (no huggingface_hub, no tomllib, no
dataclasses of ours, no cpp_extension): ``jitkernels.load`` with a commit
hash tries it before touching the rest of the pipeline. Two indexes lead to an
entry: by repository id (written after resolution) and by the name exactly as
the caller wrote it (so a pinned load needs no name mapping).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType

from . import config, environment
from .importer import import_package
from .log import warning_once

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
_SAFE_RE = re.compile(r"^[A-Za-z0-9_.~-]+$")
#: (cache root, provider, key, commit, backend) -> module, for repeated loads in one process.
LOADED: dict[tuple, ModuleType] = {}


def _component(text: str) -> str:
    # Same result as cache._component for the names and revisions it accepts (no urllib import).
    return "r-" + text


def name_index_file(provider: str, name: str, commit: str, backend: str, envkey: str) -> Path | None:
    """Index by the name as written (``triton_layer_norm``, ``org/name``); None for unusual names."""
    parts = name.split("/")
    org = config.hf_default_org()
    if not all(_SAFE_RE.match(p) for p in (*parts, org)) or any(p in (".", "..") for p in parts):
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
    from .entries import check_entry, discard_entry

    entry = config.cache_dir() / record["entry"]
    problem = check_entry(entry)
    if problem is not None:
        if entry.exists():
            warning_once(f"The cached kernel {entry.name} is damaged ({problem}); it is rebuilt.")
            discard_entry(entry)
        return None
    return import_package(module_name or record["module"], entry / record["python_name"],
                          what=record.get("repo_id", record["module"]))


def try_load(provider: str, name: str, revision: str | None, backend: str | None,
             module_name: str | None = None) -> ModuleType | None:
    """The module for a pinned, already prepared kernel, or None (the caller takes the full pipeline)."""
    if not revision or not _COMMIT_RE.match(revision) or config.local_kernels_spec():
        return None
    from .cache import check_owner

    check_owner()
    if not isinstance(name, str):
        return None
    if backend is None:
        if "torch" not in sys.modules:
            return None  # let the pipeline report a missing torch clearly
        backend = environment.local_backend()
    key = (str(config.cache_dir()), provider, "name:" + name, revision, backend)
    module = LOADED.get(key)
    if module is not None:
        return module
    record = read_record(name_index_file(provider, name, revision, backend, environment.env_key(backend)))
    if record is None:
        return None
    module = import_entry(record, module_name)
    if module is not None:
        LOADED[key] = module
    return module
