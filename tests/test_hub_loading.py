"""Loading and inspecting kernels from a Hub-compatible server through the real huggingface_hub client."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import jitkernels
from jitkernels import KernelProvider
from jitkernels.errors import (
    BuildConfigError,
    KernelNotFoundError,
    RevisionNotFoundError,
    UnknownProviderError,
    UnsupportedKernelError,
)

from conftest import run_python

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _layer_norm_ref(x, w, b, eps=1e-5):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def test_inspect_triton_source_tree(online):
    i = jitkernels.inspect(KernelProvider.HF_KERNELS, "triton-layer-norm", revision="main", backend="cpu")
    assert (i.strategy, i.reason, i.source) == ("python", None, "source-tree")
    assert i.repo_id == "kernels-community/triton-layer-norm"
    assert len(i.revision) == 40 and i.requested_revision == "main"
    assert i.module_name.startswith("_triton_layer_norm_cpu_")
    assert i.expected_extension_name is None
    assert not [p for p in online.downloaded() if p.startswith("build/")]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernel_loads_from_hub_and_runs(online, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's interpreter runs the kernel on the CPU
    k = jitkernels.load("hf", "triton-layer-norm", revision="main", backend="cpu")
    x, w, b = torch.randn(6, 40), torch.rand(40), torch.randn(40)
    torch.testing.assert_close(k.layer_norm(x, w, b), _layer_norm_ref(x, w, b), atol=1e-4, rtol=1e-4)
    layer = k.layers.LayerNorm()  # a relative import inside the package
    layer.weight, layer.bias, layer.variance_epsilon = w, b, 1e-5
    torch.testing.assert_close(layer(x), _layer_norm_ref(x, w, b), atol=1e-4, rtol=1e-4)
    # the op is registered under the generated _ops.py namespace, unique to this content
    assert hasattr(getattr(torch.ops, k.__name__), "layer_norm")
    assert jitkernels.load("hf", "triton-layer-norm", revision="main", backend="cpu") is k


def test_version_selects_noarch_payload_and_downloads_only_it(online):
    i = jitkernels.inspect("hf", "triton-layer-norm", version=1, backend="cuda")
    assert (i.strategy, i.source, i.requested_revision) == ("python", "noarch-payload", "v1")
    assert i.source_location.endswith("build/torch-cuda")
    fetched = online.downloaded()
    assert fetched and all(p.startswith("build/torch-cuda/") for p in fetched), fetched


def test_default_revision_is_newest_version_branch(online):
    i = jitkernels.inspect("hf", "triton-layer-norm", backend="cpu")
    assert i.requested_revision == "v1" and i.source == "noarch-payload"


def test_universal_payload_in_model_repo_loads_and_runs(online):
    k = jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    x, w = torch.randn(3, 16), torch.rand(16)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(k.rms_norm(x, w), expected)
    i = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    assert i.source == "noarch-payload" and i.source_location.endswith("build/torch-universal")


def test_commit_and_branch_give_the_same_module(online):
    by_branch = jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").revision
    by_commit = jitkernels.load("hf", "kernels-test/rms-norm-universal", revision=commit, backend="cpu")
    assert by_commit is by_branch


def test_underscore_names_find_hyphenated_repos(online):
    assert jitkernels.inspect("hf", "triton_layer_norm", revision="main", backend="cpu").repo_id == \
        "kernels-community/triton-layer-norm"
    assert jitkernels.inspect("hf-kernels", "kernels-test/rms_norm_universal", revision="main",
                              backend="cpu").repo_id == "kernels-test/rms-norm-universal"


def test_missing_kernel_and_revision(online):
    assert jitkernels.has("hf", "no-such-kernel") is False
    with pytest.raises(KernelNotFoundError, match="kernels-community/no-such-kernel"):
        jitkernels.load("hf", "no-such-kernel")
    with pytest.raises(RevisionNotFoundError, match=r"version=1"):
        jitkernels.load("hf", "triton-layer-norm", version=7)
    assert jitkernels.has("hf", "triton-layer-norm", version=7) is False


def test_unknown_provider_lists_known_ones():
    with pytest.raises(UnknownProviderError, match="hf_kernels"):
        jitkernels.load("flashinfer-nope", "x")


def test_binary_only_repo_is_missing_source_and_no_binary_is_fetched(online):
    i = jitkernels.inspect("hf", "kernels-test/binary-only", version=1, backend="cpu")
    assert (i.strategy, i.reason) == ("unsupported", "missing-source")
    assert "source" in i.detail
    assert jitkernels.has("hf", "kernels-test/binary-only", version=1, backend="cpu") is False
    with pytest.raises(UnsupportedKernelError) as err:
        jitkernels.load("hf", "kernels-test/binary-only", version=1, backend="cpu")
    assert err.value.inspection.reason == "missing-source"
    assert not [p for p in online.downloaded() if p.endswith(".so")]


def test_unresolvable_build_input_is_unsupported_dependency(online):
    i = jitkernels.inspect("hf", "kernels-test/cutlass-gemm", revision="main", backend="xpu")
    assert (i.strategy, i.reason) == ("unsupported", "unsupported-dependency")
    assert i.unsupported_dependencies == ("sycl_tla",) and "sycl_tla" in i.dependencies
    assert online.downloaded() == ["build.toml"]  # the sources are never fetched
    no_backend = jitkernels.inspect("hf", "kernels-test/cutlass-gemm", revision="main", backend="cpu")
    assert (no_backend.strategy, no_backend.reason) == ("unsupported", "no-backend")


def test_broken_kernels_raise_build_config_errors(online):
    with pytest.raises(BuildConfigError, match="invalid TOML"):
        jitkernels.inspect("hf", "kernels-test/bad-toml", backend="cpu")
    with pytest.raises(BuildConfigError, match="missing_src_cpu/kernel.cpp"):
        jitkernels.inspect("hf", "kernels-test/missing-src", backend="cpu")


def test_native_inspection_names_the_extension(online):
    i = jitkernels.inspect("hf", "jitkernels-examples/scaled-add", backend="cpu")
    assert (i.strategy, i.reason) == ("native-jit", None)
    assert i.expected_extension_name == i.module_name
    assert i.expected_extension_name.startswith("_scaled_add_cpu_")
    assert i.kernels == ("scaled_add_cpu",)
    cuda = jitkernels.inspect("hf", "jitkernels-examples/scaled-add", backend="cuda")
    assert cuda.expected_extension_name.startswith("_scaled_add_cuda_")
    assert cuda.kernels == ("scaled_add",)


def test_offline_pinned_and_unpinned_loads_use_the_cache(online, monkeypatch):
    from huggingface_hub import constants

    k = jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").revision
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    online.down = True
    online.clear_log()
    assert jitkernels.load("hf", "kernels-test/rms-norm-universal", revision=commit, backend="cpu") is k
    assert jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu") is k
    assert online.requests == []


def test_warm_pinned_load_in_new_process_needs_no_hub(online, tmp_path):
    jitkernels.load("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu")
    commit = jitkernels.inspect("hf", "kernels-test/rms-norm-universal", revision="main", backend="cpu").revision
    online.down = True
    online.clear_log()
    code = (
        "import sys, jitkernels, torch\n"
        f"k = jitkernels.load('hf', 'kernels-test/rms-norm-universal', revision='{commit}', backend='cpu')\n"
        "assert k.rms_norm(torch.ones(2, 4), torch.ones(4)).shape == (2, 4)\n"
        "heavy = [m for m in ('huggingface_hub', 'filelock', 'torch.utils.cpp_extension') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = run_python(code, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert online.requests == []


def test_import_jitkernels_is_cheap():
    code = (
        "import sys, jitkernels\n"
        "print([m for m in ('torch', 'huggingface_hub', 'wrapt', 'filelock', 'torch.utils.cpp_extension')"
        " if m in sys.modules])\n"
    )
    out = run_python(code, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_load_local_accepts_one_build_variant_folder(tmp_path):
    """As upstream's get_local_kernel: a folder that is a single variant (metadata.json + package)."""
    from conftest import EXAMPLES, binary_variant, metadata

    python_variant = tmp_path / "torch-cpu"
    python_variant.mkdir()
    for src in (EXAMPLES / "rms-norm" / "torch-ext" / "rms_norm").glob("*.py"):
        (python_variant / src.name).write_bytes(src.read_bytes())
    (python_variant / "metadata.json").write_bytes(metadata("rms-norm", "_rms_norm_cpu_abc", "cpu"))
    k = jitkernels.load_local(python_variant, backend="cpu", name="rms-norm")
    assert k.rms_norm(torch.ones(1, 4), torch.ones(4)).shape == (1, 4)

    binary = tmp_path / "torch213-cxx11-cpu-x86_64-linux"
    for path, data in binary_variant("relu", "relu", "x", "cpu").items():
        target = binary / path.split("/", 2)[2]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    with pytest.raises(UnsupportedKernelError) as err:
        jitkernels.load_local(binary, backend="cpu", name="relu")
    assert err.value.inspection.reason == "missing-source"
