"""Wheels from a Python package index, verified by the sha256 the index publishes.

Used to provision NVIDIA's CUDA compiler wheels (:mod:`jitkernels.build.toolchain`);
nothing here is specific to CUDA. An index is what pip reads: the Simple
API of PEP 691 (JSON) or PEP 503 (HTML, ``#sha256=`` in every link), over
``https://`` or from a ``file://`` folder (``<index>/<project>/index.html``,
as pip's local indexes). Which indexes, in order:

1. ``JITKERNELS_CUDA_INDEX`` (one or more URLs, separated by spaces);
2. pip's own settings, as ``pip config list`` shows them (``index-url`` then
   ``extra-index-url``, from ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` or
   pip's configuration files); ``no-index`` (``PIP_NO_INDEX=1``) means none;
3. PyPI, ``https://pypi.org/simple``.

A project is looked up on each index in turn; the first that has a wheel
matching the version specifier and this machine's tags (pip's own tags, from
``packaging``) wins. A file the index publishes no sha256 for is refused;
sizes are bounded (the index's ``size`` when it gives one) and every byte is
hashed while it streams to disk.
"""

from __future__ import annotations

import email.parser
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .. import config
from ..errors import BuildInputError, FetchError
from ..log import logger
from .pace import Pace

DEFAULT_INDEX = "https://pypi.org/simple"
_PEP691 = "application/vnd.pypi.simple.v1+json"
_ACCEPT = f"{_PEP691}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
#: An index page (the projects looked up here have tens of files; PyPI's torch page is 2 MB).
MAX_PAGE_BYTES = 32 << 20
#: A wheel's METADATA file.
MAX_METADATA_BYTES = 1 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class IndexFile:
    """One file an index lists for a project."""

    filename: str
    url: str
    sha256: str | None
    size: int | None
    yanked: bool
    index: str

    @property
    def version(self) -> str:
        return self.filename.split("-")[1] if self.filename.count("-") >= 2 else ""


def normalize(project: str) -> str:
    """PEP 503's normalised project name (``nvidia_cuda_nvcc`` -> ``nvidia-cuda-nvcc``)."""
    return re.sub(r"[-_.]+", "-", project).lower()


# -- which indexes ------------------------------------------------------------------------------------

