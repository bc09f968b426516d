"""An entry's ``manifest.json``: written when the entry is made, checked on every load, re-hashed by ``verify``.

One schema (:func:`manifest_problem`) for every manifest, whether this
machine wrote it or a remote cache sent it (:mod:`.remote` checks it before
anything is published): every field a reader uses has its type, every path
stays inside the entry, every file has a size and a sha256, and an entry that
holds a kernel lists that kernel's package ``<python_name>/__init__.py`` (and,
for a native build, its compiled library).

The cheap rule, run on every load: the manifest fits the schema and every
listed file has its size (one ``stat`` each, nothing read). The full rule
(``jitkernels verify``, ``cache prune --damaged``, every entry before it is
published, and an entry whose import failed) also re-hashes every file
against ``sha256`` and refuses files the manifest does not list.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from pathlib import Path

from .. import config
from .files import json_bytes, read_json, write_atomic
from .layout import MANIFEST, stays_inside


def write_manifest(folder: Path, inspection, extra: dict | None = None) -> None:
    """Record every file's size (checked on each load) and sha256 (checked by ``jitkernels verify``)."""
    files, hashes = {}, {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder)).replace(os.sep, "/")
        if path.is_file() and rel != MANIFEST and "__pycache__" not in path.relative_to(folder).parts:
            files[rel] = path.stat().st_size
            hashes[rel] = _sha256(path)
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
    """The entry's manifest if it fits the schema, else None."""
    manifest = read_json(entry / MANIFEST)
    return manifest if manifest is not None and manifest_problem(manifest) is None else None


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Library suffixes a native entry's compiled extension may have.
LIBRARY_SUFFIXES = (".so", ".pyd", ".dylib")
#: Fields of the recorded inspection that readers use, and their types (None is allowed for each).
_INSPECTION_TEXT = ("provider", "name", "repo_id", "revision", "requested_revision", "backend", "strategy",
                    "reason", "detail", "source", "source_location", "python_name", "module_name",
                    "expected_extension_name", "stable_abi", "digest")
_INSPECTION_LISTS = ("dependencies", "unsupported_dependencies", "python_depends", "kernels", "kernel_depends")
#: Top-level text fields (native builds, git sources, CUTLASS headers write them).
_TEXT = ("recipe", "build_key", "spec", "name", "version", "digest", "url", "archive_sha256")


def safe_relpath(rel) -> bool:
    """A file an entry may list: a path that stays inside the entry (:func:`layout.stays_inside`), not the manifest."""
    return rel != MANIFEST and stays_inside(rel)


def _text_or_none(value) -> bool:
    return value is None or isinstance(value, str)


