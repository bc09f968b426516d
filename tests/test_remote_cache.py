"""The remote artifact cache (jitkernels.cache.remote) against a shared folder (file://) and a real S3 server (moto).

Entries are made here in the published format (jitkernels.cache.manifest.write_manifest):
an importable package with a "compiled library", its manifest with sizes, sha256s and the build key.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from jitkernels.cache import remote
from jitkernels.cache.manifest import write_manifest
from jitkernels.errors import CacheError, RemoteCacheError

from conftest import child_env, run_python, start_python

MODULE = "_scaled_add_cpu_0123456789"
ENTRY = f"{MODULE}-89abcdef01234567"
KEY = "89abcdef01234567" * 4


def make_entry(folder: Path, library: bytes = b"\x7fELF compiled library", key: str = KEY) -> Path:
    """A published entry as the builder writes it."""
    package = folder / "scaled_add"
    (package / "layers").mkdir(parents=True)
    (package / "__init__.py").write_text("from ._ops import ops\nVALUE = 42\n")
    (package / "layers" / "__init__.py").write_text("")
    (package / "_ops.py").write_text("ops = None\n")
    (package / "_scaled_add_cpu_0123456789.cpython-311-x86_64-linux-gnu.so").write_bytes(library)
    inspection = types.SimpleNamespace(to_dict=lambda: {"repo_id": "jitkernels-examples/scaled-add",
                                                        "python_name": "scaled_add", "module_name": MODULE})
    write_manifest(folder, inspection, {"build_key": key, "spec": "scaled-add (cpu): 2 translation units"})
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_BUCKETS = itertools.count()


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a real S3 protocol endpoint: s3fs talks HTTP to it)."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_url(s3_server, monkeypatch, request):
    """A fresh bucket on the moto server; the AWS variables point botocore (and children) at it."""
    import boto3

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_server}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"jk-{next(_BUCKETS)}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/fleet"


@pytest.fixture(params=["file", "s3"])
def remote_url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path / 'shared-remote'}"
    return request.getfixturevalue("s3_url")


def use_remote(monkeypatch, url: str, mode: str = "write") -> remote.RemoteCache:
    monkeypatch.setenv("JITKERNELS_REMOTE_CACHE", url)
    monkeypatch.setenv("JITKERNELS_REMOTE_CACHE_MODE", mode)
    cache = remote.configured()
    assert cache is not None and cache.mode == mode
    return cache


def test_off_unless_a_url_is_set(monkeypatch):
    monkeypatch.delenv("JITKERNELS_REMOTE_CACHE", raising=False)
    assert remote.configured() is None


def test_put_then_fetch_into_another_folder_gives_the_same_entry(remote_url, monkeypatch, tmp_path):
    entry = make_entry(tmp_path / "machine-a" / ENTRY)
    use_remote(monkeypatch, remote_url, "write").store(ENTRY, entry)

    reader = use_remote(monkeypatch, remote_url, "read")
    dest = tmp_path / "machine-b" / "staging"
    dest.mkdir(parents=True)
    assert reader.fetch(ENTRY, KEY, dest) is True
    assert contents(dest) == contents(entry)
    # What the fleet loads: the fetched package imports.
    sys.path.insert(0, str(dest))
    try:
        import scaled_add

        assert scaled_add.VALUE == 42
    finally:
        sys.path.remove(str(dest))
        for name in [n for n in sys.modules if n == "scaled_add" or n.startswith("scaled_add.")]:
            del sys.modules[name]


def test_a_miss_is_false_without_a_warning(remote_url, monkeypatch, tmp_path, caplog):
    reader = use_remote(monkeypatch, remote_url, "read")
    dest = tmp_path / "dest"
    dest.mkdir()
    with caplog.at_level(logging.WARNING, logger="jitkernels"):
        assert reader.fetch(ENTRY, KEY, dest) is False
    assert caplog.records == [] and list(dest.iterdir()) == []


def test_corrupted_remote_file_is_refused_with_one_warning(remote_url, monkeypatch, tmp_path, caplog):
    entry = make_entry(tmp_path / "a" / ENTRY)
    cache = use_remote(monkeypatch, remote_url, "write")
    cache.store(ENTRY, entry)
    manifest = json.loads((entry / "manifest.json").read_text())
    library = next(rel for rel in manifest["files"] if rel.endswith(".so"))
    blob = cache.blob_path(ENTRY, manifest["sha256"][library])
    original = cache.fs.cat_file(blob)
    cache.fs.pipe_file(blob, original[:-4] + b"EVIL")  # same size, other bytes

    dest = tmp_path / "dest"
    dest.mkdir()
    with caplog.at_level(logging.WARNING, logger="jitkernels"):
        assert cache.fetch(ENTRY, KEY, dest) is False
        assert cache.fetch(ENTRY, KEY, dest) is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "does not match its recorded sha256" in warnings[0] and ENTRY in warnings[0]
    assert list(dest.iterdir()) == []  # nothing of the refused entry is left for the caller

    # A rebuild uploads it again: the remote entry heals.
    cache.store(ENTRY, entry)
    assert cache.fetch(ENTRY, KEY, dest) is True and contents(dest) == contents(entry)


def test_truncated_and_missing_remote_files_are_refused(remote_url, monkeypatch, tmp_path):
    entry = make_entry(tmp_path / "a" / ENTRY)
    cache = use_remote(monkeypatch, remote_url, "write")
    cache.store(ENTRY, entry)
    manifest = json.loads((entry / "manifest.json").read_text())
    init = cache.blob_path(ENTRY, manifest["sha256"]["scaled_add/__init__.py"])
    cache.fs.pipe_file(init, b"from ._ops import ops\n")  # truncated
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cache.fetch(ENTRY, KEY, dest) is False and list(dest.iterdir()) == []
    cache.fs.rm(init)
    assert cache.fetch(ENTRY, KEY, dest) is False and list(dest.iterdir()) == []


def test_mismatched_build_key_is_refused(remote_url, monkeypatch, tmp_path, caplog):
    entry = make_entry(tmp_path / "a" / ENTRY, key="f" * 64)  # uploaded under this name, built for another key
    cache = use_remote(monkeypatch, remote_url, "write")
    cache.store(ENTRY, entry)
    dest = tmp_path / "dest"
    dest.mkdir()
    with caplog.at_level(logging.WARNING, logger="jitkernels"):
        assert cache.fetch(ENTRY, KEY, dest) is False
    assert "build key" in caplog.text and list(dest.iterdir()) == []


def test_manifest_naming_paths_outside_the_entry_is_refused(tmp_path, monkeypatch):
    url = f"file://{tmp_path / 'remote'}"
    cache = use_remote(monkeypatch, url, "write")
    cache.store(ENTRY, make_entry(tmp_path / "a" / ENTRY))
    manifest_path = Path(cache.manifest_path(ENTRY))
    manifest = json.loads(manifest_path.read_text())
    rel, digest = next(iter(manifest["sha256"].items()))
    for hostile in ("../../escaped.py", "/tmp/escaped.py", "scaled_add/../../x.py"):
        evil = dict(manifest, files={hostile: manifest["files"][rel]}, sha256={hostile: digest})
        manifest_path.write_text(json.dumps(evil))
        dest = tmp_path / "deep" / "dest"
        dest.mkdir(parents=True, exist_ok=True)
        assert cache.fetch(ENTRY, KEY, dest) is False
        assert not (tmp_path / "escaped.py").exists() and not Path("/tmp/escaped.py").exists()
        assert list(dest.iterdir()) == []


def test_read_mode_never_uploads_and_a_damaged_local_entry_is_never_uploaded(tmp_path, monkeypatch, caplog):
    url = f"file://{tmp_path / 'remote'}"
    entry = make_entry(tmp_path / "a" / ENTRY)
    use_remote(monkeypatch, url, "read").store(ENTRY, entry)
    assert not (tmp_path / "remote").exists()

    library = next(entry.rglob("*.so"))
    library.write_bytes(library.read_bytes()[:-1] + b"X")
    with caplog.at_level(logging.WARNING, logger="jitkernels"):
        use_remote(monkeypatch, url, "write").store(ENTRY, entry)  # a warning, never an exception
    assert "does not match its manifest" in caplog.text
    assert not Path(remote.configured().manifest_path(ENTRY)).exists()


def test_unreachable_remote_is_a_warning_and_a_miss(monkeypatch, tmp_path, caplog):
    pytest.importorskip("s3fs")
    port = free_port()  # nothing listens there
    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1",
                        "AWS_RETRY_MODE": "standard"}.items():
        monkeypatch.setenv(name, value)
    cache = use_remote(monkeypatch, f"s3://unreachable-{port}/fleet", "write")
    dest = tmp_path / "dest"
    dest.mkdir()
    with caplog.at_level(logging.WARNING, logger="jitkernels"):
        assert cache.fetch(ENTRY, KEY, dest) is False
        cache.store(ENTRY, make_entry(tmp_path / "a" / ENTRY))
    assert "is not used" in caplog.text and "failed" in caplog.text


def test_a_remote_that_cannot_be_set_up_is_a_warning_and_a_miss(monkeypatch, caplog):
    """ftp:// connects while its file system is made: a refused connection used to escape as a raw
    ConnectionRefusedError from every native load."""
    port = free_port()  # nothing listens there
    monkeypatch.setenv("JITKERNELS_REMOTE_CACHE", f"ftp://127.0.0.1:{port}/fleet")
    with caplog.at_level(logging.WARNING, logger="jitkernels"):
        assert remote.configured() is None
        assert remote.configured() is None  # resting: not asked again
    assert caplog.text.count("could not be set up (ConnectionRefusedError") == 1, caplog.text


@pytest.mark.parametrize("url,mode,match", [
    ("s3://bucket/x", "readwrite", "JITKERNELS_REMOTE_CACHE_MODE"),
    ("/just/a/path", "read", "is not a URL"),
    ("nosuchproto://x/y", "read", "Protocol not known"),
])
def test_misconfiguration_is_a_project_error(monkeypatch, url, mode, match):
    monkeypatch.setenv("JITKERNELS_REMOTE_CACHE", url)
    monkeypatch.setenv("JITKERNELS_REMOTE_CACHE_MODE", mode)
    with pytest.raises(RemoteCacheError, match=match) as info:
        remote.configured()
    assert isinstance(info.value, CacheError)


@pytest.mark.parametrize("blocked,url", [("s3fs", "s3://bucket/prefix"), ("fsspec", "file:///tmp/x")])
def test_missing_package_names_the_pip_line(blocked, url):
    # A fresh interpreter where the package cannot be imported, as on a machine without the extra.
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from jitkernels.cache import remote\n"
        "from jitkernels.errors import RemoteCacheError\n"
        "try:\n    remote.configured()\nexcept RemoteCacheError as exc:\n    print('ERROR', exc)\n"
    )
    out = run_python(code, timeout=60, JITKERNELS_REMOTE_CACHE=url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERROR") and "pip install 'jitkernels[remote]'" in out.stdout
    assert blocked in out.stdout


_STORE = """
import sys
from pathlib import Path
from jitkernels.cache import remote
print("ready", flush=True)
sys.stdin.readline()  # the barrier: every builder is ready before any stores
remote.configured().store({entry!r}, Path(sys.argv[1]))
print("stored")
"""


def test_four_processes_storing_one_key_end_with_one_valid_entry(remote_url, monkeypatch, tmp_path):
    # Four builders of the same key; their libraries differ (builds need not be bit-reproducible).
    entries = [make_entry(tmp_path / f"builder{i}" / ENTRY, library=f"library built by {i}".encode() * 5000)
               for i in range(4)]
    use_remote(monkeypatch, remote_url, "write")
    procs = [subprocess.Popen([sys.executable, "-c", _STORE.format(entry=ENTRY), str(e)], env=child_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for e in entries]
    assert [proc.stdout.readline().strip() for proc in procs] == ["ready"] * 4
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "stored" in out, err
        assert "failed" not in err, err

    reader = use_remote(monkeypatch, remote_url, "read")
    dest = tmp_path / "fetched"
    dest.mkdir()
    assert reader.fetch(ENTRY, KEY, dest) is True
    fetched = contents(dest)
    assert sum(fetched == contents(e) for e in entries) == 1  # exactly one builder's complete entry
    manifests = reader.fs.find(f"{reader.root}/entries")
    assert [m for m in manifests if m.endswith("manifest.json")] == [reader.manifest_path(ENTRY)]
    assert not [m for m in manifests if m.endswith(".tmp")]


# -- through the load pipeline: a builder fills the remote, the fleet only downloads -----------------------------

LOAD_SCALED_ADD = """
import torch, jitkernels
k = jitkernels.load("hf", "jitkernels-examples/scaled-add", revision="main", backend="cpu")
x = torch.randn(32)
assert torch.allclose(k.scaled_add(x, x, 1.0), 2 * x)
print("OK", k.__file__)
"""


@pytest.mark.slow
def test_builder_fills_the_remote_and_other_machines_load_without_compiling(online, tmp_path):
    shared = tmp_path / "shared-remote"
    url = f"file://{shared}"

    def machine(name: str, **env) -> subprocess.CompletedProcess:
        return run_python(LOAD_SCALED_ADD, timeout=900, JITKERNELS_CACHE=tmp_path / name / "jkcache",
                          HF_HOME=tmp_path / name / "hf", HF_HUB_CACHE=tmp_path / name / "hf" / "hub",
                          JITKERNELS_REMOTE_CACHE=url, **env)

    builder = machine("builder", JITKERNELS_REMOTE_CACHE_MODE="write")
    assert builder.returncode == 0 and "OK" in builder.stdout, builder.stderr[-3000:]
    (entry_name,) = [p.name for p in (shared / "entries").iterdir()]

    fleet = machine("fleet", JITKERNELS_DISABLE_BUILD="1")  # a compile would be an error here
    assert fleet.returncode == 0 and "OK" in fleet.stdout, fleet.stderr[-3000:]
    assert entry_name in fleet.stdout
    assert not (tmp_path / "fleet" / "jkcache" / "builds").exists()  # nothing was compiled

    blob = next((shared / "entries" / entry_name / "blobs").iterdir())
    blob.write_bytes(b"tampered" + blob.read_bytes()[8:])
    refused = machine("fleet-2", JITKERNELS_DISABLE_BUILD="1")
    assert refused.returncode != 0 and "BuildError" in refused.stderr and "remote cache" in refused.stderr
    assert "refused" in refused.stderr.lower() or "sha256" in refused.stderr
    assert not (tmp_path / "fleet-2" / "jkcache" / "entries").exists() or not any(
        (tmp_path / "fleet-2" / "jkcache" / "entries").glob("_scaled_add*"))


# -- deadlines (issue 14, defect 4): a remote that never answers is a miss with one warning, and the load goes on ---

class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers (a hung endpoint)."""

    def __init__(self):
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = []
        self.first = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read from or written to
            self.first.set()

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_s3(monkeypatch):
    pytest.importorskip("s3fs")
    server = SilentServer()
    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": server.url}.items():
        monkeypatch.setenv(name, value)
    yield server
    server.close()


