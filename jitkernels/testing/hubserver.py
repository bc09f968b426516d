"""A small in-memory Hugging Face Hub for tests and ``jitkernels demo`` (stdlib only).

``FakeHub`` serves kernel (and model) repositories on ``127.0.0.1`` with the endpoints the real
``huggingface_hub`` client uses: ``repo_info``, ``list_repo_tree``, ``list_repo_refs``,
``get_organization_overview``, ``hf_hub_download`` and ``snapshot_download``::

    hub = FakeHub()
    shas = hub.add_repo("acme/relu", {"main": {"build.toml": b"..."}})
    with hub:                                   # start() / stop()
        with patch_hub_client(hub.endpoint):    # in-process clients
            huggingface_hub.snapshot_download("acme/relu", repo_type="kernel")

Pointing a client at it: huggingface_hub reads ``HF_ENDPOINT`` *once, at import*, into
``huggingface_hub.constants.ENDPOINT`` (used by ``HfApi()``) and
``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (used by ``hf_hub_download``); the module-level
functions (``huggingface_hub.repo_info``...) are bound to an ``HfApi`` built at import. So:

* a subprocess only needs ``HF_ENDPOINT=<hub.endpoint>`` in its environment (plus, for
  isolation, ``HF_HOME``/``HF_HUB_CACHE`` in a temporary folder and ``HF_HUB_DISABLE_TELEMETRY=1``);
* in the current process, use ``patch_hub_client(endpoint)`` (patches the three places above),
  and pass ``cache_dir=`` or patch ``constants.HF_HUB_CACHE``, which is also read at import.

As on the real Hub, ``/api/kernels/<repo>`` answers no ``siblings`` (model repos do): clients
list a kernel repo's files with ``/tree``. Older huggingface_hub 1.x releases (1.10 to at least
1.21) read siblings from ``repo_info`` when present and would fail on a kernel repo that sent them.

Commits are deterministic 40-hex ids: sha1 over repo id, branch and the sorted (path, content)
pairs. Files are served directly (no redirects, no LFS/Xet) with ``X-Repo-Commit``, ``ETag``
(the git blob id) and ``Content-Length``. Errors carry the Hub's ``X-Error-Code``
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), which huggingface_hub maps to
``RepositoryNotFoundError``, ``RevisionNotFoundError`` and ``RemoteEntryNotFoundError``.

``hub.down = True`` stops listening (the port is kept and reopened by ``down = False``): clients
get ``ConnectError`` ("connection refused"), exactly like a network that is down, so
huggingface_hub's fall-back to its cache is exercised. (Accepting and then closing without an
answer would give ``RemoteProtocolError`` instead, which huggingface_hub does not treat as offline.)
Note that ``hf_hub_download`` of a file that is not cached retries the HEAD with backoff (about 23 s
in all) before raising ``LocalEntryNotFoundError``; ``repo_info`` and the listings fail at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_API_TYPES = {"models": "model", "kernels": "kernel", "datasets": "dataset", "spaces": "space"}
_URL_TYPES = {"kernels": "kernel", "datasets": "dataset", "spaces": "space"}  # models: no prefix


def _oid(kind: str, data: bytes) -> str:
    """The git object id of a blob (or, for folders, of a tree-like summary)."""
    return hashlib.sha1(f"{kind} {len(data)}\0".encode() + data).hexdigest()


class _Repo:
    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def resolve(self, revision: str) -> str | None:
        for prefix in ("refs/heads/", "refs/tags/"):
            revision = revision[len(prefix):] if revision.startswith(prefix) else revision
        sha = self.branches.get(revision) or self.tags.get(revision)
        return sha or (revision if revision in self.commits else None)


class _HubError(Exception):
    def __init__(self, code: str | None, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.code, self.commit = code, commit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.active = 0  # connections accepted and not yet done with
        self.idle = threading.Condition()

    def process_request(self, request, client_address) -> None:  # the serving thread, right after accept
        with self.idle:
            self.active += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.idle:
                self.active -= 1
                self.idle.notify_all()

    def handle_error(self, request, client_address) -> None:  # quiet: clients hang up at will
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: `down` takes effect at once

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hub._handle(self, "GET")

    def do_HEAD(self) -> None:
        self.server.hub._handle(self, "HEAD")


class FakeHub:
    """An in-memory, Hub-compatible HTTP server for the real huggingface_hub client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._orgs: dict[str, bool] = {}
        self._downloads: list[str] = []
        self._server: _Server | None = None
        self._port = 0
        self._down = self._started = False
        self.endpoint: str = ""
        self.requests: list[tuple[str, str]] = []
        #: File paths whose download sends half the bytes, then waits while the path stays here
        #: (at most 60 s): lets a test kill a client in the middle of a download.
        self.stall: set[str] = set()

    # -- content ------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        branches: dict[str, dict[str, bytes]],
        repo_type: str = "kernel",
        tags: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Add (or move) branches of a repo; ``tags`` map a tag to a branch or commit. Returns branch -> commit."""
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}")
        if repo_type not in _API_TYPES.values():
            raise ValueError(f"unknown repo_type {repo_type!r}")
        shas: dict[str, str] = {}
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            for branch, files in branches.items():
                files = {str(p).strip("/"): c.encode() if isinstance(c, str) else bytes(c) for p, c in files.items()}
                h = hashlib.sha1(f"{repo_id}\0{branch}\0".encode())
                for path, content in sorted(files.items()):
                    h.update(f"{path}\0{len(content)}\0".encode() + content)
                sha = shas[branch] = repo.branches[branch] = h.hexdigest()
                repo.commits[sha] = files
            for tag, target in (tags or {}).items():
                sha = repo.resolve(target)
                if sha is None:
                    raise ValueError(f"tag {tag!r}: unknown branch or commit {target!r}")
                repo.tags[tag] = sha
        return shas

    def add_repo_from_dirs(
        self, repo_id: str, branches: dict[str, os.PathLike], repo_type: str = "kernel"
    ) -> dict[str, str]:
        """Like ``add_repo``, each branch read from a folder (``__pycache__`` and ``*.pyc`` skipped)."""
        contents: dict[str, dict[str, bytes]] = {}
        for branch, folder in branches.items():
            root = Path(folder)
            contents[branch] = {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file() and p.suffix != ".pyc" and "__pycache__" not in p.relative_to(root).parts
            }
        return self.add_repo(repo_id, contents, repo_type=repo_type)

    def set_org(self, org: str, trusted: bool) -> None:
        """Declare an organization (its overview says ``trustedKernelPublisher: trusted``)."""
        with self._lock:
            self._orgs[org] = bool(trusted)

    # -- log ------------------------------------------------------------------------------
    def downloaded(self) -> list[str]:
        """Repo-relative paths of the files served by ``GET .../resolve/...`` (HEADs excluded)."""
        with self._lock:
            return list(self._downloads)

    def clear_log(self) -> None:
        """Forget the logged requests and downloads."""
        with self._lock:
            self.requests.clear()
            self._downloads.clear()

    # -- server ---------------------------------------------------------------------------
    def start(self) -> str:
        """Serve on ``127.0.0.1:<free port>`` from a daemon thread; returns the endpoint URL."""
        with self._lock:
            self._started = True
            if self._server is None:
                self._listen()
                if self._down:  # keep the port reserved, refuse connections
                    self._unlisten()
            return self.endpoint

    def stop(self) -> None:
        """Stop serving (the repositories are kept; ``start`` again reuses the port)."""
        with self._lock:
            self._started = False
            self._unlisten()

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def down(self) -> bool:
        """True: connections are refused, as when the network is down."""
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        with self._lock:
            self._down = bool(value)
            if self._down:
                self._unlisten()
            elif self._started and self._server is None:
                self._listen()  # same port again

    def _listen(self) -> None:
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.hub = self
        self._server, self._port = server, server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self._port}"
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every connection accepted so far has been handled (True), or ``timeout`` passed."""
        server = self._server
        if server is None:
            return True
        with server.idle:
            return server.idle.wait_for(lambda: server.active == 0, timeout)

    # -- requests -------------------------------------------------------------------------
    def _handle(self, h: _Handler, method: str) -> None:
        with self._lock:
            self.requests.append((method, h.path))
            try:
                status, headers, body = self._route(method, h.path)
            except _HubError as err:
                status, body = 404, json.dumps({"error": str(err)}).encode()
                message = str(err).encode("ascii", "backslashreplace").decode()  # headers are latin-1
                headers = {"Content-Type": "application/json", "X-Error-Message": message}
                if err.code:
                    headers["X-Error-Code"] = err.code
                if err.commit:
                    headers["X-Repo-Commit"] = err.commit
        file_path = headers.pop("X-JK-Path", None)
        try:
            h.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                h.send_header(key, value)
            h.end_headers()
            if method != "HEAD":
                if file_path is not None and file_path in self.stall:
                    half = len(body) // 2
                    h.wfile.write(body[:half])
                    h.wfile.flush()
                    deadline = time.monotonic() + 60
                    while file_path in self.stall and time.monotonic() < deadline:
                        time.sleep(0.05)
                    body = body[half:]
                h.wfile.write(body)
        except OSError:
            pass  # the client went away

    def _repo(self, repo_type: str, org: str, name: str) -> _Repo:
        repo = self._repos.get((repo_type, f"{org}/{name}"))
        if repo is None:
            raise _HubError("RepoNotFound", f"Repository {org}/{name} ({repo_type}) not found")
        return repo

    @staticmethod
    def _commit(repo: _Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise _HubError("RevisionNotFound", f"Invalid rev id: {revision}")
        return sha

    def _route(self, method: str, raw: str) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(raw)
        segs = [unquote(s) for s in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        if len(segs) >= 4 and segs[0] == "api" and segs[1] in _API_TYPES:
            repo_id = f"{segs[2]}/{segs[3]}"
            repo, rest = self._repo(_API_TYPES[segs[1]], segs[2], segs[3]), segs[4:]
            if rest == [] or (len(rest) == 2 and rest[0] == "revision"):
                sha = self._commit(repo, rest[1] if len(rest) == 2 else "main")
                info = {"id": repo_id, "author": segs[2], "sha": sha, "private": False, "gated": False,
                        "disabled": False, "downloads": 0, "likes": 0, "tags": []}
                if segs[1] != "kernels":  # the Hub lists no siblings for kernel repos (clients use /tree)
                    info["siblings"] = [{"rfilename": p} for p in sorted(repo.commits[sha])]
                return _json(info)
            if rest == ["refs"]:
                def refs(kind: str, items: dict[str, str]) -> list[dict[str, str]]:
                    return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in sorted(items.items())]
                return _json({"branches": refs("heads", repo.branches), "tags": refs("tags", repo.tags),
                              "converts": [], "pullRequests": []})
            if len(rest) >= 2 and rest[0] == "tree":
                files = repo.commits[self._commit(repo, rest[1])]
                recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                return _json(_tree(files, "/".join(rest[2:]).strip("/"), recursive))
        elif segs[:2] == ["api", "organizations"] and len(segs) == 4 and segs[3] == "overview":
            if segs[2] not in self._orgs:
                raise _HubError(None, f"Organization {segs[2]} not found")
            return _json({"name": segs[2], "fullname": segs[2], "avatarUrl": "", "type": "org",
                          "isVerified": False, "trustedKernelPublisher": self._orgs[segs[2]]})
        elif segs[0] != "api":
            i = 1 if segs[0] in _URL_TYPES and len(segs) >= 6 and segs[3] == "resolve" else 0
            if i or (len(segs) >= 5 and segs[2] == "resolve"):
                org, name, revision, path = segs[i], segs[i + 1], segs[i + 3], "/".join(segs[i + 4:])
                repo = self._repo(_URL_TYPES[segs[0]] if i else "model", org, name)
                sha = self._commit(repo, revision)
                if path not in repo.commits[sha]:
                    raise _HubError("EntryNotFound", f"{path} does not exist at {sha}", commit=sha)
                content = repo.commits[sha][path]
                if method == "GET":
                    self._downloads.append(path)
                return 200, {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha,
                             "ETag": f'"{_oid("blob", content)}"', "X-JK-Path": path}, content
        raise _HubError(None, f"Not found: {method} {url.path}")


def _json(data: object) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(data).encode()


def _tree(files: dict[str, bytes], base: str, recursive: bool) -> list[dict]:
    """The ``/tree`` listing of folder ``base`` ("" = root) at one commit: files and folders."""
    folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    if base and base not in folders:
        raise _HubError("EntryNotFound", f"{base} is not a folder")
    out: list[dict] = []
    for path in sorted(folders | set(files)):
        rel = path[len(base) + 1:] if base else path
        if (base and not path.startswith(base + "/")) or (not recursive and "/" in rel):
            continue
        if path in files:
            out.append({"type": "file", "path": path, "size": len(files[path]), "oid": _oid("blob", files[path])})
        else:
            inside = sorted((p[len(path) + 1:], _oid("blob", c)) for p, c in files.items() if p.startswith(path + "/"))
            out.append({"type": "directory", "path": path, "oid": _oid("tree", json.dumps(inside).encode())})
    return out


@contextlib.contextmanager
def patch_hub_client(endpoint: str) -> Iterator[None]:
    """Point this process's already-imported huggingface_hub at ``endpoint`` (restored on exit)."""
    import huggingface_hub.hf_api
    from huggingface_hub import constants

    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, huggingface_hub.hf_api.api.endpoint)
    constants.ENDPOINT = endpoint.rstrip("/")
    constants.HUGGINGFACE_CO_URL_TEMPLATE = constants.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}"
    huggingface_hub.hf_api.api.endpoint = constants.ENDPOINT
    try:
        yield
    finally:
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, huggingface_hub.hf_api.api.endpoint = saved
