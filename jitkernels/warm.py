"""The warm path: a pinned kernel already prepared here is one index read and one import.

This module is the base of the cache runtime and imports nothing of ours but
:mod:`jitkernels.config` (and :mod:`jitkernels.errors` / :mod:`jitkernels.log`,
two leaves, only to raise or warn): ``jitkernels.load`` with a commit hash
tries it before touching the rest of the pipeline, so a warm load is three
modules of ours. The cold path builds on what is here, never the reverse:

* the small shared rules: :func:`is_commit`, :func:`component` (one safe path
  component), :func:`read_json`;
* the per-boot machine memo (:func:`machine_memo`: backend and GPU archs
  without initialising CUDA; :mod:`jitkernels.environment` fills it);
* the index key (:func:`env_key`), the per-load integrity rule
  (:func:`check_entry`), the cache-owner check (:func:`check_owner`), the
  trust rule for cached code (:func:`trusted`) and the package import
  (:func:`import_package`).

Two indexes lead to an entry: by repository id (written after resolution) and
by the name exactly as the caller wrote it (so a pinned load needs no name
mapping). A damaged entry makes the warm path step aside (``None``); the cold
path reports it once, discards and rebuilds it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import stat
import sys
from pathlib import Path
from types import ModuleType

from . import config

MANIFEST = "manifest.json"
_HEX = frozenset("0123456789abcdef")
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-")

#: (cache root, provider, key, commit, backend) -> module, for repeated loads in one process.
LOADED: dict[tuple, ModuleType] = {}

#: How a kernel's publisher came to be trusted. Durable grants hold for every later load of that
#: commit (they are facts about the publisher); the caller's own grants (``trust_remote_code``,
#: ``JITKERNELS_TRUSTED``) hold only for the calls that give them again.
DURABLE_GRANTS = frozenset({"default-list", "hub-flag", "local"})


# -- shared rules ---------------------------------------------------------------------------

def is_commit(revision) -> bool:
    """A full commit id (40 hex, or 64 for SHA-256 repositories)."""
    return isinstance(revision, str) and len(revision) in (40, 64) and set(revision) <= _HEX


def component(text: str) -> str:
    """One safe path component for arbitrary text (revisions may contain ``/`` or ``..``)."""
    return "r-" + "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def read_json(path: Path | None) -> dict | None:
    """The JSON object at ``path``, or ``None`` if missing, unreadable or not an object."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            value = json.loads(fh.read())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# -- the machine ------------------------------------------------------------------------------

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
    parts = [
        os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        os.environ.get("NVIDIA_VISIBLE_DEVICES", "<unset>"),
        os.environ.get("HIP_VISIBLE_DEVICES", "<unset>"),
        _torch().__version__,
    ]
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


def machine_memo_file() -> Path:
    return config.cache_dir() / "machine" / f"{machine_key()}.json"


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
    key (:mod:`jitkernels.native.spec`), checked when a kernel is resolved again.
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


def _warm_env_key(backend: str) -> str | None:
    if backend != "cuda":
        return env_key(backend)
    archs = archs_override()
    if archs is None:
        memo = machine_memo()
        if memo is None:
            return None
        archs = memo.get("archs") or []
    return env_key(backend, archs)


# -- entries ------------------------------------------------------------------------------------

def check_entry(entry: Path, full: bool = False) -> str | None:
    """``None`` if the published entry is intact, else what is wrong.

    The cheap rule, run on every load: the manifest is a JSON object whose
    ``files`` maps each file to its size, and every file has that size (one
    ``stat`` each, nothing read). With ``full=True`` every file is also
    re-hashed against ``sha256`` (``jitkernels verify``).
    """
    manifest_path = entry / MANIFEST
    manifest = read_json(manifest_path)
    files = manifest.get("files") if manifest is not None else None
    if not isinstance(files, dict) or not files or not all(
            isinstance(rel, str) and type(size) is int for rel, size in files.items()):
        return f"{manifest_path} is missing, unreadable or not a manifest"
    for rel, size in files.items():
        if rel.startswith("/") or ".." in rel.split("/") or "\0" in rel:
            return f"{manifest_path} lists {rel!r}, outside the entry"
        try:
            st = os.lstat(entry / rel)
        except OSError:
            return f"{rel} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{rel} is not a regular file"
        if st.st_size != size:
            return f"{rel} is {st.st_size} bytes, the manifest says {size}"
    if full:
        hashes = manifest.get("sha256")
        if not isinstance(hashes, dict) or set(hashes) != set(files):
            return f"{manifest_path} does not record a sha256 for every file"
        for rel, digest in hashes.items():
            try:
                actual = hashlib.sha256((entry / rel).read_bytes()).hexdigest()
            except OSError as exc:
                return f"{rel} cannot be read ({exc.strerror})"
            if actual != digest:
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
        from .errors import CacheError

        raise CacheError(
            f"The JitKernels cache {path} belongs to another user (uid {owner}); loading kernels from it "
            f"would run code they control. Use your own cache (JITKERNELS_CACHE=<your folder>), or set "
            f"JITKERNELS_SHARED_CACHE=1 if you trust its owner (e.g. a read-only cache shipped to a fleet)."
        )
    _OWNER_CHECKED.add(key)


