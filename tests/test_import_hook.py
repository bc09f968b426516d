"""The ``jitkernels.hub`` import hook, against the fixture Hub: what a user importing kernels sees."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import pickle
import sys
import threading
import traceback
from pathlib import Path

import pytest
import torch

import jitkernels
import jitkernels.hub
from jitkernels.errors import JitKernelsError, OfflineError
from jitkernels.hub import HubFinder, KernelModuleNotFoundError

from conftest import EXAMPLES, run_python, tree, wait_for

HAS_TRITON = importlib.util.find_spec("triton") is not None
RMS = "jitkernels.hub.hf.jitkernels_examples__rms_norm"


def _rms_ref(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.fixture(autouse=True)
def clean_hub_modules(monkeypatch):
    """Each test imports kernels afresh (its cache is new) and leaves no pins behind."""
    monkeypatch.delenv("JITKERNELS_PINS", raising=False)
    jitkernels.hub.clear_pins()
    yield
    jitkernels.hub.clear_pins()
    for name in [n for n in sys.modules if n.startswith("jitkernels.hub.") and n != "jitkernels.hub._pins"]:
        del sys.modules[name]
    from jitkernels import warm

    warm.LOADED.clear()


def _two_branch_repo(hub, repo_id: str) -> None:
    """A pure-Python kernel whose ``main`` and ``other`` branches differ (``WHICH``)."""
    branches = {}
    for branch in ("main", "other"):
        files = tree(EXAMPLES / "rms-norm")
        init = "torch-ext/rms_norm/__init__.py"
        files[init] = files[init] + f"\nWHICH = {branch!r}\n".encode()
        files["torch-ext/rms_norm/functional.py"] += f"\nWHICH = {branch!r}\n".encode()
        branches[branch] = files
    hub.add_repo(repo_id, branches)


# -- import forms ---------------------------------------------------------------------


def test_from_import_gives_the_kernels_own_package(online):
    from jitkernels.hub.hf import jitkernels_examples__rms_norm as k

    assert k.__name__ == RMS and sys.modules[RMS] is k
    assert Path(k.__file__).is_relative_to(Path(os.environ["JITKERNELS_CACHE"]))
    assert Path(k.__file__).name == "__init__.py" and k.__path__ == [str(Path(k.__file__).parent)]
    x, w = torch.randn(3, 16), torch.rand(16)
    torch.testing.assert_close(k.rms_norm(x, w), _rms_ref(x, w))
    # submodules are ordinary submodules of the hub name (relative imports inside the package work)
    assert k.layers.__name__ == RMS + ".layers"
    assert k.rms_norm.__module__ == RMS + ".functional"
    from jitkernels.hub.hf.jitkernels_examples__rms_norm.layers import RMSNorm

    assert RMSNorm is k.layers.RMSNorm
    # the very module jitkernels.load returns: one pipeline, one import
    assert jitkernels.load("hf", "jitkernels-examples/rms-norm") is k


def test_every_identifier_alias_is_the_same_module(online):
    import jitkernels.hub.hf_kernels.jitkernels_examples__rms_norm as a
    import jitkernels.hub.huggingface.jitkernels_examples__rms_norm as b
    from jitkernels.hub.hf import jitkernels_examples__rms_norm as c

    assert a is b is c
    assert a.__name__ == "jitkernels.hub.hf_kernels.jitkernels_examples__rms_norm"  # the first import names it
    # a submodule through another alias is the same object, never executed twice
    import jitkernels.hub.hf.jitkernels_examples__rms_norm.functional as f

    assert f is sys.modules[a.__name__ + ".functional"]
    assert f.rms_norm is a.rms_norm


def test_module_loaded_by_jitkernels_load_first_is_reused(online):
    k = jitkernels.load("hf", "jitkernels-examples/rms-norm")
    from jitkernels.hub.hf import jitkernels_examples__rms_norm as h

    assert h is k and sys.modules[RMS] is k


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_bare_name_default_org_and_newest_version_branch(online):
    from jitkernels.hub.hf import triton_layer_norm

    # no pin: like jitkernels.load, the newest vN branch (v1: the noarch payload with its own _ops.py)
    assert triton_layer_norm._ops.add_op_namespace_prefix("x").startswith("_triton_layer_norm_")
    assert triton_layer_norm.__name__ == "jitkernels.hub.hf.triton_layer_norm"
    assert callable(triton_layer_norm.layer_norm)
    assert triton_layer_norm.layers.LayerNorm.__module__ == "jitkernels.hub.hf.triton_layer_norm.layers"


def test_alias_packages_list_nothing_and_import_is_cheap(hub, tmp_path):
    code = (
        "import sys, jitkernels\n"
        "assert 'jitkernels.hub' not in sys.modules  # import jitkernels installs no finder\n"
        "n = len(sys.meta_path)\n"
        "import jitkernels.hub.hf as hf, jitkernels.hub.hf_kernels as hk\n"
        "from jitkernels.hub import HubFinder\n"
        "assert len(sys.meta_path) == n + 1\n"
        "assert sys.meta_path[0] is HubFinder\n"
        "assert dir(hf) == [] and hf.__all__ == [] and hk.__path__ == []\n"
        "from jitkernels.hub.hf import *\n"
        "print(sorted(m for m in ('torch', 'huggingface_hub', 'wrapt', 'jitkernels.pipeline') if m in sys.modules))\n"
    )
    out = run_python(code, timeout=60, HF_ENDPOINT=hub.endpoint)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_finder_claims_only_hub_names():
    assert HubFinder.find_spec("json") is None
    assert HubFinder.find_spec("jitkernels.pipeline") is None
    assert HubFinder.find_spec("jitkernels.hub._pins") is None  # private helper modules are files
    assert HubFinder.find_spec("jitkernels.hub.not_a_provider") is None
    assert HubFinder.find_spec("jitkernels.hub.not_a_provider.x") is None
    assert HubFinder.find_spec("jitkernels.hub.hf._private") is None
    assert HubFinder.find_spec("jitkernels.hub.hf").submodule_search_locations == []
    assert HubFinder.find_spec("jitkernels.hub.hf.anything").name == "jitkernels.hub.hf.anything"
    assert HubFinder.find_spec("jitkernels.hub.hf.unimported.sub") is None  # parent's __path__ decides


# -- missing / unsupported ---------------------------------------------------------------


def test_missing_kernel_is_module_not_found_with_reason(online):
    with pytest.raises(KernelModuleNotFoundError) as err:
        from jitkernels.hub.hf import no_such_kernel  # noqa: F401
    exc = err.value
    assert isinstance(exc, ModuleNotFoundError) and isinstance(exc, JitKernelsError)
    assert exc.reason == "not-found" and exc.name == "jitkernels.hub.hf.no_such_kernel"
    assert "kernels-community/no-such-kernel" in str(exc)
    assert "jitkernels.hub.hf.no_such_kernel" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="no-such-kernel"):
        import jitkernels.hub.hf.no_such_kernel  # noqa: F401
    # the idiom optional-kernel code uses
    try:
        import jitkernels.hub.hf_kernels.no_such_kernel as maybe
    except ImportError:
        maybe = None
    assert maybe is None


def test_unsupported_kernel_carries_the_inspection(online):
    jitkernels.pin("hf", "kernels-test/binary-only", version=1, backend="cpu")
    with pytest.raises(KernelModuleNotFoundError) as err:
        from jitkernels.hub.hf import kernels_test__binary_only  # noqa: F401
    assert err.value.reason == "missing-source"
    assert err.value.inspection.reason == "missing-source"
    assert "version=1" in str(err.value) and "pin()" in str(err.value)
    assert not [p for p in online.downloaded() if p.endswith(".so")]


def test_missing_revision_reason(online):
    jitkernels.pin("hf", "jitkernels-examples/rms-norm", version=9)
    with pytest.raises(ImportError) as err:
        import jitkernels.hub.hf.jitkernels_examples__rms_norm as _k  # noqa: F401
    assert err.value.reason == "revision-not-found"


# -- normal package behaviour --------------------------------------------------------------


def test_reload_reexecutes_the_package(online):
    import jitkernels.hub.hf.jitkernels_examples__rms_norm as k

    del k.rms_norm
    k.user_attribute = 1
    again = importlib.reload(k)
    assert again is k and sys.modules[RMS] is k
    assert callable(k.rms_norm) and k.user_attribute == 1  # re-executed in the same namespace
    assert k.__spec__.name == RMS and k.__spec__.origin == k.__file__
    assert importlib.reload(k) is k


def test_getsource_and_tracebacks_point_at_real_files(online):
    from jitkernels.hub.hf import jitkernels_examples__rms_norm as k

    source = inspect.getsource(k.rms_norm)
    assert source.startswith("def rms_norm(") and "rsqrt" in source
    assert "class RMSNorm" in inspect.getsource(k.layers.RMSNorm)
    assert inspect.getsource(k).startswith('"""RMS norm')
    try:
        k.rms_norm(torch.ones(2, 4), torch.ones(5))
    except RuntimeError:
        frames = traceback.extract_tb(sys.exc_info()[2])
    kernel_frame = [f for f in frames if f.name == "rms_norm"][-1]
    assert Path(kernel_frame.filename).is_file()
    assert Path(kernel_frame.filename).parent == Path(k.__file__).parent
    assert "rsqrt" in kernel_frame.line


