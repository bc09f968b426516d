"""What a kernel provider is: resolve a name and revision to an immutable snapshot, list it, fetch from it.

The core (inspection, preparation, building, importing) only talks to these
two interfaces, so a new provider (FlashInfer, a private registry...) is one
module that registers itself in :mod:`jitkernels.providers`.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from ..identity import python_name


@dataclass(frozen=True)
class KernelRef:
    """A kernel named at a provider: ``provider`` is the canonical provider value, ``repo_id`` its id there."""

    provider: str
    repo_id: str

    @property
    def short_name(self) -> str:
        return self.repo_id.rsplit("/", 1)[-1]

    @property
    def python_name(self) -> str:
        """The kernel's Python package name, as kernel-builder derives it (``-`` becomes ``_``)."""
        return python_name(self.repo_id)


class Snapshot(ABC):
    """One immutable revision of a kernel's files, as seen before anything is downloaded."""

    ref: KernelRef
    #: The commit hash, or ``None`` for a local folder.
    commit: str | None
    #: What the user asked for (branch, tag, commit, ``v1``...), for messages.
    requested: str | None
    #: Every file path (``/``-separated, relative to the revision root).
    files: frozenset[str]
    #: Who trusts this snapshot's code (see :data:`jitkernels.trust.DURABLE_GRANTS`): set by ``resolve``.
    trust: str | None = None

    @property
    @abstractmethod
    def location(self) -> str:
        """A human-readable location: a URL with revision, or a local path."""

    @abstractmethod
    def fetch(self, patterns: list[str]) -> Path:
        """Make the files matching ``patterns`` (fnmatch, ``**`` allowed) available; return the root folder."""

    def match(self, patterns: list[str]) -> list[str]:
        """The files of this snapshot that ``fetch(patterns)`` would bring."""
        return sorted(f for f in self.files if any(fnmatch.fnmatchcase(f, p) for p in patterns))

    def tampered(self, root: Path, files) -> list[str]:
        """Of ``files`` fetched under ``root``, those whose content is not what the provider publishes for
        them (only a provider that publishes content ids can tell; the others say none)."""
        return []

    def fetch_one(self, path: str) -> Path:
        """Fetch a single (small) file and return its local path."""
        return self.fetch([path]) / path

    @property
    def is_local(self) -> bool:
        return self.commit is None


class Provider(ABC):
    """A source of kernels (a hub, a registry...). Register instances with :func:`register_provider`."""

    #: Canonical value, also the ``KernelProvider`` enum value (``"hf_kernels"``).
    name: str

    @abstractmethod
    def parse_name(self, name: str) -> KernelRef:
        """Map a provider-local name to a :class:`KernelRef` without any network access."""

    @abstractmethod
    def candidates(self, ref: KernelRef) -> list[KernelRef]:
        """Other spellings to try when ``ref`` is not found (e.g. ``_`` to ``-``)."""

    @abstractmethod
    def resolve(
        self,
        ref: KernelRef,
        revision: str | None,
        *,
        offline: bool,
        trust_remote_code: bool | list[str] = False,
    ) -> Snapshot:
        """Resolve ``revision`` (``None`` = the provider's default) to a :class:`Snapshot`."""

    @abstractmethod
    def last_resolved(self, ref: KernelRef, revision: str | None) -> str | None:
        """The commit that ``revision`` resolved to last time, from local state only (offline fallback)."""
