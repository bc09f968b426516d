"""Build inputs: the registry, CUTLASS (folder, wheel, download + verify + cache), Python and kernel dependencies.

CUTLASS archives are small trees with the real layout, served from 127.0.0.1;
their pinned git tree ids are put in place of the real ones
(``cutlass.PINNED_TREES``, as the module documents), except where a test checks
the real pins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

import jitkernels
from jitkernels import inputs
from jitkernels.errors import (
    BuildConfigError,
    BuildInputError,
    KernelNotFoundError,
    MissingPythonDependencyError,
    OfflineError,
)
from jitkernels.inputs import cutlass, gittree, python_deps

from conftest import FIXTURES
from cutlass_archives import ArchiveServer, release_archive, trees_of, write_tree, TrickleServer

VERSION = "3.8.0"


# -- git tree ids ----------------------------------------------------------------

def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_tree_id_is_what_git_computes(tmp_path):
    root = tmp_path / "t"
    write_tree(root)
    # names that test git's ordering (a folder sorts as "name/"), an executable, a link, an empty folder
    for rel in ("a.b", "a-b", "a0", "a/x", "a/b/c.h", "z"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(os.urandom(64) + rel.encode())
    (root / "tools" / "run.sh").write_text("#!/bin/sh\n")
    (root / "tools" / "run.sh").chmod(0o755)
    (root / "include" / "link.h").symlink_to("cutlass/cutlass.h")
    (root / "empty" / "nested").mkdir(parents=True)
    _git("init", "-q", ".", cwd=root)
    _git("add", "-A", ".", cwd=root)
    assert gittree.tree_id(root) == _git("write-tree", cwd=root)
    assert gittree.tree_id(root / "include") == _git("rev-parse", f"{_git('write-tree', cwd=root)}:include", cwd=root)
    (tmp_path / "only-empty" / "folders").mkdir(parents=True)
    assert gittree.tree_id(tmp_path / "only-empty") is None  # git has no empty trees


def test_pins_are_kernel_builders():
    assert cutlass.PINS == {
        "cutlass_2_10": "2.10.0", "cutlass_3_5": "3.5.1", "cutlass_3_6": "3.6.0", "cutlass_3_8": "3.8.0",
        "cutlass_3_9": "3.9.2", "cutlass_4_0": "4.0.0", "cutlass_4_4": "4.4.2", "cutlass_4_5": "4.5.2",
    }
    assert set(cutlass.PINNED_TREES) == set(cutlass.PINS.values())
    assert all(len(t) == 40 for pair in cutlass.PINNED_TREES.values() for t in pair)


# -- CUTLASS: download, verify, cache ----------------------------------------------

@pytest.fixture
def no_wheel(monkeypatch):
    monkeypatch.setattr(cutlass, "_wheel_root", lambda version: (None, ""))


@pytest.fixture
def served(tmp_path, monkeypatch, no_wheel):
    """A small CUTLASS 3.8.0 release archive on 127.0.0.1, its tree ids pinned."""
    tree = write_tree(tmp_path / "src")
    monkeypatch.setitem(cutlass.PINNED_TREES, VERSION, trees_of(tree))
    with ArchiveServer({f"/v{VERSION}.tar.gz": release_archive(tree)}) as server:
        monkeypatch.setenv("JITKERNELS_CUTLASS_URL", server.url + "/v{version}.tar.gz")
        yield server


def _cache_leftovers():
    root = jitkernels.config.cache_dir()
    staging = root / "staging"
    return {
        "inputs": sorted(p.name[len("cutlass-"):] for p in (root / "entries").glob("cutlass-*")),
        "staging": sorted(os.listdir(staging)) if staging.exists() else [],
    }


def test_download_is_verified_unpacked_once_and_reused(served):
    before = inputs.describe_build_inputs(["cutlass_3_8"], "cuda")[0]
    assert (before.origin, before.status, before.version) == ("download", "to-download", VERSION)
    got = inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")[0]
    folder = cutlass.cache_folder(VERSION)
    assert (got.origin, got.digest, got.location) == ("download", "+".join(cutlass.PINNED_TREES[VERSION]), str(folder))
    assert got.include_dirs == (str(folder / "include"), str(folder / "tools/util/include"))
    assert (folder / "include/cutlass/cutlass.h").is_file()
    assert not (folder / "README.md").exists() and not (folder / "examples").exists()  # only the two folders
    again = inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")[0]
    assert (again.origin, again.status, again.digest) == ("cache", "cached", got.digest)
    assert inputs.describe_build_inputs(["cutlass_3_8"], "cuda")[0].status == "cached"
    assert served.requests == [f"/v{VERSION}.tar.gz"]  # one download
    assert _cache_leftovers() == {"inputs": [VERSION], "staging": []}


def test_wrong_digest_is_refused_and_nothing_is_left_in_the_cache(served, monkeypatch):
    monkeypatch.setitem(cutlass.PINNED_TREES, VERSION, ("0" * 40, "1" * 40))
    with pytest.raises(BuildInputError, match="does not match the pinned release") as err:
        inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
    assert "0" * 40 in str(err.value) and "nothing was added to the cache" in str(err.value)
    assert _cache_leftovers() == {"inputs": [], "staging": []}


def test_the_real_pins_refuse_a_look_alike_archive(tmp_path, monkeypatch, no_wheel):
    """Not the pinned v3.8.0 content: refused under the real pins (no test override)."""
    tree = write_tree(tmp_path / "src")
    with ArchiveServer({"/a.tar.gz": release_archive(tree)}) as server:
        monkeypatch.setenv("JITKERNELS_CUTLASS_URL", server.url + "/a.tar.gz")
        with pytest.raises(BuildInputError, match="b0ca3e8cc21bc768163445c3713dffad06362a40"):
            inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
    assert _cache_leftovers() == {"inputs": [], "staging": []}


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "JITKERNELS_OFFLINE"])
def test_offline_downloads_nothing_and_says_which_folder_to_provide(served, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    described = inputs.describe_build_inputs(["cutlass_3_8"], "cuda")[0]
    assert described.status == "missing" and "JITKERNELS_CUTLASS_DIR" in described.detail
    with pytest.raises(OfflineError) as err:
        inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
    message = str(err.value)
    assert "cutlass-3.8.0/include" in message and "JITKERNELS_CUTLASS_3_8_DIR" in message
    assert str(cutlass.cache_folder(VERSION)) in message
    assert served.requests == []


def test_unreachable_mirror_is_a_fetch_error_naming_the_url(monkeypatch, no_wheel):
    monkeypatch.setenv("JITKERNELS_CUTLASS_URL", "http://127.0.0.1:9/cutlass-{version}.tar.gz")
    with pytest.raises(jitkernels.errors.FetchError, match=r"127\.0\.0\.1:9/cutlass-3\.8\.0\.tar\.gz"):
        inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
    assert _cache_leftovers() == {"inputs": [], "staging": []}


HOSTILE = [
    ("cutlass-3.8.0/include/../../escape.h", b"x", {}, "'..'"),
    ("/etc/cutlass.h", b"x", {}, "absolute path"),
    ("cutlass-3.8.0/include/cutlass/evil.h", b"", {"type": tarfile.SYMTYPE, "linkname": "../../../../etc/passwd"}, "outside"),
    ("cutlass-3.8.0/include/cutlass/abs.h", b"", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "outside"),
    ("cutlass-3.8.0/include/cutlass/hard.h", b"", {"type": tarfile.LNKTYPE, "linkname": "../etc/passwd"}, "'..'"),
    ("cutlass-3.8.0/include/cutlass/dev", b"", {"type": tarfile.CHRTYPE}, "device"),
    ("cutlass-3.8.0/include/cutlass/fifo", b"", {"type": tarfile.FIFOTYPE}, "FIFO"),
    ("elsewhere/include/cutlass/x.h", b"x", {}, "does not match the pinned release"),  # two top folders
    ("cutlass-3.8.0/examples/ok-until-here/../../../x", b"x", {}, "'..'"),  # even outside the unpacked folders
    # the pinned tree ids never see a .git entry (git does not track one): it was published unchecked
    ("cutlass-3.8.0/include/.git/hooks/x.h", b"x", {}, "'.git'"),
    ("cutlass-3.8.0/include/cutlass/" + "n" * 300 + ".h", b"x", {}, "longer than 255 bytes"),  # was "fix permissions"
]


@pytest.mark.parametrize("name, data, attrs, why", HOSTILE, ids=[h[3] + "-" + str(i) for i, h in enumerate(HOSTILE)])
def test_hostile_archive_members_are_refused_and_nothing_is_unpacked(tmp_path, monkeypatch, no_wheel, name, data, attrs, why):
    tree = write_tree(tmp_path / "src")
    monkeypatch.setitem(cutlass.PINNED_TREES, VERSION, trees_of(tree))
    archive = release_archive(tree, extra=[(name, data, attrs)])
    with ArchiveServer({"/c.tar.gz": archive}) as server:
        monkeypatch.setenv("JITKERNELS_CUTLASS_URL", server.url + "/c.tar.gz")
        with pytest.raises(BuildInputError) as err:
            inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
    assert why in str(err.value)
    assert _cache_leftovers() == {"inputs": [], "staging": []}
    assert not (tmp_path / "escape.h").exists()


def test_a_link_inside_the_unpacked_folders_is_refused(tmp_path, monkeypatch, no_wheel):
    """CUTLASS's include trees hold no link at any pinned release: a link there is refused, not followed."""
    tree = write_tree(tmp_path / "src")
    (tree / "include/cutlass/alias.h").symlink_to("cutlass.h")
    monkeypatch.setitem(cutlass.PINNED_TREES, VERSION, trees_of(tree))
    with ArchiveServer({"/c.tar.gz": release_archive(tree)}) as server:
        monkeypatch.setenv("JITKERNELS_CUTLASS_URL", server.url + "/c.tar.gz")
        with pytest.raises(BuildInputError, match=r"member 'cutlass-3\.8\.0/include/cutlass/alias\.h' is a symbolic link"):
            inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
    assert _cache_leftovers() == {"inputs": [], "staging": []}


