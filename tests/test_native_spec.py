"""The native build as a value: flags, archs, cache key, free-threaded handling. No compiler needed."""

from __future__ import annotations

import sys

import pytest

from jitkernels import environment
from jitkernels.buildconfig import parse_build_toml
from jitkernels.native import flags as F
from jitkernels.native.codegen import REGISTRATION_H
from jitkernels.native.spec import make_spec

from conftest import EXAMPLES

CONFIG = parse_build_toml((EXAMPLES / "scaled-add" / "build.toml").read_text())
ACT = parse_build_toml("""
[general]
name = "act"
backends = ["cuda", "cpu"]
[torch]
src = ["torch-ext/torch_binding.cpp"]
[torch.stable-abi]
cuda = "2.10"
[kernel.a]
backend = "cuda"
depends = ["torch"]
src = ["a/a.cu"]
[kernel.sm80]
backend = "cuda"
depends = ["torch"]
cuda-capabilities = ["8.0"]
cuda-flags = ["-DONLY_SM80"]
src = ["sm80/k.cu"]
[kernel.hopper]
backend = "cuda"
depends = ["torch"]
cuda-capabilities = ["9.0a"]
src = ["hopper/k.cu"]
""")


def spec(config, backend, kernels, monkeypatch, archs="9.0", digest="d" * 64):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", archs)
    monkeypatch.setattr(environment, "nvcc_version", lambda: "13.0")
    return make_spec(config, "k", backend, kernels, "_k_" + backend + "_x", digest)


def test_cuda_flags_match_kernel_builder(monkeypatch):
    s = spec(ACT, "cuda", ("a", "sm80", "hopper"), monkeypatch)
    assert "--expt-extended-lambda" in s.cuda_flags and "-DENABLE_FP8" in s.cuda_flags
    assert not set(F.REMOVED_TORCH_NVCC_DEFINES) & set(s.cuda_flags)
    assert "-DENABLE_FP8" not in s.cxx_flags and "-DCUDA_KERNEL" in s.cxx_flags
    assert "-DTORCH_TARGET_VERSION=0x020a000000000000" in s.cuda_flags
    units = {u.path: u for u in s.units}
    assert "arch=compute_90,code=sm_90" in units["a/a.cu"].flags
    # declared capabilities: 9.0a where declared, and kernels for other GPUs still compile (for one arch)
    assert "arch=compute_90a,code=sm_90a" in units["hopper/k.cu"].flags
    assert "arch=compute_80,code=sm_80" in units["sm80/k.cu"].flags
    assert "-DONLY_SM80" in units["sm80/k.cu"].flags and "-DONLY_SM80" not in units["a/a.cu"].flags
    assert s.archs == ("9.0",)


def test_per_kernel_flags_stay_with_their_kernel(monkeypatch):
    cpu = spec(CONFIG, "cpu", ("scaled_add_cpu",), monkeypatch)
    units = {u.path: u for u in cpu.units}
    assert "-fopenmp" in units["scaled_add_cpu/scaled_add_cpu.cpp"].flags
    assert "-fopenmp" not in units["torch-ext/torch_binding.cpp"].flags
    assert units["scaled_add_cpu/scaled_add_cpu.cpp"].includes == ("scaled_add_cpu",)
    assert units["torch-ext/torch_binding.cpp"].includes == ()
    assert "-DCPU_KERNEL" in cpu.cxx_flags and not any("cu" in u.language for u in cpu.units)


@pytest.mark.parametrize(
    "caps, targets, expected",
    [
        ((), ["9.0"], ["9.0"]),
        (("8.0", "9.0", "10.0"), ["9.0"], ["9.0"]),
        (("8.0", "9.0a"), ["9.0"], ["9.0a"]),
        (("7.5", "8.0"), ["8.6"], ["8.0"]),
        (("8.0+PTX",), ["9.0"], ["8.0+PTX"]),
        (("8.0",), ["9.0"], []),
    ],
)
def test_kernel_arch_intersection(caps, targets, expected):
    assert F.kernel_archs(caps, targets) == expected


def test_cache_key_changes_with_every_input(monkeypatch):
    base = spec(CONFIG, "cpu", ("scaled_add_cpu",), monkeypatch).key()
    assert spec(CONFIG, "cpu", ("scaled_add_cpu",), monkeypatch, digest="e" * 64).key() != base
    with monkeypatch.context() as m:
        m.setattr(environment, "torch_version", lambda: "9.9.0")
        assert spec(CONFIG, "cpu", ("scaled_add_cpu",), monkeypatch).key() != base
    cuda90 = spec(CONFIG, "cuda", ("scaled_add",), monkeypatch, archs="9.0").key()
    assert spec(CONFIG, "cuda", ("scaled_add",), monkeypatch, archs="8.0").key() != cuda90


def test_free_threaded_interpreter_gets_its_own_abi_tag_and_no_abi3(monkeypatch):
    monkeypatch.setattr(sys, "abiflags", "t", raising=False)
    assert environment.free_threaded()
    assert environment.python_abi_tag().endswith("t")
    import sysconfig

    monkeypatch.setattr(sysconfig, "get_config_var",
                        lambda name: ".cpython-313t-x86_64-linux-gnu.so" if name == "EXT_SUFFIX" else None)
    assert environment.extension_suffix() == ".cpython-313t-x86_64-linux-gnu.so"
    s_ft = spec(CONFIG, "cpu", ("scaled_add_cpu",), monkeypatch)
    assert ("python", f"cp{sys.version_info[0]}{sys.version_info[1]}t") in s_ft.toolchain
    monkeypatch.setattr(sys, "abiflags", "")
    assert spec(CONFIG, "cpu", ("scaled_add_cpu",), monkeypatch).key() != s_ft.key()
    assert not any("Py_LIMITED_API" in f for f in s_ft.cxx_flags)


def test_registration_header_declares_gil_stance():
    assert "Py_MOD_GIL_NOT_USED" in REGISTRATION_H and "#if defined(Py_GIL_DISABLED)" in REGISTRATION_H
    for macro in ("TORCH_LIBRARY_EXPAND", "TORCH_LIBRARY_IMPL_EXPAND", "STABLE_TORCH_LIBRARY_EXPAND",
                  "STABLE_TORCH_LIBRARY_IMPL_EXPAND", "REGISTER_EXTENSION"):
        assert f"#define {macro}(" in REGISTRATION_H
