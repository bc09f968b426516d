"""The cache folder itself: unusable, full, read-only, another user's, relative, with odd characters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jitkernels
from jitkernels.errors import CacheError

from conftest import EXAMPLES, RMS, child_env, entry_dirs, run_python


def test_unusable_cache_dir_is_a_clear_error_and_leaves_nothing(online, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("JITKERNELS_CACHE", str(blocker / "cache"))
    with pytest.raises(CacheError, match="JITKERNELS_CACHE") as err:
        jitkernels.load("hf", RMS, revision="main", backend="cpu")
    assert str(blocker / "cache") in str(err.value)
    assert blocker.read_text() == "not a folder"


def test_full_disk_during_prepare_is_a_clear_error_and_nothing_partial(online, monkeypatch):
    import errno
    import shutil

    real = shutil.copyfile

    def full(src, dst, *a, **k):
        if "staging" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(CacheError, match="No space left") as err:
        jitkernels.load("hf", RMS, revision="main", backend="cpu")
    assert "JITKERNELS_CACHE" in str(err.value)
    root = Path(os.environ["JITKERNELS_CACHE"])
    assert not entry_dirs("_rms_norm")
    assert not list((root / "staging").iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_cache_owned_by_another_user_is_refused(online, tmp_path, monkeypatch):
    other = tmp_path / "other-cache"
    other.mkdir()
    os.chown(other, 4242, 4242)
    monkeypatch.setenv("JITKERNELS_CACHE", str(other))
    with pytest.raises(CacheError, match="another user"):
        jitkernels.load("hf", RMS, revision="main", backend="cpu")
    monkeypatch.setenv("JITKERNELS_SHARED_CACHE", "1")
    assert jitkernels.load("hf", RMS, revision="main", backend="cpu") is not None


@pytest.mark.parametrize("folder", ["", "entries"])
def test_a_cache_every_user_can_write_is_refused_unless_shared_is_said(online, monkeypatch, folder):
    """Anyone on the machine could replace the code in a mode-777 cache; it loaded without a word."""
    jitkernels.load("hf", RMS, revision="main", backend="cpu")
    cache = Path(os.environ["JITKERNELS_CACHE"])
    os.chmod(cache / folder, 0o777)
    code = """
        import jitkernels
        from jitkernels.errors import CacheError
        try:
            jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
            print("LOADED")
        except CacheError as exc:
            print("REFUSED", exc)
    """
    out = run_python(code)
    assert "REFUSED" in out.stdout and "writable by every user" in out.stdout and "chmod o-w" in out.stdout, out.stderr
    assert "LOADED" in run_python(code, JITKERNELS_SHARED_CACHE="1").stdout


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
        out = run_python(code, HF_HUB_OFFLINE=offline)
        assert out.stdout.split() == ["REFUSED", "REFUSED"], (offline, out.stdout, out.stderr[-2000:])


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


def test_relative_cache_folder_is_fixed_when_first_used(tmp_path):
    work = tmp_path / "work"
    (work / "elsewhere").mkdir(parents=True)
    out = run_python("""
        import os, jitkernels
        from jitkernels import config
        first = config.cache_dir()
        os.chdir("elsewhere")
        assert config.cache_dir() == first and first.is_absolute(), (first, config.cache_dir())
        print(first)
    """, cwd=work, timeout=120, JITKERNELS_CACHE="jkrel")
    assert out.returncode == 0 and out.stdout.strip() == str(work / "jkrel"), out.stderr[-2000:]


@pytest.mark.slow
def test_cache_path_with_spaces_builds_and_loads(tmp_path):
    cache = tmp_path / "my cache: $HOME"
    out = run_python(f"""
        import torch, jitkernels
        k = jitkernels.load_local({str(EXAMPLES / 'scaled-add')!r}, backend="cpu")
        x = torch.randn(8)
        assert torch.allclose(k.scaled_add(x, x, 1.0), 2 * x)
        print("OK", k.__file__)
    """, timeout=600, JITKERNELS_CACHE=str(cache))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
    assert str(cache) in out.stdout
