"""FakeHub against the real huggingface_hub client (no network beyond 127.0.0.1)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from jitkernels.testing.hubserver import FakeHub, patch_hub_client

# huggingface_hub is imported by the fixtures, never at collection: it reads HF_ENDPOINT and the
# cache folders once, at import, and other test modules rely on importing it after setting them.

KERNEL_FILES = {
    "build.toml": b"[general]\nname = 'relu'\n",
    "README.md": b"# relu\n",
    "torch-ext/relu/__init__.py": b"def relu(x):\n    return x\n",
    "torch-ext/relu/_ops.py": b"ops = None\n",
    "build/torch-universal/relu/__init__.py": b"BUILT = True\n",
}
MODEL_FILES = {"build.toml": b"[general]\nname = 'old'\n", "csrc/kernel.cu": b"// cuda\n"}


@pytest.fixture
def hf():
    """The huggingface_hub module."""
    return pytest.importorskip("huggingface_hub")


@pytest.fixture
def acme_hub(hf, tmp_path, monkeypatch):
    """A FakeHub of its own (not the session's ``hub``) serving the ``acme`` repos, with huggingface_hub
    (already imported) pointed at it and a private cache."""
    from huggingface_hub import constants

    hf_home = tmp_path / "hf"
    for name, value in {
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub read these at import: patch the constants too.
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    server = FakeHub()
    server.shas = server.add_repo(
        "acme/relu",
        {"main": KERNEL_FILES, "v1": {"build.toml": b"v1\n"}, "feat/x": {"a/b.txt": b"feature\n"}},
        tags={"v1.0.0": "v1"},
    )
    server.model_shas = server.add_repo("acme/old", {"main": MODEL_FILES}, repo_type="model")
    server.set_org("acme", trusted=True)
    server.set_org("randos", trusted=False)
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        with patch_hub_client(server.endpoint):
            yield server


def _files(folder):
    return sorted(str(p.relative_to(folder)).replace("\\", "/") for p in folder.rglob("*") if p.is_file())


# -- repo_info / refs / tree ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("repo_id", "repo_type", "files"), [("acme/relu", "kernel", KERNEL_FILES), ("acme/old", "model", MODEL_FILES)]
)
def test_repo_info_by_branch_and_sha(acme_hub, repo_id, repo_type, files, hf):
    api = hf.HfApi()
    info = api.repo_info(repo_id, repo_type=repo_type, revision="main")
    assert re.fullmatch(r"[0-9a-f]{40}", info.sha)
    assert info.id == repo_id
    if repo_type == "kernel":  # as the real Hub: kernel repos list their files only through /tree
        assert getattr(info, "siblings", None) is None
    else:
        assert sorted(s.rfilename for s in info.siblings) == sorted(files)
    assert api.repo_info(repo_id, repo_type=repo_type, revision=info.sha).sha == info.sha
    assert api.repo_info(repo_id, repo_type=repo_type).sha == info.sha  # default revision: main
    prefix = "/api/kernels/" if repo_type == "kernel" else "/api/models/"
    assert ("GET", f"{prefix}{repo_id}/revision/main") in acme_hub.requests


def test_revisions_with_slash_tags_and_moving_branches(acme_hub, hf):
    api = hf.HfApi()
    assert api.repo_info("acme/relu", repo_type="kernel", revision="feat/x").sha == acme_hub.shas["feat/x"]
    assert api.repo_info("acme/relu", repo_type="kernel", revision="v1.0.0").sha == acme_hub.shas["v1"]
    old = acme_hub.shas["v1"]
    new = acme_hub.add_repo("acme/relu", {"v1": {"build.toml": b"v1 fixed\n"}})["v1"]
    assert new != old
    assert api.repo_info("acme/relu", repo_type="kernel", revision="v1").sha == new
    assert api.repo_info("acme/relu", repo_type="kernel", revision=old).sha == old  # old commit stays
    assert api.repo_info("acme/relu", repo_type="kernel", revision="main").sha == acme_hub.shas["main"]  # untouched


def test_commit_ids_are_deterministic():
    a, b = FakeHub(), FakeHub()
    sha = a.add_repo("acme/relu", {"main": KERNEL_FILES})["main"]
    assert b.add_repo("acme/relu", {"main": dict(reversed(KERNEL_FILES.items()))})["main"] == sha
    assert b.add_repo("acme/relu", {"other": KERNEL_FILES})["other"] != sha  # branch is part of it
    assert b.add_repo("acme/gelu", {"main": KERNEL_FILES})["main"] != sha  # repo id too
    assert a.add_repo("acme/relu", {"main": {**KERNEL_FILES, "x": b""}})["main"] != sha
    with pytest.raises(ValueError):
        a.add_repo("no-org", {"main": {}})
    with pytest.raises(ValueError):
        a.add_repo("acme/relu", {}, tags={"t": "missing-branch"})


def test_list_repo_refs(acme_hub, hf):
    refs = hf.HfApi().list_repo_refs("acme/relu", repo_type="kernel")
    branches = {b.name: (b.ref, b.target_commit) for b in refs.branches}
    assert branches == {name: (f"refs/heads/{name}", sha) for name, sha in acme_hub.shas.items()}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0.0", "refs/tags/v1.0.0", acme_hub.shas["v1"])]
    assert refs.converts == []
    model_refs = hf.HfApi().list_repo_refs("acme/old", repo_type="model")
    assert [b.name for b in model_refs.branches] == ["main"]


def test_list_repo_tree(acme_hub, hf):
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    api = hf.HfApi()
    sha = acme_hub.shas["main"]
    tree = list(api.list_repo_tree("acme/relu", repo_type="kernel", revision=sha, recursive=True))
    files = {e.path: e for e in tree if isinstance(e, RepoFile)}
    folders = {e.path for e in tree if isinstance(e, RepoFolder)}
    assert set(files) == set(KERNEL_FILES)
    assert folders == {"torch-ext", "torch-ext/relu", "build", "build/torch-universal", "build/torch-universal/relu"}
    assert files["build.toml"].size == len(KERNEL_FILES["build.toml"])
    assert re.fullmatch(r"[0-9a-f]{40}", files["build.toml"].blob_id)
    folder_ids = {e.path: e.tree_id for e in tree if isinstance(e, RepoFolder)}
    assert folder_ids["torch-ext"] != folder_ids["torch-ext/relu"]

    top = list(api.list_repo_tree("acme/relu", repo_type="kernel", revision="main"))
    assert sorted(e.path for e in top) == ["README.md", "build", "build.toml", "torch-ext"]
    sub = list(api.list_repo_tree("acme/relu", "torch-ext/relu", repo_type="kernel", revision="main"))
    assert sorted(e.path for e in sub) == ["torch-ext/relu/__init__.py", "torch-ext/relu/_ops.py"]
    deep = list(api.list_repo_tree("acme/relu", "build", repo_type="kernel", revision="main", recursive=True))
    assert {e.path for e in deep} == {"build/torch-universal", "build/torch-universal/relu",
                                      "build/torch-universal/relu/__init__.py"}
    model = list(api.list_repo_tree("acme/old", repo_type="model", revision="main", recursive=True))
    assert {e.path for e in model if isinstance(e, RepoFile)} == set(MODEL_FILES)
    with pytest.raises(hf.errors.RemoteEntryNotFoundError):
        list(api.list_repo_tree("acme/relu", "nope", repo_type="kernel", revision="main"))


# -- downloads --------------------------------------------------------------------------------------
@pytest.mark.parametrize("revision", ["main", "sha"])
def test_snapshot_download_only_fetches_allowed_files(acme_hub, revision, hf):
    revision = acme_hub.shas["main"] if revision == "sha" else revision
    patterns = ["build.toml", "torch-ext/**"]
    folder = hf.snapshot_download("acme/relu", repo_type="kernel", revision=revision, allow_patterns=patterns)
    expected = ["build.toml", "torch-ext/relu/__init__.py", "torch-ext/relu/_ops.py"]
    assert sorted(acme_hub.downloaded()) == expected
    folder = Path(folder)
    assert folder.name == acme_hub.shas["main"]
    assert _files(folder) == expected
    assert (folder / "torch-ext/relu/__init__.py").read_bytes() == KERNEL_FILES["torch-ext/relu/__init__.py"]
    heads = [p for m, p in acme_hub.requests if m == "HEAD"]
    assert len(heads) == 3 and all("/kernels/acme/relu/resolve/" in p for p in heads)

    # Offline: the same call is served from the cache, without a single request.
    acme_hub.clear_log()
    again = hf.snapshot_download("acme/relu", repo_type="kernel", revision=revision, allow_patterns=patterns,
                                 local_files_only=True)
    assert Path(again) == folder
    assert acme_hub.requests == [] and acme_hub.downloaded() == []
    # A file never fetched is not there: huggingface_hub 2.x raises, 1.x returns the snapshot folder without it.
    try:
        partial = hf.snapshot_download("acme/relu", repo_type="kernel", revision=revision,
                                       allow_patterns=["README.md"], local_files_only=True)
    except hf.errors.LocalEntryNotFoundError:
        assert hf.__version__.split(".")[0] != "1"
    else:
        assert hf.__version__.startswith("1.") and not (Path(partial) / "README.md").exists()


def test_snapshot_download_model_type(acme_hub, hf):
    folder = Path(hf.snapshot_download("acme/old", repo_type="model", allow_patterns=["csrc/*"]))
    assert _files(folder) == ["csrc/kernel.cu"]
    assert acme_hub.downloaded() == ["csrc/kernel.cu"]
    assert ("GET", "/acme/old/resolve/" + acme_hub.model_shas["main"] + "/csrc/kernel.cu") in acme_hub.requests


def test_hf_hub_download(acme_hub, hf):
    path = hf.hf_hub_download("acme/relu", "build.toml", repo_type="kernel")
    assert Path(path).read_bytes() == KERNEL_FILES["build.toml"]
    assert ("HEAD", "/kernels/acme/relu/resolve/main/build.toml") in acme_hub.requests  # HEAD by branch name
    path = hf.hf_hub_download("acme/relu", "a/b.txt", repo_type="kernel", revision="feat/x")
    assert Path(path).read_bytes() == b"feature\n"
    assert Path(path).parent.parent.name == acme_hub.shas["feat/x"]
    path = hf.hf_hub_download("acme/old", "csrc/kernel.cu", revision=acme_hub.model_shas["main"])
    assert Path(path).read_bytes() == MODEL_FILES["csrc/kernel.cu"]
    assert acme_hub.downloaded() == ["build.toml", "a/b.txt", "csrc/kernel.cu"]


def test_resolve_headers(acme_hub):
    url = f"{acme_hub.endpoint}/kernels/acme/relu/resolve/main/build.toml"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        assert r.headers["X-Repo-Commit"] == acme_hub.shas["main"]
        assert r.headers["Content-Length"] == str(len(KERNEL_FILES["build.toml"]))
        assert re.fullmatch(r'"[0-9a-f]{40}"', r.headers["ETag"])
    assert acme_hub.downloaded() == []  # HEAD is not a download


# -- errors -----------------------------------------------------------------------------------------
def test_errors_map_to_huggingface_hub_exceptions(acme_hub, hf):
    api = hf.HfApi()
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        api.repo_info("acme/missing", repo_type="kernel")
    with pytest.raises(hf.errors.RepositoryNotFoundError):  # exists, but as a model repo
        api.repo_info("acme/old", repo_type="kernel")
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        api.list_repo_refs("acme/missing", repo_type="kernel")
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        hf.hf_hub_download("acme/missing", "build.toml", repo_type="kernel")
    with pytest.raises(hf.errors.RevisionNotFoundError):
        api.repo_info("acme/relu", repo_type="kernel", revision="v9")
    with pytest.raises(hf.errors.RevisionNotFoundError):
        api.repo_info("acme/relu", repo_type="kernel", revision="0" * 40)
    with pytest.raises(hf.errors.RevisionNotFoundError):
        hf.snapshot_download("acme/relu", repo_type="kernel", revision="v9")
    with pytest.raises(hf.errors.RevisionNotFoundError):
        hf.hf_hub_download("acme/old", "build.toml", revision="v9")
    with pytest.raises(hf.errors.RemoteEntryNotFoundError):
        hf.hf_hub_download("acme/relu", "missing.txt", repo_type="kernel")
    with pytest.raises(hf.errors.RemoteEntryNotFoundError):
        hf.hf_hub_download("acme/old", "missing.txt")


def test_org_overview(acme_hub, hf):
    api = hf.HfApi()
    acme = api.get_organization_overview("acme")
    assert acme.name == "acme" and acme.trustedKernelPublisher is True
    assert api.get_organization_overview("randos").trustedKernelPublisher is False
    with pytest.raises(hf.errors.HfHubHTTPError) as info:
        api.get_organization_overview("nobody")
    assert info.value.response.status_code == 404


# -- network down -----------------------------------------------------------------------------------
def test_down_refuses_quickly_and_comes_back(acme_hub, monkeypatch, hf):
    from huggingface_hub.utils import _http

    cached = hf.hf_hub_download("acme/relu", "build.toml", repo_type="kernel")
    acme_hub.clear_log()
    acme_hub.down = True
    start = time.monotonic()
    # The HTTP library is httpx (huggingface_hub 1.x) or httpx2 (2.x): match the error by its name.
    with pytest.raises(Exception) as refused:
        hf.HfApi().repo_info("acme/relu", repo_type="kernel", timeout=2)
    assert "ConnectError" in [cls.__name__ for cls in type(refused.value).__mro__]
    assert time.monotonic() - start < 2
    # huggingface_hub treats it as offline: cached files by branch still resolve, others do not.
    assert hf.hf_hub_download("acme/relu", "build.toml", repo_type="kernel", etag_timeout=2) == cached
    with pytest.raises(hf.errors.LocalEntryNotFoundError):  # repo_info fails => no retries
        hf.snapshot_download("acme/old", repo_type="model", etag_timeout=2)
    assert time.monotonic() - start < 2
    # An uncached file: huggingface_hub retries the HEAD with backoff (1+2+4+8+8 s) before giving up.
    sleeps: list[float] = []
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=sleeps.append))
    # huggingface_hub 1.10-1.21 close their shared client on the first ConnectError and then retry with it,
    # which ends in a RuntimeError after one sleep; later releases make all five attempts.
    with pytest.raises((hf.errors.LocalEntryNotFoundError, RuntimeError)) as uncached:
        hf.hf_hub_download("acme/relu", "README.md", repo_type="kernel", etag_timeout=2)
    if isinstance(uncached.value, hf.errors.LocalEntryNotFoundError):
        assert len(sleeps) == 5
    else:
        assert "client has been closed" in str(uncached.value) and len(sleeps) == 1
    assert acme_hub.requests == []
    acme_hub.down = False
    assert hf.HfApi().repo_info("acme/relu", repo_type="kernel").sha == acme_hub.shas["main"]


def test_stop_start_and_down_before_start():
    server = FakeHub()
    server.add_repo("acme/x", {"main": {"f": b"1"}})
    server.down = True
    endpoint = server.start()
    assert endpoint.startswith("http://127.0.0.1:")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{endpoint}/api/kernels/acme/x/refs", timeout=2)
    server.down = False
    with urllib.request.urlopen(f"{endpoint}/api/kernels/acme/x/refs", timeout=2) as r:
        assert r.status == 200
    server.stop()
    server.down, server.down = True, False  # coming back up does not restart a stopped server
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{endpoint}/api/kernels/acme/x/refs", timeout=2)
    assert server.start() == endpoint
    server.stop()


# -- misc -------------------------------------------------------------------------------------------
def test_add_repo_from_dirs(tmp_path):
    src = tmp_path / "src"
    (src / "torch-ext/relu/__pycache__").mkdir(parents=True)
    (src / "build.toml").write_bytes(b"[general]\n")
    (src / "torch-ext/relu/__init__.py").write_bytes(b"x = 1\n")
    (src / "torch-ext/relu/__pycache__/__init__.cpython-311.pyc").write_bytes(b"\0")
    (src / "torch-ext/relu/stale.pyc").write_bytes(b"\0")
    server = FakeHub()
    shas = server.add_repo_from_dirs("acme/relu", {"main": src})
    assert shas == FakeHub().add_repo(
        "acme/relu", {"main": {"build.toml": b"[general]\n", "torch-ext/relu/__init__.py": b"x = 1\n"}}
    )


def test_server_is_quiet(acme_hub, capfd):
    paths = ("/api/kernels/acme/relu/refs", "/api/kernels/acme/missing", "/nothing/here", "/kernels/a/b/resolve/x/y")
    for path in paths:
        try:
            urllib.request.urlopen(acme_hub.endpoint + path, timeout=5).close()
        except urllib.error.HTTPError:
            pass
    with socket.create_connection(("127.0.0.1", int(acme_hub.endpoint.rsplit(":", 1)[1]))) as s:
        s.sendall(b"GET /api/kernels/acme/relu/refs HTTP/1.0\r\n\r\n")  # hang up without reading
    with socket.create_connection(("127.0.0.1", int(acme_hub.endpoint.rsplit(":", 1)[1]))) as s:
        s.sendall(b"garbage\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        s.recv(1 << 16)  # answered: accepted after the hang-up above (connections are accepted in order)
    assert acme_hub.wait_idle()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert ("GET", "/nothing/here") in acme_hub.requests


def test_module_imports_no_third_party():
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    code = ("import sys; import jitkernels.testing.hubserver; "
            "bad = [m for m in ('huggingface_hub', 'torch', 'httpx', 'httpx2') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=root).stdout
    assert out.strip() == "[]"
