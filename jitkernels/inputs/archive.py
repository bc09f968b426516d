"""Unpack chosen folders of a downloaded source archive (tar, any compression, or zip), refusing hostile members.

Every member of the archive is checked, also those that are not unpacked: a
member with an absolute path, a ``..`` component, a NUL or backslash, a
device or FIFO, or a link whose target leaves the archive's folder makes the
whole archive refused (:class:`~jitkernels.errors.BuildInputError`). Release
archives carry one top folder (``cutlass-3.8.0/``); ``git archive`` output
has none; both are accepted. Sizes are capped so a hostile archive cannot
fill the disk.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildInputError

MAX_MEMBERS = 200_000
MAX_UNPACKED_BYTES = 4 << 30


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
    return "/".join(parts)


def _link_inside(name: str, target: str, symbolic: bool) -> str | None:
    """The archive path a link resolves to, or None if it leaves the archive."""
    if target.startswith("/") or "\x00" in target or "\\" in target:
        return None
    joined = posixpath.join(posixpath.dirname(name), target) if symbolic else target
    resolved = posixpath.normpath(joined)
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        return None
    return resolved


def _tar_members(archive: Path, tar: tarfile.TarFile) -> list[_Member]:
    members = []
    for info in tar:
        if len(members) >= MAX_MEMBERS:
            raise _refuse(archive, info.name, f"is beyond {MAX_MEMBERS} members")
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            continue
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
            target = info.linkname
            if kind == "hardlink":
                target = _normalise(archive, target)
            if _link_inside(name, target, kind == "symlink") is None:
                raise _refuse(archive, info.name, f"is a link to {info.linkname!r}, outside the archive's folder")
            link = target
        if name:
            members.append(_Member(name, kind, info.mode, info.size, link, info))
    return members


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> list[_Member]:
    members = []
    for info in zf.infolist():
        if len(members) >= MAX_MEMBERS:
            raise _refuse(archive, info.filename, f"is beyond {MAX_MEMBERS} members")
        name = _normalise(archive, info.filename)
        mode = info.external_attr >> 16
        if info.is_dir():
            kind, link = "dir", None
        elif stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            if _link_inside(name, target, True) is None:
                raise _refuse(archive, info.filename, f"is a link to {target!r}, outside the archive's folder")
            kind, link = "symlink", target
        elif mode and not stat.S_ISREG(mode):
            raise _refuse(archive, info.filename, "is a device, FIFO or other special file")
        else:
            kind, link = "file", None
        if name:
            members.append(_Member(name, kind, mode & 0o777, info.file_size, link, info))
    return members


def _top_folder(members: list[_Member], wanted: tuple[str, ...]) -> str:
    """The single top folder release archives have (``cutlass-3.8.0``), or "" for ``git archive`` output."""
    firsts = {m.name.split("/", 1)[0] for m in members}
    if len(firsts) == 1:
        only = firsts.pop()
        if only not in {w.split("/", 1)[0] for w in wanted}:
            return only + "/"
    return ""


def unpack_folders(archive: Path, folders: tuple[str, ...], dest: Path) -> dict[str, int]:
    """Unpack ``folders`` (e.g. ``include``, ``tools/util/include``) of ``archive`` into ``dest``.

    Returns ``{folder: files unpacked}``. Links inside the archive are kept
    only when they point inside the folder they are unpacked into.
    """
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return _unpack(archive, _zip_members(archive, zf), folders, dest, lambda m: zf.read(m.handle))
        with tarfile.open(archive, "r:*") as tar:
            members = _tar_members(archive, tar)

            def read(member: _Member) -> bytes:
                handle = tar.extractfile(member.handle)
                if handle is None:
                    raise _refuse(archive, member.name, "has no data")
                return handle.read()

            return _unpack(archive, members, folders, dest, read)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise BuildInputError(f"{archive} is not a readable tar or zip archive ({exc}).") from exc


def _unpack(archive: Path, members: list[_Member], folders: tuple[str, ...], dest: Path, read) -> dict[str, int]:
    top = _top_folder(members, folders)
    counts = {folder: 0 for folder in folders}
    total = 0
    for member in members:
        inner = member.name[len(top):] if top else member.name
        folder = next((f for f in folders if inner == f or inner.startswith(f + "/")), None)
        if folder is None:
            continue
        target = dest / inner
        if member.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if member.kind == "symlink":
            resolved = _link_inside(member.name, member.link or "", True)
            if resolved is None or not (resolved + "/").startswith(top + folder + "/"):
                raise _refuse(archive, member.name, f"is a link to {member.link!r}, outside {folder}/")
            os.symlink(member.link, target)
        else:
            total += member.size
            if total > MAX_UNPACKED_BYTES:
                raise _refuse(archive, member.name, f"takes the unpacked size beyond {MAX_UNPACKED_BYTES >> 30} GiB")
            data = read(member)
            target.write_bytes(data)  # created with the umask's permissions
            if member.mode & stat.S_IXUSR:  # git keeps the owner's execute bit (mode 100755): so do we
                current = os.stat(target).st_mode
                os.chmod(target, current | ((current & 0o444) >> 2))
        counts[folder] += 1
    return counts
