"""Every path of the cache, in one place; :data:`LAYOUT` describes them (docs/cache.md shows it verbatim).

The root is ``config.cache_dir()`` (``~/.cache/jitkernels`` or ``JITKERNELS_CACHE``).
Revisions and odd names never become path components as they are: :func:`component`
makes one safe component of any text.

Stdlib only: the warm path computes its index paths here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .. import config

#: The layout, as docs/cache.md shows it (tests/test_docs.py checks that the page holds exactly this).
LAYOUT = """\
refs/<provider>/<org>/<name>/<revision>.json     last commit a branch/tag/version resolved to
index/<provider>/<org>/<name>/<commit>/<backend>-<envkey>.json
                                                 warm-path index: commit -> published entry (+ trust)
index/<provider>/by-name/<org>/<name as written>/<commit>/<backend>-<envkey>.json
                                                 the same, by the name the caller wrote
local/<digest>.json                              memo of a local kernel folder: its files' stats -> entry
trust/<provider>/<org>/<name>/<commit>.json      durable trust grants (the Hub's publisher flag)
entries/<entry name>/                            published, immutable: a kernel package, a git source,
                                                 CUTLASS headers (cutlass-<version>), a CUDA compiler
                                                 provisioned from the package index (cuda-<release>-<arch>)
    manifest.json                                what it is, how it was made, file sizes and sha256
    <python_name>/ | tree/ | include/ | bin/...  the importable package (+ library) | a source tree | headers
                                                 | a CUDA home (bin/nvcc, nvvm/, include/, lib/)
builds/<workspace>/                              a native build's sources and objects (resume, incremental)
logs/<extension>.log                             full compiler output of the last build
background/<entry name>.json                     a background build (cold start): who, what, its log, a failure
logs/background/<entry name>.<host>.<pid>.log    that builder's whole output (progress, errors); pid: who asked
staging/<prefix>.<host>.<boot>.<pid>.<random>/   private work folders, each owned by a file lock
locks/<sha256 of the key>.lock                   filelock files, and <lock>.holder.json: who holds them
machine/<key>.json                               GPU backend/archs detected once per boot
lockchecks/<sha256 of a lock entry>.txt          the digest whose sources matched that JITKERNELS_LOCKFILE entry
"""

MANIFEST = "manifest.json"
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-")


def stays_inside(rel) -> bool:
    """A ``/``-separated relative path that cannot leave the folder it is joined to: no ``..``, ``.`` or
    empty part, not absolute, no NUL or backslash. Paths from a Hub listing, an archive or a manifest."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def root() -> Path:
    return config.cache_dir()


def component(text: str) -> str:
    """One safe path component for arbitrary text (revisions may contain ``/`` or ``..``)."""
    return "r-" + "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def _repo_parts(repo_id: str) -> list[str]:
    return [component(part) if part in (".", "..") else part for part in repo_id.split("/")]


def index_file(provider: str, repo_id: str, commit: str, backend: str, envkey: str) -> Path:
    return root().joinpath("index", provider, *_repo_parts(repo_id), commit, f"{backend}-{envkey}.json")


def name_index_file(provider: str, name: str, commit: str, backend: str, envkey: str) -> Path | None:
    """Index by the name as written (``triton_layer_norm``, ``org/name``); None for unusual names."""
    parts = name.split("/")
    org = config.hf_default_org()
    if not all(p and set(p) <= _SAFE for p in (*parts, org)) or any(p in (".", "..") for p in parts):
        return None
    return root().joinpath("index", provider, "by-name", component(org), *(component(p) for p in parts), commit,
                           f"{backend}-{envkey}.json")


def refs_file(provider: str, repo_id: str, revision: str | None) -> Path:
    """Where the commit ``revision`` (None: the default) of ``repo_id`` last resolved to is remembered."""
    return root().joinpath("refs", provider, *_repo_parts(repo_id), component(revision or "<default>") + ".json")


def local_memo_file(path: str, backend: str, envkey: str) -> Path:
    digest = hashlib.sha256(f"{path}|{backend}|{envkey}".encode()).hexdigest()[:24]
    return root() / "local" / f"{digest}.json"


def trust_file(provider: str, repo_id: str, commit: str) -> Path:
    return root().joinpath("trust", provider, *_repo_parts(repo_id), f"{commit}.json")


def entries_dir() -> Path:
    return root() / "entries"


def entry_dir(name: str) -> Path:
    return entries_dir() / name


def builds_dir() -> Path:
    return root() / "builds"


def log_file(name: str) -> Path:
    return root() / "logs" / f"{name}.log"


def background_record(name: str) -> Path:
    """The record of a background build of entry ``name`` (:mod:`jitkernels.coldstart`)."""
    return root() / "background" / f"{name}.json"


def background_log(name: str, owner: str) -> Path:
    """The whole output of the background builder of entry ``name`` that ``owner`` (``<host>.<pid>``) started."""
    return root() / "logs" / "background" / f"{name}.{owner}.log"


def staging_dir() -> Path:
    return root() / "staging"


def lock_path(key: str) -> Path:
    return root() / "locks" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock")


def lock_check_file(key: str) -> Path:
    return root() / "lockchecks" / f"{component(key)}.txt"


def machine_memo_file(key: str) -> Path:
    return root() / "machine" / f"{key}.json"


#: What ``jitkernels cache clear`` removes besides the entries: everything rebuilt on demand.
DERIVED = ("index", "local", "refs", "logs", "machine", "background")
