"""Issue 8: the cache layer's trust, concurrency and bad-input defects, one regression test each.

Every test here failed on 3dff1f6 (before the cache layer v2); the README's
reliability table names them.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import jitkernels
from jitkernels.errors import BuildConfigError, CacheError, LockTimeoutError, TrustError

from conftest import EXAMPLES, FIXTURES, child_env, tree

UNTRUSTED = "some-user/rms-norm"


def _entries(prefix: str = "") -> list[Path]:
    folder = Path(os.environ["JITKERNELS_CACHE"]) / "entries"
    return sorted(folder.glob(prefix + "*")) if folder.is_dir() else []


def _go_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _child(code: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=child_env(**env))


# -- 1. trust is recorded, and offline loads of untrusted code are refused ---------------------------

def test_offline_untrusted_kernel_in_the_hf_cache_is_refused_everywhere(online, monkeypatch):
    jitkernels.inspect("hf", UNTRUSTED, revision="main", backend="cpu")  # fills huggingface_hub's cache
    jitkernels.inspect("hf", UNTRUSTED, backend="cpu")  # and our record of the default revision
    assert jitkernels.has("hf", UNTRUSTED, revision="main", backend="cpu")
    _go_offline(monkeypatch)
    with pytest.raises(TrustError, match="trust_remote_code"):
        jitkernels.load("hf", UNTRUSTED, revision="main", backend="cpu")
    with pytest.raises(TrustError):
        importlib.import_module("jitkernels.hub.hf.some_user__rms_norm")
    import kernels

    with jitkernels.patch():
        with pytest.raises(TrustError):
            kernels.get_kernel(UNTRUSTED, revision="main")
    assert not _entries("_rms_norm")  # nothing of it was prepared, let alone imported
    # trust given by this call still works offline
    k = jitkernels.load("hf", UNTRUSTED, revision="main", backend="cpu", trust_remote_code=True)
    assert k.rms_norm is not None


def test_trust_given_by_a_caller_is_not_remembered_pinned_or_unpinned(online):
    commit = jitkernels.inspect("hf", UNTRUSTED, revision="main", backend="cpu").revision
    jitkernels.load("hf", UNTRUSTED, revision="main", backend="cpu", trust_remote_code=True)
    code = """
        import jitkernels
        from jitkernels.errors import TrustError
        for rev in ({commit!r}, "main"):
            try:
                jitkernels.load("hf", {name!r}, revision=rev, backend="cpu")
                print("LOADED", rev)
            except TrustError:
                print("REFUSED", rev)
    """.format(commit=commit, name=UNTRUSTED)
    for offline in ("0", "1"):
        out = _child(code, HF_HUB_OFFLINE=offline, HF_ENDPOINT=online.endpoint)
        assert out.stdout.split() == ["REFUSED", commit, "REFUSED", "main"], (offline, out.stdout, out.stderr)


def test_a_hub_flag_grant_is_recorded_and_serves_offline_loads(online, monkeypatch):
    online.add_repo("flagged-org/rms-norm", {"main": tree(EXAMPLES / "rms-norm")})
    online.set_org("flagged-org", trusted=True)
    k = jitkernels.load("hf", "flagged-org/rms-norm", revision="main", backend="cpu")
    record = json.loads(next(Path(os.environ["JITKERNELS_CACHE"], "trust").rglob("*.json")).read_text())
    assert record["repo_id"] == "flagged-org/rms-norm" and record["granted_by"] == "hub-flag"
    assert record["commit"] == jitkernels.inspect("hf", "flagged-org/rms-norm", revision="main", backend="cpu").revision
    out = _child(
        f"import jitkernels; print(jitkernels.load('hf', 'flagged-org/rms-norm', revision='main', backend='cpu').__name__)",
        HF_HUB_OFFLINE="1")
    assert out.returncode == 0 and out.stdout.strip() == k.__name__, out.stderr


# -- 2. the import hook under threads ------------------------------------------------------------------

def test_threads_importing_through_two_aliases_get_the_one_module():
    code = """
        import importlib, threading, jitkernels
        barrier = threading.Barrier(10)
        got, errors = [], []
        def work(i):
            barrier.wait()
            try:
                got.append(importlib.import_module(("jitkernels.hub.hf.", "jitkernels.hub.hf_kernels.")[i % 2] + "rms_norm"))
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=work, args=(i,)) for i in range(10)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print(len(got), len({id(m) for m in got}), errors)
    """
    local = f"kernels-community/rms-norm={EXAMPLES / 'rms-norm'}"
    for _ in range(6):  # the race showed in about half of the runs
        out = _child(code, LOCAL_KERNELS=local)
        assert out.stdout.strip() == "10 1 []", out.stdout + out.stderr[-2000:]


# -- 3. staging folders of live builders elsewhere are never swept --------------------------------------

def test_sweep_keeps_a_staging_folder_whose_owner_lives_in_another_pid_namespace():
    from jitkernels.cache import workspaces as cache

    # A builder whose pid means nothing here (another container's PID namespace): pid 999999 is dead here.
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import os, sys, time
            os.getpid = lambda: 999999
            from jitkernels.cache import workspaces
            with workspaces.staging("elsewhere") as folder:
                (folder / "obj.o").write_text("half a build")
                print(folder, flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        folder = Path(holder.stdout.readline().strip())
        assert ".999999." in folder.name and os.uname().nodename in folder.name
        with cache.staging("mine") as mine:  # sweeps on the way in
            assert mine.is_dir()
        assert (folder / "obj.o").exists(), "a live builder's staging folder was swept"
    finally:
        holder.kill()
        holder.wait()
    with cache.staging("again"):
        pass
    assert not folder.exists(), "a dead builder's staging folder was left behind"


# -- 4. a stopped lock holder does not block forever ------------------------------------------------------

def _hold_lock_and_stop(key: str, heartbeat_seconds: float | None = None) -> subprocess.Popen:
    code = f"""
        import os, signal, sys, time
        from jitkernels.cache import locks
        with locks.hold({key!r}, what="a test holder"):
            print("HELD", flush=True)
            if {heartbeat_seconds!r} is None:
                os.kill(os.getpid(), signal.SIGSTOP)
            else:
                time.sleep({heartbeat_seconds!r})
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                            env=child_env())
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_a_stopped_lock_holder_times_out_with_a_clear_error(online, monkeypatch, caplog):
    name = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").module_name
    holder = _hold_lock_and_stop(f"entry:{name}")
    monkeypatch.setenv("JITKERNELS_LOCK_TIMEOUT", "3")
    try:
        start = time.monotonic()
        with caplog.at_level("WARNING", logger="jitkernels"):
            with pytest.raises(LockTimeoutError, match="JITKERNELS_LOCK_TIMEOUT") as err:
                jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
        assert time.monotonic() - start < 30
        assert f"pid {holder.pid}" in str(err.value) and os.uname().nodename in str(err.value)
        assert isinstance(err.value, CacheError)
        assert any(f"pid {holder.pid}" in r.getMessage() for r in caplog.records)  # said while waiting
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder is gone: the lock is free and the load works
    assert jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").rms_norm


