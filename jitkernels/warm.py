"""The warm path: a kernel already prepared here is one index read and one import.

``jitkernels.load`` (and the import hook) try :func:`try_load` before anything
else. It serves, without resolving anything: a pinned commit; a kernel of
``LOCAL_KERNELS`` (or ``load_local``) whose files did not change since it was
prepared (:func:`try_load_local`); offline (``HF_HUB_OFFLINE=1``), a branch,
tag, ``vN`` or the default revision, as the commit it resolved to last time.
Everything else (an online unpinned load must ask the Hub; a lock file must
be checked; a bad ``revision``/``version`` pair must be reported) returns
``None`` and is the pipeline's, which uses :func:`load_indexed` for its own
one cache lookup.

It imports no provider, planner or builder, no huggingface_hub, no
tomllib: only the foundation and the cache's index and manifest. A damaged
entry makes it step aside (``None``); the cold path reports it once, discards
and rebuilds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from . import config, machine
from .cache import layout
from .cache.files import check_owner, read_json
from .cache.index import last_resolved, local_record, note_use, valid_record
from .cache.manifest import check_entry
from .errors import InvalidKernelNameError
from .identity import hf_repo_id, is_commit, parse_local_kernels, revision_for
from .importer import import_package
from .trust import caller_grant, trusted

#: (cache root, provider, key, commit, backend) -> module, for repeated loads in one process.
LOADED: dict[tuple, ModuleType] = {}
#: key -> the trust the loaded module's record carried (a memo hit must pass the same rule).
_LOADED_TRUST: dict[tuple, str | None] = {}


def memo(key: tuple, grant: str | None) -> ModuleType | None:
    """A module loaded before in this process under ``key``, if this call may use it (see :mod:`jitkernels.trust`)."""
    module = LOADED.get(key)
    if module is None or not trusted(_LOADED_TRUST.get(key), grant):
        return None
    return module


def remember(key: tuple, module: ModuleType, trust: str | None) -> None:
    LOADED[key] = module
    _LOADED_TRUST[key] = trust


def loaded_for(repo_id: str) -> list[ModuleType]:
    """The modules loaded in this process for ``repo_id`` (by repo id or by name) from the current cache."""
    root = str(config.cache_dir())
    return [module for key, module in list(LOADED.items())
            if key[:1] == (root,) and key[2:3] in ((repo_id,), ("name:" + repo_id,))]


def import_entry(record: dict, module_name: str | None = None) -> ModuleType | None:
    """Import a published entry after the owner and cheap integrity checks; None if absent, damaged or invalid."""
    if not valid_record(record):
        return None
    check_owner()
    entry = layout.root() / record["entry"]
    if check_entry(entry) is not None:
        return None  # the cold path reports it once, discards and rebuilds it
    try:
        module = import_package(module_name or record["module"], entry / record["python_name"],
                                what=record.get("repo_id", record["module"]))
        note_use(entry)
        return module
    except ImportError:
        if not entry.exists():
            return None  # removed meanwhile (`jitkernels cache prune`): the cold path makes it again
        from .cache.entries import damaged_after_failed_import

        if damaged_after_failed_import(entry, record["python_name"]) is not None:
            return None  # reported and removed: the cold path makes it again
        raise


def load_indexed(index: Path | None, key: tuple, module_name: str | None = None, digest: str | None = None,
                 grant: str | None = None) -> ModuleType | None:
    """Import the entry an index file points to (memoised under ``key``); None if absent, damaged or untrusted.

    ``digest``: only an entry made from exactly these inputs will do (a lock file's).
    ``grant``: the trust the caller gives for this call (see :mod:`jitkernels.trust`).
    """
    if digest is None:
        module = memo(key, grant)
        if module is not None:
            return module
    record = read_json(index)
    if record is None or not trusted(record.get("trust"), grant):
        return None
    if digest is not None and record.get("digest") != digest:
        return None
    module = import_entry(record, module_name)
    if module is not None:
        remember(key, module, record.get("trust"))
    return module


def try_load(provider, name: str, revision: str | None, backend: str | None,
             module_name: str | None = None, trust_remote_code=False, version: int | None = None) -> ModuleType | None:
    """The module for a kernel already prepared here, without resolving anything; else None (see the module doc)."""
    if config.lockfile() is not None or not isinstance(name, str) or not isinstance(revision, (str, type(None))):
        return None
    provider = config.BUILTIN_PROVIDER_ALIASES.get(str(getattr(provider, "value", provider)).lower())
    if provider is None:
        return None  # a registered provider of its own: the pipeline knows it
    try:
        revision = revision_for(revision, version)
        repo_id = hf_repo_id(name)
        local = parse_local_kernels(config.local_kernels_spec())
    except InvalidKernelNameError:
        return None  # the pipeline says what is wrong
    check_owner()
    backend = machine.known_backend(backend)
    if backend is None:
        return None
    if repo_id in local:
        return try_load_local(str(local[repo_id]), backend, module_name)
    commit = revision
    if not is_commit(commit):
        if not config.hf_offline():
            return None
        commit = last_resolved(provider, repo_id, revision)
        if commit is None:
            return None
    key = (str(config.cache_dir()), provider, "name:" + name, commit, backend)
    grant = caller_grant(repo_id, trust_remote_code)
    module = memo(key, grant)
    if module is not None:
        return module
    envkey = machine.known_env_key(backend)
    if envkey is None:
        return None
    return load_indexed(layout.name_index_file(provider, name, commit, backend, envkey), key, module_name,
                        grant=grant)


def try_load_local(path: str, backend: str | None, module_name: str | None = None) -> ModuleType | None:
    """A local kernel folder prepared before, whose files are unchanged (one ``stat`` each): import it, or None."""
    check_owner()
    backend = machine.known_backend(backend)
    envkey = machine.known_env_key(backend) if backend is not None else None
    if envkey is None:
        return None
    record = local_record(os.path.realpath(path), backend, envkey)
    return import_entry(record, module_name) if record is not None else None
