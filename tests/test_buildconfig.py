"""build.toml parsing and the strategy decision, on layouts taken from kernels-community."""

from __future__ import annotations

import pytest

from jitkernels.plan.buildconfig import parse_build_toml
from jitkernels.errors import BuildConfigError
from jitkernels.plan.strategy import Toolchain, decide

ACTIVATION_LIKE = """
[general]
name = "activation"
version = 1
edition = 5
license = "Apache-2.0"
backends = ["cuda", "metal", "cpu", "rocm"]

[general.hub]
repo-id = "kernels-community/activation"

[torch]
src = ["torch-ext/torch_binding.cpp", "torch-ext/torch_binding.h"]

[torch.stable-abi]
cuda = "2.10"
rocm = "2.10"

[kernel.activation]
backend = "cuda"
depends = ["torch"]
src = ["activation/activation_kernels.cu"]

[kernel.activation_cpu_avx512]
backend = "cpu"
cxx-flags = ["-O3", "-fopenmp", "-mavx512f", "-DCPU_CAPABILITY=AVX512"]
depends = ["torch"]
include = ["activation_cpu"]
src = ["activation_cpu/silu_and_mul_avx512.cpp"]
"""

FLASH_ATTN3_LIKE = """
[general]
name = "flash-attn3"
version = 1
license = "BSD-3-Clause"
backends = ["cuda"]

[general.cuda]
minver = "12.6"
maxver = "13.0"

[torch]
src = ["flash-attn/flash_api_stable.cpp"]
stable-abi = "2.9"

[kernel.flash_attn]
backend = "cuda"
depends = ["torch", "cutlass_4_0"]
cuda-capabilities = ["8.0", "9.0a"]
src = ["flash-attn/flash_api.cu"]
"""

NOARCH = """
[general]
name = "einops"
version = 1
edition = 5
license = "MIT"
backends = ["cpu", "cuda"]

[torch-noarch]

[kernel]
"""


def test_edition5_with_stable_abi_table():
    c = parse_build_toml(ACTIVATION_LIKE)
    assert c.edition == 5 and c.python_name == "activation"
    assert c.stable_abi_for("cuda") == "2.10" and c.stable_abi_for("cpu") is None
    assert [k.name for k in c.kernels_for("cpu")] == ["activation_cpu_avx512"]
    assert c.kernels_for("cpu")[0].include == ("activation_cpu",)
    tc = Toolchain(torch="2.13.0", cuda="13.0")
    assert decide(c, "cuda", tc).strategy == "native-jit"
    assert decide(c, "cpu", tc).kernels == ("activation_cpu_avx512",)
    old_torch = decide(c, "cuda", Toolchain(torch="2.9.1", cuda="13.0"))
    assert (old_torch.strategy, old_torch.reason) == ("unsupported", "toolchain")
    assert "2.10" in old_torch.detail and "2.9.1" in old_torch.detail


def test_pre_edition_string_stable_abi_and_cuda_bounds():
    c = parse_build_toml(FLASH_ATTN3_LIKE)
    assert c.edition is None and c.stable_abi_for("cuda") == "2.9"
    assert (c.cuda_minver, c.cuda_maxver) == ("12.6", "13.0")
    d = decide(c, "cuda", Toolchain(torch="2.13.0", cuda="13.0"))
    assert (d.strategy, d.dependencies) == ("native-jit", ("cutlass_4_0", "torch"))
    assert "depends on cutlass_4_0, torch" in d.detail


def test_build_inputs_no_resolver_handles_are_unsupported_dependencies_naming_them():
    tc = Toolchain(torch="2.13.0", cuda="13.0")
    for dep in ("sycl_tla", "cutlass_3_7", "cutlass_9_9"):  # cutlass_3_7: kernel-builder pins no such release
        c = parse_build_toml(FLASH_ATTN3_LIKE.replace('"cutlass_4_0"', f'"{dep}"'))
        d = decide(c, "cuda", tc)
        assert (d.strategy, d.reason, d.unsupported_dependencies) == ("unsupported", "unsupported-dependency", (dep,))
        assert f"flash_attn: {dep}" in d.detail and "cutlass_3_8" in d.detail  # names it, and what is supported


def test_python_depends_follow_upstreams_table_per_backend():
    tc = Toolchain(torch="2.13.0", cuda="13.0")
    text = NOARCH.replace('backends = ["cpu", "cuda"]', 'backends = ["cpu", "cuda"]\npython-depends = ["einops"]\n'
                          '[general.cuda]\npython-depends = ["nvidia-cutlass-dsl"]')
    c = parse_build_toml(text)
    assert c.python_depends_for("cuda") == ("einops", "nvidia-cutlass-dsl")
    assert decide(c, "cuda", tc).strategy == "python"
    unknown = decide(parse_build_toml(text.replace('"einops"', '"left-pad"')), "cpu", tc)
    assert (unknown.reason, unknown.unsupported_dependencies) == ("unsupported-dependency", ("left-pad",))
    # a backend-only name is unknown for other backends, as in upstream's table
    xpu_only = parse_build_toml(text.replace('"einops"', '"onednn"'))
    assert decide(xpu_only, "cpu", tc).unsupported_dependencies == ("onednn",)


