"""``jitkernels.patch()`` against the real upstream ``kernels`` package and the fixture Hub.

Call sites are written as for upstream; after ``patch()`` they get JitKernels
modules, after ``unpatch()`` the upstream code runs again (checked by identity
and by the Hub requests only upstream makes).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path

import pytest
import torch

kernels = pytest.importorskip("kernels")

import jitkernels  # noqa: E402
from jitkernels.upstream import patching, seam  # noqa: E402
from jitkernels.errors import InvalidKernelNameError, LockfileError, PatchError  # noqa: E402

from conftest import EXAMPLES, run_python  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
RMS = "jitkernels-examples/rms-norm"


TARGETS = seam.targets(kernels)  # upstream's loader objects, found from the public API of this release


def _bindings() -> dict:
    """(module name, attribute) -> object, for every attribute that held one of upstream's loaders at import."""
    return {key: sys.modules[key[0]].__dict__[key[1]] for key in ORIGINALS}


ORIGINALS = {(m.__name__, a): o for m, a, o in seam.bindings(TARGETS.values())}  # never patched at collection


@pytest.fixture(autouse=True)
def always_unpatched():
    jitkernels.unpatch()
    assert _bindings() == ORIGINALS
    yield
    jitkernels.unpatch()


def _assert_originals():
    now = _bindings()
    for key, original in ORIGINALS.items():
        assert now[key] is original, key


def _upstream_listed_variants(hub, repo_id: str = "") -> list[str]:
    """The requests only upstream's loader makes: listing a revision's build/ variants (by branch in 0.17, by commit later)."""
    return [p for m, p in hub.requests if re.search(rf"/api/kernels/{repo_id}.*/tree/[^/]+/build\\?", p)]


