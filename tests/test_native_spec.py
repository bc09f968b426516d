"""The native build as a value: flags, archs, cache key, free-threaded handling. No compiler needed."""

from __future__ import annotations

import sys

import pytest

from jitkernels import machine
from jitkernels.build import toolchain
from jitkernels.plan.buildconfig import parse_build_toml
from jitkernels.build.native import flags as F
from jitkernels.build.native.codegen import REGISTRATION_H
from jitkernels.build.native.spec import make_spec
from jitkernels.plan.strategy import CudaOption

from conftest import EXAMPLES, FIXTURES

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
    monkeypatch.setattr(toolchain, "options", lambda: (CudaOption("13.0", "local", "a test toolkit", home="/t"),))
    return make_spec(config, "k", backend, kernels, "_k_" + backend + "_x", digest)


def test_cuda_flags_match_kernel_builder(monkeypatch):
    s = spec(ACT, "cuda", ("a", "sm80", "hopper"), monkeypatch)
    assert "--expt-extended-lambda" in s.cuda_flags and "-DENABLE_FP8" in s.cuda_flags
    assert not set(F.REMOVED_TORCH_NVCC_DEFINES) & set(s.cuda_flags)
    assert "-DENABLE_FP8" not in s.cxx_flags and "-DCUDA_KERNEL" in s.cxx_flags
    assert "-DTORCH_TARGET_VERSION=0x020a000000000000" in s.cuda_flags
    units = {u.path: u for u in s.units}
    assert "arch=compute_90,code=sm_90" in units["a/a.cu"].flags
    # declared capabilities: 9.0a where declared; a kernel for other GPUs is still compiled (the binding may
    # call it), as kernel-builder does, but to PTX only for its lowest capability: no ptxas, no SASS
    assert "arch=compute_90a,code=sm_90a" in units["hopper/k.cu"].flags
    assert units["sm80/k.cu"].flags[:2] == ("-gencode", "arch=compute_80,code=compute_80")
    assert not any("code=sm_" in f for f in units["sm80/k.cu"].flags)
    assert "-DONLY_SM80" in units["sm80/k.cu"].flags and "-DONLY_SM80" not in units["a/a.cu"].flags
    assert s.archs == ("9.0",)


@pytest.mark.parametrize(
    "caps, targets, expected",
    [
        (("8.0",), ["9.0"], ["-gencode", "arch=compute_80,code=compute_80"]),  # flash-attn3's sm80 part on an H100
        (("10.0a",), ["9.0"], ["-gencode", "arch=compute_100a,code=compute_100a"]),  # sage-attention's sm100 parts
        (("12.0a", "10.0f"), ["9.0"], ["-gencode", "arch=compute_100f,code=compute_100f"]),
        (("8.0", "9.0a"), ["9.0"], ["-gencode", "arch=compute_90a,code=sm_90a"]),
        (("9.0a",), ["8.0", "9.0"], ["-gencode", "arch=compute_90a,code=sm_90a"]),
        ((), ["9.0"], ["-gencode", "arch=compute_90,code=sm_90"]),
    ],
)
def test_a_section_for_other_gpus_is_compiled_to_ptx_only(caps, targets, expected):
    from jitkernels.build.native.spec import section_gencode

    assert section_gencode(caps, targets) == expected


def test_a_file_listed_by_two_sections_is_compiled_once_with_both_sections_flags(monkeypatch):
    """As flash-mla lists csrc/api/api_impl.cu in its sm100 and sm90 sections: one object, or the link fails."""
    config = parse_build_toml("""
[general]
name = "mla"
backends = ["cuda"]
[torch]
src = ["torch-ext/torch_binding.cpp"]
[kernel.mla_sm100]
backend = "cuda"
depends = ["torch"]
cuda-capabilities = ["10.0f"]
cuda-flags = ["-DSM100", "--use_fast_math", "-lineinfo"]
include = ["csrc", "csrc/sm100"]
src = ["csrc/api.cu", "csrc/sm100/k.cu"]
[kernel.mla_sm90]
backend = "cuda"
depends = ["torch"]
cuda-capabilities = ["9.0a"]
cuda-flags = ["-DFLASH_MLA_SM90_ONLY", "--use_fast_math"]
include = ["csrc", "csrc/sm90"]
src = ["csrc/api.cu", "csrc/sm90/k.cu"]
""")
    s = spec(config, "cuda", ("mla_sm100", "mla_sm90"), monkeypatch)
    assert [u.path for u in s.units] == ["torch-ext/torch_binding.cpp", "csrc/api.cu", "csrc/sm100/k.cu", "csrc/sm90/k.cu"]
    api = s.units[1]
    assert api.flags == ("-gencode", "arch=compute_90a,code=sm_90a", "-DSM100", "--use_fast_math", "-lineinfo",
                         "-DFLASH_MLA_SM90_ONLY")
    assert api.includes == ("csrc", "csrc/sm100", "csrc/sm90")
    assert s.units[2].flags[:2] == ("-gencode", "arch=compute_100f,code=compute_100f")  # sm100 only: PTX
    assert s.link_flags == ()  # -lineinfo is nvcc's line info, not a library