def _pip_settings() -> dict[str, str] | None:
    """pip's effective settings (``pip config list``: its files and ``PIP_*`` variables); None without pip."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=30, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    settings: dict[str, str] = {}
    rank = {"global": 0, "install": 1, ":env:": 2}  # pip: a variable beats the files, [install] beats [global]
    best: dict[str, int] = {}
    for line in out.stdout.splitlines():
        match = re.match(r"^([^.=]+)\.([\w-]+)='(.*)'$", line.strip())
        if not match or match.group(1) not in rank:
            continue
        section, key, value = match.groups()
        if rank[section] >= best.get(key, -1):
            best[key], settings[key] = rank[section], value
    return settings


def configured() -> tuple[tuple[str, ...], str]:
    """The indexes to use, in order, and where that list comes from (for ``jitkernels doctor``)."""
    own = config.cuda_index()
    if own is not None:
        return tuple(own.split()), "JITKERNELS_CUDA_INDEX"
    settings = _pip_settings()
    if settings is None:  # no pip in this environment: its variables still count
        settings = {k: v for k, v in (("index-url", config.pip_index_url()),
                                      ("extra-index-url", config.pip_extra_index_url()),
                                      ("no-index", "1" if config.pip_no_index() else "")) if v}
        source = "pip's variables (pip is not installed)"
    else:
        source = "pip's configuration (pip config list)"
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        return (), f"{source}: no-index"
    main = settings.get("index-url") or DEFAULT_INDEX
    extra = settings.get("extra-index-url", "").split()
    if main == DEFAULT_INDEX and "index-url" not in settings:
        source += " (index-url: PyPI, pip's default)"
    return tuple(dict.fromkeys([main, *extra])), source


# -- reading an index ---------------------------------------------------------------------------------

class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "a":
            found = dict(attrs)
            if found.get("href"):
                self.links.append(found)


def _open(url: str, accept: str | None = None):
    headers = {"User-Agent": f"jitkernels/{config.VERSION}"}
    if accept:
        headers["Accept"] = accept
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=config.network_timeout())


def _page_url(index: str, project: str) -> str:
    url = f"{index.rstrip('/')}/{normalize(project)}/"
    if url.startswith("file:"):
        path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
        if os.path.isdir(path):
            return urllib.parse.urljoin(url, "index.html")  # a local PEP 503 tree, as pip reads it
    return url


def project_files(index: str, project: str) -> list[IndexFile] | None:
    """The files ``index`` lists for ``project``; None if it has no such project. Raises FetchError if unreachable."""
    url = _page_url(index, project)
    try:
        with _open(url, _ACCEPT) as response:
            body = response.read(MAX_PAGE_BYTES + 1)
            kind = response.headers.get("Content-Type", "") or ""
            base = response.geturl()
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            return None
        raise FetchError(f"The package index {index} answered {exc.code} for {project}.") from exc
    except FileNotFoundError:
        return None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        if url.startswith("file:"):
            return None  # pip, too, passes over a local index without the project
        raise FetchError(f"The package index {index} cannot be reached ({getattr(exc, 'reason', exc)}).") from exc
    if len(body) > MAX_PAGE_BYTES:
        raise FetchError(f"The package index {index} sent more than {MAX_PAGE_BYTES >> 20} MiB for {project}.")
    files: list[IndexFile] = []
    if kind.startswith(_PEP691) or body.lstrip().startswith(b"{"):
        try:
            listed = json.loads(body).get("files", [])
        except (ValueError, AttributeError) as exc:
            raise FetchError(f"The package index {index} sent unreadable JSON for {project} ({exc}).") from exc
        for item in listed:
            if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                continue
            hashes = item.get("hashes") if isinstance(item.get("hashes"), dict) else {}
            size = item.get("size")
            files.append(IndexFile(item["filename"], urllib.parse.urljoin(base, str(item.get("url", ""))),
                                   hashes.get("sha256"), size if isinstance(size, int) else None,
                                   bool(item.get("yanked")), index))
        return files
    parser = _Links()
    parser.feed(body.decode("utf-8", "replace"))
    for link in parser.links:
        target, _, fragment = urllib.parse.urljoin(base, link["href"]).partition("#")
        digest = re.search(r"(?:^|&)sha256=([0-9a-fA-F]{64})(?:&|$)", fragment)
        files.append(IndexFile(urllib.parse.unquote(target.rsplit("/", 1)[-1]), target,
                               digest.group(1).lower() if digest else None, None,
                               "data-yanked" in link, index))
    return files


@lru_cache(maxsize=1)
def _supported_tags() -> frozenset:
    from packaging import tags

    return frozenset(tags.sys_tags())


def wheel_fits(filename: str) -> bool:
    """A wheel this interpreter and platform can install (pip's rule: one of its tags is supported)."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        _name, _version, _build, wheel_tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return bool(wheel_tags & _supported_tags())


def _version(text: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def matching(files: list[IndexFile], specifier: str) -> list[IndexFile]:
    """Installable, final, not yanked wheels whose version satisfies ``specifier`` (``==13.0.88.*``), newest first."""
    from packaging.specifiers import SpecifierSet

    wanted = SpecifierSet(specifier)
    found = []
    for f in files:
        version = _version(f.version)
        if (f.filename.endswith(".whl") and not f.yanked and version is not None and not version.is_prerelease
                and wanted.contains(version, prereleases=False) and wheel_fits(f.filename)):
            found.append((version, f))
    return [f for _v, f in sorted(found, key=lambda pair: pair[0], reverse=True)]


def find_wheel(indexes: tuple[str, ...], project: str, specifier: str) -> IndexFile:
    """The newest wheel of ``project`` matching ``specifier`` on the first index that has one."""
    seen = []
    for index in indexes:
        files = project_files(index, project)
        if files is None:
            seen.append(f"{index}: no {project}")
            continue
        found = matching(files, specifier)
        if found:
            return found[0]
        versions = sorted({f.version for f in files if f.filename.endswith(".whl")}, key=lambda v: _version(v) or 0)
        seen.append(f"{index}: {project} {', '.join(versions[-6:]) or 'has no wheels'}")
    raise BuildInputError(f"No wheel of {project}{specifier} for this platform on the package index "
                          f"({'; '.join(seen) or 'no index configured'}).")


def releases(indexes: tuple[str, ...], project: str) -> tuple[str, list[IndexFile]] | None:
    """``(index, installable wheels, newest first)`` of ``project`` on the first index that lists it, or None."""
    for index in indexes:
        files = project_files(index, project)
        if files:
            return index, matching(files, ">=0")
    return None


# -- downloading ----------------------------------------------------------------------------------------

def download(entry: IndexFile, folder: Path, max_bytes: int, progress_task=None) -> Path:
    """Stream ``entry`` into ``folder``, checking its size and the sha256 the index publishes."""
    name = entry.filename
    if not entry.sha256 or not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
        raise BuildInputError(f"The package index {entry.index} publishes no sha256 for {name}: JitKernels "
                              f"refuses to use a file it cannot verify.")
    if "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise BuildInputError(f"The package index {entry.index} lists an odd file name {name!r}.")
    scheme, index_scheme = urllib.parse.urlsplit(entry.url).scheme, urllib.parse.urlsplit(entry.index).scheme
    if scheme not in ("http", "https", "file") or (scheme == "file" and index_scheme != "file"):
        # a remote index may not make this machine read its own files (the sha256 check would confirm them)
        raise BuildInputError(f"The package index {entry.index} points {name} at {entry.url!r}: only http(s) "
                              f"links are followed from a remote index (file:// only from a local one).")
    limit = min(entry.size, max_bytes) if entry.size is not None else max_bytes
    if entry.size is not None and entry.size > max_bytes:
        raise BuildInputError(f"{name} is {entry.size} bytes on {entry.index}, beyond the {max_bytes >> 20} MiB "
                              f"JitKernels accepts for it.")
    target = folder / name
    digest = hashlib.sha256()
    size = 0
    logger.info("jitkernels: downloading %s from %s", name, entry.index)
    pace = Pace()
    try:
        with _open(entry.url) as response, open(target, "wb") as out:
            # read1: what has arrived, so a trickle is measured as it comes (jitkernels.inputs.pace)
            read = getattr(response, "read1", response.read)
            for chunk in iter(lambda: read(_CHUNK), b""):
                size += len(chunk)
                why = pace.problem(size)
                if why is not None:
                    raise FetchError(f"Downloading {name} from {entry.index} was given up: {why}. Point "
                                     f"JITKERNELS_CUDA_INDEX at a faster index, or CUDA_HOME at a CUDA toolkit.")
                if size > limit:
                    raise BuildInputError(f"{name} from {entry.index} holds more than the {limit} bytes "
                                          f"{'its index announces' if entry.size is not None else 'accepted'}.")
                digest.update(chunk)
                out.write(chunk)
                if progress_task is not None:
                    progress_task.advance(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        if isinstance(exc, (BuildInputError, FetchError)):
            raise
        raise FetchError(f"Downloading {name} from {entry.index} failed ({getattr(exc, 'reason', exc)}).") from exc
    if entry.size is not None and size != entry.size:
        raise BuildInputError(f"{name} from {entry.index} is {size} bytes, the index says {entry.size}.")
    if digest.hexdigest() != entry.sha256:
        raise BuildInputError(f"{name} from {entry.index} does not match the sha256 the index publishes "
                              f"({digest.hexdigest()} != {entry.sha256}).")
    return target


def wheel_metadata(wheel: Path):
    """The ``METADATA`` of a downloaded (verified) wheel, as an email message."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [i for i in zf.infolist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", i.filename)]
            if len(names) != 1 or names[0].file_size > MAX_METADATA_BYTES:
                raise BuildInputError(f"{wheel.name} has no single, small .dist-info/METADATA.")
            text = zf.read(names[0]).decode("utf-8", "replace")
    except (zipfile.BadZipFile, OSError) as exc:
        raise BuildInputError(f"{wheel.name} is not a readable wheel ({exc}).") from exc
    return email.parser.Parser().parsestr(text)


def requirements(metadata, extras: tuple[str, ...]) -> dict[str, str]:
    """``{project: specifier}`` that ``metadata`` requires with ``extras``, for this machine (PEP 508 markers)."""
    from packaging.requirements import InvalidRequirement, Requirement

    pins: dict[str, str] = {}
    for text in metadata.get_all("Requires-Dist") or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and not any(req.marker.evaluate({"extra": extra}) for extra in extras or ("",)):
            continue
        pins.setdefault(normalize(req.name), str(req.specifier))
    return pins