def _rms_ref(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _lock(tmp_path: Path, repo_id: str, commit: str) -> Path:
    lock = tmp_path / "kernels.lock"
    lock.write_text(json.dumps([{"dependency": {"repo-id": repo_id, "revision": "main"}, "lock": {"commit": commit}}]))
    return lock


# -- the loader functions ------------------------------------------------------------------------


def test_get_kernel_call_site_gets_jitkernels_then_upstream_again(online):
    jitkernels.patch()
    k = kernels.get_kernel(RMS, revision="main")
    assert k is jitkernels.load("hf", RMS, revision="main")
    assert Path(k.__file__).is_relative_to(Path(os.environ["JITKERNELS_CACHE"]))
    x, w = torch.randn(2, 8), torch.rand(8)
    torch.testing.assert_close(k.rms_norm(x, w), _rms_ref(x, w))
    from kernels import get_kernel  # a by-name import made after patch() sees the patch too

    assert get_kernel(RMS, revision="main") is k
    assert kernels.has_kernel(RMS, revision="main") is True
    assert kernels.has_kernel("jitkernels-examples/no-such-kernel", revision="main") is False
    assert not _upstream_listed_variants(online)  # upstream never ran

    jitkernels.unpatch()
    _assert_originals()
    assert kernels.get_kernel is TARGETS["get_kernel"]
    online.clear_log()
    with pytest.raises(OSError, match="build"):  # upstream: a source-only repo has no build/ variants
        kernels.get_kernel(RMS, revision="main")
    assert _upstream_listed_variants(online, "jitkernels-examples/rms-norm")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_version_selects_the_noarch_payload(online):
    with jitkernels.patch():
        k = kernels.get_kernel("kernels-community/triton-layer-norm", version=1, backend="cpu")
        assert k is jitkernels.load("hf", "triton-layer-norm", version=1, backend="cpu")
        assert callable(k.layer_norm) and hasattr(k.layers, "LayerNorm")
    fetched = online.downloaded()
    assert fetched and all(p.startswith("build/torch-cpu/") for p in fetched), fetched


def test_arguments_keep_upstream_meaning_and_unknown_ones_fail(online):
    jitkernels.patch()
    with pytest.raises(TypeError, match="patched by jitkernels.*bogus"):
        kernels.get_kernel(RMS, revision="main", bogus=1)
    with pytest.raises(TypeError):
        kernels.get_kernel(RMS, "main")  # keyword-only, as upstream
    with pytest.raises(ValueError, match="Only one of"):
        kernels.get_kernel(RMS, revision="main", version=1)
    with pytest.raises(ValueError, match="version or revision must be specified"):
        kernels.get_kernel(RMS)
    with pytest.raises(InvalidKernelNameError, match="backend"):
        kernels.get_kernel(RMS, revision="main", backend="nope")
    k = kernels.get_kernel(RMS, revision="main", user_agent={"app": "x"}, check_arch=False,
                           trust_remote_code=[RMS], backend="cpu")
    assert k is jitkernels.load("hf", RMS, revision="main", backend="cpu")
    with pytest.raises(TypeError, match="lockfile"):
        kernels.load_kernel(RMS)  # lockfile is a required keyword upstream
    with pytest.raises(TypeError, match="backend"):
        kernels.get_locked_kernel(RMS, lockfile=None, backend="cpu")  # upstream has no backend here


def test_get_local_kernel_uses_load_local():
    jitkernels.patch()
    k = kernels.get_local_kernel(EXAMPLES / "rms-norm", backend="cpu", trust_remote_code=False, user_agent="x")
    assert Path(k.__file__).is_relative_to(Path(os.environ["JITKERNELS_CACHE"]))
    torch.testing.assert_close(k.rms_norm(torch.ones(2, 4), torch.ones(4)), torch.ones(2, 4), atol=1e-5, rtol=0)
    jitkernels.unpatch()
    with pytest.raises(FileNotFoundError, match="build variant"):  # upstream wants build/ variants
        kernels.get_local_kernel(EXAMPLES / "rms-norm")


def test_locked_loaders_read_the_upstream_lock(online, tmp_path):
    commit = jitkernels.inspect("hf", RMS, revision="main").revision
    lock = _lock(tmp_path, RMS, commit)
    jitkernels.patch()
    k = kernels.get_locked_kernel(RMS, lockfile=lock)
    assert k is jitkernels.load("hf", RMS, revision=commit)
    assert kernels.load_kernel(RMS, lockfile=lock, backend=None) is k
    with pytest.raises(LockfileError, match="not locked"):
        kernels.load_kernel("jitkernels-examples/other", lockfile=lock)
    with pytest.raises(ValueError):  # LockfileError is a ValueError, like upstream's
        kernels.get_locked_kernel(RMS, lockfile=None)  # this test package ships no kernels.lock
    bad = tmp_path / "bad.lock"
    bad.write_text('[{"dependency": {"repo-id": "a/b"}, "lock": {"commit": "xyz"}}]')
    with pytest.raises(LockfileError, match="hex"):
        kernels.load_kernel("a/b", lockfile=bad)


# -- the layer machinery -------------------------------------------------------------------------


def _model():
    from kernels import use_kernel_forward_from_hub

    @use_kernel_forward_from_hub("RMSNorm")
    class MyRMSNorm(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.rand(n))
            self.variance_epsilon = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x  # deliberately wrong: kernelize must swap in the kernel's forward

    return torch.nn.Sequential(MyRMSNorm(8))


def _kernelize_with(repo):
    from kernels import Mode, kernelize, use_kernel_mapping

    model = _model()
    with use_kernel_mapping({"RMSNorm": {"cpu": repo}}, inherit_mapping=False):
        kernelize(model, mode=Mode.INFERENCE, device="cpu", use_fallback=False)
    return model


def _assert_uses_kernel(model, kernel):
    layer = model[0]
    assert layer.forward.__func__ is kernel.layers.RMSNorm.forward
    x = torch.randn(3, 8)
    torch.testing.assert_close(model(x), _rms_ref(x, layer.weight.detach()))


def test_kernelize_layer_repository_resolves_through_jitkernels(online):
    from kernels import LayerRepository

    jitkernels.patch()
    model = _kernelize_with(LayerRepository(RMS, layer_name="RMSNorm", revision="main"))
    _assert_uses_kernel(model, jitkernels.load("hf", RMS, revision="main"))
    # version=N: JitKernels resolves branch vN when loading. kernels 0.17 resolved it itself first,
    # with a Hub request of its own (_resolve_revision): under patch() that makes none.
    online.clear_log()
    repo = LayerRepository("kernels-community/triton-layer-norm", layer_name="LayerNorm", version=1)
    if hasattr(repo, "_resolve_revision"):
        assert repo._resolve_revision() == "v1"
        assert online.requests == []
    if HAS_TRITON:
        expected = jitkernels.load("hf", "triton-layer-norm", version=1, backend="cpu").layers.LayerNorm
        assert repo.load() is expected


def test_kernelize_locked_and_local_layer_repositories(online, tmp_path):
    from kernels import LocalLayerRepository, LockedLayerRepository

    commit = jitkernels.inspect("hf", RMS, revision="main").revision
    lock = _lock(tmp_path, RMS, commit)
    with jitkernels.patch():
        model = _kernelize_with(LockedLayerRepository(RMS, lockfile=lock, layer_name="RMSNorm"))
        _assert_uses_kernel(model, jitkernels.load("hf", RMS, revision=commit))
        local = _kernelize_with(LocalLayerRepository(EXAMPLES / "rms-norm", layer_name="RMSNorm"))
        assert local[0].forward.__func__.__qualname__ == "RMSNorm.forward"  # the kernel's layer
        torch.testing.assert_close(local(torch.ones(2, 8)), local[0].weight.detach().expand(2, 8))
    _assert_originals()


def test_kernelize_after_unpatch_runs_upstream(online):
    from kernels import LayerRepository

    online.clear_log()
    with pytest.raises(OSError):
        _kernelize_with(LayerRepository(RMS, layer_name="RMSNorm", revision="main"))
    assert _upstream_listed_variants(online)


# -- patch() itself ---------------------------------------------------------------------------------


def test_patch_is_idempotent_and_unpatch_restores_by_identity():
    first = jitkernels.patch()
    wrapped = _bindings()
    for key, original in ORIGINALS.items():
        assert wrapped[key] is not original and wrapped[key].__wrapped__ is original, key
    second = jitkernels.patch()
    assert _bindings() == wrapped and all(_bindings()[k] is v for k, v in wrapped.items())
    assert first.owned and not second.owned
    jitkernels.unpatch()
    _assert_originals()
    jitkernels.unpatch()  # twice is fine
    _assert_originals()


def test_context_manager_and_decorator():
    with jitkernels.patch() as p:
        assert patching.is_patched() and p.provider == "hf_kernels"
        with jitkernels.patch("hf"):
            pass
        assert patching.is_patched()  # the inner block did not own the patch
    _assert_originals()

    @jitkernels.patch()
    def inside():
        return patching.is_patched(), kernels.get_kernel is not TARGETS["get_kernel"]

    assert not patching.is_patched()  # decorating does not patch
    assert inside() == (True, True)
    _assert_originals()


def test_a_nested_or_decorating_patch_gives_the_enclosing_patch_its_settings_back():
    from jitkernels.upstream import switching

    with jitkernels.patch():
        with jitkernels.patch(fallback="upstream", cold_start="background"):
            assert patching.fallback_mode() == "upstream" and switching.configured() == "background"
        assert patching.fallback_mode() is None and switching.configured() == "block"

        @jitkernels.patch(fallback="upstream")
        def inside():
            return patching.fallback_mode()

        assert patching.fallback_mode() is None  # decorating is not calling
        assert inside() == "upstream"
        assert patching.fallback_mode() is None and patching.is_patched()
    _assert_originals()


def test_patch_and_unpatch_from_many_threads():
    barrier = threading.Barrier(8)
    errors = []

    def worker(i):
        try:
            barrier.wait()
            for j in range(10):
                (jitkernels.patch if (i + j) % 2 else jitkernels.unpatch)()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    jitkernels.patch()
    for key, obj in _bindings().items():
        assert obj.__wrapped__ is ORIGINALS[key], key  # wrapped exactly once
    jitkernels.unpatch()
    _assert_originals()


def test_unknown_provider_is_rejected():
    from jitkernels.errors import UnknownProviderError

    with pytest.raises(UnknownProviderError):
        jitkernels.patch("nope")
    _assert_originals()


def test_kernels_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "kernels", None)  # what an uninstalled package looks like to find_spec
    with pytest.raises(PatchError, match="not installed"):
        jitkernels.patch()
    with pytest.warns(RuntimeWarning, match="not installed"):
        assert patching.autopatch() is False
    assert not patching.is_patched()


