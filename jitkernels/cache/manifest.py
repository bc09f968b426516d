"""An entry's ``manifest.json``: written when the entry is made, checked on every load, re-hashed by ``verify``.

The cheap rule, run on every load: the manifest is a JSON object whose
``files`` maps each file to its size, and every file has that size (one
``stat`` each, nothing read). The full rule (``jitkernels verify``,
and every entry before it is published) also re-hashes every file against
``sha256``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

from .. import config
from .files import json_bytes, read_json, write_atomic
from .layout import MANIFEST


def write_manifest(folder: Path, inspection, extra: dict | None = None) -> None:
    """Record every file's size (checked on each load) and sha256 (checked by ``jitkernels verify``)."""
    files, hashes = {}, {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST and "__pycache__" not in path.parts:
            rel = str(path.relative_to(folder)).replace(os.sep, "/")
            files[rel] = path.stat().st_size
            hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {
        "recipe": config.RECIPE_VERSION,
        "created": time.time(),
        **({"inspection": inspection.to_dict()} if inspection is not None else {}),
        "files": files,
        "sha256": hashes,
        **(extra or {}),
    }
    write_atomic(folder / MANIFEST, json_bytes(manifest))


def read_manifest(entry: Path) -> dict | None:
    return read_json(entry / MANIFEST)


def check_entry(entry: Path, full: bool = False) -> str | None:
    """``None`` if the published entry is intact, else what is wrong (see the module docstring)."""
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
