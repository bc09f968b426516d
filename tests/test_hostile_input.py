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


def test_a_mirror_listing_a_path_that_leaves_the_repository_is_refused_and_nothing_is_written(online, monkeypatch,
                                                                                              tmp_path):
    """A mirror can add a ``..`` path to the listing JitKernels asks for, and not to huggingface_hub's own
    (which checks its own): the path resolved to a real blob and was copied out of the cache through it."""
    from jitkernels.errors import FetchError
    from jitkernels.testing import hubserver

    payload = b"# written by a hostile mirror, outside the JitKernels cache\n"
    oid = hubserver._oid("blob", payload)
    files = tree(EXAMPLES / "rms-norm")
    files["torch-ext/rms_norm/d1/d2/payload.py"] = payload  # makes d1/d2 and the blob exist in the Hub cache
    evil = "torch-ext/rms_norm/d1/d2/" + "../" * 6 + f"blobs/{oid}"
    real_tree, listings = hubserver._tree, []

    def hostile_tree(repo_files, base, recursive):
        out = real_tree(repo_files, base, recursive)
        listings.append(base)
        if len(listings) == 1:  # JitKernels' own listing only
            out.append({"type": "file", "path": evil, "oid": oid, "size": len(payload)})
        return out

    monkeypatch.setattr(hubserver, "_tree", hostile_tree)
    online.add_repo("kernels-test/mirror-evil", {"main": files})
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(FetchError, match="leave the repository") as caught:
        jitkernels.load("hf", "kernels-test/mirror-evil", revision="main", backend="cpu")
    assert evil in str(caught.value)
    written = [p for p in tmp_path.rglob("*") if p not in before and oid in p.name]
    assert written == []
    assert entry_dirs("_rms_norm_cpu_") == []


@pytest.mark.parametrize("target, refused", [("README.md", False), ("../../../../etc/hostname", True),
                                             ("/etc/hostname", True), ("scaled-add", True), ("gone.txt", True)],
                         ids=["in-tree-file", "escaping", "absolute", "folder", "dangling"])
def test_links_in_a_git_source_are_copied_inside_it_or_refused_by_name(tmp_path, target, refused):
    """A metadata.json ``source`` checkout with any link failed at publish as "check the disk", and a link out
    of the tree was read and hashed first."""
    from jitkernels.errors import BuildConfigError
    from jitkernels.providers.base import KernelRef
    from jitkernels.providers.git import fetch_git_commit

    from conftest import make_git_monorepo

    url, commit = make_git_monorepo(tmp_path, links={"README.link": target})
    ref = KernelRef("hf_kernels", "kernels-test/linked")
    if refused:
        with pytest.raises(BuildConfigError, match="README.link is a symbolic link"):
            fetch_git_commit(ref, url, commit)
        assert entry_dirs("git-") == []
    else:
        tree_root = fetch_git_commit(ref, url, commit).path
        copy = tree_root / "README.link"
        assert not copy.is_symlink() and copy.read_text() == (tree_root / "README.md").read_text()
