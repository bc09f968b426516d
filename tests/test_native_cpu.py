"""Native JIT builds on the CPU: the project's own sourceful kernel builds, loads, computes, and is cached."""

from __future__ import annotations


import pytest
import torch

import jitkernels
from jitkernels.errors import BuildError

from conftest import EXAMPLES, run_python

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the module: each native build costs ~30 s on two cores."""
    return tmp_path_factory.mktemp("native-cache")


def test_scaled_add_builds_from_hub_loads_and_warm_reload_never_compiles(online, shared_cache, monkeypatch):
    monkeypatch.setenv("JITKERNELS_CACHE", str(shared_cache))
    k = jitkernels.load("hf", "jitkernels-examples/scaled-add", revision="main", backend="cpu")
    x, y = torch.randn(10_000), torch.randn(10_000)
    torch.testing.assert_close(k.scaled_add(x, y, 0.25), x + 0.25 * y)
    layer = k.layers.ScaledAdd()
    torch.testing.assert_close(layer(x, y), x + y)
    assert k.__name__.startswith("_scaled_add_cpu_")
    assert hasattr(torch.ops, k.__name__) and hasattr(getattr(torch.ops, k.__name__), "scaled_add")
    commit = jitkernels.inspect("hf", "jitkernels-examples/scaled-add", revision="main", backend="cpu").revision

    # A new process, the Hub down, builds forbidden: the cached library is imported directly.
    online.down = True
    online.clear_log()
    code = (
        "import sys, torch, jitkernels\n"
        f"k = jitkernels.load('hf', 'jitkernels-examples/scaled-add', revision='{commit}', backend='cpu')\n"
        "x = torch.arange(4.0)\n"
        "assert torch.equal(k.scaled_add(x, x, 2.0), 3 * x)\n"
        "print('MODULES', [m for m in ('huggingface_hub', 'torch.utils.cpp_extension') if m in sys.modules])\n"
    )
    out = run_python(code, timeout=120, JITKERNELS_CACHE=shared_cache, JITKERNELS_DISABLE_BUILD=1, HF_HUB_OFFLINE=1)
    assert out.returncode == 0, out.stderr
    assert "MODULES []" in out.stdout
    assert online.requests == []


def test_local_source_tree_build_is_cached_per_content(shared_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("JITKERNELS_CACHE", str(shared_cache))
    k = jitkernels.load_local(EXAMPLES / "scaled-add", backend="cpu")
    x = torch.randn(100)
    torch.testing.assert_close(k.scaled_add(x, x, 1.0), 2 * x)
    monkeypatch.setenv("JITKERNELS_DISABLE_BUILD", "1")
    assert jitkernels.load_local(EXAMPLES / "scaled-add", backend="cpu") is k


def test_changed_source_gets_a_new_entry_and_never_a_stale_one(shared_cache, monkeypatch, tmp_path):
    import shutil

    monkeypatch.setenv("JITKERNELS_CACHE", str(shared_cache))
    copy = tmp_path / "scaled-add"
    shutil.copytree(EXAMPLES / "scaled-add", copy)
    before = jitkernels.inspect_local(copy, backend="cpu")
    source = copy / "scaled_add_cpu" / "scaled_add_cpu.cpp"
    source.write_text(source.read_text() + "\n// changed\n")
    after = jitkernels.inspect_local(copy, backend="cpu")
    assert before.digest != after.digest  # another entry; the op namespace stays the folder's (incremental builds)
    assert before.expected_extension_name == after.expected_extension_name
    monkeypatch.setenv("JITKERNELS_DISABLE_BUILD", "1")
    with pytest.raises(BuildError, match="JITKERNELS_DISABLE_BUILD"):
        jitkernels.load_local(copy, backend="cpu")


def test_compile_error_shows_compiler_output_and_publishes_nothing(tmp_path, monkeypatch, caplog):
    import logging
    import shutil

    caplog.set_level(logging.INFO, logger="jitkernels")
    monkeypatch.setenv("JITKERNELS_PROGRESS", "1")

    copy = tmp_path / "scaled-add"
    shutil.copytree(EXAMPLES / "scaled-add", copy)
    source = copy / "scaled_add_cpu" / "scaled_add_cpu.cpp"
    source.write_text(source.read_text() + "\nthis is not C++;\n")
    with pytest.raises(BuildError) as err:
        jitkernels.load_local(copy, backend="cpu")
    message = str(err.value)
    assert "scaled_add_cpu.cpp" in message and "error" in message
    assert "for cpu failed in scaled_add_cpu/scaled_add_cpu.cpp (ninja exit" in message  # the failing unit
    assert "for cpu" in message and str(err.value.log_path) in message
    assert err.value.log_path.exists()
    shown = [r.getMessage() for r in caplog.records if r.name == "jitkernels.progress"]
    assert shown[-1].endswith(f"FAILED in scaled_add_cpu/scaled_add_cpu.cpp; log: {err.value.log_path}")
    cache = tmp_path / "jkcache"
    assert not list((cache / "entries").glob("_scaled_add_cpu_*"))
    assert not list((cache / "staging").iterdir())
