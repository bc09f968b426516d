"""CUDA kernels compile, link and register their ops without a GPU (torch CUDA build + local nvcc).

Running them needs a GPU: that part is `benchmarks/gpu_check.py` on the GPU machine.
"""

from __future__ import annotations

import pytest
import torch

import jitkernels
from jitkernels import machine as environment

from conftest import EXAMPLES, FIXTURES

pytestmark = [
    pytest.mark.cuda_build,
    pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch"),
    pytest.mark.skipif(environment.nvcc_version() is None, reason="needs nvcc (set CUDA_HOME)"),
]


def test_cuda_fixture_compiles_links_and_registers_ops(monkeypatch):
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


def test_cutlass_kernel_compiles_for_sm90_with_headers_from_a_served_release_archive(monkeypatch):
    """The full pipeline for a CUTLASS kernel laid out as punica-sgmv: CUTLASS 3.8.0's real headers (those of
    the nvidia-cutlass 3.8.0 wheel, packed as NVIDIA's tag archive and served on 127.0.0.1) are downloaded,
    checked against the real pinned git tree ids, cached, and compile and link the kernel for sm_90."""
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
    nvcc = {unit: line for line in log.splitlines() for unit in ("gemm_cutlass.cu", "scale.cu")
            if "nvcc" in line and f"/{unit} -o " in line}
    assert f"-isystem {folder}/include -isystem {folder}/tools/util/include" in nvcc["gemm_cutlass.cu"]
    assert "arch=compute_90,code=sm_90" in nvcc["gemm_cutlass.cu"]
    # the section for other GPUs: PTX only, for its own capability, never SASS for sm_80
    assert "arch=compute_80,code=compute_80" in nvcc["scale.cu"] and "code=sm_80" not in nvcc["scale.cu"]
