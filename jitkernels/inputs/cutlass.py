"""``cutlass_X_Y``: NVIDIA CUTLASS headers, exactly the release kernel-builder pins for that name.

Pins: huggingface/kernels ``nix-builder/pkgs/cutlass/default.nix`` (the same
versions as ``kernel-builder/src/pyproject/deps.rs``). Never another version.

Where the headers come from, in order:

1. ``JITKERNELS_CUTLASS_3_8_DIR`` (for ``cutlass_3_8``): a CUTLASS source root
   holding ``include/``; or ``JITKERNELS_CUTLASS_DIR``: a folder holding
   ``cutlass-<version>/include`` for the versions it provides;
2. an installed ``nvidia-cutlass`` wheel of exactly that version (its headers
   are ``cutlass_library/source/include`` and ``.../tools/util/include``);
3. the JitKernels cache entry ``<cache>/entries/cutlass-<version>/``, else the
   tagged release archive, downloaded (``JITKERNELS_CUTLASS_URL``, default
   NVIDIA's GitHub), checked against the git tree ids pinned below, and
   unpacked there (``include/`` and ``tools/util/include/`` only) under a file
   lock, published with one rename. Offline (``JITKERNELS_OFFLINE=1`` or
   ``HF_HUB_OFFLINE=1``) nothing is downloaded: the error names the folder to
   provide.

The digest that goes into the build key is the pair of git tree ids of those
two folders, recomputed from the files for a folder or wheel, so the same
headers give the same key wherever they came from. Tests serve small
archives by replacing entries of :data:`PINNED_TREES` (``monkeypatch.setitem``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .. import config
from ..cache import entries, layout, workspaces
from ..cache.manifest import check_entry, read_manifest
from ..errors import BuildInputError, FetchError, OfflineError
from ..log import logger, warning_once
from .base import ResolvedInput, Resolver
from .pace import Pace
from . import gittree

#: build.toml name -> CUTLASS release (huggingface/kernels nix-builder/pkgs/cutlass/default.nix).
PINS = {
    "cutlass_2_10": "2.10.0",
    "cutlass_3_5": "3.5.1",
    "cutlass_3_6": "3.6.0",
    "cutlass_3_8": "3.8.0",
    "cutlass_3_9": "3.9.2",
    "cutlass_4_0": "4.0.0",
    "cutlass_4_4": "4.4.2",
    "cutlass_4_5": "4.5.2",
}

#: The folders of a release that a build needs (kernel-builder installs both as include folders).
FOLDERS = ("include", "tools/util/include")

#: version -> git tree ids of ``include`` and ``tools/util/include`` at tag ``v<version>`` of
#: github.com/NVIDIA/cutlass, from ``git rev-parse v<version>:include v<version>:tools/util/include``.
PINNED_TREES = {
    "2.10.0": ("aa6d177e884e6a25e3c9635b950718d3a5bb696e", "03ff967a33fe8a64a157d6983f47ce7a9325daf8"),
    "3.5.1": ("061e6969f7846f2b7a13d934623fdf41bec161c9", "76d4bc1ed01b70ff1093c6ae901c0ba2c73e88f5"),
    "3.6.0": ("88dcf272bc77b38eafba44b053c5093de70a9f99", "c8a1b77ea5203ce12c9e2c4bfbf6411f1b87375d"),
    "3.8.0": ("b0ca3e8cc21bc768163445c3713dffad06362a40", "4866f34799850b6bf801dac67f76f44a913f6f4f"),
    "3.9.2": ("1933c4be6565a0f7a6f65ccd87f644c972ecbe96", "ba3b7ac9ccdefead10e78e032aea7bb8cea13075"),
    "4.0.0": ("77bd42c7e2983047774e18fe0e918ab8bfdab7b6", "ba3b7ac9ccdefead10e78e032aea7bb8cea13075"),
    "4.4.2": ("cb23b9ff71b8290c05b3bd193b618c52faaccd77", "70c0075fb0ac1a9ff324bce31a945ca076eb2b5b"),
    "4.5.2": ("03e66b37ebf7bb7c3c05d680f34c8e9fed04bbbc", "f1855e88dea7b9a8092cd928412ea9e87a394e27"),
}

MAX_ARCHIVE_BYTES = 1 << 30
_WHEEL = "nvidia-cutlass"
_WHEEL_ROOT = "cutlass_library/source"


def pinned_digest(version: str) -> str:
    return "+".join(PINNED_TREES[version])


def cache_folder(version: str) -> Path:
    """The cache entry holding a verified release's ``include/`` and ``tools/util/include/``."""
    return layout.entry_dir(f"cutlass-{version}")


def _include_dirs(root: Path) -> tuple[str, ...]:
    return tuple(str(root / f) for f in FOLDERS if (root / f).is_dir())


def _has_headers(root: Path) -> bool:
    return (root / "include" / "cutlass" / "cutlass.h").is_file()