def test_pickle_by_reference_round_trips_in_a_fresh_process(online, tmp_path):
    from jitkernels.hub.hf import jitkernels_examples__rms_norm as k

    commit = jitkernels.inspect("hf", "jitkernels-examples/rms-norm").revision
    pins = tmp_path / "kernels.lock"
    pins.write_text(json.dumps([{"dependency": {"repo-id": "jitkernels-examples/rms-norm", "revision": "main"},
                                 "lock": {"commit": commit}}]))
    layer = k.layers.RMSNorm()
    layer.weight, layer.variance_epsilon = torch.full((4,), 2.0), 1e-6
    payload = tmp_path / "obj.pkl"
    payload.write_bytes(pickle.dumps({"fn": k.rms_norm, "layer": layer}))
    online.down = True  # pinned commit, prepared in the shared cache: the child needs no Hub
    online.clear_log()
    code = (
        "import pickle, sys, torch\n"
        f"obj = pickle.loads(open({str(payload)!r}, 'rb').read())\n"
        "fn, layer = obj['fn'], obj['layer']\n"
        "print(fn.__module__, type(layer).__module__)\n"
        "print(float(layer(torch.ones(2, 4)).sum()), float(fn(torch.ones(1, 4), torch.ones(4)).sum()))\n"
    )
    out = run_python(code, timeout=120, JITKERNELS_PINS=pins, HF_ENDPOINT=online.endpoint)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == f"{RMS}.functional {RMS}.layers"
    assert [round(float(v), 3) for v in lines[1].split()] == [16.0, 4.0]
    assert online.requests == []


