"""CUDA kernels compile, link and register their ops without a GPU (a CUDA build of torch, no GPU).

The compiler is the one :mod:`jitkernels.build.toolchain` chooses: a local toolkit if one will do, else
NVIDIA's compiler wheels from the package index. CI runs these tests with the machine's toolkit hidden
(``.ci/hide-cuda-toolkit``), so there they compile with a provisioned nvcc. Running the kernels needs a
GPU: that part is ``benchmarks/gpu_check.py`` / ``gpu_toolchain.py`` on the GPU machine.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import torch

import jitkernels
from jitkernels.build import toolchain
from jitkernels.cache import layout
from jitkernels.cache.manifest import read_manifest

from conftest import EXAMPLES, FIXTURES

pytestmark = [
    pytest.mark.cuda_build,
    pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch"),
]


@pytest.fixture(scope="module")
def compiler(tmp_path_factory):
    """The CUDA compiler of these builds. Without a local toolkit that will do, it is provisioned here, once,
    from the package index (into a cache of its own), then linked into each test's cache (:func:`nvcc`)."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("JITKERNELS_CACHE", str(tmp_path_factory.mktemp("compiler-cache")))
        chosen = toolchain.for_build(None)
        if chosen.origin == "none":
            pytest.skip(toolchain.no_compiler_message("the CUDA fixtures"))
        if chosen.home is None:
            chosen = dataclasses.replace(chosen, home=str(toolchain.provision(chosen.version)))
    return chosen


@pytest.fixture(autouse=True)
def nvcc(compiler, isolated) -> str:
    """The nvcc this test's builds must run: the local one, or the provisioned one in this test's cache."""
    home = compiler.home
    if compiler.origin == "index":
        home = str(layout.entry_dir(Path(compiler.home).name))
        shutil.copytree(compiler.home, home, copy_function=os.link)  # what a second build on a machine finds
    return os.path.join(home, "bin", "nvcc")


def test_without_a_local_toolkit_the_compiler_comes_from_the_package_index(compiler):
    """What .ci/run proves with the machine's toolkit hidden: torch's CUDA release, from the index, verified."""
    if compiler.origin == "local":
        pytest.skip(f"a local CUDA toolkit will do and is preferred ({compiler.where}); .ci/run hides it")
    from jitkernels.inputs import package_index

    manifest = read_manifest(Path(compiler.home))
    assert manifest["nvcc_release"] == torch.version.cuda
    release = toolchain.torch_release()
    if release:  # torch's wheel names its CUDA release (cuda-toolkit==13.0.3 for torch 2.14.1)
        assert manifest["cuda_toolkit"] == release
    indexes, _source = package_index.configured()
    projects = sorted(c["project"] for c in manifest["components"])
    assert projects == sorted(toolchain.COMPONENTS)
    assert all(len(c["sha256"]) == 64 and c["index"] in indexes for c in manifest["components"])
    assert toolchain.nvcc_release(compiler.home) == torch.version.cuda


def test_cuda_fixture_compiles_links_and_registers_ops(monkeypatch, nvcc):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setenv("JITKERNELS_VERBOSE", "1")  # the log keeps every compiler command
    i = jitkernels.inspect_local(EXAMPLES / "scaled-add", backend="cuda")
    assert i.strategy == "native-jit" and i.kernels == ("scaled_add",)
    k = jitkernels.load_local(EXAMPLES / "scaled-add", backend="cuda")
    assert k.__name__ == i.expected_extension_name
    ops = getattr(torch.ops, k.__name__)
    schema = str(ops.scaled_add.default._schema)
    assert f"{k.__name__}::scaled_add(Tensor(" in schema and "float alpha) -> ()" in schema
    assert torch._C._dispatch_has_kernel_for_dispatch_key(ops.scaled_add.default.name(), "CUDA")
    # Only the asked arch was built (kernel-builder would build ten and PTX), with kernel-builder's nvcc flags.
    log = (jitkernels.config.cache_dir() / "logs" / f"{k.__name__}.log").read_text()
    assert f"{nvcc} " in log  # the chosen compiler, no other
    assert "arch=compute_90,code=sm_90" in log
    assert "sm_80" not in log and "code=compute_" not in log
    assert "--expt-extended-lambda" in log and "-D__CUDA_NO_HALF_OPERATORS__" not in log