def _serve_and_resolve(tmp_path, monkeypatch, extra, pin_tree=True):
    """Serve a release archive with ``extra`` members from 127.0.0.1 and resolve cutlass_3_8 from it."""
    tree = write_tree(tmp_path / "src")
    if pin_tree:
        monkeypatch.setitem(cutlass.PINNED_TREES, VERSION, trees_of(tree))
    with ArchiveServer({"/c.tar.gz": release_archive(tree, extra=extra)}) as server:
        monkeypatch.setenv("JITKERNELS_CUTLASS_URL", server.url + "/c.tar.gz")
        with pytest.raises(BuildInputError) as err:
            inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
    return str(err.value)


def _up_and_over(target, hops):
    """A link text that stays inside the archive if read as text, but leaves it once ``b -> .`` is followed."""
    return "/".join(["b"] * hops + [".."] * hops) + "/" + str(target).lstrip("/")


def test_a_chain_of_links_cannot_write_outside_the_staging_folder(tmp_path, monkeypatch, no_wheel):
    """The outside attack: ``include/b -> .``, ``include/a -> b/b/../..<folder>``, then ``include/a/pwned.h``."""
    victim = tmp_path / "victim"
    victim.mkdir()
    hops = len(jitkernels.config.cache_dir().parts) + 6  # more than the depth of any staging folder
    top = f"cutlass-{VERSION}/include"
    message = _serve_and_resolve(tmp_path, monkeypatch, [
        (f"{top}/b", b"", {"type": tarfile.SYMTYPE, "linkname": "."}),
        (f"{top}/a", b"", {"type": tarfile.SYMTYPE, "linkname": _up_and_over(victim, hops)}),
        (f"{top}/a/pwned.h", b"pwned", {}),
    ])
    assert "is a symbolic link inside include/" in message
    assert list(victim.iterdir()) == []
    assert _cache_leftovers() == {"inputs": [], "staging": []}