def test_a_remote_that_accepts_and_never_answers_is_a_miss_within_the_deadline(silent_s3, monkeypatch, tmp_path,
                                                                              caplog):
    """S3 at an endpoint that accepts and never answers took 421 s per lookup (JITKERNELS_TIMEOUT did not apply)."""
    import time

    monkeypatch.setenv("JITKERNELS_REMOTE_CACHE_TIMEOUT", "2")
    cache = use_remote(monkeypatch, f"s3://silent-{free_port()}/fleet", "write")
    dest = tmp_path / "dest"
    dest.mkdir()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jitkernels"):
        assert cache.fetch(ENTRY, KEY, dest) is False
        assert time.monotonic() - start < 30  # the deadline, not botocore's retries
        assert silent_s3.first.is_set()  # it did ask the server
        assert cache.fetch(ENTRY, KEY, dest) is False  # not asked again for a while: no second wait
        cache.store(ENTRY, make_entry(tmp_path / "a" / ENTRY))
        assert remote.configured() is None  # resting: loads do not even set it up
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "JITKERNELS_REMOTE_CACHE_TIMEOUT" in warnings[0], warnings
    assert list(dest.iterdir()) == []  # the abandoned download may never write into the caller's folder


def _scaled_add_entry_name(url: str, monkeypatch) -> str:
    """The name of the native entry jitkernels-examples/scaled-add gets here (from the DISABLE_BUILD error)."""
    import re

    import jitkernels
    from jitkernels.errors import BuildError

    monkeypatch.setenv("JITKERNELS_DISABLE_BUILD", "1")
    monkeypatch.setenv("JITKERNELS_REMOTE_CACHE", url)
    with pytest.raises(BuildError) as err:
        jitkernels.load("hf", "jitkernels-examples/scaled-add", revision="main", backend="cpu")
    return re.search(r"/entries/([^ /]+)", str(err.value)).group(1)