def test_build_inputs_are_in_the_key_by_content_not_by_folder(monkeypatch, tmp_path):
    from cutlass_archives import write_tree

    config = parse_build_toml((FIXTURES / "cutlass-gemm" / "build.toml").read_text())
    kernels = ("gemm", "scale_sm80", "gemm_ops")
    monkeypatch.setenv("JITKERNELS_CUTLASS_3_8_DIR", str(write_tree(tmp_path / "a")))
    first = spec(config, "cuda", kernels, monkeypatch)
    assert [name for name, _, _ in first.build_inputs] == ["cutlass_3_8"]
    assert first.include_dirs == (str(tmp_path / "a/include"), str(tmp_path / "a/tools/util/include"))
    monkeypatch.setenv("JITKERNELS_CUTLASS_3_8_DIR", str(write_tree(tmp_path / "b")))
    moved = spec(config, "cuda", kernels, monkeypatch)
    assert moved.include_dirs != first.include_dirs and moved.key() == first.key()
    monkeypatch.setenv("JITKERNELS_CUTLASS_3_8_DIR", str(write_tree(tmp_path / "c", marker="// edited\n")))
    assert spec(config, "cuda", kernels, monkeypatch).key() != first.key()
    assert "cutlass_3_8 3.8.0" in first.describe()


def test_build_input_folders_reach_every_compile_command(monkeypatch, tmp_path):
    from cutlass_archives import write_tree
    from jitkernels.build.native.builder import write_ninja

    config = parse_build_toml((FIXTURES / "cutlass-gemm" / "build.toml").read_text())
    monkeypatch.setenv("JITKERNELS_CUTLASS_3_8_DIR", str(write_tree(tmp_path / "hdr")))
    s = spec(config, "cuda", ("gemm", "scale_sm80", "gemm_ops"), monkeypatch)
    paths = {"includes": ["/torch/include"], "libs": [], "nvcc": "/cuda/bin/nvcc"}
    ninja = write_ninja(s, tmp_path / "src", tmp_path / "gen", tmp_path, tmp_path / "lib.so", paths).read_text()
    flag_lines = [line for line in ninja.splitlines() if line.strip().startswith("flags =")]
    assert len(flag_lines) == 4  # binding, gemm .cu, scale .cu, dispatch .cc
    assert all(f"-isystem {tmp_path / 'hdr/include'} -isystem {tmp_path / 'hdr/tools/util/include'}" in line
               for line in flag_lines)


def test_per_kernel_flags_stay_with_their_kernel(monkeypatch):
    cpu = spec(CONFIG, "cpu", ("scaled_add_cpu",), monkeypatch)
    units = {u.path: u for u in cpu.units}
    assert "-fopenmp" in units["scaled_add_cpu/scaled_add_cpu.cpp"].flags
    assert "-fopenmp" not in units["torch-ext/torch_binding.cpp"].flags
    # csrc/ for every file first (kernel-builder's target include folder), then the kernel's own
    assert units["scaled_add_cpu/scaled_add_cpu.cpp"].includes == ("csrc", "scaled_add_cpu")
    assert units["torch-ext/torch_binding.cpp"].includes == ("csrc",)
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
        m.setattr(machine, "torch_version", lambda: "9.9.0")
        assert spec(CONFIG, "cpu", ("scaled_add_cpu",), monkeypatch).key() != base
    cuda90 = spec(CONFIG, "cuda", ("scaled_add",), monkeypatch, archs="9.0").key()
    assert spec(CONFIG, "cuda", ("scaled_add",), monkeypatch, archs="8.0").key() != cuda90


def test_free_threaded_interpreter_gets_its_own_abi_tag_and_no_abi3(monkeypatch):
    monkeypatch.setattr(sys, "abiflags", "t", raising=False)
    assert machine.free_threaded()
    assert machine.python_abi_tag().endswith("t")
    import sysconfig

    monkeypatch.setattr(sysconfig, "get_config_var",
                        lambda name: ".cpython-313t-x86_64-linux-gnu.so" if name == "EXT_SUFFIX" else None)
    assert machine.extension_suffix() == ".cpython-313t-x86_64-linux-gnu.so"
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
