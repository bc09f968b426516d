"""A remote artifact cache: published entries shared through object storage (fsspec).

``JITKERNELS_REMOTE_CACHE=<url>`` (``s3://bucket/prefix``, ``gs://...``,
``file:///shared/folder``, ``hf://datasets/org/repo`` through
huggingface_hub's ``HfFileSystem``) and ``JITKERNELS_REMOTE_CACHE_MODE``
(``read``, the default, for a fleet; ``write`` for the machines that build).
Unset URL: off. fsspec and its backends are an optional extra
(``pip install 'jitkernels[remote]'``) imported only when a URL is set.

Layout under the URL, one folder per entry, named as the local entry
(``<module name>-<build key prefix>``)::

    entries/<entry name>/manifest.json         the entry's own manifest, written LAST
    entries/<entry name>/blobs/<sha256>        every file of the entry, named by its content

The manifest (see :func:`jitkernels.cache.manifest.write_manifest`) maps each
relative path to its size and sha256 and carries the ``build_key``. Files are
stored by content, so two machines racing to upload the same key never
overwrite a file with different bytes: whichever manifest lands last names
blobs that are all present, and the entry is valid either way. A missing
manifest is a miss. Every single object is written atomically: a temporary
name then a rename on file systems, one PUT on object stores, one commit for
all files on the Hub.

Nothing fetched is trusted on its name: :meth:`RemoteCache.fetch` checks the
build key, that every path stays inside the entry, and the size and sha256 of
every file before it reports success.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

from .. import config
from ..errors import RemoteCacheError
from ..log import logger, warning_once
from .layout import MANIFEST
from .manifest import manifest_problem

MODES = ("read", "write")
PIP_LINE = "pip install 'jitkernels[remote]'"

#: fsspec protocols whose single-object writes are atomic (a PUT replaces the whole object).
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2"})
#: Protocol -> the pip package that provides it (for the error when it is missing).
BACKEND_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                    "abfss": "adlfs", "hf": "huggingface_hub"}

_ENTRY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
_MAX_MANIFEST = 16 * 1024 * 1024
_CHUNK = 1 << 20


def configured() -> RemoteCache | None:
    """The remote cache ``JITKERNELS_REMOTE_CACHE`` names, or None when it is unset (or did not answer lately).

    Raises :class:`RemoteCacheError` for a misconfiguration (unknown mode or
    protocol, fsspec or the protocol's package not installed).
    """
    url = config.remote_cache_url()
    if url is None or _resting(url.rstrip("/")):
        return None
    mode = config.remote_cache_mode()
    try:
        return _bounded(lambda: RemoteCache(url, mode), _Outcome())
    except _Late:
        _gave_up(url.rstrip("/"), "did not set up its file system")
        return None
    except RemoteCacheError:
        raise
    except Exception as exc:  # noqa: BLE001 - remote trouble (a file system that connects at once: ftp, sftp...)
        _RESTING[url.rstrip("/")] = time.monotonic() + REST_AFTER_TIMEOUT
        warning_once(f"The remote cache {url.rstrip('/')} could not be set up ({type(exc).__name__}: {exc}): "
                     f"treated as a miss, and not asked again by this process for "
                     f"{REST_AFTER_TIMEOUT / 60:.0f} minutes.")
        return None


# -- deadlines ---------------------------------------------------------------------------------------

#: After a remote operation ran past its deadline, the remote is skipped for this long (one warning said why).
REST_AFTER_TIMEOUT = 600.0
_RESTING: dict[str, float] = {}


class _Late(Exception):
    """A remote operation ran past ``JITKERNELS_REMOTE_CACHE_TIMEOUT``."""


class _Outcome:
    """Shared by a remote operation's worker thread and its caller: who finished first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False  # the caller stopped waiting: the worker must not touch the caller's folder
        self.delivered = False  # the worker handed its result over: the caller uses it whatever the clock says


def _bounded(work, outcome: _Outcome):
    """``work()`` in a daemon thread, waited for ``JITKERNELS_REMOTE_CACHE_TIMEOUT`` seconds.

    On expiry :class:`_Late` (the thread is abandoned: a hung network mount or a server that never
    answers blocks it, not the load); otherwise ``work``'s result or exception.
    """
    done = threading.Event()
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="jitkernels-remote-cache", daemon=True).start()
    if not done.wait(config.remote_cache_timeout()):
        with outcome.lock:
            if not outcome.delivered:
                outcome.abandoned = True
                raise _Late()
        done.wait()  # it delivered at the last moment: only its clean-up is left
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _resting(url: str) -> bool:
    return time.monotonic() < _RESTING.get(url, 0.0)