LOAD_UNDER_DISABLE_BUILD = """
import jitkernels
from jitkernels.errors import BuildError
try:
    jitkernels.load("hf", "jitkernels-examples/scaled-add", revision="main", backend="cpu")
except BuildError as exc:
    print("BuildError", "remote cache" in str(exc))
"""


def test_a_fifo_manifest_and_a_silent_s3_do_not_block_loads_or_their_waiters(online, silent_s3, tmp_path,
                                                                             monkeypatch):
    """A file:// manifest that is a FIFO (a hung network mount) blocked forever, and the waiters with it. Now two
    loads at once (one holds the entry's lock, the other waits) each end with the DISABLE_BUILD error; the same
    for an S3 endpoint that never answers."""
    shared = tmp_path / "shared"
    name = _scaled_add_entry_name(f"file://{shared}", monkeypatch)
    (shared / "entries" / name).mkdir(parents=True)
    os.mkfifo(shared / "entries" / name / "manifest.json")
    for url in (f"file://{shared}", f"s3://silent-{free_port()}/fleet"):
        env = dict(JITKERNELS_REMOTE_CACHE=url, JITKERNELS_REMOTE_CACHE_TIMEOUT="2", JITKERNELS_DISABLE_BUILD="1",
                   HF_ENDPOINT=online.endpoint)
        children = [start_python(LOAD_UNDER_DISABLE_BUILD, **env) for _ in range(2)]
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0 and out.strip() == "BuildError True", (url, out, err[-2000:])
            assert err.count("JITKERNELS_REMOTE_CACHE_TIMEOUT") == 1, err[-2000:]