def test_kernel_depends_are_read_as_upstream_writes_them():
    text = NOARCH.replace('backends = ["cpu", "cuda"]', 'backends = ["cpu", "cuda"]\n'
                          'kernel-depends = [{ repo-id = "kernels-community/activation", version = 1 }]\n'
                          '[general.cuda]\nkernel-depends = [{ repo-id = "org/helper", revision = "main" }]')
    c = parse_build_toml(text)
    assert c.kernel_depends_for("cpu") == ({"repo-id": "kernels-community/activation", "version": 1},)
    assert c.kernel_depends_for("cuda")[1] == {"repo-id": "org/helper", "revision": "main"}
    for bad, what in [
        ('{ repo-id = "a/b" }', "exactly one of"),
        ('{ repo-id = "a/b", version = 1, revision = "x" }', "exactly one of"),
        ('{ repo-id = "a/b", version = 1, branch = "x" }', "unknown key"),
        ('{ repo-id = "../b", version = 1 }', "org/name"),
        ('{ repo-id = "a/b", version = -1 }', "non-negative"),
        ('{ repo-id = "a/b", revision = "../x" }', "branch, tag or commit"),
        ('"a/b"', "tables"),
    ]:
        broken = NOARCH.replace('backends = ["cpu", "cuda"]', f'backends = ["cpu"]\nkernel-depends = [{bad}]')
        with pytest.raises(BuildConfigError, match=what):
            parse_build_toml(broken)


def test_cuda_bounds_give_toolchain_with_both_versions():
    text = FLASH_ATTN3_LIKE.replace('"cutlass_4_0"', '"torch"')
    c = parse_build_toml(text)
    d = decide(c, "cuda", Toolchain(torch="2.13.0", cuda="13.1"))
    assert d.reason == "toolchain" and "13.0" in d.detail and "13.1" in d.detail
    assert "JITKERNELS_IGNORE_TOOLCHAIN_BOUNDS" in d.detail
    assert decide(c, "cuda", Toolchain(torch="2.13.0", cuda="13.1"), ignore_bounds=True).strategy == "native-jit"
    assert decide(c, "cuda", Toolchain(torch="2.13.0", cuda="12.8")).strategy == "native-jit"


def test_noarch():
    c = parse_build_toml(NOARCH)
    assert c.is_noarch and decide(c, "cpu").strategy == "python"
    assert (decide(c, "rocm").strategy, decide(c, "rocm").reason) == ("unsupported", "no-backend")


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda t: t.replace("edition = 5", "edition = 9"), "edition 9"),
        (lambda t: t.replace('name = "activation"', 'name = 3'), "'name' must be a string"),
        (lambda t: t.replace("[general]", "[generalx]"), "missing required key"),
        (lambda t: t.replace('"activation_cpu/silu_and_mul_avx512.cpp"', '"/etc/passwd"'), "absolute"),
        (lambda t: t.replace('"activation_cpu/silu_and_mul_avx512.cpp"', '"../x.cpp"'), "'..'"),
        (lambda t: t.replace('"activation_cpu/silu_and_mul_avx512.cpp"', '"a;rm -rf x.cpp"'), "refuses"),
        (lambda t: t.replace('"-O3",', '"-o", "/tmp/x",'), "'-o'"),
        (lambda t: t.replace('"-O3",', '"-Wl,-rpath,/evil",'), "-Wl,-rpath"),
        (lambda t: t.replace('"-O3",', '"-Xlinker",'), "-Xlinker"),
        (lambda t: t.replace('backend = "cuda"', 'backend = "cuda"\nfancy = 1'), "unknown key"),
        (lambda t: t.replace('depends = ["torch"]\nsrc = ["activation/', 'src = ["activation/'), "depends"),
        (lambda t: t.replace('name = "activation"', 'name = "bad name!"'), "not a kernel name"),
        (lambda t: t + "\n[tvm-ffi]\nsrc = []\n", "exactly one of"),
    ],
)
def test_hostile_or_broken_build_toml_is_refused(mutation, message):
    with pytest.raises(BuildConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        parse_build_toml(mutation(ACTIVATION_LIKE))


def test_legacy_v1_universal_and_language():
    c = parse_build_toml('[general]\nname = "old"\n\n[torch]\nuniversal = true\n')
    assert c.is_noarch
    c = parse_build_toml(
        '[general]\nname = "old"\n\n[torch]\nsrc = ["a.cpp"]\n\n'
        '[kernel.k]\nlanguage = "cuda"\ndepends = ["torch"]\nsrc = ["k.cu"]\n'
    )
    assert c.backends == ("cuda",) and c.kernels[0].backend == "cuda"
