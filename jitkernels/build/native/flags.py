"""Compiler flags, one small function per family, matching what kernel-builder passes.

kernel-builder (CMake) differs from a plain ``cpp_extension.load``: nvcc gets
torch's common flags *without* the ``__CUDA_NO_HALF*`` defines, plus
``--expt-extended-lambda`` and ``-DENABLE_FP8``; every source gets the
backend define (``CUDA_KERNEL``, ``CPU_KERNEL``) and ``TORCH_EXTENSION_NAME``;
stable-ABI kernels get ``TORCH_TARGET_VERSION``; ``-O3 -DNDEBUG``; C++17
before torch 2.12, C++20 after. kernels-community ``rotary`` does not compile
with plain cpp_extension flags.
"""

from __future__ import annotations

import re

#: torch.utils.cpp_extension.COMMON_NVCC_FLAGS, minus the defines kernel-builder removes.
NVCC_COMMON = ["--expt-relaxed-constexpr", "--expt-extended-lambda", "-DENABLE_FP8"]
REMOVED_TORCH_NVCC_DEFINES = (
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
)

BACKEND_DEFINES = {
    "cuda": ["-DUSE_CUDA=1", "-DCUDA_KERNEL"],
    "cpu": ["-DCPU_KERNEL"],
    "rocm": ["-DUSE_ROCM=1", "-DROCM_KERNEL"],
    "metal": ["-DMETAL_KERNEL"],
    "xpu": ["-DXPU_KERNEL", "-DUSE_XPU"],
}

CXX_SUFFIXES = (".cpp", ".cc", ".cxx", ".c")
CUDA_SUFFIXES = (".cu",)


def cxx_standard(torch_version: tuple[int, int], extra_flags: tuple[str, ...] = ()) -> list[str]:
    if any(f.startswith("-std=") for f in extra_flags):
        return []
    return ["-std=c++17"] if torch_version < (2, 12) else ["-std=c++20"]


def stable_abi_define(version: str | None) -> list[str]:
    """``TORCH_TARGET_VERSION=((major << 56) | (minor << 48))``: torch 2.10 is ``0x020a000000000000``."""
    if not version:
        return []
    major, minor = (int(p) for p in version.split(".")[:2])
    return [f"-DTORCH_TARGET_VERSION=0x{(major << 56) | (minor << 48):016x}"]


def common_defines(extension_name: str, backend: str, stable_abi: str | None, cxx11_abi: bool) -> list[str]:
    return [
        f"-DTORCH_EXTENSION_NAME={extension_name}",
        *BACKEND_DEFINES.get(backend, []),
        *stable_abi_define(stable_abi),
        f"-D_GLIBCXX_USE_CXX11_ABI={int(cxx11_abi)}",
    ]


def release_flags() -> list[str]:
    return ["-O3", "-DNDEBUG"]


def host_cxx_flags() -> list[str]:
    # -fno-gnu-unique: template statics of two kernels must not collide (kernel-builder does the same).
    return ["-fPIC", "-fno-gnu-unique"]


def nvcc_host_flags() -> list[str]:
    return ["-Xcompiler", "-fPIC"]


def gencode(archs: list[str]) -> list[str]:
    """``9.0`` -> ``-gencode arch=compute_90,code=sm_90``; ``8.0+PTX`` also embeds PTX; ``9.0a`` -> ``sm_90a``."""
    flags = []
    for arch in archs:
        ptx = arch.endswith("+PTX")
        base = arch[:-4] if ptx else arch
        match = re.match(r"^(\d+)\.(\d+)([af]?)$", base)
        if not match:
            continue
        num = f"{match.group(1)}{match.group(2)}{match.group(3)}"
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
        if ptx:
            flags += ["-gencode", f"arch=compute_{num},code=compute_{num}"]
    return flags


def ptx_only(archs: list[str]) -> list[str]:
    """``10.0a`` -> ``-gencode arch=compute_100a,code=compute_100a``: PTX only (no ptxas, no SASS)."""
    flags = []
    for arch in archs:
        match = re.match(r"^(\d+)\.(\d+)([af]?)$", arch.replace("+PTX", ""))
        if match:
            num = f"{match.group(1)}{match.group(2)}{match.group(3)}"
            flags += ["-gencode", f"arch=compute_{num},code=compute_{num}"]
    return flags


def _arch_key(arch: str) -> tuple[int, int, str]:
    match = re.match(r"^(\d+)\.(\d+)([af]?)", arch)
    return (int(match.group(1)), int(match.group(2)), match.group(3)) if match else (0, 0, "")


def kernel_archs(capabilities: tuple[str, ...], targets: list[str]) -> list[str]:
    """Archs to build one kernel for: kernel-builder's loose intersection of its ``cuda-capabilities`` with the targets.

    For each target GPU arch: an ``a``/``f`` capability of the same base wins;
    else the highest capability of the same major at or below it (or any lower
    ``+PTX`` one). No capabilities declared: the targets themselves.
    """
    if not capabilities:
        return list(targets)
    chosen: list[str] = []
    for target in targets:
        tmaj, tmin, _ = _arch_key(target)
        suffixed = [c for c in capabilities if _arch_key(c)[2] and _arch_key(c)[:2] == (tmaj, tmin)]
        if suffixed:
            chosen.append(suffixed[0].replace("+PTX", ""))
            continue
        best = None
        for cap in sorted(capabilities, key=_arch_key):
            cmaj, cmin, suffix = _arch_key(cap)
            if suffix:
                continue
            if (cmaj, cmin) <= (tmaj, tmin) and (cmaj == tmaj or cap.endswith("+PTX")):
                best = cap
        if best:
            chosen.append(best)
    return sorted(set(chosen), key=_arch_key)
