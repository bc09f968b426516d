"""Unpack chosen folders of a downloaded source archive (tar, any compression, or zip), refusing hostile members.

The rules, for every archive the project unpacks:

- every member is checked, also those that are not unpacked: an absolute
  path, a ``..`` component, a NUL or backslash, a device or FIFO, or a link
  whose target leaves the archive's folder refuses the whole archive;
- nothing is ever written through a link: the unpacked folders may hold no
  link at all (symbolic or hard; CUTLASS's ``include/`` and
  ``tools/util/include/`` hold none at any pinned release, nor does the rest
  of its repository), no member may sit below a member that is a file, and
  no name may appear twice; files are created with ``O_EXCL | O_NOFOLLOW``
  inside a folder this process just made, so only that folder is written;
- sizes are checked from the headers before any data is read (one member,
  the unpacked total, the whole archive) and again while the data streams to
  disk in chunks, so a decompression bomb is refused early and never held in
  memory.

Release archives carry one top folder (``cutlass-3.8.0/``); ``git archive``
output has none; both are accepted. Wheels (zip) of NVIDIA's CUDA compiler go
through the same rules, with their own size bounds (``cicc`` alone is 76 MB)
and members left out by name (``exclude``), see :mod:`jitkernels.build.toolchain`. Every refusal is a
:class:`~jitkernels.errors.BuildInputError` that names the member and what is
wrong with it.
"""

from __future__ import annotations

import fnmatch
import gzip
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildInputError

MAX_MEMBERS = 200_000
#: One unpacked file. CUTLASS's largest header (``mma_sm90_gmma_sparse_ext.hpp``) is 2.9 MB.
MAX_FILE_BYTES = 64 << 20
#: All unpacked files together. CUTLASS's two include folders hold at most 28 MB (v4.5.2).
MAX_UNPACKED_BYTES = 512 << 20
#: Every member of the archive, unpacked or not. A whole CUTLASS release is at most 150 MB (v4.5.2).
MAX_CONTENT_BYTES = 2 << 30
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Member:
    name: str  # normalised, relative, "/"-separated
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    mode: int
    size: int
    link: str | None
    handle: object  # the TarInfo / ZipInfo


def _refuse(archive: Path, member: str, why: str) -> BuildInputError:
    return BuildInputError(
        f"Refusing the archive {archive}: member {member!r} {why}. A release archive never contains that; "
        f"it was altered or is not the archive it claims to be. Nothing was unpacked."
    )


def _normalise(archive: Path, raw: str) -> str:
    if "\x00" in raw or "\\" in raw:
        raise _refuse(archive, raw, "has a NUL or backslash in its path")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise _refuse(archive, raw, "has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, raw, "has a '..' component")
    if ".git" in parts:  # git never tracks one, so the pinned tree ids cannot vouch for it
        raise _refuse(archive, raw, "has a '.git' component")
    if any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in parts):
        raise _refuse(archive, raw, "has a name longer than 255 bytes")
    return "/".join(parts)


def _link_inside(name: str, target: str, symbolic: bool) -> bool:
    """Whether a link's text stays inside the archive (links are never unpacked; this only refuses odd ones)."""
    if not target or target.startswith("/") or "\x00" in target or "\\" in target:
        return False
    joined = posixpath.join(posixpath.dirname(name), target) if symbolic else target
    resolved = posixpath.normpath(joined)
    return not (resolved == ".." or resolved.startswith("../") or resolved.startswith("/"))


class _Sizes:
    """Running totals, checked from the headers before anything is read."""

    def __init__(self, archive: Path):
        self.archive, self.members, self.content = archive, 0, 0

    def add(self, raw_name: str, size: int) -> None:
        self.members += 1
        self.content += max(size, 0)
        if self.members > MAX_MEMBERS:
            raise _refuse(self.archive, raw_name, f"is beyond {MAX_MEMBERS} members")
        if self.content > MAX_CONTENT_BYTES:
            raise _refuse(self.archive, raw_name,
                          f"takes the archive's content beyond {MAX_CONTENT_BYTES >> 30} GiB (a decompression bomb?)")


def _tar_members(archive: Path, tar: tarfile.TarFile) -> list[_Member]:
    members, sizes = [], _Sizes(archive)
    for info in tar:
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            continue
        sizes.add(info.name, info.size if info.isreg() else 0)
        name = _normalise(archive, info.name)
        if info.isdir():
            kind = "dir"
        elif info.isreg():
            kind = "file"
        elif info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        else:
            raise _refuse(archive, info.name, "is a device, FIFO or other special file")
        link = None
        if kind in ("symlink", "hardlink"):
            link = info.linkname if kind == "symlink" else _normalise(archive, info.linkname)
            if not _link_inside(name, link, kind == "symlink"):
                raise _refuse(archive, info.name, f"is a link to {info.linkname!r}, outside the archive's folder")
        if name:
            members.append(_Member(name, kind, info.mode, info.size, link, info))
    return members


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> list[_Member]:
    members, sizes = [], _Sizes(archive)
    for info in zf.infolist():
        sizes.add(info.filename, info.file_size)
        name = _normalise(archive, info.filename)
        mode = info.external_attr >> 16
        if info.is_dir():
            kind = "dir"
        elif stat.S_ISLNK(mode):
            kind = "symlink"  # its target is never read: links are not unpacked
        elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits at all (``zipfile.writestr``): a file
            raise _refuse(archive, info.filename, "is a device, FIFO or other special file")
        else:
            kind = "file"
        if name:
            members.append(_Member(name, kind, mode & 0o777, info.file_size, None, info))
    return members


