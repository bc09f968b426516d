"""Friction a new user met on the way (issue 15 item 7): each as the user sees it on the command line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

import jitkernels
from jitkernels.cli.main import main

from conftest import EXAMPLES, child_env

TLN = "kernels-community/triton-layer-norm"


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _cli(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jitkernels", *args], capture_output=True, text=True, timeout=600,
                          env=child_env(**env))


def test_doctor_says_load_cached_for_a_local_kernel_built_before(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "scaled-add"
    shutil.copytree(EXAMPLES / "scaled-add", folder)
    monkeypatch.setenv("LOCAL_KERNELS", f"kernels-community/scaled-add={folder}")
    assert main(["doctor", "kernels-community/scaled-add", "--backend", "cpu", "--json"]) == 0
    assert _json(capsys)["kernel"]["would"] == "compile"
    jitkernels.load("hf", "kernels-community/scaled-add", backend="cpu")
    assert main(["doctor", "kernels-community/scaled-add", "--backend", "cpu", "--json"]) == 0
    kernel = _json(capsys)["kernel"]
    assert kernel["would"] == "load-cached", kernel
    (folder / "build.toml").write_text((folder / "build.toml").read_text() + "\n")  # an edit: built again
    assert main(["doctor", "kernels-community/scaled-add", "--backend", "cpu", "--json"]) == 0
    assert _json(capsys)["kernel"]["would"] == "compile"


def test_doctor_calls_a_cache_folder_not_made_yet_writable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JITKERNELS_CACHE", str(tmp_path / "not" / "made" / "yet"))
    assert main(["doctor", "--json"]) == 0
    cache = _json(capsys)["cache"]
    assert cache["exists"] is False and cache["writable"] is True
    (tmp_path / "ro").mkdir(mode=0o555)
    monkeypatch.setenv("JITKERNELS_CACHE", str(tmp_path / "ro" / "cache"))
    assert main(["doctor", "--json"]) == 0
    import os

    assert _json(capsys)["cache"]["writable"] is (os.geteuid() == 0)  # root writes anywhere


def test_a_typo_gets_close_names_from_local_kernels_and_the_cache(online, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOCAL_KERNELS", f"kernels-community/relu={tmp_path}")
    assert main(["inspect", "rleu"]) == 1
    err = capsys.readouterr().err
    assert "kernels-community/rleu" in err and "Did you mean kernels-community/relu (LOCAL_KERNELS)?" in err
    jitkernels.load("hf", TLN, revision="main", backend="cpu")
    assert main(["inspect", "kernels-community/triton-layer-nrom", "--revision", "main"]) == 1
    assert f"Did you mean {TLN} (the cache)?" in capsys.readouterr().err
    assert main(["inspect", "kernels-community/zzzz", "--revision", "main"]) == 1
    assert "Did you mean" not in capsys.readouterr().err


def test_a_local_kernels_entry_without_an_organisation_is_warned_about(tmp_path):
    out = _cli("inspect", "relu", "--backend", "cpu", LOCAL_KERNELS=f"relu={tmp_path}", HF_HUB_OFFLINE="1")
    assert f"LOCAL_KERNELS entry 'relu={tmp_path}' names no organisation" in out.stderr
    assert f"write 'kernels-community/relu={tmp_path}'" in out.stderr
    assert out.stderr.count("names no organisation") == 1


def test_cache_info_shows_dates_and_sizes_people_read(online, capsys):
    jitkernels.load("hf", TLN, revision="main", backend="cpu")
    assert main(["cache", "info", TLN]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^created\s+20\d\d-\d\d-\d\d \d\d:\d\d:\d\d$", out, re.M), out
    assert re.search(r"^size\s+.+ \(\d+ bytes\)$", out, re.M), out
    assert not re.search(r"^created\s+\d{9,}", out, re.M)


def _project(tmp_path, table: str):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(f'[project]\nname = "app"\n\n[tool.kernels.dependencies]\n{table}')
    return folder


def test_lock_and_warmup_take_a_project_folder_as_upstream_does(online, tmp_path, capsys, monkeypatch):
    folder = _project(tmp_path, f'"{TLN}" = 1\n')
    monkeypatch.chdir(folder)
    assert main(["lock", ".", "--backend", "cpu", "--json"]) == 0
    data = _json(capsys)
    commit = jitkernels.inspect("hf", TLN, version=1, backend="cpu").revision
    assert data["output"] == "jitkernels.lock"  # in the project folder
    assert data["kernels"] == [{"repo_id": TLN, "commit": commit, "files": data["kernels"][0]["files"]}]
    assert (folder / "jitkernels.lock").is_file()

    assert main(["warmup", "--from", ".", "--backend", "cpu", "--json"]) == 0
    [kernel] = _json(capsys)["kernels"]
    assert kernel["name"] == TLN and kernel["ok"]
    assert kernel["module"] == jitkernels.load("hf", TLN, revision=commit, backend="cpu").__name__

    (folder / "kernels.lock").write_text(json.dumps(
        [{"dependency": {"repo-id": TLN, "version": 1}, "lock": {"commit": commit}}]))
    assert main(["warmup", "--from", ".", "--backend", "cpu", "--json"]) == 0  # kernels.lock first, as `kernels download`
    assert _json(capsys)["kernels"][0]["revision"] == commit


@pytest.mark.parametrize("table, message", [
    ("", "declares no kernels: add a [tool.kernels.dependencies] table"),
    ('"kernels-community/relu" = "1"\n', "the value is the kernel's major version, an integer"),
    ('"relu" = 1\n', "'relu' is not 'org/name'"),
])
def test_a_project_folder_with_a_bad_table_is_a_clear_error(tmp_path, capsys, table, message):
    folder = _project(tmp_path, table)
    assert main(["lock", str(folder)]) == 1
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["pyproject.toml"]  # nothing written
    assert main(["warmup", "--from", str(tmp_path)]) == 1
    assert "has no pyproject.toml" in capsys.readouterr().err


def test_doctor_names_settings_that_do_nothing_or_are_not_understood(tmp_path, capsys, monkeypatch):
    """A misspelt variable or a value the code does not understand was silent until a load tripped on it."""
    good = tmp_path / "cutlass"
    good.mkdir()
    bad_lock = tmp_path / "jitkernels.lock"
    bad_lock.write_text('{"kernels": ')
    for name, value in {"JITKERNELS_REMOTE_CAHCE": "s3://bucket/jk", "JITKERNELS_COMPILER_CACHE": "ccahe",
                        "JITKERNELS_LOCKFILE": str(bad_lock), "JITKERNELS_TIMEOUT": "ten",
                        "JITKERNELS_AUTOPATCH": "please", "JITKERNELS_HF_ORG": "../../etc",
                        "JITKERNELS_CUTLASS_DIR": str(good), "JITKERNELS_COLD_START": "background"}.items():
        monkeypatch.setenv(name, value)
    assert main(["doctor", "--json"]) == 0
    settings = _json(capsys)["settings"]
    problems = settings["problems"]
    assert settings["set"]["JITKERNELS_REMOTE_CAHCE"] == "s3://bucket/jk"
    assert "does nothing. Did you mean JITKERNELS_REMOTE_CACHE" in problems["JITKERNELS_REMOTE_CAHCE"]
    assert "'sccache' or 'ccache'" in problems["JITKERNELS_COMPILER_CACHE"]
    assert "not a JSON lock file" in problems["JITKERNELS_LOCKFILE"]
    assert "default is used" in problems["JITKERNELS_TIMEOUT"]
    assert "read as no" in problems["JITKERNELS_AUTOPATCH"]
    assert "organisation" in problems["JITKERNELS_HF_ORG"]
    assert "JITKERNELS_CUTLASS_DIR" not in problems and "JITKERNELS_COLD_START" not in problems
    assert "JITKERNELS_CACHE" not in problems  # the test's own cache folder: fine

    assert main(["doctor"]) == 0  # the table says the same
    text = capsys.readouterr().out
    assert re.search(r"problems\.JITKERNELS_REMOTE_CAHCE +not a JitKernels setting", text), text


def test_doctor_says_what_the_loaders_do_with_a_setting(tmp_path, capsys, monkeypatch):
    """Found by an outside attack: doctor's word must match the reader's (a switch whose default is on, an empty
    lock file, a CUTLASS folder without headers, a remote cache that cannot be set up, a value with a newline)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    for name, value in {"JITKERNELS_CUDA_PROVISION": "maybe", "JITKERNELS_LOCKFILE": "",
                        "JITKERNELS_CUTLASS_3_8_DIR": str(tmp_path), "JITKERNELS_CUTLASS_3_8_DIRS": str(tmp_path),
                        "JITKERNELS_REMOTE_CACHE": f"ftp://127.0.0.1:{port}/fleet",
                        "JITKERNELS_TRUSTED": "a\nproblems.JITKERNELS_FAKE  x"}.items():
        monkeypatch.setenv(name, value)
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    problems = dict(re.findall(r"^  problems\.(\S+) +(.*)$", text, re.M))
    assert problems["JITKERNELS_CUDA_PROVISION"].endswith("read as yes (the default)")
    assert "include/cutlass/cutlass.h" in problems["JITKERNELS_CUTLASS_3_8_DIR"]
    assert "JITKERNELS_CUTLASS_<major>_<minor>_DIR" in problems["JITKERNELS_CUTLASS_3_8_DIRS"]
    assert "loads treat it as a miss" in problems["JITKERNELS_REMOTE_CACHE"]
    assert "JITKERNELS_LOCKFILE" not in problems and "JITKERNELS_FAKE" not in problems
    assert "a\\nproblems.JITKERNELS_FAKE" in text  # one line, the newline shown as \n