def _gave_up(url: str, what: str) -> None:
    _RESTING[url] = time.monotonic() + REST_AFTER_TIMEOUT
    warning_once(
        f"The remote cache {url} {what} within {config.remote_cache_timeout():.0f}s "
        f"(JITKERNELS_REMOTE_CACHE_TIMEOUT): treated as a miss, and not asked again by this process for "
        f"{REST_AFTER_TIMEOUT / 60:.0f} minutes."
    )


class RemoteCache:
    """One remote cache location. ``fetch`` and ``store`` never raise for remote trouble: they warn."""

    def __init__(self, url: str, mode: str = "read"):
        if mode not in MODES:
            raise RemoteCacheError(
                f"JITKERNELS_REMOTE_CACHE_MODE={mode!r} is not a mode; use 'read' (fleet machines: fetch only) "
                f"or 'write' (builders: fetch, and upload what they build)."
            )
        if "://" not in url:
            raise RemoteCacheError(
                f"JITKERNELS_REMOTE_CACHE={url!r} is not a URL; use s3://bucket/prefix, gs://bucket/prefix, "
                f"file:///absolute/folder or hf://datasets/org/repo."
            )
        self.url = url.rstrip("/")
        self.mode = mode
        self.protocol = url.split("://", 1)[0].lower()
        self.fs, self.root = _filesystem(self.url, self.protocol)
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"RemoteCache({self.url!r}, mode={self.mode!r})"

    @property
    def writable(self) -> bool:
        return self.mode == "write"

    # -- paths ------------------------------------------------------------------

    def _entry_path(self, entry_name: str) -> str:
        if not isinstance(entry_name, str) or not _ENTRY_NAME.match(entry_name):
            raise RemoteCacheError(f"Not a cache entry name: {entry_name!r}.")
        return f"{self.root}/entries/{entry_name}"

    def manifest_path(self, entry_name: str) -> str:
        return f"{self._entry_path(entry_name)}/{MANIFEST}"

    def blob_path(self, entry_name: str, sha256: str) -> str:
        return f"{self._entry_path(entry_name)}/blobs/{sha256}"

    # -- fetch ------------------------------------------------------------------

    def fetch(self, entry_name: str, build_key: str, dest: Path, expect: dict | None = None) -> bool:
        """Download ``entry_name`` into the empty folder ``dest`` and verify it.

        True only for a complete entry whose manifest fits the schema, has ``build_key``, holds the
        kernel ``expect`` names (``python_name``, ``module_name``), and whose every file has its
        recorded size and sha256 (the manifest is written last into ``dest``). False for a miss,
        silently, and for an entry that fails a check, cannot be downloaded, or takes longer than
        ``JITKERNELS_REMOTE_CACHE_TIMEOUT`` seconds, with one warning; ``dest`` is then left empty.

        The download goes into a private folder beside ``dest`` and is moved into ``dest`` only if it
        finished in time: an abandoned download never writes into ``dest``.
        """
        dest = Path(dest)
        self._entry_path(entry_name)  # a bad name is a RemoteCacheError, at once
        if _resting(self.url):
            return False
        outcome = _Outcome()
        private = dest.parent / f".{dest.name}.remote-{uuid.uuid4().hex[:8]}"

        def work() -> bool:
            try:
                private.mkdir()
                if not self._fetch_into(entry_name, build_key, private, expect):
                    return False
                with outcome.lock:
                    if outcome.abandoned:
                        return False
                    names = sorted(p.name for p in private.iterdir())
                    for name in sorted(names, key=lambda n: n == MANIFEST):  # the manifest last
                        os.replace(private / name, dest / name)
                    outcome.delivered = True
                return True
            finally:
                shutil.rmtree(private, ignore_errors=True)

        try:
            found = _bounded(work, outcome)
        except _Late:
            _gave_up(self.url, f"did not answer for {entry_name}")
            _empty(dest)
            return False
        except _Refused as exc:
            self._refuse(entry_name, str(exc), dest)
            return False
        except Exception as exc:  # noqa: BLE001 - network, permissions, a full disk: a miss, with a warning
            self._refuse(entry_name, _short(exc), dest)
            return False
        if found:
            logger.info("jitkernels: fetched %s from the remote cache %s", entry_name, self.url)
        return found

    def _fetch_into(self, entry_name: str, build_key: str, folder: Path, expect: dict | None) -> bool:
        """The entry into ``folder``, checked; False for a miss; :class:`_Refused` for anything that fails a check."""
        manifest_path = self.manifest_path(entry_name)
        try:
            _invalidate(self.fs)
            raw = self.fs.cat_file(manifest_path)
        except FileNotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001 - any remote trouble is a warning and a miss
            raise _Refused(f"cannot read {manifest_path}: {_short(exc)}") from exc
        manifest = _parse_manifest(raw, build_key, expect)
        for rel, digest in sorted(manifest["sha256"].items()):
            self._download(self.blob_path(entry_name, digest), folder / rel, manifest["files"][rel], digest)
        (folder / MANIFEST).write_bytes(raw)
        return True

    def _download(self, remote: str, local: Path, size: int, digest: str) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        written = 0
        try:
            source = self.fs.open(remote, "rb")
        except FileNotFoundError as exc:
            raise _Refused(f"{remote} is missing") from exc
        with source, open(local, "wb") as out:
            while True:
                chunk = source.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written > size:
                    raise _Refused(f"{local.name} is larger than the {size} bytes its manifest records")
                hasher.update(chunk)
                out.write(chunk)
        if written != size:
            raise _Refused(f"{local.name} is {written} bytes, its manifest records {size}")
        if hasher.hexdigest() != digest:
            raise _Refused(f"{local.name} does not match its recorded sha256")

    def _refuse(self, entry_name: str, reason: str, dest: Path) -> None:
        warning_once(f"The remote cache entry {self.url}/entries/{entry_name} is not used: {reason}.")
        _empty(dest)

    # -- store ------------------------------------------------------------------

    def store(self, entry_name: str, entry: Path) -> None:
        """Upload the published local ``entry`` (write mode only; a no-op in read mode).

        Files go first, each under its sha256, and the manifest last. The local
        files are re-hashed against the manifest first: a damaged entry is never
        uploaded. Failures are warnings: the local load goes on.
        """
        if not self.writable or _resting(self.url):
            return
        self._entry_path(entry_name)  # a bad name is a RemoteCacheError, at once
        try:
            _bounded(lambda: self._store(entry_name, Path(entry)), _Outcome())
        except _Late:
            _gave_up(self.url, f"did not take the upload of {entry_name}")
        except RemoteCacheError:
            raise
        except Exception as exc:  # noqa: BLE001 - an upload failure must not fail the load
            warning_once(f"Uploading {entry_name} to the remote cache {self.url} failed: {_short(exc)}. "
                         f"The kernel is cached locally only.")

    def _store(self, entry_name: str, entry: Path) -> None:
        raw = (entry / MANIFEST).read_bytes()
        manifest = _parse_manifest(raw, build_key=None)
        blobs: dict[str, Path] = {}
        for rel, digest in manifest["sha256"].items():
            path = entry / rel
            if _sha256_file(path) != digest or path.stat().st_size != manifest["files"][rel]:
                raise _Refused(f"the local file {path} does not match its manifest")
            blobs.setdefault(digest, path)
        if self.protocol == "hf":
            self._store_hf(entry_name, blobs, raw)
        else:
            for digest, path in sorted(blobs.items()):
                self._put(path, self.blob_path(entry_name, digest))
            self._put(entry / MANIFEST, self.manifest_path(entry_name))
        logger.info("jitkernels: uploaded %s to the remote cache %s", entry_name, self.url)

    def _put(self, local: Path, remote: str) -> None:
        """Write one object atomically: a rename on file systems, a single PUT on object stores."""
        if _is_local(self.fs):
            folder = os.path.dirname(remote)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{os.path.basename(remote)}.{uuid.uuid4().hex}.tmp")
            try:
                shutil.copyfile(local, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, remote)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        elif self.protocol in OBJECT_STORES:
            self.fs.put_file(str(local), remote)
        else:  # another file system: temporary name, then its rename
            tmp = f"{os.path.dirname(remote)}/.{os.path.basename(remote)}.{uuid.uuid4().hex}.tmp"
            self.fs.put_file(str(local), tmp)
            self.fs.mv(tmp, remote)

    def _store_hf(self, entry_name: str, blobs: dict[str, Path], manifest: bytes) -> None:
        """One Hub commit with every blob and the manifest: readers see all of it or none."""
        from huggingface_hub import CommitOperationAdd

        resolved = self.fs.resolve_path(self._entry_path(entry_name))
        base = resolved.path_in_repo.strip("/")
        operations = [CommitOperationAdd(path_in_repo=f"{base}/blobs/{digest}", path_or_fileobj=str(path))
                      for digest, path in sorted(blobs.items())]
        operations.append(CommitOperationAdd(path_in_repo=f"{base}/{MANIFEST}", path_or_fileobj=manifest))
        self.fs._api.create_commit(
            repo_id=resolved.repo_id, repo_type=resolved.repo_type, revision=resolved.revision,
            operations=operations, commit_message=f"jitkernels: cache entry {entry_name}",
        )


