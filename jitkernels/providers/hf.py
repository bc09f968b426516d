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
import re
from pathlib import Path

from .. import cache, config
from ..errors import (
    FetchError,
    InvalidKernelNameError,
    KernelNotFoundError,
    OfflineError,
    RevisionNotFoundError,
    TrustError,
)
from .. import warm
from ..warm import caller_grant, is_commit
from .base import KernelRef, Provider, Snapshot

_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
#: The kernel part also becomes a Python package name (``-`` -> ``_``), so no dots and a letter first.
_KERNEL_RE = re.compile(r"^[A-Za-z](?:[A-Za-z0-9_-]{0,94}[A-Za-z0-9])?$")
_REPO_TYPES = ("kernel", "model")

_VERSION_BRANCH_RE = re.compile(r"^v(\d+)$")


def _check_part(part: str, name: str, kernel: bool = False) -> str:
    if not (_KERNEL_RE if kernel else _PART_RE).match(part) or ".." in part:
        raise InvalidKernelNameError(
            f"Invalid kernel name {name!r}: {part!r} must be letters, digits, '-' or '_' (and '.' in the "
            f"organisation), starting with a letter (e.g. 'activation' or 'kernels-community/activation'), "
            f"since it becomes a Python package name."
        )
    return part


class HfSnapshot(Snapshot):
    def __init__(self, ref: KernelRef, repo_type: str, commit: str, requested: str | None, files, offline: bool):
        self.ref = ref
        self.repo_type = repo_type
        self.commit = commit
        self.requested = requested
        self.files = frozenset(files)
        self.offline = offline

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
        if not isinstance(name, str) or not name.strip():
            raise InvalidKernelNameError(f"A kernel name must be a non-empty string, got {name!r}.")
        name = name.strip()
        parts = name.split("/")
        if len(parts) == 1:
            _check_part(parts[0], name, kernel=True)
            return KernelRef(self.name, f"{config.hf_default_org()}/{parts[0].replace('_', '-')}")
        if len(parts) == 2:
            _check_part(parts[0], name)
            _check_part(parts[1], name, kernel=True)
            return KernelRef(self.name, name)
        raise InvalidKernelNameError(
            f"Invalid kernel name {name!r}: use a bare name ('activation') or 'org/name'."
        )

    def candidates(self, ref: KernelRef) -> list[KernelRef]:
        org, short = ref.repo_id.split("/", 1)
        if "_" in short:
            return [KernelRef(self.name, f"{org}/{short.replace('_', '-')}")]
        return []

    # -- revisions -------------------------------------------------------------
    def last_resolved(self, ref: KernelRef, revision: str | None) -> str | None:
        return warm.last_resolved(self.name, ref.repo_id, revision)

    def _remember(self, ref: KernelRef, revision: str | None, commit: str, repo_type: str) -> None:
        try:
            cache.write_json(
                warm.refs_file(self.name, ref.repo_id, revision),
                {"commit": commit, "repo_type": repo_type, "repo_id": ref.repo_id, "revision": revision},
            )
        except OSError:
            pass  # only an offline fallback; never fail a load for it

    def resolve(self, ref, revision, *, offline, trust_remote_code=False) -> HfSnapshot:
        """Resolve to a commit and decide trust: asked of the Hub online, read from our records offline."""
        if offline:
            snapshot = self._resolve_offline(ref, revision)
            snapshot.trust = self._offline_grant(ref, snapshot.commit, trust_remote_code)
            return snapshot
        snapshot = self._resolve_online(ref, revision)
        snapshot.trust = self.check_trust(ref, trust_remote_code)
        if snapshot.trust == "hub-flag":
            self._record_grant(ref, snapshot.commit)
        self._remember(ref, revision, snapshot.commit, snapshot.repo_type)  # only once it may be loaded
        return snapshot

    # -- trust -------------------------------------------------------------------
    #
    # One rule for every load, pinned or not, online or offline: a kernel's code runs only if this
    # call grants trust (trust_remote_code, JITKERNELS_TRUSTED), its publisher is on the default
    # list, or the Hub flags its publisher ``trustedKernelPublisher``: asked online, and recorded
    # per commit under <cache>/trust/ so that an offline load of that commit can rely on it. A
    # caller's grant is never recorded: loading a commit once with trust_remote_code=True does not
    # make it loadable without it later.

    def check_trust(self, ref: KernelRef, trust_remote_code=False) -> str:
        """How ``ref`` is trusted (a grant name, see :data:`jitkernels.warm.DURABLE_GRANTS`), or :class:`TrustError`."""
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

    def _record_grant(self, ref: KernelRef, commit: str) -> None:
        import time

        try:
            cache.write_json(cache.trust_file(self.name, ref.repo_id, commit), {
                "repo_id": ref.repo_id, "commit": commit, "granted_by": "hub-flag", "time": time.time()})
        except OSError:
            pass  # a read-only cache: offline loads of this commit will need trust_remote_code

    def _offline_grant(self, ref: KernelRef, commit: str, trust_remote_code) -> str:
        grant = caller_grant(ref.repo_id, trust_remote_code)
        if grant is not None:
            return grant
        record = warm.read_json(cache.trust_file(self.name, ref.repo_id, commit))
        if record and record.get("granted_by") == "hub-flag" and record.get("commit") == commit:
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
                files = [
                    item.path
                    for item in api.list_repo_tree(
                        ref.repo_id, repo_type=repo_type, revision=commit, recursive=True
                    )
                    if type(item).__name__ == "RepoFile"
                ]
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
            return HfSnapshot(ref, repo_type, commit, rev, files, offline=False)
        raise KernelNotFoundError(
            f"Kernel repository {ref.repo_id!r} was not found on {config.hf_endpoint()} (as a kernel or model repo). "
            f"Check the name (bare names map to {config.hf_default_org()}/<name>), or log in if it is private."
        ) from last_error

    def _repo_type_order(self, ref: KernelRef) -> tuple[str, ...]:
        record = warm.read_json(warm.refs_file(self.name, ref.repo_id, None))
        if record and record.get("repo_type") == "model":
            return ("model", "kernel")
        return _REPO_TYPES

    def _branches(self, api, ref: KernelRef, repo_type: str) -> list[str]:
        refs = api.list_repo_refs(ref.repo_id, repo_type=repo_type)
        return [b.name for b in refs.branches]

    def _default_revision(self, api, ref: KernelRef, repo_type: str) -> str:
        """The newest ``vN`` branch if the repo has version branches, else ``main`` (as ``kernels info``)."""
        versions = sorted(
            int(m.group(1)) for b in self._branches(api, ref, repo_type) if (m := _VERSION_BRANCH_RE.match(b))
        )
        return f"v{versions[-1]}" if versions else "main"

    def _versions_text(self, api, ref: KernelRef, repo_type: str) -> str:
        try:
            branches = self._branches(api, ref, repo_type)
        except Exception:
            return "unknown (the branch list could not be read)"
        versions = sorted(int(m.group(1)) for b in branches if (m := _VERSION_BRANCH_RE.match(b)))
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
    from .. import __version__

    return __version__