def _text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def manifest_problem(manifest, expect: dict | None = None) -> str | None:
    """``None`` if ``manifest`` fits the one schema (see the module docstring), else what is wrong.

    ``expect``: ``{"python_name": ..., "module_name": ...}`` of the kernel the entry must hold (a
    remote entry fetched for a known kernel); else the manifest's own inspection says it.
    """
    if not isinstance(manifest, dict):
        return "the manifest is not a JSON object"
    files, hashes = manifest.get("files"), manifest.get("sha256")
    if not isinstance(files, dict) or not files:
        return "the manifest lists no files"
    for rel, size in files.items():
        if not safe_relpath(rel):
            return f"the manifest lists {rel!r}, outside the entry"
        if type(size) is not int or size < 0:
            return f"the manifest records a bad size for {rel!r}"
    if not isinstance(hashes, dict) or set(hashes) != set(files):
        return "the manifest does not record a sha256 for every file"
    for rel, digest in hashes.items():
        if not isinstance(digest, str) or not _SHA256.match(digest):
            return f"the manifest records a bad sha256 for {rel!r}"
    for key in _TEXT:
        if key in manifest and not isinstance(manifest[key], str):
            return f"the manifest's {key!r} is not text"
    if "created" in manifest and (type(manifest["created"]) not in (int, float)):
        return "the manifest's 'created' is not a time"
    if "archs" in manifest and not _text_list(manifest["archs"]):
        return "the manifest's 'archs' is not a list of text"
    toolchain = manifest.get("toolchain", {})
    if not isinstance(toolchain, dict) or not all(_text_or_none(v) for v in toolchain.values()):
        return "the manifest's 'toolchain' is not an object of text"
    git = manifest.get("git", {})
    if not isinstance(git, dict) or not all(isinstance(git.get(k, ""), str) for k in ("url", "commit")):
        return "the manifest's 'git' is not an object with a text 'url' and 'commit'"
    inspection = manifest.get("inspection", {})
    if not isinstance(inspection, dict):
        return "the manifest's 'inspection' is not an object"
    for key in _INSPECTION_TEXT:
        if not _text_or_none(inspection.get(key)):
            return f"the manifest's 'inspection.{key}' is not text"
    for key in _INSPECTION_LISTS:
        if key in inspection and not _text_list(inspection[key]):
            return f"the manifest's 'inspection.{key}' is not a list of text"
    if not isinstance(inspection.get("edition"), (int, type(None))) or isinstance(inspection.get("edition"), bool):
        return "the manifest's 'inspection.edition' is not a number"
    for key in ("inputs", "considered"):
        if key in inspection and not (isinstance(inspection[key], list)
                                      and all(isinstance(v, dict) for v in inspection[key])):
            return f"the manifest's 'inspection.{key}' is not a list of objects"
    if expect is not None or "inspection" in manifest or "build_key" in manifest:
        return _missing_package_files(files, expect if expect is not None else inspection,
                                      native="build_key" in manifest)
    if "git" in manifest or ("version" in manifest and "digest" in manifest):
        return None  # a git source tree, or a build input's files (CUTLASS headers)
    if "cuda_toolkit" in manifest:  # a provisioned compiler (jitkernels.build.toolchain)
        if not isinstance(manifest["cuda_toolkit"], str) or not isinstance(manifest.get("nvcc_release"), str):
            return "the manifest's 'cuda_toolkit' or 'nvcc_release' is not text"
        if "bin/nvcc" not in files:
            return "the manifest of a CUDA compiler lists no bin/nvcc"
        return None
    return "the manifest does not say what the entry holds (no inspection, git source, build input or compiler)"


def _missing_package_files(files: dict, kernel: dict, native: bool) -> str | None:
    """An entry that holds a kernel lists its package (and a native one its library): else it cannot import."""
    package, module = kernel.get("python_name"), kernel.get("module_name")
    if not isinstance(package, str) or not package.isidentifier():
        return f"the manifest's package name {package!r} is not an identifier"
    if f"{package}/__init__.py" not in files:
        return f"the manifest does not list the package's {package}/__init__.py"
    if native and not (isinstance(module, str) and any(
            rel.startswith(f"{package}/{module}.") and rel.endswith(LIBRARY_SUFFIXES) and rel.count("/") == 1
            for rel in files)):
        return f"the manifest does not list the compiled library {package}/{module}.*"
    return None


def check_entry(entry: Path, full: bool = False) -> str | None:
    """``None`` if the published entry is intact, else what is wrong (see the module docstring)."""
    manifest_path = entry / MANIFEST
    manifest = read_json(manifest_path)
    if manifest is None:
        return f"{manifest_path} is missing, unreadable or not a manifest"
    problem = manifest_problem(manifest)
    if problem is not None:
        return f"{manifest_path}: {problem}"
    files = manifest["files"]
    for rel, size in files.items():
        try:
            st = os.lstat(entry / rel)
        except OSError:
            return f"{rel} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{rel} is not a regular file"
        if st.st_size != size:
            return f"{rel} is {st.st_size} bytes, the manifest says {size}"
    if full:
        for rel, digest in manifest["sha256"].items():
            try:
                actual = _sha256(entry / rel)
            except OSError as exc:
                return f"{rel} cannot be read ({exc.strerror})"
            if actual != digest:
                return f"{rel} does not match its recorded sha256"
        extra = unlisted(entry, files)
        if extra:
            return f"{extra[0]} is in the entry but not in its manifest" + (
                f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    return None


def unlisted(entry: Path, files: dict) -> list[str]:
    """Paths in ``entry`` that its manifest does not list (bytecode caches and the manifest itself aside)."""
    extra = []
    for dirpath, dirnames, filenames in os.walk(entry):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel_dir = os.path.relpath(dirpath, entry)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            if rel != MANIFEST and rel not in files:
                extra.append(rel)
    return extra


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()