def trusted(record: dict, caller_grant: str | None) -> bool:
    """May the code an index record points to run for this call?

    Yes if the caller grants trust now (``caller_grant``: ``trust_remote_code`` or
    ``JITKERNELS_TRUSTED``), or if the record holds a durable grant (see :data:`DURABLE_GRANTS`).
    """
    return caller_grant is not None or record.get("trust") in DURABLE_GRANTS


def caller_grant(repo_id: str | None, trust_remote_code) -> str | None:
    """The trust the caller gives ``repo_id`` for this call, without asking anyone: a grant name or None."""
    if trust_remote_code is True:
        return "trust_remote_code"
    if repo_id is None:
        return None
    if isinstance(trust_remote_code, (list, tuple, set, frozenset)) and repo_id in trust_remote_code:
        return "trust_remote_code"
    allowed = config.trusted_orgs_extra()
    if repo_id in allowed or repo_id.split("/", 1)[0] in allowed:
        return "JITKERNELS_TRUSTED"
    if repo_id.split("/", 1)[0] in config.DEFAULT_TRUSTED_PUBLISHERS:
        return "default-list"
    return None


#: ``jitkernels cache`` reads "last use" from an entry folder's mtime, refreshed at most this often.
USE_STAMP_EVERY = 3600.0


def note_use(entry: Path) -> None:
    """Record that ``entry`` was loaded (its folder's mtime; one ``stat``, a ``utime`` once an hour).

    Access times are no record of use (``noatime`` mounts, ``jitkernels verify`` reads every file).
    A cache this process cannot write (read-only, another user's) is left as it is.
    """
    import time

    try:
        if time.time() - os.stat(entry).st_mtime > USE_STAMP_EVERY:
            os.utime(entry)
    except OSError:
        pass


def valid_record(record) -> bool:
    """An index record the warm path may follow: its entry is one folder under ``entries/``, its names are
    identifiers, and it needs no other kernel loaded first (``kernel-depends`` take the pipeline)."""
    if not isinstance(record, dict) or record.get("kernel_depends"):
        return False
    entry, module, package = record.get("entry"), record.get("module"), record.get("python_name")
    if not isinstance(entry, str) or not isinstance(module, str) or not isinstance(package, str):
        return False
    parts = entry.split("/")
    return (len(parts) == 2 and parts[0] == "entries" and parts[1] not in ("", ".", "..") and "\0" not in entry
            and package.isidentifier() and all(p.isidentifier() for p in module.split(".")))


def import_entry(record: dict, module_name: str | None = None) -> ModuleType | None:
    """Import a published entry after the owner and cheap integrity checks; None if absent, damaged or invalid."""
    if not valid_record(record):
        return None
    check_owner()
    entry = config.cache_dir() / record["entry"]
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
        raise


def load_indexed(index: Path | None, key: tuple, module_name: str | None = None, digest: str | None = None,
                 grant: str | None = None) -> ModuleType | None:
    """Import the entry an index file points to (memoised under ``key``); None if absent, damaged or untrusted.

    ``digest``: only an entry made from exactly these inputs will do (a lock file's).
    ``grant``: the trust the caller gives for this call (see :func:`trusted`).
    """
    if digest is None:
        module = memo(key, grant)
        if module is not None:
            return module
    record = read_json(index)
    if record is None or not trusted(record, grant):
        return None
    if digest is not None and record.get("digest") != digest:
        return None
    module = import_entry(record, module_name)
    if module is not None:
        remember(key, module, record.get("trust"))
    return module


#: key -> the trust the loaded module's record carried (a memo hit must pass the same rule).
_LOADED_TRUST: dict[tuple, str | None] = {}


def memo(key: tuple, grant: str | None) -> ModuleType | None:
    """A module loaded before in this process under ``key``, if this call may use it (see :func:`trusted`)."""
    module = LOADED.get(key)
    if module is None or not trusted({"trust": _LOADED_TRUST.get(key)}, grant):
        return None
    return module


def remember(key: tuple, module: ModuleType, trust: str | None) -> None:
    LOADED[key] = module
    _LOADED_TRUST[key] = trust


def name_index_file(provider: str, name: str, commit: str, backend: str, envkey: str) -> Path | None:
    """Index by the name as written (``triton_layer_norm``, ``org/name``); None for unusual names."""
    parts = name.split("/")
    org = config.hf_default_org()
    if not all(p and set(p) <= _SAFE for p in (*parts, org)) or any(p in (".", "..") for p in parts):
        return None
    return config.cache_dir().joinpath(
        "index", provider, "by-name", component(org), *(component(p) for p in parts), commit,
        f"{backend}-{envkey}.json",
    )


def refs_file(provider: str, repo_id: str, revision: str | None) -> Path:
    """Where the commit ``revision`` (None: the default) of ``repo_id`` last resolved to is remembered."""
    parts = [component(p) if p in (".", "..") else p for p in repo_id.split("/")]
    return config.cache_dir().joinpath("refs", provider, *parts, component(revision or "<default>") + ".json")


