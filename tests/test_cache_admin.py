"""``jitkernels cache list|info|prune|clear``: what an operator sees, and prune racing live loads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jitkernels
from jitkernels.cli.main import main

from conftest import run_python, start_python

RMS = "kernels-test/rms-norm-universal"


def _entries() -> list[Path]:
    folder = Path(os.environ["JITKERNELS_CACHE"]) / "entries"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _foreign_native_entry() -> Path:
    """A native entry built for another interpreter (as a cache shared by two Pythons holds)."""
    import types

    from jitkernels.cache.manifest import write_manifest

    entry = Path(os.environ["JITKERNELS_CACHE"]) / "entries" / "_other_cpu_0123456789-0123456789abcdef"
    (entry / "other").mkdir(parents=True)
    (entry / "other" / "__init__.py").write_text("from . import _ops\n")
    (entry / "other" / "_ops.py").write_text("import torch\nops = torch.ops._other_cpu_0123456789\n")
    (entry / "other" / "_other_cpu_0123456789.cpython-399t-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    inspection = types.SimpleNamespace(to_dict=lambda: {
        "repo_id": "org/other", "revision": "f" * 40, "backend": "cpu", "python_name": "other",
        "module_name": "_other_cpu_0123456789", "strategy": "native-jit"})
    write_manifest(entry, inspection, {"build_key": "0123456789abcdef" * 4, "archs": [],
                                       "toolchain": {"python": "cp399t", "torch_build": "0.0.1+cpu"}})
    return entry


def test_list_and_info_show_what_is_cached(online, capsys):
    jitkernels.load("hf", RMS, revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", RMS, revision="main", backend="cpu").revision
    capsys.readouterr()
    assert main(["cache", "list", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["kernel"] == RMS and entry["revision"] == commit and entry["backend"] == "cpu"
    assert entry["kind"] == "python" and entry["size"] > 0 and entry["intact"] and entry["last_use"]
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert RMS in out and commit[:12] in out and "1 entries" in out
    assert main(["cache", "info", "rms-norm-universal"]) == 0
    assert entry["name"] in capsys.readouterr().out
    assert main(["cache", "info", "nothing-like-it"]) == 1
    assert "error: No cache entry named 'nothing-like-it'" in capsys.readouterr().err


def test_prune_needs_a_criterion_and_removes_only_what_matches(online, capsys):
    k = jitkernels.load("hf", RMS, revision="main", backend="cpu")
    foreign = _foreign_native_entry()
    assert main(["cache", "prune"]) == 2
    assert main(["cache", "prune", "--unloadable", "--dry-run"]) == 0
    assert "would remove " + foreign.name in capsys.readouterr().out and foreign.exists()
    assert main(["cache", "prune", "--unloadable", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in report["removed"]] == [foreign.name]
    assert not foreign.exists() and [p.name for p in _entries()] == [Path(k.__file__).parent.parent.name]
    assert main(["cache", "prune", "--older-than", "30"]) == 0  # just used: kept
    assert len(_entries()) == 1


def test_prune_and_clear_never_remove_an_entry_whose_lock_is_held(online, capsys):
    jitkernels.load("hf", RMS, revision="main", backend="cpu")
    (entry,) = _entries()
    holder = start_python(f"""
        import time
        from jitkernels.cache import locks
        with locks.hold("entry:{entry.name}", what="replacing it"):
            print("HELD", flush=True)
            time.sleep(60)
    """)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        assert main(["cache", "prune", "--older-than", "0"]) == 0
        assert entry.exists() and "in use" in capsys.readouterr().err
        assert main(["cache", "clear"]) == 2  # needs --yes
        assert main(["cache", "clear", "--yes"]) == 0
        assert entry.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["cache", "clear", "--yes"]) == 0
    assert not _entries()


def test_prune_racing_loads_never_breaks_a_load(online):
    commit = jitkernels.inspect("hf", RMS, revision="main", backend="cpu").revision
    loader = start_python(f"""
        import sys, torch, jitkernels
        from jitkernels import importer, warm
        for i in range(40):
            warm.LOADED.clear(); importer._BY_PACKAGE.clear()
            for n in [n for n in sys.modules if n.startswith("_rms_norm")]:
                del sys.modules[n]
            k = jitkernels.load("hf", {RMS!r}, revision={commit!r}, backend="cpu")
            assert k.rms_norm(torch.ones(2, 4), torch.ones(4)).shape == (2, 4)
        print("OK")
    """)
    pruned = 0
    while loader.poll() is None:
        main(["cache", "prune", "--older-than", "0"])
        pruned += 1
        time.sleep(0.05)
    out, err = loader.communicate()
    assert loader.returncode == 0 and "OK" in out, err[-3000:]
    assert pruned > 3


def test_last_use_is_the_last_load_not_an_access_time(online, capsys):
    jitkernels.load("hf", RMS, revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", RMS, revision="main", backend="cpu").revision
    (entry,) = _entries()
    old = time.time() - 90 * 86400
    os.utime(entry, (old, old))
    assert main(["verify"]) == 0  # reads every file: not a use
    capsys.readouterr()
    assert main(["cache", "prune", "--older-than", "30", "--dry-run"]) == 0
    assert entry.name in capsys.readouterr().out  # unused for 90 days
    out = run_python(f"import jitkernels; jitkernels.load('hf', {RMS!r}, revision={commit!r}, backend='cpu')",
                     timeout=120)
    assert out.returncode == 0, out.stderr
    assert main(["cache", "prune", "--older-than", "30"]) == 0
    assert entry.exists()  # loaded just now: kept
