"""Lock files: `jitkernels lock` pins commits and file hashes; JITKERNELS_LOCKFILE holds every load to them."""

from __future__ import annotations


import pytest

import jitkernels

from conftest import EXAMPLES, RMS


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