def _top_folder(members: list[_Member], wanted: tuple[str, ...]) -> str:
    """The single top folder release archives have (``cutlass-3.8.0``), or "" for ``git archive`` output."""
    firsts = {m.name.split("/", 1)[0] for m in members}
    if len(firsts) == 1:
        only = firsts.pop()
        if only not in {w.split("/", 1)[0] for w in wanted}:
            return only + "/"
    return ""


@dataclass(frozen=True)
class Limits:
    """Size bounds of one unpacking: one file, and all unpacked files together."""

    file_bytes: int = MAX_FILE_BYTES
    unpacked_bytes: int = MAX_UNPACKED_BYTES


def _excluded(inner: str, exclude: tuple[str, ...]) -> bool:
    """``inner`` is an excluded name (``fnmatch`` pattern) or lies below one."""
    parts = inner.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:n]), pattern.rstrip("/"))
               for pattern in exclude for n in range(1, len(parts) + 1))


def _plan(archive: Path, members: list[_Member], folders: tuple[str, ...], exclude: tuple[str, ...] = (),
          limits: Limits = Limits()) -> list[tuple[str, str, _Member]]:
    """``(path inside dest, folder, member)`` for every member to unpack, after every check that needs no data."""
    top = _top_folder(members, folders)
    chosen: list[tuple[str, str, _Member]] = []
    kinds: dict[str, str] = {}
    total = 0
    for member in members:
        inner = member.name[len(top):] if top and member.name.startswith(top) else ("" if top else member.name)
        folder = next((f for f in folders if inner == f or inner.startswith(f + "/")), None)
        if folder is None or _excluded(inner, exclude):
            continue
        if member.kind in ("symlink", "hardlink"):
            raise _refuse(archive, member.name, f"is a {'symbolic' if member.kind == 'symlink' else 'hard'} link "
                          f"inside {folder}/, which a release's headers never hold (a link could lead the "
                          f"unpacking out of its folder)")
        before = kinds.get(inner)
        if before is not None and (before, member.kind) != ("dir", "dir"):
            raise _refuse(archive, member.name, f"appears twice in the archive (as a {before} and as a {member.kind})")
        kinds[inner] = member.kind
        if member.kind == "file":
            if member.size > limits.file_bytes:
                raise _refuse(archive, member.name, f"is {member.size} bytes, beyond {limits.file_bytes >> 20} MiB "
                              f"for one file (a decompression bomb?)")
            total += member.size
            if total > limits.unpacked_bytes:
                raise _refuse(archive, member.name, f"takes the unpacked size beyond {limits.unpacked_bytes >> 20} MiB "
                              f"(a decompression bomb?)")
        chosen.append((inner, folder, member))
    for inner, _folder, member in chosen:
        parent = posixpath.dirname(inner)
        while parent:
            if kinds.get(parent, "dir") != "dir":
                raise _refuse(archive, member.name, f"lies below {parent!r}, which the archive makes a file")
            parent = posixpath.dirname(parent)
    return chosen


def unpack_folders(archive: Path, folders: tuple[str, ...], dest: Path, *, exclude: tuple[str, ...] = (),
                   limits: Limits = Limits()) -> dict[str, int]:
    """Unpack ``folders`` (e.g. ``include``, ``tools/util/include``) of ``archive`` into ``dest``.

    ``dest`` must be an empty folder made for this (a staging folder). ``exclude``: members (``fnmatch``
    patterns of their path inside the archive's top folder, or folders) not unpacked, though still checked.
    Returns ``{folder: files unpacked}``.
    """
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                chosen = _plan(archive, _zip_members(archive, zf), folders, exclude, limits)
                return _unpack(archive, chosen, folders, dest, lambda m: zf.open(m.handle))
        with tarfile.open(archive, "r:*") as tar:
            chosen = _plan(archive, _tar_members(archive, tar), folders, exclude, limits)

            def open_member(member: _Member):
                handle = tar.extractfile(member.handle)
                if handle is None:
                    raise _refuse(archive, member.name, "has no data")
                return handle

            return _unpack(archive, chosen, folders, dest, open_member)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile,
            KeyError) as exc:
        raise BuildInputError(f"{archive} is not a readable tar or zip archive ({type(exc).__name__}: {exc}). "
                              f"Nothing was unpacked.") from exc


def _unpack(archive: Path, chosen, folders: tuple[str, ...], dest: Path, open_member) -> dict[str, int]:
    counts = {folder: 0 for folder in folders}
    for inner, folder, member in chosen:
        target = dest / inner
        if member.kind == "dir":
            _make_dirs(dest, inner)
            continue
        _make_dirs(dest, posixpath.dirname(inner))
        executable = bool(member.mode & stat.S_IXUSR)  # git keeps the owner's execute bit (mode 100755): so do we
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o777 if executable else 0o666)  # the umask applies, as for any created file
        with os.fdopen(fd, "wb") as out, open_member(member) as data:
            written = 0
            for chunk in iter(lambda: data.read(_CHUNK), b""):
                written += len(chunk)
                if written > member.size:
                    raise _refuse(archive, member.name, f"holds more data than the {member.size} bytes it declares")
                out.write(chunk)
        if written != member.size:
            raise _refuse(archive, member.name, f"holds {written} bytes, not the {member.size} it declares")
        counts[folder] += 1
    return counts


def _make_dirs(dest: Path, inner: str) -> None:
    """``mkdir -p dest/inner``, one component at a time, never through a link (only this unpacking writes there)."""
    path = dest
    for part in [p for p in inner.split("/") if p]:
        path = path / part
        try:
            os.mkdir(path)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise BuildInputError(f"Unpacking into {dest}: {path} exists and is not a folder. Nothing was published.")
