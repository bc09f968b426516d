"""CUDA kernels compile, link and register their ops without a GPU (torch CUDA build + local nvcc).

Running them needs a GPU: that part is `benchmarks/gpu_check.py` on the GPU machine.
"""

from __future__ import annotations

import pytest
import torch

import jitkernels
from jitkernels import environment

from conftest import EXAMPLES

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

    from jitkernels.cli import main

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
