"""Published cache entries: writing their manifest (with the user's umask) and discarding damaged ones.

The per-load checks (:func:`check_entry`, :func:`check_owner`) live in
:mod:`jitkernels.warm`, which the warm path imports alone; they are
re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from . import config
from .warm import MANIFEST, check_entry, check_owner  # noqa: F401  (re-exported)



def write_manifest(entry: Path, inspection, extra: dict | None = None) -> None:
    """Record every file's size (checked on each load) and sha256 (checked by :func:`verify_entry`)."""
    files, hashes = {}, {}
    for path in sorted(entry.rglob("*")):
        if path.is_file() and path.name != MANIFEST and "__pycache__" not in path.parts:
            rel = str(path.relative_to(entry)).replace(os.sep, "/")
            files[rel] = path.stat().st_size
            hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {
        "recipe": config.RECIPE_VERSION,
        "created": time.time(),
        "inspection": inspection.to_dict(),
        "files": files,
        "sha256": hashes,
        **(extra or {}),
    }
    (entry / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _apply_umask(entry)


def precompile(staging: Path, final: Path) -> None:
    """Write the package's bytecode now (named as at ``final``): first loads and read-only caches stay fast."""
    import compileall

    compileall.compile_dir(str(staging), ddir=str(final), quiet=2, force=True)


def _apply_umask(folder: Path) -> None:
    """mkdtemp/mkstemp make private (0700/0600) items; published entries get the user's umask instead."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        mode = 0o777 if path.is_dir() or os.stat(path).st_mode & 0o111 else 0o666
        try:
            os.chmod(path, mode & ~mask & ~0o002)  # never world-writable
        except OSError:
            pass


def discard_entry(entry: Path) -> None:
    """Move a damaged entry out of the way (one rename) and delete it."""
    from . import cache

    try:
        trash = cache.staging_dir("discarded")
        os.replace(entry, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)
    except OSError:
        shutil.rmtree(entry, ignore_errors=True)
