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