def last_resolved(provider: str, repo_id: str, revision: str | None) -> str | None:
    record = read_json(refs_file(provider, repo_id, revision))
    commit = record.get("commit") if record else None
    return commit if is_commit(commit) else None


def _backend_or_memo(backend: str | None) -> str | None:
    if backend is not None:
        return backend
    if "torch" not in sys.modules:
        return None  # let the pipeline report a missing torch clearly
    memo = machine_memo()
    return memo["backend"] if memo is not None else None


def try_load(provider, name: str, revision: str | None, backend: str | None,
             module_name: str | None = None, trust_remote_code=False, version: int | None = None) -> ModuleType | None:
    """The module for a kernel already prepared here, without resolving anything; else None.

    Served here: a pinned commit; a kernel of ``LOCAL_KERNELS`` whose files did not change
    since it was prepared (:func:`try_load_local`); offline (``HF_HUB_OFFLINE=1``), a
    branch, tag, ``vN`` or the default revision, as the commit it resolved to last time.
    Everything else (an online unpinned load must ask the Hub; a lock file must be checked; a bad
    ``revision``/``version`` pair must be reported) is the pipeline's.
    """
    if config.lockfile() is not None or not isinstance(name, str) or not isinstance(revision, (str, type(None))):
        return None
    if version is not None:
        if revision is not None or type(version) is not int or version < 0:
            return None
        revision = f"v{version}"  # upstream's convention, as the pipeline's revision_for
    provider = config.BUILTIN_PROVIDER_ALIASES.get(str(getattr(provider, "value", provider)).lower())
    if provider is None:
        return None  # a registered provider of its own: the pipeline knows it
    check_owner()
    backend = _backend_or_memo(backend)
    if backend is None:
        return None
    repo_id = name if "/" in name else f"{config.hf_default_org()}/{name.replace('_', '-')}"
    if config.local_kernels_spec():
        local = parse_local_kernels(config.local_kernels_spec())
        if local is None:
            return None  # malformed: the pipeline says how
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
    envkey = _warm_env_key(backend)
    if envkey is None:
        return None
    return load_indexed(name_index_file(provider, name, commit, backend, envkey), key, module_name, grant=grant)


# -- local kernels ---------------------------------------------------------------------------------

#: Folders never part of a local kernel.
SKIP_DIRS = frozenset({".git", "__pycache__", ".pytest_cache", ".mypy_cache", "result"})


def parse_local_kernels(spec: str) -> dict[str, Path] | None:
    """``"org/name=/path:org2/name2=/path2"`` -> ``{repo_id: path}`` (upstream's format); None if malformed."""
    mapping: dict[str, Path] = {}
    for item in filter(None, (part.strip() for part in spec.split(":"))):
        repo_id, sep, path = item.partition("=")
        if not sep or not repo_id.strip() or not path.strip():
            return None
        mapping[repo_id.strip()] = Path(path.strip()).expanduser()
    return mapping


def tree_stats(root: str) -> list[list]:
    """``[[path, size, mtime_ns, ctime_ns, inode], ...]`` for every file of a local kernel folder (sorted).

    What a local kernel's memo is checked against: any file added, removed or touched
    anywhere in the folder means the kernel is planned, hashed and prepared again.
    """
    stats = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            st = os.stat(os.path.join(dirpath, name))  # the target of a link: what the build reads
            # ctime and inode too: copies that keep the mtime (cp -p, rsync -a, tar) still change those
            stats.append([name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"), st.st_size,
                          st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return stats


def local_memo_file(path: str, backend: str, envkey: str) -> Path:
    digest = hashlib.sha256(f"{path}|{backend}|{envkey}".encode()).hexdigest()[:24]
    return config.cache_dir() / "local" / f"{digest}.json"


def try_load_local(path: str, backend: str | None, module_name: str | None = None) -> ModuleType | None:
    """A local kernel folder prepared before, whose files are unchanged (one ``stat`` each): import it, or None."""
    check_owner()
    backend = _backend_or_memo(backend)
    envkey = _warm_env_key(backend) if backend is not None else None
    if envkey is None:
        return None
    path = os.path.realpath(path)
    local = read_json(local_memo_file(path, backend, envkey))
    record = local.get("record") if local else None
    if not valid_record(record):
        return None
    try:
        if tree_stats(path) != local.get("tree"):
            return None
    except OSError:
        return None
    return import_entry(record, module_name)


#: package ``__init__.py`` -> the module made from it: one entry is one module, whatever name it was asked by.
_BY_PACKAGE: dict[str, ModuleType] = {}


def import_package(module_name: str, package_dir: Path, what: str) -> ModuleType:
    """Import ``package_dir`` (a folder with ``__init__.py``) as ``module_name``; reuse it if already imported.

    A package already imported from the same entry under another name (another alias of the
    import hook, or ``jitkernels.load``) is that same module.
    """
    init = package_dir / "__init__.py"
    known = _BY_PACKAGE.get(str(init))
    if known is not None and sys.modules.get(known.__name__) is known:
        return known
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
    _BY_PACKAGE[str(init)] = module
    return module
