"""Snapshots that are already on disk: local folders (``LOCAL_KERNELS``, ``load_local``) and git checkouts.

A git source is what a binary-only Hub repo names in a variant's
``metadata.json``: ``source`` (a git URL) at ``provenance.kernel.commit``.
Only that commit is fetched (``git fetch --depth 1 <url> <commit>``) into
the cache entry ``git-<url hash>-<commit>/tree``, through the same lifecycle
as every entry (:func:`jitkernels.entries.obtain`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from . import cache, config, warm
from .entries import Recipe, obtain
from .warm import check_entry
from .errors import BuildConfigError, FetchError, InvalidKernelNameError, OfflineError
from .providers.base import KernelRef, Snapshot, is_commit



def _walk(root: Path) -> list[str]:
    """Every file under ``root``; a symlink that leads outside ``root`` is refused."""
    files = []
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in warm.SKIP_DIRS)
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.endswith(".pyc"):
                continue
            path = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    raise BuildConfigError(
                        f"{root}: {path} is a symlink to {target}, outside the kernel folder; "
                        f"JitKernels only reads files inside it."
                    )
            files.append(path)
    return files


class LocalSnapshot(Snapshot):
    """A kernel folder on disk: a source tree, a repo with ``build/``, or one build variant."""

    trust = "local"  # the user's own folder (or a git source a trusted snapshot named)

    def __init__(self, ref: KernelRef, path: Path, commit: str | None = None, kind: str = "local"):
        self.ref = ref
        self.path = path
        self.commit = commit
        self.requested = None
        self.kind = kind
        # Taken before anything is hashed: a file edited meanwhile makes the memo miss, never lie.
        self.stats = warm.tree_stats(str(path)) if kind == "local" else None
        self.files = frozenset(_walk(path))

    @property
    def location(self) -> str:
        return str(self.path)

    def fetch(self, patterns: list[str]) -> Path:
        return self.path


def parse_local_kernels(spec: str) -> dict[str, Path]:
    """``"org/name=/path:org2/name2=/path2"`` -> ``{repo_id: path}`` (upstream's ``LOCAL_KERNELS`` format)."""
    mapping = warm.parse_local_kernels(spec)
    if mapping is None:
        bad = next(i for i in (p.strip() for p in spec.split(":")) if i and not warm.parse_local_kernels(i))
        raise InvalidKernelNameError(
            f"LOCAL_KERNELS entry {bad!r} is not 'org/name=/path'. "
            f"Format: LOCAL_KERNELS=\"org/name=/path:org2/name2=/path2\"."
        )
    return mapping


def local_override(ref: KernelRef) -> LocalSnapshot | None:
    """The ``LOCAL_KERNELS`` folder serving ``ref``, if any (matched by repo id, or by bare name)."""
    spec = config.local_kernels_spec()
    if not spec:
        return None
    mapping = parse_local_kernels(spec)
    path = mapping.get(ref.repo_id)
    if path is None:
        return None
    if not path.is_dir():
        raise InvalidKernelNameError(f"LOCAL_KERNELS maps {ref.repo_id} to {path}, which is not a folder.")
    return LocalSnapshot(ref, path.resolve())


# -- git -----------------------------------------------------------------------

def _git(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, env=env,
            timeout=max(60.0, config.network_timeout() * 6),
        )
    except FileNotFoundError as exc:
        raise FetchError("git is needed to fetch this kernel's source, and it is not installed.") from exc
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"git {' '.join(args[:2])} timed out.") from exc


def _check_git_url(url: str) -> str:
    if not isinstance(url, str) or not url or url.startswith("-") or any(c in url for c in "\x00\n\r "):
        raise BuildConfigError(f"metadata.json 'source' {url!r} is not a git URL.")
    return url


def fetch_git_commit(ref: KernelRef, url: str, commit: str) -> LocalSnapshot:
    """The tree of ``url`` at ``commit``, fetched once (that commit only) into a cache entry."""
    url = _check_git_url(url)
    if not is_commit(commit):
        raise BuildConfigError(f"Git source commit {commit!r} is not a full commit hash.")
    name = f"git-{hashlib.sha256(url.encode()).hexdigest()[:16]}-{commit}"
    if check_entry(cache.entry_dir(name)) is None:
        return LocalSnapshot(ref, cache.entry_dir(name) / "tree", commit=commit, kind="git")
    if config.hf_offline():
        raise OfflineError(
            f"Offline: the source of {ref.repo_id} ({url} at {commit[:12]}) was never fetched. "
            f"Load it once with network access, then retry."
        )

    def fill(out: Path, _work) -> dict:
        from . import progress

        tree = out / "tree"
        tree.mkdir()
        for step in (["init", "-q", "."], ["fetch", "-q", "--depth", "1", "--", url, commit]):
            with progress.task(f"jitkernels: git {step[0]} {url} {commit[:12]}", unit=None, delay=1.0):
                result = _git(step, cwd=tree)
            if result.returncode != 0:
                raise FetchError(
                    f"Fetching the source of {ref.repo_id} failed: git {' '.join(step[:2])} {url} {commit[:12]}: "
                    f"{result.stderr.strip()[-500:]}. Check that the commit exists and the URL is reachable."
                )
        result = _git(["-c", "advice.detachedHead=false", "checkout", "-q", commit], cwd=tree)
        if result.returncode != 0:
            raise FetchError(f"git checkout {commit[:12]} of {url} failed: {result.stderr.strip()[-500:]}")
        shutil.rmtree(tree / ".git", ignore_errors=True)
        return {"git": {"url": url, "commit": commit}}

    recipe = Recipe(name=name, what=f"fetching the source of {ref.repo_id}", inspection=None, fill=fill)
    return LocalSnapshot(ref, obtain(recipe) / "tree", commit=commit, kind="git")