def test_concurrent_imports_give_one_module(online):
    results, errors = [], []

    def worker():
        try:
            results.append(importlib.import_module(RMS))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(m) for m in results}) == 1


def _importer(got: dict, errors: list):
    """A thread's target: import a name into ``got``, or put the traceback in ``errors``."""
    def work(name):
        try:
            got[name] = importlib.import_module(name)
        except BaseException as exc:  # pragma: no cover - reported by the test
            errors.append("".join(traceback.format_exception(exc)))
    return work


@pytest.mark.parametrize("submodule", ["layers", "functional"])
def test_submodule_imported_while_another_thread_imports_the_kernel(online, submodule):
    # One thread imports the kernel and is still fetching it (a stalled download) when another imports
    # a submodule. Before: the second got "'...' is not a package", or importlib's _DeadlockError
    # (the first thread's kernel lock vs the second's submodule lock, taken in the opposite order).
    # The kernel's __init__ does `from . import layers` and `from .functional import rms_norm`: the
    # second form takes the very module object the waiting import made (it was once left empty).
    online.stall.add("torch-ext/rms_norm/functional.py")
    got, errors = {}, []
    work = _importer(got, errors)

    first = threading.Thread(target=work, args=(RMS,))
    second = threading.Thread(target=work, args=(f"{RMS}.{submodule}",))
    first.start()
    try:
        assert wait_for(lambda: RMS in sys.modules, 60), "the import never started"
        second.start()
        second.join(0.5)  # it waits for the first (its error came at once)
    finally:
        online.stall.clear()
    first.join(120)
    second.join(120)
    assert errors == [], errors[0]
    assert got[f"{RMS}.{submodule}"] is getattr(got[RMS], submodule) and got[RMS].__name__ == RMS
    assert got[RMS].layers.RMSNorm.__module__ == RMS + ".layers"
    assert got[RMS].rms_norm.__module__ == RMS + ".functional"


