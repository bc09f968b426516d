"""The Hugging Face Hub provider (``hf_kernels``): kernel repos of the Hub's ``kernel`` type, or older ``model`` type.

Name mapping (documented in the README):

* ``"triton-layer-norm"`` means ``kernels-community/triton-layer-norm``
  (the organisation is ``JITKERNELS_HF_ORG``, default ``kernels-community``);
* ``"cv_utils"`` means ``kernels-community/cv-utils``: in bare names
  underscores become hyphens, as kernel-builder names never contain ``_``;
* ``"org/name"`` is used as given; if it is not found and contains ``_``,
  the hyphenated spelling is tried.

Everything goes through huggingface_hub (its cache, token, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``), imported only when the Hub is really needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import config, identity
from ..cache import index, layout
from ..errors import (
    FetchError,
    KernelNotFoundError,
    OfflineError,
    RevisionNotFoundError,
    TrustError,
)
from ..identity import is_commit
from ..trust import caller_grant
from .base import KernelRef, Provider, Snapshot

_REPO_TYPES = ("kernel", "model")


def _content_ids(listed) -> dict:
    """What the Hub says each file's content is: the LFS sha256, else the git blob id."""
    ids = {}
    for item in listed:
        lfs = getattr(item, "lfs", None)
        sha256 = getattr(lfs, "sha256", None) if lfs is not None else None
        if isinstance(sha256, str):
            ids[item.path] = ("sha256", sha256)
        elif isinstance(getattr(item, "blob_id", None), str):
            ids[item.path] = ("git", item.blob_id)
    return ids