def test_build_command_compiles_for_an_arch_without_a_gpu_and_a_machine_of_that_arch_finds_it(monkeypatch, capsys):
    import os
    import subprocess
    import sys

    from jitkernels.cli.main import main

    from conftest import child_env

    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("JITKERNELS_VERBOSE", "1")  # the log keeps every compiler command
    name = jitkernels.inspect_local(EXAMPLES / "scaled-add", backend="cuda").expected_extension_name
    before = set(sys.modules)
    assert main(["build", str(EXAMPLES / "scaled-add"), "--local", "--backend", "cuda", "--arch", "9.0a"]) == 0
    assert name not in set(sys.modules) - before  # compiled, never imported
    assert "cuda 9.0 ready in" in capsys.readouterr().err
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ  # restored after the command
    log = (jitkernels.config.cache_dir() / "logs" / f"{name}.log").read_text()
    assert "arch=compute_90,code=sm_90" in log and "sm_80" not in log

    # A machine whose GPU is 9.0 computes the same build key: it loads the entry, compiling nothing.
    code = (
        "import torch, jitkernels\n"
        f"k = jitkernels.load_local({str(EXAMPLES / 'scaled-add')!r}, backend='cuda')\n"
        "print('LOADED', k.__name__, hasattr(getattr(torch.ops, k.__name__), 'scaled_add'))\n"
    )
    env = child_env(TORCH_CUDA_ARCH_LIST="9.0", JITKERNELS_DISABLE_BUILD=1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"LOADED {name} True" in out.stdout


def test_cutlass_kernel_compiles_for_sm90_with_headers_from_a_served_release_archive(monkeypatch, nvcc):
    """The full pipeline for a CUTLASS kernel laid out as punica-sgmv: CUTLASS 3.8.0's real headers (those of
    the nvidia-cutlass 3.8.0 wheel, packed as NVIDIA's tag archive and served on 127.0.0.1) are downloaded,
    checked against the real pinned git tree ids, cached, and compile and link the kernel for sm_90. Its
    sm80 section includes ``ATen/cuda/CUDAContext.h`` (as relu and paged-attention do): cuSPARSE, cuBLAS
    and cuSOLVER headers come from torch's own NVIDIA wheels (no toolkit had them here before)."""
    from cutlass_archives import ArchiveServer, release_archive

    from jitkernels.inputs import cutlass

    root, _ = cutlass._wheel_root("3.8.0")
    if root is None:
        pytest.skip("needs the nvidia-cutlass 3.8.0 wheel's headers (pip install --no-deps nvidia-cutlass==3.8.0)")
    monkeypatch.setattr(cutlass, "_wheel_root", lambda version: (None, ""))  # so the download path runs
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setenv("JITKERNELS_VERBOSE", "1")
    kernel = FIXTURES / "cutlass-gemm"
    with ArchiveServer({"/v3.8.0.tar.gz": release_archive(root, "3.8.0")}) as server:
        monkeypatch.setenv("JITKERNELS_CUTLASS_URL", server.url + "/v{version}.tar.gz")
        i = jitkernels.inspect_local(kernel, backend="cuda")
        assert (i.strategy, i.kernels) == ("native-jit", ("gemm", "scale_sm80", "gemm_ops"))
        assert [(x.name, x.origin, x.status) for x in i.inputs][0] == ("cutlass_3_8", "download", "to-download")
        k = jitkernels.load_local(kernel, backend="cuda")
    assert server.requests == ["/v3.8.0.tar.gz"]
    assert k.__name__ == i.expected_extension_name
    ops = getattr(torch.ops, k.__name__)
    for op in (ops.gemm, ops.scale_sm80):  # the sm80-only part linked too: the library loaded
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "CUDA")
    folder = cutlass.cache_folder("3.8.0")
    log = (jitkernels.config.cache_dir() / "logs" / f"{k.__name__}.log").read_text()
    commands = {unit: line for line in log.splitlines() for unit in ("gemm_cutlass.cu", "scale.cu")
                if "nvcc" in line and f"/{unit} -o " in line}
    assert len(commands) == 2 and all(f"{nvcc} " in line for line in commands.values())  # the chosen compiler
    assert f"-isystem {folder}/include -isystem {folder}/tools/util/include" in commands["gemm_cutlass.cu"]
    assert "arch=compute_90,code=sm_90" in commands["gemm_cutlass.cu"]
    # the section for other GPUs: PTX only, for its own capability, never SASS for sm_80
    assert "arch=compute_80,code=compute_80" in commands["scale.cu"] and "code=sm_80" not in commands["scale.cu"]