def _waits_for_its_kernel(thread: threading.Thread) -> bool:
    """Whether ``thread`` is in the hub's wait for a kernel another thread is still importing."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "create_module" and frame.f_code.co_filename == jitkernels.hub.__file__:
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize("submodule", ["layers", "layers.extra"])
def test_a_package_submodule_imported_while_another_thread_imports_the_kernel(online, submodule):
    # A kernel whose `layers` is a package (layers/__init__.py imports layers/extra.py, as kernels with
    # sub-packages do): one thread imports the kernel (a stalled download), another `layers` or
    # `layers.extra`. Before: "'...layers' is not a package" (the waiting module had no __path__ yet).
    files = tree(EXAMPLES / "rms-norm")
    layers = files.pop("torch-ext/rms_norm/layers.py").decode()
    files["torch-ext/rms_norm/layers/__init__.py"] = b"from .extra import RMSNorm\n"
    files["torch-ext/rms_norm/layers/extra.py"] = layers.replace("from .functional", "from ..functional").encode()
    online.add_repo("kernels-test/rms-norm-nested", {"main": files})
    kernel = "jitkernels.hub.hf.kernels_test__rms_norm_nested"
    online.stall.add("torch-ext/rms_norm/functional.py")
    got, errors = {}, []
    work = _importer(got, errors)

    threads = [threading.Thread(target=work, args=(n,)) for n in (kernel, f"{kernel}.{submodule}")]
    threads[0].start()
    try:
        assert wait_for(lambda: kernel in sys.modules, 60), "the import never started"
        threads[1].start()
        assert wait_for(lambda: _waits_for_its_kernel(threads[1]) or not threads[1].is_alive(), 60)
    finally:
        online.stall.clear()
    for t in threads:
        t.join(120)
    assert errors == [], errors[0]
    assert got[f"{kernel}.{submodule}"] is sys.modules[f"{kernel}.{submodule}"]
    assert got[kernel].layers is sys.modules[kernel + ".layers"] and got[kernel].layers.extra.RMSNorm
    assert got[kernel].layers.RMSNorm.__module__ == kernel + ".layers.extra"
    assert got[kernel].layers.__path__ == [str(Path(got[kernel].__file__).parent / "layers")]


@pytest.mark.parametrize("error", [ConnectionError("the Hub went away"), OfflineError("offline, nothing cached")],
                         ids=["network-error", "offline"])
def test_a_submodule_import_waiting_for_a_kernel_whose_import_fails_gets_that_error(online, monkeypatch, error):
    # The waiting thread gets what the kernel's own import raised: a network error stays one (as without
    # threads), a missing kernel is the project's KernelModuleNotFoundError with its reason. Before: a bare
    # ModuleNotFoundError, which `except ImportError` takes for "kernel not installed".
    release = threading.Event()

    calls = []

    def fetch_then_fail(*args, **kwargs):  # the first import fails; a later one would load the kernel
        calls.append(1)
        if len(calls) == 1:
            release.wait(60)
            raise error
        return None

    monkeypatch.setattr(jitkernels.hub, "_warm", fetch_then_fail)
    got = {}

    def work(name):
        try:
            importlib.import_module(name)
        except BaseException as exc:
            got[name] = exc

    threads = [threading.Thread(target=work, args=(name,)) for name in (RMS, RMS + ".layers")]
    threads[0].start()
    try:
        assert wait_for(lambda: RMS in sys.modules, 60), "the import never started"
        threads[1].start()
        assert wait_for(lambda: _waits_for_its_kernel(threads[1]), 60), "the submodule import never waited"
    finally:
        release.set()
    for t in threads:
        t.join(60)
    kernel, waiter = got[RMS], got[RMS + ".layers"]
    if isinstance(error, ConnectionError):
        assert kernel is error and waiter is error
    else:
        assert isinstance(kernel, KernelModuleNotFoundError) and kernel.reason == "offline"
        assert isinstance(waiter, KernelModuleNotFoundError) and waiter.reason == "offline"
        assert waiter.name == RMS + ".layers" and "offline, nothing cached" in str(waiter)
    assert RMS not in sys.modules and RMS + ".layers" not in sys.modules


# -- pinning ----------------------------------------------------------------------------------


def test_pin_selects_the_commit_and_reload_follows_the_pin(online):
    _two_branch_repo(online, "kernels-test/pin-me")
    main = jitkernels.inspect("hf", "kernels-test/pin-me", revision="main").revision
    other = jitkernels.inspect("hf", "kernels-test/pin-me", revision="other").revision
    assert main != other
    jitkernels.pin("hf", "kernels_test/pin_me", revision=other)  # any spelling of the repo is one key
    import jitkernels.hub.hf.kernels_test__pin_me as k

    assert k.WHICH == "other"
    assert jitkernels.hub.pins()[("hf_kernels", "kernels-test/pin-me")].revision == other
    jitkernels.pin("hf_kernels", "kernels-test/pin-me", revision=main)
    k2 = importlib.reload(k)
    assert k2.WHICH == "main" and sys.modules["jitkernels.hub.hf.kernels_test__pin_me"] is k2
    assert k2.functional.WHICH == "main" and k.functional.WHICH == "other"  # no stale submodule
    assert sys.modules["jitkernels.hub.hf.kernels_test__pin_me.functional"] is k2.functional
    assert jitkernels.hub.unpin("hf", "kernels-test/pin-me").revision == main


def test_pin_files_upstream_lock_and_jitkernels_format(online, tmp_path, monkeypatch):
    _two_branch_repo(online, "kernels-test/pin-me")
    other = jitkernels.inspect("hf", "kernels-test/pin-me", revision="other").revision
    lock = tmp_path / "kernels.lock"
    lock.write_text(json.dumps([{"dependency": {"repo-id": "kernels-test/pin-me", "version": 1},
                                 "lock": {"commit": other}}]))
    monkeypatch.setenv("JITKERNELS_PINS", str(lock))
    from jitkernels.hub.hf import kernels_test__pin_me as k

    assert k.WHICH == "other"

    # write_pins() -> a JitKernels pin file that a fresh process honours
    jitkernels.hub.clear_pins()
    jitkernels.pin("hf", "kernels-test/pin-me", revision="main")
    pin_file = jitkernels.hub.write_pins(tmp_path / "jitkernels.lock.json")
    data = json.loads(pin_file.read_text())
    assert data == {"version": 1, "pins": [{"provider": "hf_kernels", "name": "kernels-test/pin-me",
                                            "revision": "main"}]}
    code = "import jitkernels.hub.hf.kernels_test__pin_me as k; print(k.WHICH)"
    for pins, expected in ((pin_file, "main"), (lock, "other"),
                           (f"{pin_file}{os.pathsep}{lock}", "main")):  # earlier files win
        out = run_python(code, timeout=120, JITKERNELS_PINS=pins, HF_ENDPOINT=online.endpoint)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


def test_bad_pins_are_clear_errors(online, tmp_path, monkeypatch):
    from jitkernels.errors import InvalidKernelNameError, LockfileError

    with pytest.raises(InvalidKernelNameError):
        jitkernels.pin("hf", "rms-norm")
    with pytest.raises(InvalidKernelNameError):
        jitkernels.pin("hf", "rms-norm", revision="main", version=1)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"dependency": {"repo-id": "a/b"}, "lock": {"commit": "nothex"}}]))
    monkeypatch.setenv("JITKERNELS_PINS", str(bad))
    with pytest.raises(LockfileError, match="40 or 64 hex"):
        import jitkernels.hub.hf.jitkernels_examples__rms_norm as _k  # noqa: F401
