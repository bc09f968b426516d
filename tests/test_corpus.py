"""Inspection against the real kernels-community sources (a checkout kept outside this repo).

Set ``JITKERNELS_KC=/path/to/kernels-community``; skipped otherwise. The
expected table is what a careful reader of each build.toml concludes, with
the toolchain of the reference (torch 2.13, CUDA 13.0): Python-only kernels
are ``python`` only for the backends they declare; native kernels are
``native-jit`` when every build input of the backend's kernel sections has a
resolver (torch, kernel-builder's CUTLASS releases) and the toolchain is
within the declared bounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jitkernels
from jitkernels.plan.strategy import Toolchain, decide
from jitkernels.plan.buildconfig import parse_build_toml

from conftest import child_env

KC = os.environ.get("JITKERNELS_KC")
pytestmark = pytest.mark.skipif(not KC or not Path(KC).is_dir(), reason="set JITKERNELS_KC to a kernels-community checkout")

P, N, NB, TC = "python", "native-jit", "unsupported/no-backend", "unsupported/toolchain"
# kernel: (cuda, cpu)
EXPECTED = {
    "activation": (N, N), "aiter-flash-attn": (NB, NB), "aiter-flash-attn-ck": (NB, NB), "aiter-kernels": (NB, NB),
    "aiter-rope": (NB, NB), "bitsandbytes-mps": (NB, NB), "causal-conv1d": (N, NB), "cv-utils": (N, NB),
    "deep-gemm": (N, NB), "deformable-detr": (N, NB), "einops": (P, P), "esmfold2-trimul": (P, NB),
    "finegrained-fp8": (P, NB), "fla": (P, NB), "flash-attn-ops": (P, NB), "flash-attn2": (N, N),
    "flash-attn3": (N, NB), "flash-attn4": (P, NB), "flash-mla": (N, NB), "fp8-fbgemm": (P, NB),
    "gpt-oss-metal-kernels": (NB, NB), "gpt-oss-triton-kernels": (P, P), "layer-norm": (N, NB),
    "liger-kernels": (P, NB), "mamba-ssm": (N, NB), "megablocks": (N, N), "metal-flash-sdpa": (NB, NB),
    "mlx-quantization-metal-kernels": (NB, NB), "mlx-rmsnorm": (NB, NB), "mra": (N, NB), "msa": (N, NB),
    "natten": (N, NB), "nvfp4-gemm": (N, NB), "paged-attention": (N, NB), "punica-sgmv": (N, NB),
    "quantization-bitsandbytes": (NB, N), "quantization-eetq": (TC, NB), "quantization-gptq": (NB, N),
    "relu": (N, N), "rmsnorm": (NB, N), "rotary": (N, N), "rwkv": (N, NB), "sage-attention": (N, NB),
    "scattermoe": (P, NB), "sgl-flash-attn3": (N, NB), "sonic-moe": (P, NB), "tinygrad-rms": (N, NB),
    "trimul-gpumode": (P, NB), "triton-kernels": (P, NB), "vllm-flash-attn3": (N, NB),
    "vllm-moe": (TC, NB),  # [general.cuda] maxver = 12.9 < CUDA 13.0 (quantization-eetq too)
    "yoso": (N, NB),
}
TOOLCHAIN = Toolchain(torch="2.13.0", cuda="13.0")


def _kernels() -> list[str]:
    return sorted(p.parent.name for p in Path(KC).glob("*/build.toml"))


def test_every_kernel_is_in_the_table():
    assert set(_kernels()) == set(EXPECTED)


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
def test_decisions_match_a_careful_reading(backend):
    wrong = {}
    for name in _kernels():
        config = parse_build_toml((Path(KC) / name / "build.toml").read_bytes())
        d = decide(config, backend, TOOLCHAIN)
        got = d.strategy if d.reason is None else f"{d.strategy}/{d.reason}"
        want = EXPECTED[name][0 if backend == "cuda" else 1]
        if got != want:
            wrong[name] = (got, want)
    assert wrong == {}


def test_cli_inspect_json_for_every_kernel_via_local_kernels(tmp_path):
    """`jitkernels inspect --json` through LOCAL_KERNELS, as a user would run it (CUDA planning on any machine)."""
    names = _kernels()
    env = child_env(LOCAL_KERNELS=":".join(f"kernels-community/{n}={Path(KC) / n}" for n in names))
    out = subprocess.run([sys.executable, "-m", "jitkernels", "inspect", *names, "--backend", "cpu", "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    results = {r["repo_id"].split("/")[1]: r for r in json.loads(out.stdout)}
    for name in names:
        r = results[name]
        got = r["strategy"] if r["reason"] is None else f"{r['strategy']}/{r['reason']}"
        assert got == EXPECTED[name][1], (name, got)
        assert {"strategy", "reason", "backend", "repo_id", "revision", "expected_extension_name", "dependencies"} <= set(r)
        if r["strategy"] == "native-jit":
            assert r["expected_extension_name"].startswith(f"_{name.replace('-', '_')}_cpu_")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["relu", "activation"])
def test_real_cpu_kernels_build_and_match_torch(name, monkeypatch):
    monkeypatch.setenv("LOCAL_KERNELS", f"kernels-community/{name}={Path(KC) / name}")
    k = jitkernels.load("hf", name, backend="cpu")
    x = torch.randn(64, 256)
    if name == "relu":
        torch.testing.assert_close(k.relu(x), torch.relu(x))
    else:
        out = torch.empty(64, 128)
        k.silu_and_mul(out, x)
        torch.testing.assert_close(out, torch.nn.functional.silu(x[:, :128]) * x[:, 128:], atol=1e-5, rtol=1e-5)
