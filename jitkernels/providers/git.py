"""Git sources: what a binary-only Hub repo names in a variant's ``metadata.json``.

``source`` (a git URL) at ``provenance.kernel.commit``: only that commit is
fetched (``git fetch --depth 1 <url> <commit>``) into the cache entry
``git-<url hash>-<commit>/tree``, through the same lifecycle as every entry
(:func:`jitkernels.cache.entries.obtain`), and read as a local folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .. import config
from ..cache import layout
from ..cache.entries import Recipe, obtain
from ..cache.manifest import check_entry
from ..errors import BuildConfigError, FetchError, OfflineError
from ..identity import is_commit
from .base import KernelRef
from .local import LocalSnapshot


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
    if check_entry(layout.entry_dir(name)) is None:
        return LocalSnapshot(ref, layout.entry_dir(name) / "tree", commit=commit, kind="git")
    if config.hf_offline():
        raise OfflineError(
            f"Offline: the source of {ref.repo_id} ({url} at {commit[:12]}) was never fetched. "
            f"Load it once with network access, then retry."
        )

    def fill(out: Path, _work) -> dict:
        from .. import progress

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
        _copy_links(tree, f"the source of {ref.repo_id} ({url} at {commit[:12]})")
        return {"git": {"url": url, "commit": commit}}

    recipe = Recipe(name=name, what=f"fetching the source of {ref.repo_id}", inspection=None, fill=fill)
    return LocalSnapshot(ref, obtain(recipe) / "tree", commit=commit, kind="git")


def _copy_links(tree: Path, what: str) -> None:
    """A checkout's symbolic links to files inside it become copies (an entry holds regular files only, and
    nothing is ever read through a link); a link that leaves the tree, dangles or names a folder is refused."""
    root = tree.resolve()
    links = [Path(folder) / name for folder, dirs, files in os.walk(tree) for name in dirs + files
             if (Path(folder) / name).is_symlink()]
    for link in links:
        target = Path(os.path.realpath(link))
        rel = link.relative_to(tree)
        if not target.is_relative_to(root) or not target.is_file():
            raise BuildConfigError(
                f"{what}: {rel} is a symbolic link to {os.readlink(link)!r}, which is "
                f"{'outside the repository' if not target.is_relative_to(root) else 'not a file in it'}. "
                f"JitKernels copies only links to files inside the repository.")
    for link in links:
        target = Path(os.path.realpath(link))
        link.unlink()
        shutil.copyfile(target, link)
