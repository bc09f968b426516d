"""Kernels in folders on disk: ``LOCAL_KERNELS`` (upstream's variable), ``load_local``, and fetched git sources.

A folder may be a source tree (``build.toml`` at its root), a repository
folder with ``build/<variant>/``, or one build variant. Files are read where
they are; a symlink leading out of the folder is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import config
from ..cache.index import SKIP_DIRS, tree_stats
from ..errors import BuildConfigError, InvalidKernelNameError
from ..identity import parse_local_kernels
from .base import KernelRef, Snapshot


def _walk(root: Path) -> list[str]:
    """Every file under ``root``; a symlink that leads outside ``root`` is refused."""
    files = []
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
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
        self.stats = tree_stats(str(path)) if kind == "local" else None
        self.files = frozenset(_walk(path))

    @property
    def location(self) -> str:
        return str(self.path)

    def fetch(self, patterns: list[str]) -> Path:
        return self.path


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


def local_folder(path, name: str | None = None, what: str = "load_local") -> tuple[LocalSnapshot, str]:
    """A folder given by the user (``load_local``, ``--local``) as a snapshot, and the name it is asked by."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidKernelNameError(f"{what}: {folder} is not a folder.")
    asked = name or folder.name
    return LocalSnapshot(KernelRef("hf_kernels", f"local/{asked.replace('_', '-')}"), folder), asked
