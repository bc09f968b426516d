"""Cache entries, manifests and indexes: damage is detected, reported once and rebuilt; nothing forged is followed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import jitkernels

from conftest import EXAMPLES, RMS, entry_dirs, load_in_child, run_python


def _python_entry(online) -> tuple[str, Path]:
    jitkernels.load("hf", RMS, revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", RMS, revision="main", backend="cpu").revision
    (entry,) = entry_dirs("_rms_norm_cpu_")
    return commit, entry


@pytest.mark.parametrize("damage", ["truncate", "missing-manifest", "delete-file"])
def test_damaged_entry_is_detected_rebuilt_and_reported_once(online, damage):
    commit, entry = _python_entry(online)
    target = entry / "rms_norm" / "functional.py"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    elif damage == "missing-manifest":
        (entry / "manifest.json").unlink()
    else:
        target.unlink()
    out = load_in_child(commit)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    assert out.stderr.count("is damaged") == 1
    assert (entry / "manifest.json").exists() and target.stat().st_size > 10


def test_verify_detects_same_size_alteration(online):
    from jitkernels.cache.manifest import check_entry

    _commit, entry = _python_entry(online)
    target = entry / "rms_norm" / "functional.py"
    data = bytearray(target.read_bytes())
    data[-2] = ord("#") if data[-2] != ord("#") else ord(" ")
    target.write_bytes(bytes(data))
    assert check_entry(entry) is None  # the cheap per-load rule only compares sizes
    assert "sha256" in check_entry(entry, full=True)
    from jitkernels.cli.main import main

    assert main(["verify"]) == 1  # `jitkernels verify` reports it


@pytest.mark.parametrize("manifest", ['{"files": []}', "null", '{"files": {"a": "x"}}', "[1]"])
def test_wrong_shaped_manifest_is_damage_rebuilt_and_reported_once(online, manifest):
    from jitkernels.cli.main import main
    from jitkernels.cache.manifest import check_entry

    jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").revision
    (entry,) = entry_dirs("_rms_norm_cpu_")
    (entry / "manifest.json").write_text(manifest)
    assert "manifest" in check_entry(entry)
    assert main(["verify", "--keep"]) == 1  # reported, left for the load to find
    out = run_python(f"import jitkernels; print(jitkernels.load('hf', 'kernels-test/rms-norm-universal', "
                 f"revision={commit!r}, backend='cpu').rms_norm)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("is damaged") == 1
    assert check_entry(entry) is None


@pytest.mark.parametrize("files", [{"a\u0000b": 1}, {"rms_norm": 4096}, {"link": 0}])
def test_manifest_listing_odd_files_is_damage_for_loads_and_verify(online, files):
    from jitkernels.cli.main import main
    from jitkernels.cache.manifest import check_entry

    jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    (entry,) = entry_dirs("_rms_norm_cpu_")
    (entry / "link").symlink_to("/dev/zero")
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"].update(files)
    manifest["sha256"].update({k: "0" * 64 for k in files})
    (entry / "manifest.json").write_text(json.dumps(manifest))
    assert check_entry(entry) is not None and check_entry(entry, full=True) is not None
    assert main(["verify"]) == 1


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
    out = run_python(f"import jitkernels; print(jitkernels.load('hf', 'kernels-test/rms-norm-universal', "
                 f"revision={commit!r}, backend='cpu').__name__)")
    assert out.returncode == 0 and out.stdout.strip() == k.__name__, out.stderr[-2000:]


def test_published_files_follow_umask_and_are_never_world_writable(online):
    _commit, entry = _python_entry(online)
    for path in [entry, *entry.rglob("*")]:
        assert path.stat().st_mode & 0o002 == 0, path
    assert entry.stat().st_mode & 0o755 == 0o755  # readable by others under umask 022


def test_cache_files_and_folders_follow_the_umask_and_are_never_world_writable(online):
    cache = Path(os.environ["JITKERNELS_CACHE"])
    out = run_python("""
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


# -- issue 14, defect 8: verify's promise is true, and prune --damaged sees what verify sees ---------------------

def _alter_same_size(entry: Path) -> tuple[Path, bytes]:
    target = entry / "rms_norm" / "functional.py"
    original = target.read_bytes()
    data = bytearray(original)
    data[-2] = ord("#") if data[-2] != ord("#") else ord(" ")
    target.write_bytes(bytes(data))
    return target, original


def test_verify_removes_a_same_size_alteration_and_the_next_load_makes_it_again(online, capsys):
    """verify said damaged entries "are rebuilt on their next load", but the next load imported the altered file."""
    from jitkernels.cli.main import main

    commit, entry = _python_entry(online)
    target, original = _alter_same_size(entry)
    assert main(["verify"]) == 1
    out = capsys.readouterr().err
    assert f"DAMAGED {entry.name}" in out and "(removed)" in out and "made again on their next load" in out
    assert not entry.exists()
    child = load_in_child(commit)
    assert child.returncode == 0 and "OK" in child.stdout, child.stderr[-2000:]
    assert target.read_bytes() == original  # made again from the Hub, not the altered copy
    assert main(["verify"]) == 0


def test_prune_damaged_removes_what_verify_reports(online, capsys):
    """After a same-size alteration `cache prune --damaged` removed nothing, while verify reported the entry."""
    from jitkernels.cli.main import main

    _commit, entry = _python_entry(online)
    _alter_same_size(entry)
    assert main(["verify", "--keep"]) == 1 and entry.exists()
    capsys.readouterr()
    assert main(["cache", "prune", "--damaged", "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)["removed"]] == [entry.name]
    assert not entry.exists()


# -- issue 14, defect 5: one manifest schema; the operator commands report a bad entry, never crash ----------------

@pytest.mark.parametrize("edit", [{"archs": 5}, {"inspection": {"repo_id": ["x"]}}, {"toolchain": 3},
                                  {"created": "yesterday"}])
def test_operator_commands_report_an_entry_whose_manifest_fails_the_schema(online, capsys, edit):
    """A manifest with "archs": 5 or "inspection": {"repo_id": ["x"]} made cache list/info/prune/clear crash."""
    from jitkernels.cli.main import main

    _commit, entry = _python_entry(online)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest.update(edit)
    (entry / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["cache", "list", "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["name"] == entry.name and shown["intact"] is False and shown["kind"] == "unknown"
    assert main(["cache", "list"]) == 0
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["cache", "info", entry.name]) == 0
    assert "intact    False" in capsys.readouterr().out
    assert main(["cache", "prune", "--older-than", "30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == []
    assert main(["verify", "--keep"]) == 1
    assert "manifest" in capsys.readouterr().err
    assert main(["cache", "clear", "--yes"]) == 0
    assert f"removed {entry.name}" in capsys.readouterr().out and not entry.exists()


def test_an_entry_that_cannot_import_is_damage_removed_and_made_again(online):
    """A self-consistent manifest without the package's __init__.py gave a KernelImportError on every load while
    verify called the entry intact."""
    from jitkernels.cache.manifest import check_entry, write_manifest

    commit, entry = _python_entry(online)
    manifest = json.loads((entry / "manifest.json").read_text())
    (entry / "rms_norm" / "__init__.py").unlink()
    inspection = type("I", (), {"to_dict": staticmethod(lambda: manifest["inspection"])})
    write_manifest(entry, inspection)  # consistent with what is left: only the schema can tell
    assert "__init__.py" in check_entry(entry)
    child = load_in_child(commit)
    assert child.returncode == 0 and "OK" in child.stdout, child.stderr[-2000:]
    assert child.stderr.count("is damaged") == 1 and (entry / "rms_norm" / "__init__.py").is_file()
