"""What a kernel is called: names, repository ids, revisions, ``LOCAL_KERNELS``. One function for each rule.

Every caller (``load``, the warm path, the import hook, pins, patched
``kernels``, lock files, the CLI) goes through these, so a name or a revision
means the same thing everywhere:

* :func:`hf_repo_id`: ``"triton-layer-norm"`` is ``kernels-community/triton-layer-norm``
  (the organisation is ``JITKERNELS_HF_ORG``), ``"cv_utils"`` is
  ``kernels-community/cv-utils`` (kernel-builder names never contain ``_``),
  ``"org/name"`` is used as given;
* :func:`revision_for`: ``version=N`` is the branch ``vN`` (upstream's
  convention); a revision is a branch, tag or commit;
* :func:`is_commit`: the only revision that can never move;
* :func:`parse_local_kernels`: upstream's ``LOCAL_KERNELS`` format.

Stdlib only: the warm path uses it.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import config
from .errors import InvalidKernelNameError

_HEX = frozenset("0123456789abcdef")
_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
#: The kernel part also becomes a Python package name (``-`` -> ``_``), so no dots and a letter first.
_KERNEL_RE = re.compile(r"^[A-Za-z](?:[A-Za-z0-9_-]{0,94}[A-Za-z0-9])?$")
VERSION_BRANCH_RE = re.compile(r"^v(\d+)$")


def is_commit(revision) -> bool:
    """A full commit id (40 hex, or 64 for SHA-256 repositories), lower case."""
    return isinstance(revision, str) and len(revision) in (40, 64) and set(revision) <= _HEX


def revision_for(revision: str | None, version: int | None) -> str | None:
    """The revision a ``revision=`` / ``version=`` pair asks for: ``version=N`` is the branch ``vN``; both is an error."""
    if revision is not None and version is not None:
        raise InvalidKernelNameError(f"Pass revision= or version=, not both (got revision={revision!r}, version={version!r}).")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidKernelNameError(f"version must be a non-negative integer (the vN branch), got {version!r}.")
        return f"v{version}"
    if revision is not None:
        if not isinstance(revision, str) or not revision.strip() or "\x00" in revision or ".." in revision:
            raise InvalidKernelNameError(f"Invalid revision {revision!r}: use a branch, tag or commit hash.")
        return revision.strip()
    return None


def _check_part(part: str, name: str, kernel: bool = False) -> str:
    if not (_KERNEL_RE if kernel else _PART_RE).match(part) or ".." in part:
        raise InvalidKernelNameError(
            f"Invalid kernel name {name!r}: {part!r} must be letters, digits, '-' or '_' (and '.' in the "
            f"organisation), starting with a letter (e.g. 'activation' or 'kernels-community/activation'), "
            f"since it becomes a Python package name."
        )
    return part


def hf_repo_id(name: str) -> str:
    """The Hub repository id a kernel name means (see the module docstring); :class:`InvalidKernelNameError` if none."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidKernelNameError(f"A kernel name must be a non-empty string, got {name!r}.")
    name = name.strip()
    parts = name.split("/")
    if len(parts) == 1:
        _check_part(parts[0], name, kernel=True)
        return f"{config.hf_default_org()}/{parts[0].replace('_', '-')}"
    if len(parts) == 2:
        _check_part(parts[0], name)
        _check_part(parts[1], name, kernel=True)
        return name
    raise InvalidKernelNameError(f"Invalid kernel name {name!r}: use a bare name ('activation') or 'org/name'.")


def hyphenated(repo_id: str) -> str | None:
    """``org/name_x`` -> ``org/name-x``, the other spelling tried when the first is not found; None if the same."""
    org, _, short = repo_id.partition("/")
    return f"{org}/{short.replace('_', '-')}" if "_" in short else None


def python_name(repo_id: str) -> str:
    """The kernel's Python package name, as kernel-builder derives it: ``org/layer-norm`` -> ``layer_norm``."""
    return repo_id.rsplit("/", 1)[-1].replace("-", "_")


def parse_local_kernels(spec: str) -> dict[str, Path]:
    """``"org/name=/path:org2/name2=/path2"`` -> ``{repo_id: path}`` (upstream's ``LOCAL_KERNELS`` format).

    A malformed entry is an :class:`InvalidKernelNameError` naming it.
    """
    mapping: dict[str, Path] = {}
    for item in filter(None, (part.strip() for part in spec.split(":"))):
        repo_id, sep, path = item.partition("=")
        if not sep or not repo_id.strip() or not path.strip():
            raise InvalidKernelNameError(
                f"LOCAL_KERNELS entry {item!r} is not 'org/name=/path'. "
                f"Format: LOCAL_KERNELS=\"org/name=/path:org2/name2=/path2\"."
            )
        repo_id = repo_id.strip()
        if "/" not in repo_id:  # upstream matches org/name only: this entry would serve nothing, silently
            from .log import warning_once

            warning_once(f"LOCAL_KERNELS entry {item!r} names no organisation, so it matches no kernel: "
                         f"write 'kernels-community/{repo_id}={path.strip()}' (the format is org/name=/path).")
        mapping[repo_id] = Path(path.strip()).expanduser()
    return mapping
