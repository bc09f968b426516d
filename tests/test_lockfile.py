"""Lock files: `jitkernels lock` pins commits and file hashes; JITKERNELS_LOCKFILE holds every load to them."""

from __future__ import annotations


from pathlib import Path

import pytest

import jitkernels

from conftest import EXAMPLES, RMS, run_python


def _lock(tmp_path, monkeypatch, name=RMS):
    from jitkernels.cli.main import main

    path = tmp_path / "jitkernels.lock"
    assert main(["lock", name, "--revision", "main", "--backend", "cpu", "-o", str(path)]) == 0
    monkeypatch.setenv("JITKERNELS_LOCKFILE", str(path))
    return path


def test_lock_pins_commit_and_records_file_hashes(online, tmp_path, monkeypatch):
    import json

    path = _lock(tmp_path, monkeypatch)
    (entry,) = json.loads(path.read_text())
    commit = entry["lock"]["commit"]
    assert entry["dependency"] == {"repo-id": RMS, "revision": "main"}
    assert set(entry["jitkernels"]["files"]) == {"rms_norm/__init__.py", "rms_norm/functional.py", "rms_norm/layers.py"}
    k = jitkernels.load("hf", RMS, revision="main", backend="cpu")
    assert jitkernels.inspect("hf", RMS, revision=commit, backend="cpu").module_name == k.__name__
    # the branch moves on the Hub: the locked commit is still what loads
    from conftest import tree

    online.add_repo(RMS, {"main": {**tree(EXAMPLES / "rms-norm" / "torch-ext" / "rms_norm", "build/torch-universal/rms_norm/"),
                                   "NEW": b"moved"}}, repo_type="model")
    from jitkernels import warm

    warm.LOADED.clear()
    assert jitkernels.load("hf", RMS, revision="main", backend="cpu") is k


def test_lock_mismatch_fails_loudly(online, tmp_path, monkeypatch):
    import json

    from jitkernels.errors import LockfileError

    path = _lock(tmp_path, monkeypatch)
    data = json.loads(path.read_text())
    data[0]["jitkernels"]["files"]["rms_norm/functional.py"] = "0" * 64
    data[0]["jitkernels"]["digest"] = "f" * 64  # another well-formed digest: the entry made before does not match
    path.write_text(json.dumps(data))
    with pytest.raises(LockfileError, match="rms_norm/functional.py"):
        jitkernels.load("hf", RMS, revision="main", backend="cpu")
    with pytest.raises(LockfileError, match="pins"):
        jitkernels.load("hf", RMS, revision="f" * 40, backend="cpu")


def test_a_lock_edited_after_a_warm_load_is_still_checked(online, tmp_path, monkeypatch):
    """Found by a new user: with the entry warm, an edited file hash (digest left as it was) loaded silently."""
    import json

    from jitkernels.errors import LockfileError

    path = _lock(tmp_path, monkeypatch)
    k = jitkernels.load("hf", RMS, revision="main", backend="cpu")
    code = """
        import jitkernels
        from jitkernels.errors import LockfileError
        try:
            jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
            print("LOADED")
        except LockfileError as exc:
            print("REFUSED", exc)
    """
    assert "LOADED" in run_python(code).stdout  # warm, and the lock as it was made: one index read
    data = json.loads(path.read_text())
    data[0]["jitkernels"]["files"]["rms_norm/functional.py"] = "0" * 64
    path.write_text(json.dumps(data))
    out = run_python(code).stdout
    assert "REFUSED" in out and "rms_norm/functional.py" in out
    with pytest.raises(LockfileError, match="rms_norm/functional.py"):
        jitkernels.load("hf", RMS, revision="main", backend="cpu")  # this process had loaded it before, too
    assert k is not None


def test_lock_refuses_to_pin_a_tampered_local_copy(online, tmp_path, monkeypatch, capsys):
    """Issue 14, defect 13: `jitkernels lock` recorded the sha256 of an edited Hugging Face cache file."""
    import os

    from jitkernels.cli.main import main

    _lock(tmp_path, monkeypatch)  # fills the Hugging Face cache
    (copy,) = [p for p in Path(os.environ["HF_HUB_CACHE"]).rglob("functional.py") if "snapshots" in p.parts]
    blob = copy.resolve()
    blob.write_bytes(blob.read_bytes() + b"\nimport os  # tampered\n")
    capsys.readouterr()
    assert main(["lock", RMS, "--revision", "main", "--backend", "cpu", "-o", str(tmp_path / "again.lock")]) != 0
    err = capsys.readouterr().err
    assert "rms_norm/functional.py" in err and "differs from what the Hub publishes" in err
    assert not (tmp_path / "again.lock").exists()


# -- hostile lock files (issue 14, defect 9): one schema, a size cap, a LockfileError naming the file and the field --

_GOOD = {"dependency": {"repo-id": "kernels-community/relu", "version": 1}, "lock": {"commit": "a" * 40}}
_HOSTILE = {
    "jitkernels-not-an-object": ([dict(_GOOD, jitkernels="x")], '"jitkernels"'),
    "files-a-list": ([dict(_GOOD, jitkernels={"files": ["relu/__init__.py"]})], '"jitkernels.files"'),
    "repo-id-a-list": ([{"dependency": {"repo-id": ["x"]}, "lock": {"commit": "a" * 40}}], '"repo-id"'),
    "commit-a-number": ([dict(_GOOD, lock={"commit": 5})], '"lock.commit"'),
    "not-a-list": ({"dependency": {}}, "JSON list"),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_hostile_lock_files_are_lockfile_errors_naming_the_file_and_field(tmp_path, case):
    """From the CLI (`warmup --from`) and from every load with JITKERNELS_LOCKFILE, in fresh processes."""
    import json

    from conftest import run_python

    data, field = _HOSTILE[case]
    lock = tmp_path / f"{case}.lock"
    lock.write_text(json.dumps(data))
    cli = run_python("from jitkernels.cli.main import main; raise SystemExit(main(['warmup', '--from', __import__('sys').argv[1]]))",
                     str(lock), timeout=60)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr.startswith("error: ") and str(lock) in cli.stderr and field in cli.stderr
    load = run_python("""
        import jitkernels
        from jitkernels.errors import LockfileError
        try:
            jitkernels.load('hf', 'relu', version=1)
        except LockfileError as exc:
            print('LockfileError:', exc)
    """, timeout=60, JITKERNELS_LOCKFILE=lock, HF_HUB_OFFLINE="1")
    assert load.returncode == 0, load.stderr
    assert str(lock) in load.stdout and field in load.stdout


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom"])
def test_a_device_as_a_lock_or_list_file_is_refused_before_it_is_read(special):
    """`warmup --from /dev/zero` read without end (MemoryError); now a LockfileError at once, everywhere."""
    from conftest import run_python

    cli = run_python("from jitkernels.cli.main import main; raise SystemExit(main(['warmup', '--from', __import__('sys').argv[1]]))",
                     special, timeout=60)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert "not a regular file" in cli.stderr and special in cli.stderr
    for variable, code in (("JITKERNELS_LOCKFILE", "import jitkernels; jitkernels.load('hf', 'relu', version=1)"),
                           ("JITKERNELS_PINS", "import jitkernels.hub.hf.relu")):
        out = run_python(code, timeout=60, HF_HUB_OFFLINE="1", **{variable: special})
        assert out.returncode == 1 and "LockfileError" in out.stderr and "not a regular file" in out.stderr, out.stderr