def _same_release(installed: str, version: str) -> bool:
    """``3.8.0.0`` (the wheel's version) is the release ``3.8.0``; ``3.8.1`` or ``4.2.0`` is not."""
    parts = installed.split("+", 1)[0].split(".")
    want = version.split(".")
    if not all(p.isdigit() for p in parts):
        return False
    return [int(p) for p in parts[: len(want)]] == [int(p) for p in want] and all(int(p) == 0 for p in parts[len(want):])


def _wheel_root(version: str) -> tuple[Path | None, str]:
    """The installed nvidia-cutlass wheel's source root if it is exactly ``version`` (read without importing it)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(_WHEEL)
    except metadata.PackageNotFoundError:
        return None, ""
    installed = dist.version or ""
    if not _same_release(installed, version):
        return None, f"{_WHEEL} {installed} is installed, not {version}: not used (never another version)"
    root = Path(str(dist.locate_file(_WHEEL_ROOT)))
    if not _has_headers(root):
        return None, f"{_WHEEL} {installed} is installed but has no {_WHEEL_ROOT}/include/cutlass/cutlass.h"
    return root, ""


def _local(name: str, version: str) -> tuple[str, Path, str] | tuple[None, None, str]:
    """(origin, root, how) for a folder override or the wheel; raises for an override that is wrong."""
    own = config.cutlass_version_dir(name)
    if own is not None:
        var = f"JITKERNELS_{name.upper()}_DIR"
        if not _has_headers(own):
            raise BuildInputError(
                f"{var}={own} does not hold CUTLASS headers (no include/cutlass/cutlass.h). Point it at a CUTLASS "
                f"{version} source root, e.g. the output of `git archive v{version} include tools/util/include`."
            )
        return "dir-override", own, var
    shared = config.cutlass_dir()
    if shared is not None:
        root = shared / f"cutlass-{version}"
        if root.exists():
            if not _has_headers(root):
                raise BuildInputError(
                    f"JITKERNELS_CUTLASS_DIR={shared}: {root} has no include/cutlass/cutlass.h. It must hold "
                    f"cutlass-<version>/include (e.g. `git archive v{version} include tools/util/include`)."
                )
            return "dir-override", root, "JITKERNELS_CUTLASS_DIR"
    root, why = _wheel_root(version)
    if root is not None:
        return "wheel", root, f"{_WHEEL} wheel"
    return None, None, why


def _cached(version: str) -> Path | None:
    root = cache_folder(version)
    manifest = read_manifest(root)
    if manifest and manifest.get("digest") == pinned_digest(version) and check_entry(root) is None:
        return root
    return None


def _offline_message(name: str, version: str) -> str:
    return (
        f"CUTLASS {version} ({name}) is not in the JitKernels cache ({cache_folder(version)}) and offline mode "
        f"(JITKERNELS_OFFLINE / HF_HUB_OFFLINE) forbids downloading it. Provide the headers: set "
        f"JITKERNELS_CUTLASS_DIR to a folder holding cutlass-{version}/include (for example "
        f"`git -C <cutlass clone> archive v{version} include tools/util/include | tar -x -C $DIR/cutlass-{version}`), "
        f"or JITKERNELS_{name.upper()}_DIR to a CUTLASS {version} source root, or install {_WHEEL}=={version} "
        f"where it exists on PyPI, or download it once online."
    )


class CutlassResolver(Resolver):
    kind = "cutlass"
    names_hint = "cutlass_X_Y (" + ", ".join(PINS) + ")"

    def handles(self, name, backend: str) -> bool:
        return name in PINS

    def describe(self, name, backend: str) -> ResolvedInput:
        version = PINS[name]
        try:
            origin, root, how = _local(name, version)
        except BuildInputError as exc:
            return ResolvedInput(name, self.kind, version, "dir-override", "missing", detail=str(exc))
        if root is not None:
            return ResolvedInput(name, self.kind, version, origin, "ready", location=str(root),
                                 detail=f"from {how}; digest computed from the files at build time")
        cached = _cached(version)
        if cached is not None:
            return ResolvedInput(name, self.kind, version, "cache", "cached", pinned_digest(version), str(cached),
                                 detail=how, include_dirs=_include_dirs(cached))
        url = config.cutlass_url_template().replace("{version}", version)
        if config.offline():
            return ResolvedInput(name, self.kind, version, "download", "missing", pinned_digest(version), url,
                                 detail=_offline_message(name, version) + (f" ({how})" if how else ""))
        return ResolvedInput(name, self.kind, version, "download", "to-download", pinned_digest(version), url,
                             detail=f"into {cache_folder(version)}, checked against the pinned git tree ids"
                                    + (f"; {how}" if how else ""))

    def resolve(self, name, backend: str, fetch: bool = True) -> ResolvedInput:
        version = PINS[name]
        origin, root, how = _local(name, version)
        if root is not None:
            trees = tuple(gittree.tree_id(root / f) or "-" for f in FOLDERS)
            digest = "+".join(trees)
            if trees != PINNED_TREES[version]:
                warning_once(f"CUTLASS headers for {name} from {how} ({root}) differ from the v{version} release "
                             f"(git tree {trees[0]}, release {PINNED_TREES[version][0]}); building with them.")
            return ResolvedInput(name, self.kind, version, origin, "ready", digest, str(root),
                                 detail=f"from {how}", include_dirs=_include_dirs(root))
        cached = _cached(version)
        if cached is not None:
            return ResolvedInput(name, self.kind, version, "cache", "cached", pinned_digest(version), str(cached),
                                 include_dirs=_include_dirs(cached))
        if not fetch:  # the key needs only the pinned digest; the headers are fetched when a build needs them
            folder = cache_folder(version)
            return ResolvedInput(name, self.kind, version, "download", "to-download", pinned_digest(version),
                                 str(folder), include_dirs=tuple(str(folder / f) for f in FOLDERS))
        if config.offline():
            raise OfflineError(_offline_message(name, version))
        root = download(name, version)
        return ResolvedInput(name, self.kind, version, "download", "cached", pinned_digest(version), str(root),
                             include_dirs=_include_dirs(root))


def _check_pace(url: str, what: str, size: int, pace: Pace) -> None:
    """Give up a download that is too slow (issue 14, defect 3: a mirror sending a byte every 2 s held the
    download, and its waiters, forever); see :mod:`jitkernels.inputs.pace`."""
    why = pace.problem(size)
    if why is not None:
        raise FetchError(f"Downloading {what} from {url} was given up: {why}. Point JITKERNELS_CUTLASS_URL at a "
                         f"faster mirror, or provide the headers with JITKERNELS_CUTLASS_DIR.")


def _download(url: str, target: Path, what: str) -> str:
    """Stream ``url`` into ``target``; returns the archive's sha256 (recorded, not trusted: the tree ids are)."""
    import http.client
    import urllib.error
    import urllib.request

    if not re.match(r"^(https?|file)://", url):
        raise BuildInputError(f"JITKERNELS_CUTLASS_URL gives {url!r} for {what}: it must be an http(s):// or file:// URL.")
    logger.info("jitkernels: downloading %s from %s", what, url)
    digest = hashlib.sha256()
    size = 0
    pace = Pace()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "jitkernels"})
        with urllib.request.urlopen(request, timeout=pace.grace) as response, open(target, "wb") as fh:
            # read1: what has arrived (up to 1 MiB), so a trickle is measured as it comes, not waited for whole
            read = getattr(response, "read1", response.read)
            for chunk in iter(lambda: read(1 << 20), b""):
                size += len(chunk)
                _check_pace(url, what, size, pace)
                if size > MAX_ARCHIVE_BYTES:
                    raise BuildInputError(f"{url} is larger than {MAX_ARCHIVE_BYTES >> 20} MiB: not a CUTLASS release archive.")
                digest.update(chunk)
                fh.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        raise FetchError(
            f"Downloading {what} from {url} failed ({getattr(exc, 'reason', exc)}). Check the network, point "
            f"JITKERNELS_CUTLASS_URL at a mirror, or provide the headers with JITKERNELS_CUTLASS_DIR."
        ) from exc
    return digest.hexdigest()


