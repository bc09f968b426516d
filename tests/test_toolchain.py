"""Which CUDA compiler a build uses, and provisioning NVIDIA's compiler wheels from a package index.

No compiler runs here: the toolkits and wheels have NVIDIA's layout with shell scripts for programs
(``jitkernels.testing.cudawheels``), served by a Simple API index on 127.0.0.1. The real wheels
compile the CUDA fixtures in tests/test_native_cuda_build.py (CI hides the machine's toolkit).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

import jitkernels
from jitkernels.build import toolchain
from jitkernels.cache.manifest import read_manifest
from jitkernels.errors import BuildInputError, ToolchainError
from jitkernels.inputs import package_index
from jitkernels.plan.buildconfig import parse_build_toml
from jitkernels.plan.strategy import decide
from jitkernels.testing import cudawheels

from conftest import entry_dirs
from cutlass_archives import ArchiveServer

INSTALLED_HOMES = toolchain._installed_homes

KERNEL = """
[general]
name = "scale-kernel"
backends = ["cuda"]
{cuda}
[torch]
src = ["torch-ext/torch_binding.cpp"]

[kernel.k]
backend = "cuda"
depends = ["torch"]
src = ["k/k.cu"]
"""


def kernel(cuda: str = ""):
    return parse_build_toml(KERNEL.format(cuda=cuda))


@pytest.fixture
def pip_torch(monkeypatch):
    """This process as a pip-installed CUDA 13.0 torch (its wheel requires cuda-toolkit==13.0.3) with no toolkit."""
    monkeypatch.setattr(toolchain, "torch_cuda", lambda: "13.0")
    monkeypatch.setattr(toolchain, "torch_release", lambda: "13.0.3")
    monkeypatch.setattr(toolchain, "SYSTEM_HOMES", ())
    monkeypatch.setattr(toolchain, "_installed_homes", lambda: [])
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in ("/usr/bin", "/bin") if not os.path.exists(f"{p}/nvcc")))
    for name in ("CUDA_HOME", "CUDA_PATH", "JITKERNELS_CUDA_INDEX", "JITKERNELS_OFFLINE", "JITKERNELS_CUDA_PROVISION",
                 "JITKERNELS_IGNORE_TOOLCHAIN_BOUNDS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cuda_index(pip_torch, monkeypatch):
    """A package index on 127.0.0.1 serving CUDA 13.0.3's compiler wheels (NVIDIA's layout) and cuda-toolkit."""
    wheels = cudawheels.compiler_wheels()
    with ArchiveServer(cudawheels.index_pages(wheels)) as server:
        monkeypatch.setenv("JITKERNELS_CUDA_INDEX", server.url + "/simple")
        server.wheels = wheels
        yield server


def test_a_usable_local_toolkit_is_preferred_and_one_of_another_major_is_passed_over(pip_torch, monkeypatch, tmp_path):
    local = cudawheels.fake_toolkit(tmp_path / "cuda-13.0")
    monkeypatch.setenv("CUDA_HOME", str(local))
    compiler = toolchain.for_build(kernel())
    assert (compiler.origin, compiler.version, compiler.home) == ("local", "13.0", str(local))
    assert toolchain.describe()["would_use"] == f"nvcc 13.0 from {local} (CUDA_HOME)"

    old = cudawheels.fake_toolkit(tmp_path / "cuda-12.8", nvcc_version="12.8.93")
    monkeypatch.setenv("CUDA_HOME", str(old))
    compiler = toolchain.for_build(kernel())
    assert (compiler.origin, compiler.version, compiler.home) == ("index", "13.0", None)  # provisioned when compiling
    seen = toolchain.describe()
    assert f"{old} (CUDA_HOME): nvcc 12.8, not used: CUDA 12.8, but torch is built with CUDA 13.0" in seen["local"][0]
    assert seen["would_use"] == "nvcc 13.0 from the package index (provisioned into the cache)"

    (local / "nvvm" / "bin" / "cicc").unlink()  # a half-installed toolkit (pip install nvidia-cuda-nvcc alone)
    monkeypatch.setenv("CUDA_HOME", str(local))
    assert toolchain.local_toolkits()[0].problem == "incomplete, no nvvm/bin/cicc"
    assert toolchain.for_build(kernel()).origin == "index"


def test_the_compiler_follows_the_kernels_cuda_bounds_and_its_version_is_in_the_build_key(pip_torch, monkeypatch,
                                                                                           tmp_path):
    monkeypatch.setenv("CUDA_HOME", str(cudawheels.fake_toolkit(tmp_path / "cuda-13.2", nvcc_version="13.2.51")))
    # flash-attn3's bounds (maxver = "13.0": "ptxas fails on 13.2"): the local 13.2 is passed over for 13.0
    fa3 = kernel('[general.cuda]\nminver = "12.6"\nmaxver = "13.0"\n')
    assert (toolchain.for_build(fa3).origin, toolchain.for_build(fa3).version) == ("index", "13.0")
    assert (toolchain.for_build(kernel()).origin, toolchain.for_build(kernel()).version) == ("local", "13.2")
    # a kernel needing a later minor than torch's: the index offers the lowest one that fits
    assert toolchain.for_build(kernel('[general.cuda]\nminver = "13.4"\n')).version == "13.4"
    d = decide(fa3, "cuda", toolchain.plan_toolchain("cuda"))
    assert d.strategy == "native-jit" and d.cuda_compiler == "nvcc 13.0 from the package index (provisioned into the cache)"

    from jitkernels.build.native import spec as spec_module

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    keys = {name: spec_module.make_spec(config, "k", "cuda", ("k",), "_k_cuda_x", "d" * 64)
            for name, config in (("fa3", fa3), ("plain", kernel()))}
    assert dict(keys["fa3"].toolchain)["nvcc"] == "13.0" and dict(keys["plain"].toolchain)["nvcc"] == "13.2"
    assert keys["fa3"].key() != keys["plain"].key()


def test_bounds_excluding_torchs_cuda_name_the_torch_and_cuda_that_would_build_it(pip_torch, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_HOME", str(cudawheels.fake_toolkit(tmp_path / "cuda-13.0")))
    vllm_moe = kernel('[general.cuda]\n# Not compatible with cub from CUDA 13.0\nmaxver = "12.9"\n')
    d = decide(vllm_moe, "cuda", toolchain.plan_toolchain("cuda"))
    assert (d.strategy, d.reason) == ("unsupported", "toolchain")
    assert d.detail.startswith("[general.cuda] maxver = 12.9 but the local CUDA toolkit is 13.0 (")
    assert "the package index offers CUDA 13.x compilers for this torch (CUDA 13.0)" in d.detail
    assert ("It builds with a torch built for CUDA 12.9 or 12.8 (PyTorch's cu129 or cu128 wheels, e.g. "
            "`pip install torch --index-url https://download.pytorch.org/whl/cu129`) and a CUDA 12.9 compiler "
            "installed on this machine (NVIDIA's CUDA 12 toolkit; set CUDA_HOME): the package index has no CUDA 12 "
            "nvcc (nvidia-cuda-nvcc-cu12 ships ptxas only), so JitKernels cannot provision that one.") in d.detail
    # torch is right but only a toolkit out of bounds is here and provisioning is off: name the compiler to get
    monkeypatch.setenv("JITKERNELS_CUDA_PROVISION", "0")
    monkeypatch.setenv("CUDA_HOME", str(cudawheels.fake_toolkit(tmp_path / "cuda-13.2", nvcc_version="13.2.51")))
    d = decide(kernel('[general.cuda]\nmaxver = "13.0"\n'), "cuda", toolchain.plan_toolchain("cuda"))
    assert d.strategy == "unsupported" and d.detail.endswith(
        "The CUDA 13.0 compiler (torch's own CUDA) builds it: point CUDA_HOME at a CUDA 13.0 toolkit, or let "
        "JitKernels provision one from the package index (JITKERNELS_CUDA_PROVISION, JITKERNELS_CUDA_INDEX; not "
        "offline).")


def test_a_compiler_is_provisioned_from_the_index_verified_unpacked_with_its_modes_and_published_once(cuda_index):
    home = toolchain.provision("13.0")
    assert home == entry_dirs("cuda-")[0] and home.name == "cuda-13.0.3-x86_64"
    for program in ("bin/nvcc", "bin/ptxas", "bin/cudafe++", "bin/fatbinary", "nvvm/bin/cicc"):
        assert os.stat(home / program).st_mode & stat.S_IXUSR, program  # zip entries' modes survive
    assert not (home / "include/cuda_runtime.h").stat().st_mode & stat.S_IXUSR
    assert toolchain.nvcc_release(home) == "13.0"
    # never read by a compile, so never unpacked: NVIDIA's JIT library, CMake files, bin2c
    assert not (home / "lib/libnvvm.so.4").exists() and not (home / "lib/cmake").exists()
    assert not (home / "bin/bin2c").exists()
    manifest = read_manifest(home)
    assert (manifest["cuda_toolkit"], manifest["nvcc_release"]) == ("13.0.3", "13.0")
    recorded = {c["wheel"]: c["sha256"] for c in manifest["components"]}
    assert recorded == {name: hashlib.sha256(data).hexdigest() for name, data in cuda_index.wheels.items()
                        if not name.startswith("cuda_toolkit")}  # the five compiler wheels, as the index hashed them
    assert sorted(c["project"] for c in manifest["components"]) == sorted(cudawheels.RELEASE_13_0_3)
    asked = len(cuda_index.requests)
    assert toolchain.provision("13.0") == home and len(cuda_index.requests) == asked  # from the cache now
    compiler = toolchain.for_build(kernel())
    assert (compiler.origin, compiler.home) == ("index", str(home))
    assert toolchain.link_flags(str(home)) == [f"-L{home}/lib", "-l:libcudart.so.13"]  # the wheels' layout


def test_torch_2_11s_release_whose_nvcc_extra_pins_nvcc_alone_still_gets_all_five_wheels(pip_torch, monkeypatch):
    # torch 2.11.0+cu130 requires cuda-toolkit==13.0.2, where only the nvvm/crt/cudart extras pin those wheels
    monkeypatch.setattr(toolchain, "torch_release", lambda: "13.0.2")
    wheels = cudawheels.compiler_wheels(release="13.0.2", nvcc_extra_pins_its_dependencies=False)
    with ArchiveServer(cudawheels.index_pages(wheels)) as server:
        monkeypatch.setenv("JITKERNELS_CUDA_INDEX", server.url + "/simple")
        home = toolchain.provision("13.0")
    components = {c["project"]: c["version"] for c in read_manifest(home)["components"]}
    assert components == cudawheels.RELEASE_13_0_3  # 13.0.2 pins the same component versions
    assert toolchain.nvcc_release(home) == "13.0" and (home / "nvvm/bin/cicc").exists()
    assert toolchain.pip_line() == 'pip install "cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.2"'


def test_the_same_index_as_pep503_html_and_as_a_file_folder(pip_torch, monkeypatch, tmp_path):
    wheels = cudawheels.compiler_wheels()
    with ArchiveServer(cudawheels.index_pages(wheels, style="html")) as server:
        monkeypatch.setenv("JITKERNELS_CUDA_INDEX", server.url + "/simple")
        assert toolchain.provision("13.0").name == "cuda-13.0.3-x86_64"
    monkeypatch.setenv("JITKERNELS_CACHE", str(tmp_path / "second-cache"))
    files = []
    for name, data in wheels.items():
        (tmp_path / "wheels").mkdir(exist_ok=True)
        (tmp_path / "wheels" / name).write_bytes(data)
        files.append(tmp_path / "wheels" / name)
    url = cudawheels.write_index(tmp_path / "index", files)
    monkeypatch.setenv("JITKERNELS_CUDA_INDEX", f"{tmp_path.as_uri()}/no-such-index {url}")  # pip: next index
    assert toolchain.provision("13.0").name == "cuda-13.0.3-x86_64"


def test_a_wheel_not_matching_the_published_sha256_is_refused_and_nothing_is_cached(pip_torch, monkeypatch):
    wheels = cudawheels.compiler_wheels()
    nvvm = next(n for n in wheels if n.startswith("nvidia_nvvm"))
    pages = cudawheels.index_pages(wheels, sha256={nvvm: "0" * 64})
    with ArchiveServer(pages) as server:
        monkeypatch.setenv("JITKERNELS_CUDA_INDEX", server.url + "/simple")
        with pytest.raises(BuildInputError, match=f"{nvvm} from .* does not match the sha256 the index publishes"):
            toolchain.provision("13.0")
    assert entry_dirs() == []
    staging = jitkernels.config.cache_dir() / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_a_hostile_wheel_is_refused_by_the_archive_rules(pip_torch, monkeypatch):
    wheels = cudawheels.compiler_wheels()
    crt = next(n for n in wheels if n.startswith("nvidia_cuda_crt"))
    wheels[crt] = cudawheels.make_wheel("nvidia-cuda-crt", "13.0.88", {
        "nvidia/cu13/include/crt/host_config.h": (b"", False), "nvidia/cu13/../../evil.h": (b"x", False)})
    with ArchiveServer(cudawheels.index_pages(wheels)) as server:
        monkeypatch.setenv("JITKERNELS_CUDA_INDEX", server.url + "/simple")
        with pytest.raises(BuildInputError, match=r"member 'nvidia/cu13/../../evil.h' has a '\.\.' component"):
            toolchain.provision("13.0")
    assert entry_dirs() == []


def test_offline_opted_out_or_cuda_12_errors_name_the_pip_line_and_the_variable(cuda_index, monkeypatch):
    monkeypatch.setenv("JITKERNELS_OFFLINE", "1")
    with pytest.raises(ToolchainError) as offline:
        toolchain.home("org/k", toolchain.for_build(kernel()))
    message = str(offline.value)
    assert message.startswith("org/k: building a CUDA kernel needs nvcc and none here will do: provisioning nvcc 13.0 "
                              "(torch is built with CUDA 13.0) from the package index is off (offline")
    assert 'Install torch\'s compiler with `pip install "cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.3"`' in message
    assert "or set CUDA_HOME to a CUDA 13.0 toolkit" in message
    monkeypatch.delenv("JITKERNELS_OFFLINE")
    monkeypatch.setenv("JITKERNELS_CUDA_PROVISION", "0")
    with pytest.raises(ToolchainError, match=r"is off \(JITKERNELS_CUDA_PROVISION=0\).*unset JITKERNELS_CUDA_PROVISION"):
        toolchain.provision("13.0")
    assert cuda_index.requests == [] and entry_dirs() == []
    monkeypatch.delenv("JITKERNELS_CUDA_PROVISION")
    monkeypatch.setattr(toolchain, "torch_cuda", lambda: "12.8")
    with pytest.raises(ToolchainError, match=r"no CUDA 12 nvcc \(nvidia-cuda-nvcc-cu12 ships ptxas only\).*"
                                             r"Install NVIDIA's CUDA 12.8 toolkit and set CUDA_HOME"):
        toolchain.home("org/k", toolchain.for_build(kernel()))
    assert cuda_index.requests == []


def test_the_index_follows_pip_unless_jitkernels_names_one(monkeypatch):
    monkeypatch.delenv("JITKERNELS_CUDA_INDEX", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///srv/wheels/simple")
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    indexes, source = package_index.configured()
    assert indexes == ("https://mirror.example/simple", "file:///srv/wheels/simple")
    assert source.startswith("pip's")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert package_index.configured()[0] == ()
    monkeypatch.setenv("JITKERNELS_CUDA_INDEX", "https://a.example/simple https://b.example/simple")
    assert package_index.configured() == (("https://a.example/simple", "https://b.example/simple"), "JITKERNELS_CUDA_INDEX")


def test_torchs_nvidia_headers_follow_the_home_for_kernels_including_cudacontext(pip_torch, monkeypatch, tmp_path):
    site = tmp_path / "site"
    (site / "nvidia" / "cu13" / "include").mkdir(parents=True)
    (site / "nvidia" / "cu13" / "include" / "cusparse.h").write_text("#pragma once\n")
    monkeypatch.syspath_prepend(str(site))
    home = cudawheels.fake_toolkit(tmp_path / "cuda-13.0")
    assert toolchain.library_include_dirs(str(home)) == [str(site / "nvidia" / "cu13" / "include")]
    # a home that *is* torch's nvidia/cu13 (the compiler wheels pip-installed beside torch) is not added twice
    cudawheels.fake_toolkit(site / "nvidia" / "cu13")
    assert toolchain.library_include_dirs(str(site / "nvidia" / "cu13")) == []
    monkeypatch.setattr(toolchain, "_installed_homes", INSTALLED_HOMES)  # the real lookup, in this site folder
    found = toolchain.local_toolkits()
    assert [(t.how, t.problem) for t in found] == [("the compiler wheels installed in this environment", None)]


def test_doctor_shows_the_compiler_a_build_would_use_and_why(cuda_index, monkeypatch, capsys):
    from jitkernels.cli.main import main

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the Hub check fails at once
    assert main(["doctor", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)["cuda"]
    assert facts["would_use"] == "nvcc 13.0 from the package index (provisioned into the cache)"
    assert facts["why"] == "no local toolkit will do; the compiler of torch's CUDA release from the package index"
    assert facts["provisioning"] == f"on: {cuda_index.url}/simple (JITKERNELS_CUDA_INDEX)"
    assert facts["pip_install"] == 'pip install "cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.3"'


def test_an_index_that_trickles_a_wheel_is_given_up_and_nothing_is_cached(pip_torch, monkeypatch):
    """A wheel sent a byte at a time never tripped the per-read timeout: provisioning, and its waiters, hung."""
    import time

    from cutlass_archives import TrickleServer

    trickle = TrickleServer()
    try:
        wheels = cudawheels.compiler_wheels()
        with ArchiveServer(cudawheels.index_pages(wheels, files=trickle.url + "/files")) as server:
            monkeypatch.setenv("JITKERNELS_CUDA_INDEX", server.url + "/simple")
            monkeypatch.setenv("JITKERNELS_DOWNLOAD_DEADLINE", "3")
            monkeypatch.setenv("JITKERNELS_DOWNLOAD_MIN_RATE", "1")
            start = time.monotonic()
            with pytest.raises(jitkernels.errors.FetchError, match="was given up: .*JITKERNELS_DOWNLOAD_DEADLINE"):
                toolchain.provision("13.0")
            assert time.monotonic() - start < 15  # the server would go on for 20 s per wheel
    finally:
        trickle.close()
    assert entry_dirs() == []


def test_a_wheel_name_with_a_nul_is_refused_with_the_projects_error(pip_torch, monkeypatch):
    """packaging does not look inside a version: a NUL in a listed name reached open() as a raw ValueError."""
    wheels = cudawheels.compiler_wheels()
    nvvm = next(n for n in wheels if n.startswith("nvidia_nvvm"))
    wheels[nvvm.replace(".whl", ".x\0.whl")] = wheels.pop(nvvm)  # inside the compressed tag set
    with ArchiveServer(cudawheels.index_pages(wheels)) as server:
        monkeypatch.setenv("JITKERNELS_CUDA_INDEX", server.url + "/simple")
        with pytest.raises(BuildInputError, match="odd file name"):
            toolchain.provision("13.0")
    assert entry_dirs() == []


def test_a_remote_index_may_not_point_a_wheel_at_a_local_file(pip_torch, monkeypatch, tmp_path):
    """The client read the local file and the sha256 check confirmed its content to the index."""
    wheels = cudawheels.compiler_wheels()
    nvvm = next(n for n in wheels if n.startswith("nvidia_nvvm"))
    local = tmp_path / nvvm
    local.write_bytes(wheels[nvvm])
    pages = cudawheels.index_pages(wheels)
    page = json.loads(pages["/simple/nvidia-nvvm/"])
    page["files"][0]["url"] = local.as_uri()
    pages["/simple/nvidia-nvvm/"] = json.dumps(page).encode()
    with ArchiveServer(pages) as server:
        monkeypatch.setenv("JITKERNELS_CUDA_INDEX", server.url + "/simple")
        with pytest.raises(BuildInputError, match="only http\\(s\\) links are followed from a remote index"):
            toolchain.provision("13.0")
    assert entry_dirs() == []


def test_wheels_that_disagree_on_a_file_or_folder_are_refused_by_name(pip_torch, monkeypatch):
    """One wheel shipping bin as a file was reported as a full or unwritable cache."""
    wheels = cudawheels.compiler_wheels()
    cccl = next(n for n in wheels if n.startswith("nvidia_cuda_cccl"))
    files = dict(cudawheels._contents("nvidia-cuda-cccl", "13.0.85"))
    files["nvidia/cu13/bin"] = (b"x", False)
    wheels[cccl] = cudawheels.make_wheel("nvidia-cuda-cccl", "13.0.85", files)
    with ArchiveServer(cudawheels.index_pages(wheels)) as server:
        monkeypatch.setenv("JITKERNELS_CUDA_INDEX", server.url + "/simple")
        with pytest.raises(BuildInputError, match=r"ships .*bin.* another CUDA wheel ships bin as a (file|folder)"):
            toolchain.provision("13.0")
    assert entry_dirs() == []