# -- issue 14, defect 5: a fetched manifest is checked against the whole schema before anything is published ------

def _without(mapping: dict, suffix: str) -> dict:
    return {rel: value for rel, value in mapping.items() if not rel.endswith(suffix)}


@pytest.mark.parametrize("forge", [
    lambda m: dict(m, archs=5),
    lambda m: dict(m, inspection={**m["inspection"], "repo_id": ["x"]}),
    lambda m: dict(m, toolchain="gcc"),
    lambda m: dict(m, files=_without(m["files"], "/__init__.py"), sha256=_without(m["sha256"], "/__init__.py")),
    lambda m: dict(m, files=_without(m["files"], ".so"), sha256=_without(m["sha256"], ".so")),
    lambda m: dict(m, inspection={**m["inspection"], "python_name": "other", "module_name": "_other_0"}),
], ids=["archs-number", "repo-id-list", "toolchain-text", "no-init", "no-library", "another-kernel"])
def test_a_self_consistent_remote_manifest_that_fails_the_schema_is_refused(tmp_path, monkeypatch, caplog, forge):
    """A fetched manifest with "archs": 5 was published, and then crashed the operator commands; one without the
    package's __init__.py or the library loaded as a KernelImportError every time."""
    cache = use_remote(monkeypatch, f"file://{tmp_path / 'remote'}", "write")
    cache.store(ENTRY, make_entry(tmp_path / "a" / ENTRY))
    manifest_path = Path(cache.manifest_path(ENTRY))
    manifest_path.write_text(json.dumps(forge(json.loads(manifest_path.read_text()))))
    dest = tmp_path / "dest"
    dest.mkdir()
    with caplog.at_level(logging.WARNING, logger="jitkernels"):
        assert cache.fetch(ENTRY, KEY, dest, {"python_name": "scaled_add", "module_name": MODULE}) is False
    assert list(dest.iterdir()) == []
    assert ENTRY in caplog.text and "is not used" in caplog.text