class HfSnapshot(Snapshot):
    def __init__(self, ref: KernelRef, repo_type: str, commit: str, requested: str | None, files, offline: bool,
                 content_ids: dict | None = None):
        self.ref = ref
        self.repo_type = repo_type
        self.commit = commit
        self.requested = requested
        self.files = frozenset(files)
        self.offline = offline
        #: path -> ("sha256", hex) for LFS files, ("git", blob sha1) for the others: the Hub's listing (online only)
        self.content_ids = content_ids or {}

    def tampered(self, root: Path, files) -> list[str]:
        import hashlib

        changed = []
        for rel in files:
            kind, expected = self.content_ids.get(rel, (None, None))
            if expected is None:
                continue
            data = (root / rel).read_bytes()
            actual = (hashlib.sha256(data).hexdigest() if kind == "sha256"
                      else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
            if actual != expected:
                changed.append(rel)
        return changed

    @property
    def location(self) -> str:
        prefix = "kernels/" if self.repo_type == "kernel" else ""
        return f"hf://{prefix}{self.ref.repo_id}@{self.commit}"

    def fetch(self, patterns: list[str]) -> Path:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors

        from .. import progress

        try:
            # Shown only if it takes more than a second (see jitkernels.progress); replaces huggingface_hub's bars.
            with progress.task(f"jitkernels: fetching {self.location}", total=len(self.match(patterns)),
                               unit="file", eta_after=None, delay=1.0) as shown:
                folder = huggingface_hub.snapshot_download(
                    self.ref.repo_id,
                    repo_type=self.repo_type,
                    revision=self.commit,
                    allow_patterns=patterns,
                    local_files_only=self.offline,
                    etag_timeout=config.network_timeout(),
                    cache_dir=config.kernels_hub_cache(),  # upstream's KERNELS_CACHE, else huggingface_hub's
                    tqdm_class=progress.hub_tqdm_class(shown),
                )
        except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as exc:
            raise OfflineError(
                f"Offline: files {patterns} of {self.location} are not in the Hugging Face cache. "
                f"Load the kernel once with network access (or `jitkernels warmup`), then retry."
            ) from exc
        except Exception as exc:  # network, server, disk
            raise FetchError(f"Downloading {patterns} from {self.location} failed: {exc}") from exc
        root = Path(folder)
        missing = [f for f in self.match(patterns) if not (root / f).exists()]
        if missing and self.offline:  # huggingface_hub 1.x returns a cached snapshot folder without them
            raise OfflineError(
                f"Offline: files {missing[:5]} of {self.location} are not in the Hugging Face cache. "
                f"Load the kernel once with network access (or `jitkernels warmup`), then retry."
            )
        if missing:
            raise FetchError(f"Downloading from {self.location}: {missing[:5]} did not arrive. Retry the load.")
        return root


class HfKernelsProvider(Provider):
    name = "hf_kernels"

    # -- names ---------------------------------------------------------------
    def parse_name(self, name: str) -> KernelRef:
        return KernelRef(self.name, identity.hf_repo_id(name))

    def candidates(self, ref: KernelRef) -> list[KernelRef]:
        other = identity.hyphenated(ref.repo_id)
        return [KernelRef(self.name, other)] if other else []

    # -- revisions -------------------------------------------------------------
    def last_resolved(self, ref: KernelRef, revision: str | None) -> str | None:
        return index.last_resolved(self.name, ref.repo_id, revision)

    def resolve(self, ref, revision, *, offline, trust_remote_code=False) -> HfSnapshot:
        """Resolve to a commit and decide trust: asked of the Hub online, read from our records offline."""
        if offline:
            snapshot = self._resolve_offline(ref, revision)
            snapshot.trust = self._offline_grant(ref, snapshot.commit, trust_remote_code)
            return snapshot
        snapshot = self._resolve_online(ref, revision)
        snapshot.trust = self.check_trust(ref, trust_remote_code)
        if snapshot.trust == "hub-flag":
            index.record_hub_grant(self.name, ref.repo_id, snapshot.commit)
        index.remember_ref(self.name, ref.repo_id, revision, snapshot.commit, snapshot.repo_type)  # once it may load
        return snapshot

    # -- trust (the rule: jitkernels.trust) ------------------------------------------

    def check_trust(self, ref: KernelRef, trust_remote_code=False) -> str:
        """How ``ref`` is trusted (a grant name, see :data:`jitkernels.trust.DURABLE_GRANTS`), or :class:`TrustError`."""
        grant = caller_grant(ref.repo_id, trust_remote_code)
        if grant is not None:
            return grant
        org = ref.repo_id.split("/", 1)[0]
        try:
            overview = self._api().get_organization_overview(org)
            trusted = bool(getattr(overview, "trustedKernelPublisher", False))
        except Exception:
            trusted = False  # a user namespace, or the check failed: not trusted
        if not trusted:
            raise TrustError(
                f"Kernel {ref.repo_id} is not from a trusted publisher, and loading it runs its code. "
                f"If you trust it, pass trust_remote_code=True (or trust_remote_code=[{ref.repo_id!r}]), "
                f"or add {org!r} or {ref.repo_id!r} to JITKERNELS_TRUSTED (comma separated)."
            )
        return "hub-flag"

    def _offline_grant(self, ref: KernelRef, commit: str, trust_remote_code) -> str:
        grant = caller_grant(ref.repo_id, trust_remote_code)
        if grant is not None:
            return grant
        if index.hub_grant_recorded(self.name, ref.repo_id, commit):
            return "hub-flag"
        raise TrustError(
            f"Offline: kernel {ref.repo_id}@{commit[:12]} is not from a trusted publisher, and no record shows "
            f"that the Hub flagged its publisher when it was loaded here (files in the Hugging Face cache alone "
            f"prove nothing). If you trust it, pass trust_remote_code=True (or trust_remote_code=[{ref.repo_id!r}]), "
            f"or add it to JITKERNELS_TRUSTED; or load it once online."
        )

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(library_name="jitkernels", library_version=_version())

    def _resolve_online(self, ref: KernelRef, revision: str | None) -> HfSnapshot:
        from huggingface_hub import errors as hf_errors

        api = self._api()
        timeout = config.network_timeout()
        last_error: Exception | None = None
        for repo_type in self._repo_type_order(ref):
            try:
                rev = revision if revision is not None else self._default_revision(api, ref, repo_type)
                info = api.repo_info(ref.repo_id, repo_type=repo_type, revision=rev, timeout=timeout)
                commit = info.sha
                listed = [item for item in api.list_repo_tree(ref.repo_id, repo_type=repo_type, revision=commit,
                                                              recursive=True)
                          if type(item).__name__ == "RepoFile"]
                files = [item.path for item in listed]
            except hf_errors.RevisionNotFoundError as exc:
                raise RevisionNotFoundError(
                    f"Kernel {ref.repo_id} has no revision {revision!r}. "
                    f"Available versions: {self._versions_text(api, ref, repo_type)}."
                ) from exc
            except hf_errors.RepositoryNotFoundError as exc:  # also gated/private
                last_error = exc
                continue
            except hf_errors.OfflineModeIsEnabled:
                return self._resolve_offline(ref, revision)
            except Exception as exc:
                raise FetchError(
                    f"Could not reach the Hub for {ref.repo_id} (revision {revision or 'default'}): {exc}. "
                    f"Check HF_ENDPOINT and the network, or set HF_HUB_OFFLINE=1 to use the cache."
                ) from exc
            if not is_commit(commit):
                raise FetchError(f"The Hub answered no commit for {ref.repo_id}@{rev}.")
            escaping = sorted(f for f in files if not layout.stays_inside(f))
            if escaping:  # the listing is the mirror's word; huggingface_hub checks only its own second listing
                raise FetchError(
                    f"The Hub's file list for {ref.repo_id}@{commit} names {len(escaping)} path(s) that leave the "
                    f"repository ({escaping[0]!r}); refusing this revision (a broken or hostile mirror? "
                    f"HF_ENDPOINT is {config.hf_endpoint()}).")
            return HfSnapshot(ref, repo_type, commit, rev, files, offline=False, content_ids=_content_ids(listed))
        raise KernelNotFoundError(
            f"Kernel repository {ref.repo_id!r} was not found on {config.hf_endpoint()} (as a kernel or model repo). "
            f"Check the name (bare names map to {config.hf_default_org()}/<name>), or log in if it is private."
        ) from last_error

    def _repo_type_order(self, ref: KernelRef) -> tuple[str, ...]:
        if index.last_repo_type(self.name, ref.repo_id) == "model":
            return ("model", "kernel")
        return _REPO_TYPES

    def _branches(self, api, ref: KernelRef, repo_type: str) -> list[str]:
        refs = api.list_repo_refs(ref.repo_id, repo_type=repo_type)
        return [b.name for b in refs.branches]

    def _default_revision(self, api, ref: KernelRef, repo_type: str) -> str:
        """The newest ``vN`` branch if the repo has version branches, else ``main`` (as ``kernels info``)."""
        versions = sorted(
            int(m.group(1)) for b in self._branches(api, ref, repo_type) if (m := identity.VERSION_BRANCH_RE.match(b))
        )
        return f"v{versions[-1]}" if versions else "main"

    def _versions_text(self, api, ref: KernelRef, repo_type: str) -> str:
        try:
            branches = self._branches(api, ref, repo_type)
        except Exception:
            return "unknown (the branch list could not be read)"
        versions = sorted(int(m.group(1)) for b in branches if (m := identity.VERSION_BRANCH_RE.match(b)))
        shown = ", ".join(f"version={v}" for v in versions) or "none"
        return f"{shown}; branches: {', '.join(sorted(branches)) or 'none'}"

    def _resolve_offline(self, ref: KernelRef, revision: str | None) -> HfSnapshot:
        """Offline: a commit from our refs or huggingface_hub's, files from its cached snapshot."""
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        for repo_type in self._repo_type_order(ref):
            hub_cache = config.kernels_hub_cache() or constants.HF_HUB_CACHE
            folder = Path(hub_cache) / repo_folder_name(repo_id=ref.repo_id, repo_type=repo_type)
            commit = revision if is_commit(revision) else None
            if commit is None:
                commit = self.last_resolved(ref, revision)
            if commit is None and revision is not None:
                try:
                    commit = (folder / "refs" / revision).read_text().strip()
                except OSError:
                    commit = None
            if not commit:
                continue
            snap = folder / "snapshots" / commit
            if not snap.is_dir():
                continue
            files = [
                str(p.relative_to(snap)).replace(os.sep, "/")
                for p in snap.rglob("*")
                if p.is_file()
            ]
            return HfSnapshot(ref, repo_type, commit, revision, files, offline=True)
        raise OfflineError(
            f"Offline (HF_HUB_OFFLINE=1) and kernel {ref.repo_id} (revision {revision or 'default'}) "
            f"was never fetched on this machine. Load it once with network access, or run "
            f"`jitkernels warmup {ref.repo_id}`, then retry."
        )


def _version() -> str:
    return config.VERSION