def test_patch_before_kernels_is_imported(online):
    code = (
        "import sys, jitkernels\n"
        "jitkernels.patch()\n"
        "print('early', 'kernels' in sys.modules, 'torch' in sys.modules)\n"
        "import kernels\n"
        "layer_module = sys.modules[kernels.LayerRepository.__module__]\n"
        "get_kernel = layer_module.get_kernel\n"
        f"k = kernels.get_kernel({RMS!r}, revision='main')\n"
        "print('late', type(kernels.get_kernel).__name__, type(get_kernel).__name__, k.__file__)\n"
        "jitkernels.unpatch()\n"
        "print('restored', kernels.get_kernel is layer_module.get_kernel, type(kernels.get_kernel).__name__)\n"
    )
    out = run_python(code, timeout=180, HF_ENDPOINT=online.endpoint)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "early False False"
    _, kind, layer_kind, path = lines[1].split(" ", 3)
    assert kind == layer_kind == "FunctionWrapper"
    assert Path(path).is_relative_to(Path(os.environ["JITKERNELS_CACHE"]))
    assert lines[2] == "restored True function"


def test_unpatch_before_import_leaves_kernels_alone(online):
    code = (
        "import jitkernels\n"
        "jitkernels.patch(); jitkernels.unpatch()\n"
        "import kernels\n"
        "print(type(kernels.get_kernel).__name__)\n"
    )
    out = run_python(code, timeout=180, HF_ENDPOINT=online.endpoint)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "function"