def download(name: str, version: str) -> Path:
    """Download, verify and unpack CUTLASS ``version`` into a cache entry (once; concurrent callers wait and reuse).

    The entry goes through the one lifecycle (:func:`jitkernels.cache.entries.obtain`); the archive is
    downloaded into a private staging folder of its own and unpacked by
    :func:`~jitkernels.inputs.archive.unpack_folders`, which writes into the entry's staging folder only.
    """
    from .archive import unpack_folders

    what = f"CUTLASS {version} ({name})"
    url = config.cutlass_url_template().replace("{version}", version)
    if _cached(version) is None and check_entry(cache_folder(version)) is None:
        entries.discard(cache_folder(version))  # made for another pin

    def fill(out: Path, _work) -> dict:
        with workspaces.staging(f"cutlass-{version}.download") as downloads:
            archive = downloads / f"cutlass-{version}.archive"
            sha256 = _download(url, archive, what)
            unpack_folders(archive, FOLDERS, out)
        trees = tuple(gittree.tree_id(out / f) or "-" for f in FOLDERS)
        if trees != PINNED_TREES[version]:
            raise BuildInputError(
                f"{what} from {url} does not match the pinned release: git tree ids of "
                f"{' and '.join(f + '/' for f in FOLDERS)} are {', '.join(trees)}, expected "
                f"{', '.join(PINNED_TREES[version])}. It was discarded and nothing was added to the cache. "
                f"A mirror (JITKERNELS_CUTLASS_URL) must serve NVIDIA's v{version} release unchanged."
            )
        logger.info("jitkernels: %s verified (git trees %s)", what, ", ".join(t[:12] for t in trees))
        return {"name": name, "version": version, "digest": pinned_digest(version), "url": url,
                "archive_sha256": sha256}

    return entries.obtain(entries.Recipe(name=cache_folder(version).name, what=f"downloading {what}",
                                         inspection=None, fill=fill))


RESOLVER = CutlassResolver()