def test_a_link_then_a_file_of_the_same_name_cannot_overwrite_a_users_file(tmp_path, monkeypatch, no_wheel):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    hops = len(jitkernels.config.cache_dir().parts) + 6
    top = f"cutlass-{VERSION}/include"
    message = _serve_and_resolve(tmp_path, monkeypatch, [
        (f"{top}/b", b"", {"type": tarfile.SYMTYPE, "linkname": "."}),
        (f"{top}/c", b"", {"type": tarfile.SYMTYPE, "linkname": _up_and_over(victim, hops)}),
        (f"{top}/c", b"overwritten", {}),
    ])
    assert "is a symbolic link inside include/" in message
    assert victim.read_text() == "mine"
    assert _cache_leftovers() == {"inputs": [], "staging": []}


ODD = [
    # a hard link whose target is not in the archive (was a KeyError traceback)
    ([("cutlass-3.8.0/include/cutlass/h.h", b"", {"type": tarfile.LNKTYPE, "linkname": "cutlass-3.8.0/nowhere.h"})],
     "is a hard link inside include/"),
    # the same link twice, and a link and a file of one name (were "Free some space or fix its permissions")
    ([("cutlass-3.8.0/include/cutlass/l.h", b"", {"type": tarfile.SYMTYPE, "linkname": "cutlass.h"})] * 2,
     "is a symbolic link inside include/"),
    ([("cutlass-3.8.0/include/cutlass/cutlass.h", b"again", {})], "appears twice in the archive (as a file and as a file)"),
    ([("cutlass-3.8.0/include/cutlass/cutlass.h/x.h", b"x", {})], "lies below 'include/cutlass/cutlass.h', which the archive makes a file"),
]