# -- redirected by identity, wherever upstream's functions are bound ------------------------------------


def _module(monkeypatch, name: str, code: str):
    """A module named ``name`` made of ``code``, in sys.modules for this test only."""
    import types

    module = types.ModuleType(name)
    exec(code, module.__dict__)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_any_module_holding_a_loader_is_redirected_and_restored(online, monkeypatch):
    # a library that imported upstream's function under its own name before patch(), and a module at a path
    # upstream may use in its next release (0.19 moved everything under kernels._internals)
    before = _module(monkeypatch, "jk_test_thirdparty", "from kernels import get_kernel as fetch_kernel, has_kernel")
    moved = _module(monkeypatch, "kernels._jk_test_next_layout", "from kernels import get_kernel as load_layer_kernel")
    jitkernels.patch()
    k = jitkernels.load("hf", RMS, revision="main")
    assert before.fetch_kernel(RMS, revision="main") is k
    assert moved.load_layer_kernel(RMS, revision="main") is k
    assert before.has_kernel("jitkernels-examples/no-such-kernel", revision="main") is False
    assert ("jk_test_thirdparty", "fetch_kernel") in patching.patched_bindings()
    during = _module(monkeypatch, "jk_test_during", "from kernels import get_kernel")  # imported while patched
    assert during.get_kernel(RMS, revision="main") is k
    jitkernels.unpatch()
    assert before.fetch_kernel is TARGETS["get_kernel"] and moved.load_layer_kernel is TARGETS["get_kernel"]
    assert during.get_kernel is TARGETS["get_kernel"]  # found again by identity, not from a record
    assert before.has_kernel is TARGETS["has_kernel"]
    assert patching.patched_bindings() == {}