def test_a_live_holder_is_waited_for_past_the_timeout(online, monkeypatch):
    name = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").module_name
    holder = _hold_lock_and_stop(f"entry:{name}", heartbeat_seconds=6)
    monkeypatch.setenv("JITKERNELS_LOCK_TIMEOUT", "3")
    try:
        k = jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
        assert k.rms_norm is not None
    finally:
        holder.kill()
        holder.wait()


# -- 5. read-only or unusable caches --------------------------------------------------------------------------

def _read_only(cache: Path, code: str, **env) -> subprocess.CompletedProcess:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a read-only bind mount")
    cache.mkdir(parents=True, exist_ok=True)
    script = (f"mount --bind -o ro {cache} {cache} && exec {sys.executable} -c \"$0\"")
    return subprocess.run(["unshare", "-m", "sh", "-c", script, textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env=child_env(**env))


def test_read_only_cache_without_the_kernel_is_a_cache_error(online):
    cache = Path(os.environ["JITKERNELS_CACHE"])
    jitkernels.load("hf", "jitkernels-examples/rms-norm", revision="main", backend="cpu")  # a used cache
    out = _read_only(cache, """
        import jitkernels
        from jitkernels.errors import CacheError
        try:
            jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
        except CacheError as exc:
            print("CacheError:", exc)
    """, HF_ENDPOINT=online.endpoint)
    assert "CacheError:" in out.stdout and "JITKERNELS_CACHE" in out.stdout, out.stdout + out.stderr[-2000:]
    assert str(cache) in out.stdout
    cli = _read_only(cache, "from jitkernels.cli.main import main; raise SystemExit(main(['warmup', "
                            "'kernels-test/rms-norm-universal', '--revision', 'main', '--backend', 'cpu']))",
                     HF_ENDPOINT=online.endpoint)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr[-2000:]
    assert "error:" in cli.stderr and "JITKERNELS_CACHE" in cli.stderr


def test_read_only_cache_that_holds_the_kernel_loads_it(online):
    k = jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").revision
    cache = Path(os.environ["JITKERNELS_CACHE"])
    shutil.rmtree(cache / "index")  # the entry is there, its index is not (and cannot be written)
    out = _read_only(cache, f"""
        import jitkernels
        for rev in ({commit!r}, "main"):
            print(jitkernels.load("hf", "kernels-test/rms-norm-universal", revision=rev, backend="cpu").__name__)
    """, HF_ENDPOINT=online.endpoint)
    assert out.returncode == 0 and out.stdout.split() == [k.__name__] * 2, out.stderr[-2000:]


# -- 6. hostile build.toml and payload names ------------------------------------------------------------------

def _repo_with_toml(online, name: str, text: str) -> str:
    files = tree(EXAMPLES / "rms-norm")
    files["build.toml"] = text.encode()
    online.add_repo(f"kernels-test/{name}", {"main": files})
    return f"kernels-test/{name}"


def test_deeply_nested_build_toml_is_a_build_config_error_everywhere(online):
    repo = _repo_with_toml(online, "deep-toml", "x = " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(BuildConfigError):
        jitkernels.inspect("hf", repo, revision="main", backend="cpu")
    with pytest.raises(BuildConfigError):
        jitkernels.load("hf", repo, revision="main", backend="cpu")
    assert jitkernels.has("hf", repo, revision="main", backend="cpu") is False
    from jitkernels.cli.main import main

    assert main(["inspect", repo, "--revision", "main", "--backend", "cpu"]) == 1


@pytest.mark.parametrize("package", ["bad.name", "1digit", "has-dash"])
def test_payload_package_names_are_validated(online, package):
    repo = f"kernels-test/payload-{package.replace('.', '').replace('_', '')}"
    online.add_repo(repo, {"main": {f"build/torch-universal/{package}/__init__.py": b"x = 1\n"}}, repo_type="model")
    with pytest.raises(BuildConfigError, match="package"):
        jitkernels.load("hf", repo, revision="main", backend="cpu")
    assert not _entries()


# -- 7. wrong-shaped manifests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("manifest", ['{"files": []}', "null", '{"files": {"a": "x"}}', "[1]"])
def test_wrong_shaped_manifest_is_damage_rebuilt_and_reported_once(online, manifest):
    from jitkernels.cli.main import main
    from jitkernels.cache.manifest import check_entry

    jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").revision
    (entry,) = _entries("_rms_norm_cpu_")
    (entry / "manifest.json").write_text(manifest)
    assert "manifest" in check_entry(entry)
    assert main(["verify"]) == 1
    out = _child(f"import jitkernels; print(jitkernels.load('hf', 'kernels-test/rms-norm-universal', "
                 f"revision={commit!r}, backend='cpu').rms_norm)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("is damaged") == 1
    assert check_entry(entry) is None


# -- 8. the build key covers the compiler and torch's build ----------------------------------------------------

def test_build_key_covers_compiler_and_torch_local_version(monkeypatch):
    from jitkernels.build.native import spec as spec_mod
    from jitkernels.plan.buildconfig import parse_build_toml

    config = parse_build_toml((EXAMPLES / "scaled-add" / "build.toml").read_text(), "build.toml")

    def key():
        return spec_mod.make_spec(config, "t/scaled-add", "cpu", ("scaled_add_cpu",), "_x", "d" * 64).key()

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    base = key()
    monkeypatch.setenv("CXX", "g++-12")
    assert key() != base
    monkeypatch.setenv("CXX", "clang++")  # another compiler, or one that does not exist: still another key
    other = key()
    assert other != base
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("CC", "gcc-12")
    assert key() != base
    monkeypatch.delenv("CC")
    import torch

    monkeypatch.setattr(torch, "__version__", torch.__version__.split("+")[0] + "+cu999")
    assert key() != base


# -- 9. paths with spaces ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cache_path_with_spaces_builds_and_loads(tmp_path):
    cache = tmp_path / "my cache: $HOME"
    out = _child(f"""
        import torch, jitkernels
        k = jitkernels.load_local({str(EXAMPLES / 'scaled-add')!r}, backend="cpu")
        x = torch.randn(8)
        assert torch.allclose(k.scaled_add(x, x, 1.0), 2 * x)
        print("OK", k.__file__)
    """, timeout=600, JITKERNELS_CACHE=str(cache))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
    assert str(cache) in out.stdout


# -- 10. atomic writes ------------------------------------------------------------------------------------------

def test_lock_pin_and_manifest_files_are_written_atomically(online, tmp_path, monkeypatch):
    """A crash mid-write (simulated: the write fails after a few bytes) leaves the old file whole."""
    import builtins
    import io

    from jitkernels.cli.main import main

    lock = tmp_path / "jitkernels.lock"
    lock.write_text("[]\n")
    pins = tmp_path / "pins.json"
    pins.write_text('{"version": 1, "pins": []}\n')
    real_open = builtins.open

    class Crash(OSError):
        pass

    def failing_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file) in (str(lock), str(pins)):
            handle.close()
            raise Crash("simulated crash while writing in place")
        return handle

    monkeypatch.setattr(builtins, "open", failing_open)
    monkeypatch.setattr(io, "open", failing_open)  # pathlib writes through io.open
    assert main(["lock", "kernels-test/rms-norm-universal", "--revision", "main", "--backend", "cpu",
                 "-o", str(lock)]) == 0
    assert json.loads(lock.read_text())[0]["dependency"]["repo-id"] == "kernels-test/rms-norm-universal"
    jitkernels.pin("hf", "rms-norm", revision="main")
    try:
        jitkernels.hub.write_pins(pins)
    finally:
        jitkernels.hub.unpin("hf", "rms-norm")
    assert json.loads(pins.read_text())["pins"][0]["name"].endswith("rms-norm")


# -- found by an outside review of the cache layer ----------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_cache_owned_by_another_user_is_refused_on_every_load_path(online):
    jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    cache = Path(os.environ["JITKERNELS_CACHE"])
    for path in [cache, *cache.rglob("*")]:
        os.lchown(path, 4242, 4242)
    code = """
        import importlib, jitkernels
        from jitkernels.errors import CacheError
        for load in (lambda: jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu"),
                     lambda: importlib.import_module("jitkernels.hub.hf.kernels_test__rms_norm_universal")):
            try:
                load()
                print("LOADED")
            except CacheError:
                print("REFUSED")
    """
    for offline in ("0", "1"):
        out = _child(code, HF_HUB_OFFLINE=offline)
        assert out.stdout.split() == ["REFUSED", "REFUSED"], (offline, out.stdout, out.stderr[-2000:])


def test_cache_files_and_folders_follow_the_umask_and_are_never_world_writable(online):
    cache = Path(os.environ["JITKERNELS_CACHE"])
    out = _child("""
        import os
        os.umask(0)
        import jitkernels
        jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    paths = [p for p in cache.rglob("*") if "locks" not in p.parts]
    assert any("index" in p.parts and p.is_file() for p in paths) and any("refs" in p.parts for p in paths)
    for path in [cache, *paths]:
        mode = path.stat().st_mode
        assert not mode & 0o002, path
        assert mode & 0o044 == 0o044, path  # readable by the fleet that ships this cache


@pytest.mark.parametrize("damage", [
    {"entry": "../../outside"}, {"entry": "/abs/olute"}, {"python_name": ["x"]}, {"module": 3},
    {"python_name": "a.b"}, {"entry": None},
])
def test_a_forged_or_damaged_index_is_ignored_never_followed(online, damage, tmp_path):
    k = jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").revision
    outside = tmp_path / "outside" / "rms_norm"
    outside.mkdir(parents=True)
    (outside / "__init__.py").write_text("raise SystemExit('code outside the cache ran')\n")
    for index in Path(os.environ["JITKERNELS_CACHE"], "index").rglob("*.json"):
        record = json.loads(index.read_text())
        record.update(damage)
        index.write_text(json.dumps(record))
    out = _child(f"import jitkernels; print(jitkernels.load('hf', 'kernels-test/rms-norm-universal', "
                 f"revision={commit!r}, backend='cpu').__name__)")
    assert out.returncode == 0 and out.stdout.strip() == k.__name__, out.stderr[-2000:]


@pytest.mark.parametrize("files", [{"a\u0000b": 1}, {"rms_norm": 4096}, {"link": 0}])
def test_manifest_listing_odd_files_is_damage_for_loads_and_verify(online, files):
    from jitkernels.cli.main import main
    from jitkernels.cache.manifest import check_entry

    jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    (entry,) = _entries("_rms_norm_cpu_")
    (entry / "link").symlink_to("/dev/zero")
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"].update(files)
    manifest["sha256"].update({k: "0" * 64 for k in files})
    (entry / "manifest.json").write_text(json.dumps(manifest))
    assert check_entry(entry) is not None and check_entry(entry, full=True) is not None
    assert main(["verify"]) == 1


def test_a_hung_holder_whose_build_log_stopped_growing_times_out(online, monkeypatch):
    """Alive (its heartbeat goes on) but its build log does not change: given up on, as for a stopped one."""
    name = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").module_name
    log = Path(os.environ["JITKERNELS_CACHE"]) / "hung.log"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from jitkernels.cache import locks
        with locks.hold("entry:{name}", what="building it", log=Path({str(log)!r})):
            Path({str(log)!r}).write_text("[1/3] CXX a.cpp\\n")
            print("HELD", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env=child_env())
    monkeypatch.setenv("JITKERNELS_LOCK_TIMEOUT", "3")
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(LockTimeoutError, match="building it"):
            jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    finally:
        holder.kill()
        holder.wait()


def test_offline_org_name_with_underscores_finds_the_hyphenated_repo(online, monkeypatch):
    k = jitkernels.load("hf", "jitkernels-examples/rms_norm", revision="main", backend="cpu")
    _go_offline(monkeypatch)
    from jitkernels import warm

    warm.LOADED.clear()
    assert jitkernels.load("hf", "jitkernels-examples/rms_norm", revision="main", backend="cpu") is k


def test_a_trust_grant_is_not_remembered_in_process_either(online):
    commit = jitkernels.inspect("hf", UNTRUSTED, revision="main", backend="cpu").revision
    jitkernels.load("hf", UNTRUSTED, revision=commit, backend="cpu", trust_remote_code=True)
    with pytest.raises(TrustError):
        jitkernels.load("hf", UNTRUSTED, revision=commit, backend="cpu")


def test_relative_cache_folder_is_fixed_when_first_used(tmp_path):
    work = tmp_path / "work"
    (work / "elsewhere").mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, jitkernels
        from jitkernels import config
        first = config.cache_dir()
        os.chdir("elsewhere")
        assert config.cache_dir() == first and first.is_absolute(), (first, config.cache_dir())
        print(first)
    """)], capture_output=True, text=True, cwd=work, env=child_env(JITKERNELS_CACHE="jkrel"), timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == str(work / "jkrel"), out.stderr[-2000:]
