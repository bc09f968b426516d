"""Hostile names, revisions, folders and build.toml files: the project's own errors, nothing fetched or built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import jitkernels
from jitkernels.errors import BuildConfigError, InvalidKernelNameError

from conftest import EXAMPLES, RMS, entry_dirs, tree


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../b", "org/na\x00me", "x" * 200, "org/name/extra", ""])
def test_names_that_could_escape_the_cache_are_refused(online, name):
    root = Path(os.environ["JITKERNELS_CACHE"])
    with pytest.raises(InvalidKernelNameError):
        jitkernels.load("hf", name, backend="cpu")
    assert not root.exists() or not any(root.rglob("*x*"))


@pytest.mark.parametrize("revision", ["../../etc", "a\x00b", "  "])
def test_revisions_that_could_escape_are_refused(online, revision):
    with pytest.raises(InvalidKernelNameError):
        jitkernels.load("hf", RMS, revision=revision, backend="cpu")


def test_symlink_leaving_a_local_kernel_is_refused(tmp_path):
    import shutil

    copy = tmp_path / "rms-norm"
    shutil.copytree(EXAMPLES / "rms-norm", copy)
    (copy / "torch-ext" / "rms_norm" / "secret.py").symlink_to("/etc/hostname")
    with pytest.raises(BuildConfigError, match="outside the kernel folder"):
        jitkernels.load_local(copy, backend="cpu")


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
    assert not entry_dirs()