class _Refused(Exception):
    """A remote entry failed a check."""


def _filesystem(url: str, protocol: str):
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:
        raise RemoteCacheError(
            f"JITKERNELS_REMOTE_CACHE={url} needs fsspec, which is not installed: {PIP_LINE}"
        ) from exc
    try:
        return url_to_fs(url, skip_instance_cache=True)  # settings come from the environment: read them now
    except ImportError as exc:
        package = BACKEND_PACKAGES.get(protocol, f"the fsspec backend for {protocol}://")
        raise RemoteCacheError(
            f"JITKERNELS_REMOTE_CACHE={url} needs {package}, which is not installed: "
            f"{PIP_LINE if package == 's3fs' else 'pip install ' + package} ({exc})"
        ) from exc
    except ValueError as exc:
        raise RemoteCacheError(
            f"JITKERNELS_REMOTE_CACHE={url}: {exc}. Use s3://, gs://, file:// or hf:// (any fsspec protocol "
            f"whose package is installed)."
        ) from exc


def _parse_manifest(raw: bytes, build_key: str | None, expect: dict | None = None) -> dict:
    """The manifest, checked against the one schema (:func:`jitkernels.cache.manifest.manifest_problem`), the asked
    build key, and (``expect``) the kernel it must hold: nothing that fails is ever published."""
    if len(raw) > _MAX_MANIFEST:
        raise _Refused("its manifest is implausibly large")
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _Refused(f"its manifest is not JSON ({str(exc)[:200]})") from exc
    if not isinstance(manifest, dict):
        raise _Refused("its manifest is not a JSON object")
    if build_key is not None and manifest.get("build_key") != build_key:
        raise _Refused(f"its build key {str(manifest.get('build_key'))[:16]}... is not the asked {build_key[:16]}...")
    problem = manifest_problem(manifest, expect)
    if problem is not None:
        raise _Refused(problem)
    if expect is not None:
        held = manifest.get("inspection") or {}
        for key, value in expect.items():
            if value is not None and held.get(key) != value:
                raise _Refused(f"it holds {key} {str(held.get(key))[:80]!r}, not the asked {value!r}")
    return manifest


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _invalidate(fs) -> None:
    """Forget listings fsspec may have cached: another machine may have uploaded since."""
    try:
        fs.invalidate_cache()
    except Exception:  # noqa: BLE001
        pass


def _empty(folder: Path) -> None:
    try:
        for child in folder.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    except OSError:
        pass


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text[:300]}" if text else exc.__class__.__name__