@pytest.mark.parametrize("extra, why", ODD, ids=["dangling-hardlink", "duplicate-links", "duplicate-files", "below-a-file"])
def test_odd_archive_members_are_named_for_what_they_are(tmp_path, monkeypatch, no_wheel, extra, why):
    message = _serve_and_resolve(tmp_path, monkeypatch, extra)
    assert why in message and "Free some space" not in message
    assert _cache_leftovers() == {"inputs": [], "staging": []}


def test_a_decompression_bomb_is_refused_from_its_header_without_reading_it(tmp_path, no_wheel):
    """A 320 MiB member of zeros (a ~300 KiB download): refused before its data is read, never held in memory."""
    tree = write_tree(tmp_path / "src")

    class Zeros:
        def __init__(self, size):
            self.left = size

        def read(self, n=-1):
            n = self.left if n is None or n < 0 else min(n, self.left)
            self.left -= n
            return bytes(n)

    info = tarfile.TarInfo(f"cutlass-{VERSION}/include/cutlass/huge.h")
    info.size = 320 << 20
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.addfile(info, Zeros(info.size))
        for path in sorted(tree.rglob("*")):
            tar.add(path, f"cutlass-{VERSION}/{path.relative_to(tree).as_posix()}", recursive=False)
    assert archive.stat().st_size < 2 << 20
    script = (
        "import sys\n"
        "from jitkernels import inputs\n"
        "from jitkernels.inputs import cutlass\n"
        "cutlass._wheel_root = lambda version: (None, '')\n"
        "try:\n"
        "    inputs.resolve_build_inputs(['cutlass_3_8'], 'cuda')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "print('maxrss_kib', hwm)\n"
    )
    from conftest import child_env

    with ArchiveServer({"/bomb.tar.gz": archive.read_bytes()}) as server:
        env = child_env(JITKERNELS_CUTLASS_URL=server.url + "/bomb.tar.gz")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "BuildInputError" in out.stdout and "beyond 64 MiB for one file (a decompression bomb?)" in out.stdout, out.stdout + out.stderr
    rss_mib = int(out.stdout.rsplit("maxrss_kib", 1)[1]) >> 10  # VmHWM: this process since exec, not its parent
    assert rss_mib < 200, f"peak RSS {rss_mib} MiB while refusing a 320 MiB member"
    staging = jitkernels.config.cache_dir() / "staging"
    assert not staging.exists() or os.listdir(staging) == []


# -- CUTLASS: folder overrides and the wheel ------------------------------------

