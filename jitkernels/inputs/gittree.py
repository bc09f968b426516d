"""The git tree id of a folder on disk, computed in pure Python (no git needed).

A tree id names a folder's content independently of how it was archived or
compressed, so it can be pinned once per release (``git rev-parse
v3.8.0:include`` in a clone of the project) and checked against files
unpacked from any archive of that release. Git's rules:

- a file is the blob ``sha1(b"blob <size>\\0" + data)``, mode ``100755`` if its
  owner may execute it, else ``100644``; a symbolic link is the blob of its
  target path, mode ``120000``;
- a folder is ``sha1(b"tree <size>\\0" + entries)``, each entry
  ``b"<mode> <name>\\0" + <20-byte id>`` (mode ``40000`` for folders), sorted by
  name where a folder's name sorts as if it ended with ``/``; folders without
  files are not in git and are left out, and so is a ``.git`` entry, which git never tracks.
"""

from __future__ import annotations

import hashlib
import os
import stat


def blob_id(data: bytes) -> bytes:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).digest()


def _file_blob_id(path: str, size: int) -> bytes:
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def _tree(path: str) -> bytes | None:
    entries = []
    with os.scandir(path) as it:
        items = list(it)
    for item in items:
        if item.name == ".git":
            continue
        info = item.stat(follow_symlinks=False)
        name = item.name.encode("utf-8", "surrogateescape")
        if stat.S_ISLNK(info.st_mode):
            entries.append((name, b"120000", blob_id(os.fsencode(os.readlink(item.path)))))
        elif stat.S_ISDIR(info.st_mode):
            sub = _tree(item.path)
            if sub is not None:
                entries.append((name + b"/", b"40000", sub))
        elif stat.S_ISREG(info.st_mode):
            mode = b"100755" if info.st_mode & stat.S_IXUSR else b"100644"
            entries.append((name, mode, _file_blob_id(item.path, info.st_size)))
    if not entries:
        return None
    entries.sort(key=lambda entry: entry[0])
    body = b"".join(mode + b" " + name.rstrip(b"/") + b"\0" + oid for name, mode, oid in entries)
    return hashlib.sha1(b"tree %d\0" % len(body) + body).digest()


def tree_id(path) -> str | None:
    """The git tree id (hex) of the folder ``path``; ``None`` if it holds no file or does not exist."""
    if not os.path.isdir(path):
        return None
    oid = _tree(os.fspath(path))
    return oid.hex() if oid is not None else None