def test_doctor_does_not_wait_on_a_pipe_named_as_a_lock_file(tmp_path):
    """Loads accept a pipe (``JITKERNELS_LOCKFILE=<(...)``); doctor must not block reading one that has no writer."""
    import os

    fifo = tmp_path / "lock.fifo"
    os.mkfifo(fifo)
    out = _cli("doctor", "--json", JITKERNELS_LOCKFILE=str(fifo), JITKERNELS_PINS=str(fifo))
    assert out.returncode == 0, out.stderr[-2000:]
    settings = json.loads(out.stdout)["settings"]
    assert settings["set"]["JITKERNELS_LOCKFILE"] == str(fifo) and settings["problems"] is None


def test_doctor_knows_every_variable_the_package_reads():
    """A variable added to the code but not to doctor's list would be called 'not a JitKernels setting'."""
    from pathlib import Path

    from jitkernels.cli import settings

    root = Path(jitkernels.__file__).parent
    read = set()
    for path in [*root.rglob("*.py"), *(root.parent / "hooks").rglob("*.py")]:
        if path.name == "settings.py" and path.parent.name == "cli":  # the list itself, and its misspelt examples
            continue
        read |= set(re.findall(r"\bJITKERNELS_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    read -= {"JITKERNELS_DECLARE_GIL_STANCE"}  # a C macro of the generated binding, not a variable
    unknown = sorted(n for n in read if n not in settings.KNOWN and not settings.VERSION_DIR.match(n))
    assert not unknown, unknown