def test_folder_override_comes_first_and_its_digest_is_its_content(tmp_path, monkeypatch, served):
    shared = tmp_path / "cutlass-headers"
    write_tree(shared / f"cutlass-{VERSION}")
    monkeypatch.setenv("JITKERNELS_CUTLASS_DIR", str(shared))
    got = inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")[0]
    assert (got.origin, got.location) == ("dir-override", str(shared / f"cutlass-{VERSION}"))
    assert got.digest == "+".join(cutlass.PINNED_TREES[VERSION])  # same content as the release: same digest
    assert got.include_dirs[0] == str(shared / f"cutlass-{VERSION}" / "include")
    assert served.requests == []
    # a per-version variable wins; edited headers give another digest (so another build key)
    own = write_tree(tmp_path / "patched", marker="// patched\n")
    monkeypatch.setenv("JITKERNELS_CUTLASS_3_8_DIR", str(own))
    patched = inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")[0]
    assert patched.location == str(own) and patched.digest == "+".join(trees_of(own)) != got.digest
    # a folder that does not hold CUTLASS is an error that says what it must hold
    monkeypatch.setenv("JITKERNELS_CUTLASS_3_8_DIR", str(tmp_path))
    with pytest.raises(BuildInputError, match="include/cutlass/cutlass.h"):
        inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
    # JITKERNELS_CUTLASS_DIR without this version: the next source (the download) is used
    monkeypatch.delenv("JITKERNELS_CUTLASS_3_8_DIR")
    monkeypatch.setenv("JITKERNELS_CUTLASS_DIR", str(tmp_path / "empty"))
    assert inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")[0].origin == "download"


def _fake_wheel(site, version):
    """An installed nvidia-cutlass as pip lays it out: dist-info plus cutlass_library/source/{include,tools}."""
    info = site / f"nvidia_cutlass-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: nvidia-cutlass\nVersion: {version}\n")
    (info / "RECORD").write_text("")
    return write_tree(site / "cutlass_library" / "source")


def test_an_installed_wheel_of_exactly_that_version_is_used(tmp_path, monkeypatch):
    site = tmp_path / "site"
    root = _fake_wheel(site, "3.8.0.0")  # the wheel's own version spelling
    monkeypatch.setitem(cutlass.PINNED_TREES, VERSION, trees_of(root))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("JITKERNELS_OFFLINE", "1")  # nothing to download
    assert inputs.describe_build_inputs(["cutlass_3_8"], "cuda")[0].origin == "wheel"
    got = inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")[0]
    assert (got.origin, got.location) == ("wheel", str(root))
    assert got.include_dirs == (str(root / "include"), str(root / "tools/util/include"))
    assert got.digest == "+".join(cutlass.PINNED_TREES[VERSION])
    assert not (jitkernels.config.cache_dir() / "inputs").exists()


