"""Published cache entries: their manifest, the cheap integrity rule, and discarding damaged ones.

Kept free of heavy imports: the warm path uses :func:`check_entry` on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from . import cache, config

MANIFEST = "manifest.json"


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


def discard_entry(entry: Path) -> None:
    """Move a damaged entry out of the way (one rename) and delete it."""
    try:
        trash = cache.staging_dir("discarded")
        os.replace(entry, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)
    except OSError:
        shutil.rmtree(entry, ignore_errors=True)