def test_selfcheck_reaches_jitkernels_from_every_entry_point():
    import logging

    jitkernels.patch()
    root_handlers = list(logging.getLogger().handlers)
    results = patching.selfcheck()
    expected = {f"kernels.{name}" for name in seam.PUBLIC_LOADERS} | {
        "LayerRepository.load", "LocalLayerRepository.load", "LockedLayerRepository.load",
        "FuncRepository.load", "LockedFuncRepository.load", "kernels.kernelize"}
    assert expected <= set(results), sorted(results)
    assert all(results.values()), results
    assert logging.getLogger().handlers == root_handlers  # kernelize's logging.info installed nothing
    # a call site put back behind patch()'s back: the self-check says so
    layer_module = sys.modules[kernels.LayerRepository.__module__]
    wrapper = layer_module.get_kernel
    layer_module.get_kernel = TARGETS["get_kernel"]
    try:
        results = patching.selfcheck()
    finally:
        layer_module.get_kernel = wrapper
    assert results["LayerRepository.load"] is False and results["kernels.kernelize"] is False
    assert results["kernels.get_kernel"] is True
    jitkernels.unpatch()
    with pytest.raises(PatchError, match="patch\\(\\) first"):
        patching.selfcheck()


def test_patch_names_a_call_site_no_swap_can_reach(monkeypatch, caplog):
    from jitkernels import log

    monkeypatch.setattr(log, "_SAID", set())
    _module(monkeypatch, "kernels._jk_test_captured", "import kernels\ndef load(loader=kernels.get_kernel):\n    pass\n")
    caplog.set_level(logging.WARNING, logger="jitkernels")
    jitkernels.patch()
    said = [r.getMessage() for r in caplog.records if r.name == "jitkernels"]
    assert len(said) == 1, said
    assert "kernels._jk_test_captured.load (a default argument holds a loader)" in said[0]
    assert "keep upstream behaviour" in said[0]


def test_a_kernels_release_outside_the_tested_range_gets_one_line(monkeypatch, caplog):
    from jitkernels import log

    monkeypatch.setattr(log, "_SAID", set())
    caplog.set_level(logging.WARNING, logger="jitkernels")
    jitkernels.patch()
    jitkernels.unpatch()
    assert not [r for r in caplog.records if r.name == "jitkernels"]  # this release is a tested one
    monkeypatch.setattr(kernels, "__version__", "0.20.0")
    jitkernels.patch()
    said = [r.getMessage() for r in caplog.records if r.name == "jitkernels"]
    assert len(said) == 1
    assert said[0].startswith("jitkernels.patch(): kernels 0.20.0 is outside the releases JitKernels is tested "
                              f"with ({seam.TESTED_RANGE}: {', '.join(seam.TESTED_KERNELS)})")
    assert "self-check found nothing missed" in said[0] and "get_kernel, kernelize" in said[0]
    assert kernels.get_kernel is not TARGETS["get_kernel"]  # patched all the same


def test_the_tested_range_is_the_declared_extra_and_covers_this_release():
    import tomllib

    from conftest import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["kernels"] == [f"kernels{seam.TESTED_RANGE}"]
    assert f"kernels{seam.TESTED_RANGE}" in extras["test"]
    assert all(seam.in_tested_range(v) for v in seam.TESTED_KERNELS)
    assert not seam.in_tested_range("0.16.2") and not seam.in_tested_range("0.20.0")
    assert seam.in_tested_range(kernels.__version__), kernels.__version__