def test_a_wheel_of_another_version_is_never_substituted(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _fake_wheel(site, "4.2.0.0")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("JITKERNELS_OFFLINE", "1")
    described = inputs.describe_build_inputs(["cutlass_4_0"], "cuda")[0]
    assert (described.origin, described.status) == ("download", "missing")
    assert "nvidia-cutlass 4.2.0.0 is installed, not 4.0.0: not used" in described.detail
    with pytest.raises(OfflineError, match="cutlass-4.0.0/include"):
        inputs.resolve_build_inputs(["cutlass_4_0"], "cuda")


# -- the registry and inspect --------------------------------------------------------

def test_registry_names_every_kind_and_unknown_names_are_unsupported():
    assert set(inputs.resolvers()) == {"torch", "cutlass", "python-depends", "kernel-depends"}
    assert inputs.unsupported(["torch", "cutlass_3_8", "sycl_tla", "cutlass_3_7"], "cuda") == ("cutlass_3_7", "sycl_tla")
    assert inputs.unsupported(["einops", "tvm-ffi", "nvidia-cutlass-dsl"], "cuda", inputs.PYTHON_DEPENDS) == ()
    assert inputs.unsupported(["nvidia-cutlass-dsl"], "cpu", inputs.PYTHON_DEPENDS) == ("nvidia-cutlass-dsl",)


def test_inspect_shows_every_input_and_how_it_resolves(online, served):
    i = jitkernels.inspect("hf", "kernels-test/cutlass-gemm", revision="main", backend="cuda")
    assert (i.strategy, i.dependencies) == ("native-jit", ("cutlass_3_8", "torch"))
    by_name = {x.name: x for x in i.inputs}
    assert (by_name["cutlass_3_8"].kind, by_name["cutlass_3_8"].version) == ("cutlass", VERSION)
    assert (by_name["cutlass_3_8"].origin, by_name["cutlass_3_8"].status) == ("download", "to-download")
    assert by_name["torch"].origin == "installed" and by_name["torch"].version
    assert served.requests == []  # inspect never downloads
    data = i.to_dict()
    assert {"name": "cutlass_3_8", "kind": "cutlass", "version": VERSION, "origin": "download",
            "status": "to-download"}.items() <= data["inputs"][0].items()
    inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
    again = jitkernels.inspect("hf", "kernels-test/cutlass-gemm", revision="main", backend="cuda")
    assert {x.name: x.status for x in again.inputs}["cutlass_3_8"] == "cached"
    xpu = jitkernels.inspect("hf", "kernels-test/cutlass-gemm", revision="main", backend="xpu")
    assert (xpu.strategy, xpu.reason, xpu.unsupported_dependencies) == ("unsupported", "unsupported-dependency", ("sycl_tla",))
    assert "gemm_xpu: sycl_tla" in xpu.detail


def test_cli_inspect_text_and_json_list_the_inputs(tmp_path, served):
    from conftest import child_env

    env = child_env(JITKERNELS_CUTLASS_URL=os.environ["JITKERNELS_CUTLASS_URL"],
                    JITKERNELS_CUTLASS_3_8_DIR=str(write_tree(tmp_path / "hdrs")))
    kernel = str(FIXTURES / "cutlass-gemm")
    text = subprocess.run([sys.executable, "-m", "jitkernels", "inspect", "--local", kernel, "--backend", "cuda"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert text.returncode == 0, text.stderr
    assert f"cutlass_3_8 (cutlass {VERSION}): dir-override, ready, {tmp_path / 'hdrs'}" in text.stdout
    assert "torch (torch " in text.stdout
    js = subprocess.run([sys.executable, "-m", "jitkernels", "inspect", "--local", kernel, "--backend", "cuda", "--json"],
                        capture_output=True, text=True, env=env, timeout=300)
    data = json.loads(js.stdout)
    assert [(x["name"], x["kind"], x["origin"]) for x in data["inputs"]] == [
        ("cutlass_3_8", "cutlass", "dir-override"), ("torch", "torch", "installed")]


def _noarch_kernel(folder, name, general=""):
    """A Python-only kernel in the kernels-community layout (build.toml + torch-ext/<package>/)."""
    package = folder / "torch-ext" / name.replace("-", "_")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"NAME = {name!r}\n")
    (folder / "build.toml").write_text(
        f'[general]\nname = "{name}"\nversion = 1\nlicense = "Apache-2.0"\nbackends = ["cpu"]\n{general}\n\n'
        f'[torch-noarch]\n\n[kernel]\n')
    return folder


# -- python-depends ------------------------------------------------------------------

def test_python_depends_table_is_upstreams():
    assert python_deps.packages("tvm-ffi", "cuda") == (("apache-tvm-ffi", "tvm_ffi"),)
    assert python_deps.packages("nvidia-cutlass-dsl", "cuda") == (("nvidia-cutlass-dsl", "cutlass"),)
    assert python_deps.packages("nvidia-cutlass-dsl", "cpu") is None
    assert python_deps.packages("nki", "neuron") == (("nki", "nki"),)
    assert python_deps.packages("onednn", "xpu") == (("onednn-devel", None),)  # no module: not checked
    assert python_deps.missing_packages(["onednn"], "xpu") == []


def test_missing_python_package_gives_the_exact_pip_line_and_installs_nothing(tmp_path):
    assert not python_deps._importable("tvm_ffi") and not python_deps._importable("helion")  # as in CI
    kernel = _noarch_kernel(tmp_path / "needs-tvm", "needs-tvm", 'python-depends = ["tvm-ffi", "helion"]')
    i = jitkernels.inspect_local(kernel, backend="cpu")
    assert i.python_depends == ("tvm-ffi", "helion")
    assert [(x.name, x.status, x.detail) for x in i.inputs] == [
        ("tvm-ffi", "missing", "pip install apache-tvm-ffi"), ("helion", "missing", "pip install helion")]
    with pytest.raises(MissingPythonDependencyError) as err:
        jitkernels.load_local(kernel, backend="cpu")
    assert str(err.value).endswith("Install them with: pip install apache-tvm-ffi helion")
    assert not (jitkernels.config.cache_dir() / "entries").exists()


# -- kernel-depends ------------------------------------------------------------------

def test_kernel_depends_are_loaded_first_pinned_and_cycles_are_refused(tmp_path, monkeypatch):
    dep = 'kernel-depends = [{ repo-id = "kernels-test/helper", version = 1 }]'
    main = _noarch_kernel(tmp_path / "main", "main-kernel", dep)
    helper = _noarch_kernel(tmp_path / "helper", "helper")
    monkeypatch.setenv("LOCAL_KERNELS", f"kernels-test/main-kernel={main}:kernels-test/helper={helper}")
    i = jitkernels.inspect("hf", "kernels-test/main-kernel", backend="cpu")
    assert i.kernel_depends == ("kernels-test/helper@v1",)
    assert [(x.name, x.kind, x.version, x.origin) for x in i.inputs] == [
        ("kernels-test/helper", "kernel-depends", "v1", "LOCAL_KERNELS")]
    k = jitkernels.load("hf", "kernels-test/main-kernel", backend="cpu")
    assert k.__name__.startswith("_main_kernel_cpu_")
    assert any(name.startswith("_helper_cpu_") for name in sys.modules)  # the dependency was loaded first
    # helper -> main -> helper: a cycle, named
    (helper / "build.toml").write_text((helper / "build.toml").read_text().replace(
        'backends = ["cpu"]', 'backends = ["cpu"]\nkernel-depends = [{ repo-id = "kernels-test/main-kernel", revision = "main" }]'))
    assert jitkernels.inspect_local(helper, backend="cpu").kernel_depends == ("kernels-test/main-kernel@main",)
    with pytest.raises(BuildConfigError, match="cycle: kernels-test/main-kernel -> kernels-test/helper -> kernels-test/main-kernel"):
        jitkernels.load("hf", "kernels-test/main-kernel", backend="cpu")


def test_a_missing_kernel_dependency_names_who_needs_it(online, tmp_path, monkeypatch):
    main = _noarch_kernel(tmp_path / "main", "main-kernel",
                          'kernel-depends = [{ repo-id = "kernels-test/no-such-kernel", version = 1 }]')
    monkeypatch.setenv("LOCAL_KERNELS", f"kernels-test/main-kernel={main}")
    with pytest.raises(KernelNotFoundError) as err:
        jitkernels.load("hf", "kernels-test/main-kernel", backend="cpu")
    assert "kernels-test/main-kernel needs kernel kernels-test/no-such-kernel@v1 (kernel-depends)" in str(err.value)


# -- issue 14, defect 3: a mirror that trickles bytes is given up (overall deadline, minimum rate) ---------------

@pytest.mark.parametrize("env,why", [
    ({"JITKERNELS_DOWNLOAD_DEADLINE": "3", "JITKERNELS_DOWNLOAD_MIN_RATE": "1"}, "JITKERNELS_DOWNLOAD_DEADLINE"),
    ({"JITKERNELS_TIMEOUT": "2", "JITKERNELS_DOWNLOAD_MIN_RATE": "1000"}, "JITKERNELS_DOWNLOAD_MIN_RATE"),
], ids=["deadline", "min-rate"])
def test_a_mirror_that_trickles_bytes_is_given_up(monkeypatch, no_wheel, env, why):
    """A server sending one byte every 2 s never tripped the per-read timeout: the download (and its waiters) hung."""
    import time

    server = TrickleServer()
    try:
        monkeypatch.setenv("JITKERNELS_CUTLASS_URL", server.url + "/cutlass-{version}.tar.gz")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        start = time.monotonic()
        with pytest.raises(jitkernels.errors.FetchError, match=why):
            inputs.resolve_build_inputs(["cutlass_3_8"], "cuda")
        assert time.monotonic() - start < 15  # the server would go on for 20 s
    finally:
        server.close()
    assert _cache_leftovers() == {"inputs": [], "staging": []}
