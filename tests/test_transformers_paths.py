"""transformers' own kernel paths under ``jitkernels.patch()``, on the CPU (issue 15 item 3).

A tiny random Llama (no weight download) against the un-kernelized model:

- ``kernels.kernelize(model, mode=, device="cpu")`` over its ``use_kernel_forward_from_hub("RMSNorm")``
  layers, with a custom CPU mapping;
- ``from_pretrained(..., use_kernels=True)`` under that mapping;
- ``attn_implementation="<org>/<attention kernel>"`` (transformers fetches it with ``get_kernel``).

transformers' own mapping has no CPU entry for Llama's layers (5.25: none at all; 5.22-5.24: only
MegaBlocks) and ``KernelConfig`` refuses ``cpu``: those run on the GPU (benchmarks/gpu_upstream.py).
The kernels come from the test Hub (layouts of jitkernels/examples and tests/fixtures); with
``JITKERNELS_KC`` set, kernels-community's own rmsnorm source tree is compiled and used through
``LOCAL_KERNELS``. CI runs this file once per supported ``kernels`` release (.ci/run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

kernels = pytest.importorskip("kernels")
transformers = pytest.importorskip("transformers")

import jitkernels  # noqa: E402

RMS = "jitkernels-examples/rms-norm"  # a Python kernel with an RMSNorm layer, as kernels-community's rmsnorm
ATTN = "kernels-test/attn-interface"  # flash-attn2's interface and layout, in plain PyTorch
KC = os.environ.get("JITKERNELS_KC")


@pytest.fixture(autouse=True)
def patched():
    jitkernels.unpatch()
    jitkernels.patch()
    yield
    jitkernels.unpatch()


def _tiny_llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **kw)
    return LlamaForCausalLM(config).eval()


def _logits(model) -> torch.Tensor:
    ids = torch.arange(1, 17).reshape(2, 8) % 128
    with torch.no_grad():
        return model(input_ids=ids).logits


def _cpu_mapping(repo):
    from kernels import Mode

    return {"RMSNorm": {"cpu": {Mode.INFERENCE: repo}}}


def _norms(model) -> list:
    return [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]


def _served_by(norm) -> str:
    """The module whose code the layer's forward runs now."""
    forward = norm.forward
    return getattr(forward, "__func__", forward).__module__


def test_kernelize_with_a_custom_cpu_mapping_matches_the_plain_model(online):
    from kernels import LayerRepository, Mode, kernelize, use_kernel_mapping

    model = _tiny_llama()
    expected = _logits(model)
    with use_kernel_mapping(_cpu_mapping(LayerRepository(RMS, layer_name="RMSNorm", revision="main"))):
        kernelize(model, mode=Mode.INFERENCE, device="cpu")
    module = jitkernels.load("hf", RMS, revision="main", backend="cpu")
    assert len(_norms(model)) == 5 and {_served_by(n) for n in _norms(model)} == {module.__name__ + ".layers"}
    torch.testing.assert_close(_logits(model), expected, atol=1e-5, rtol=1e-5)


def test_from_pretrained_use_kernels_under_a_cpu_mapping(online, tmp_path):
    from kernels import LayerRepository, use_kernel_mapping
    from transformers import LlamaForCausalLM

    plain = _tiny_llama()
    plain.save_pretrained(tmp_path)
    expected = _logits(plain)
    with use_kernel_mapping(_cpu_mapping(LayerRepository(RMS, layer_name="RMSNorm", revision="main"))):
        model = LlamaForCausalLM.from_pretrained(tmp_path, use_kernels=True).eval()
    module = jitkernels.load("hf", RMS, revision="main", backend="cpu")
    assert {_served_by(n) for n in _norms(model)} == {module.__name__ + ".layers"}
    torch.testing.assert_close(_logits(model), expected, atol=1e-5, rtol=1e-5)


def test_attn_implementation_names_a_hub_attention_kernel(online, tmp_path):
    from transformers import LlamaForCausalLM

    _tiny_llama().save_pretrained(tmp_path)
    sdpa = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    model = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation=ATTN).eval()
    assert model.config._attn_implementation == ATTN
    calls = []
    module = jitkernels.load("hf", ATTN, version=1, backend="cpu")  # what transformers asked for: version 1
    original = module.flash_attn_interface._flash_attn_forward
    interface = module.flash_attn_interface
    interface._flash_attn_forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        logits = _logits(model)
    finally:
        interface._flash_attn_forward = original
    assert calls, "the attention kernel JitKernels loaded did not run"
    torch.testing.assert_close(logits, _logits(sdpa), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not KC or not Path(KC, "rmsnorm").is_dir(), reason="set JITKERNELS_KC to a kernels-community checkout")
def test_kernelize_with_kernels_community_rmsnorm_built_from_source(monkeypatch):
    from kernels import LayerRepository, Mode, kernelize, use_kernel_mapping

    monkeypatch.setenv("LOCAL_KERNELS", f"kernels-community/rmsnorm={Path(KC, 'rmsnorm')}")
    model = _tiny_llama()
    expected = _logits(model)
    with use_kernel_mapping(_cpu_mapping(LayerRepository("kernels-community/rmsnorm", layer_name="RMSNorm",
                                                         revision="main"))):
        kernelize(model, mode=Mode.INFERENCE, device="cpu")
    module = jitkernels.load("hf", "kernels-community/rmsnorm", backend="cpu")
    assert {_served_by(n) for n in _norms(model)} == {module.__name__ + ".layers"}
    torch.testing.assert_close(_logits(model), expected, atol=1e-5, rtol=1e-5)
