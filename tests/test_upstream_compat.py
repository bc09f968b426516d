"""Under ``patch()``, code written for upstream ``kernels`` keeps working: its exception types, its
``kernelize`` fallback, an opt-in hand-over to upstream's binaries, and the redirected helpers."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

kernels = pytest.importorskip("kernels")

import jitkernels  # noqa: E402
from jitkernels.errors import (  # noqa: E402
    KernelNotFoundError,
    OfflineError,
    PatchError,
    RevisionNotFoundError,
    TrustError,
    UnsupportedKernelError,
)

from conftest import metadata  # noqa: E402

RMS = "jitkernels-examples/rms-norm"
BINARY = "kernels-test/prebuilt-only"


@pytest.fixture(autouse=True)
def unpatched():
    jitkernels.unpatch()
    yield
    jitkernels.unpatch()


@pytest.fixture
def prebuilt_only(online):
    """A repo with only a compiled build variant for this torch (no source): JitKernels cannot build it,
    upstream can load it. Its package is plain Python so that upstream's loader really imports it here."""
    major, minor = torch.__version__.split(".")[:2]
    variant = f"build/torch{major}{minor}-cxx11-cpu-x86_64-linux/"
    online.add_repo(BINARY, {"v1": {
        variant + "__init__.py": b"FROM = 'the prebuilt variant'\n\ndef double(x):\n    return 2 * x\n",
        variant + "_ops.py": b"import torch\nops = torch.ops._prebuilt_only_cpu_0a1b2c3\n",
        variant + "metadata.json": metadata("prebuilt-only", "_prebuilt_only_cpu_0a1b2c3", "cpu"),
    }})
    return online


def _model():
    from kernels import use_kernel_forward_from_hub

    @use_kernel_forward_from_hub("RMSNorm")
    class MyRMSNorm(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(n))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            return x + 1  # the original forward, recognisable

    return torch.nn.Sequential(MyRMSNorm(4))


def _kernelize(repo, use_fallback):
    from kernels import Mode, kernelize, use_kernel_mapping

    model = _model()
    with use_kernel_mapping({"RMSNorm": {"cpu": repo}}, inherit_mapping=False):
        kernelize(model, mode=Mode.INFERENCE, device="cpu", use_fallback=use_fallback)
    return model


# -- errors are upstream's types too ------------------------------------------------------------------

def test_kernelize_falls_back_to_the_original_layer_when_jitkernels_cannot_build(prebuilt_only):
    from kernels import KernelizeFallback, LayerRepository

    repo = LayerRepository(BINARY, layer_name="RMSNorm", version=1)
    jitkernels.patch()
    model = _kernelize(repo, KernelizeFallback.ALL)  # upstream's contract: FileNotFoundError -> original forward
    assert torch.equal(model(torch.zeros(2, 4)), torch.ones(2, 4))
    with pytest.raises(FileNotFoundError) as info:  # without the fallback: upstream's type, and ours
        _kernelize(repo, KernelizeFallback.DEFAULT)
    assert isinstance(info.value, UnsupportedKernelError)
    assert info.value.inspection.reason == "missing-source"
    assert f"Cannot load kernel {BINARY} for cpu (missing-source)" in str(info.value)


def test_errors_through_patched_functions_are_upstreams_types_too(online):
    from huggingface_hub import errors as hf_errors

    jitkernels.patch()
    with pytest.raises(hf_errors.RepositoryNotFoundError) as missing:
        kernels.get_kernel("kernels-community/no-such-kernel", version=1)
    assert isinstance(missing.value, KernelNotFoundError) and "was not found" in str(missing.value)
    with pytest.raises(ValueError) as no_version:
        kernels.get_kernel(RMS, version=7)
    assert isinstance(no_version.value, RevisionNotFoundError)
    assert isinstance(no_version.value, hf_errors.RevisionNotFoundError)
    with pytest.raises(ValueError) as untrusted:
        kernels.get_kernel("some-user/rms-norm", revision="main")
    assert isinstance(untrusted.value, TrustError) and "trust_remote_code" in str(untrusted.value)


def test_offline_and_not_cached_is_a_file_not_found_error_as_upstream(online, offline):
    jitkernels.patch()
    with pytest.raises(FileNotFoundError) as info:
        kernels.get_kernel(RMS, revision="main")
    assert isinstance(info.value, OfflineError)


# -- opt-in fallback to upstream's binary loader ------------------------------------------------------

def test_fallback_is_off_by_default(prebuilt_only):
    jitkernels.patch()
    with pytest.raises(UnsupportedKernelError):
        kernels.get_kernel(BINARY, version=1)
    assert kernels.has_kernel(BINARY, version=1) is False


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_fallback_upstream_hands_over_with_one_line(prebuilt_only, caplog, monkeypatch, how):
    from jitkernels import log

    monkeypatch.setattr(log, "_SAID", set())  # the line is said once per process
    caplog.set_level(logging.WARNING, logger="jitkernels")
    if how == "argument":
        jitkernels.patch(fallback="upstream")
    else:
        monkeypatch.setenv("JITKERNELS_FALLBACK", "upstream")
        jitkernels.patch()
    prebuilt_only.clear_log()
    k = kernels.get_kernel(BINARY, version=1)
    assert k.FROM == "the prebuilt variant" and k.double(3) == 6
    assert [p for m, p in prebuilt_only.requests if "/tree/" in p and "build" in p]  # upstream's variant listing
    said = [r.getMessage() for r in caplog.records if r.name == "jitkernels" and BINARY in r.getMessage()]
    assert len(said) == 1 and "missing-source" in said[0] and "upstream" in said[0]
    assert kernels.has_kernel(BINARY, version=1) is True  # upstream has a variant
    # Kernels JitKernels can build never go to upstream.
    rms = kernels.get_kernel(RMS, revision="main")
    assert rms is jitkernels.load("hf", RMS, revision="main")


def test_fallback_value_is_checked():
    with pytest.raises(PatchError, match="fallback='upstream'"):
        jitkernels.patch(fallback="binaries")


# -- the helpers that were upstream-only ---------------------------------------------------------------

def test_install_kernel_prepares_and_returns_the_package_folder(online):
    import os

    jitkernels.patch()
    with pytest.raises(FileNotFoundError):  # local_files_only and never fetched: nothing is fetched
        kernels.install_kernel(RMS, revision="main", local_files_only=True)
    assert online.downloaded() == []
    path = kernels.install_kernel(RMS, revision="main")
    assert (path / "__init__.py").exists() and path.is_relative_to(Path(os.environ["JITKERNELS_CACHE"]))
    assert kernels.install_kernel(RMS, revision="main", local_files_only=True) == path


def test_get_loaded_kernels_lists_what_jitkernels_loaded(online):
    jitkernels.patch()
    k = kernels.get_kernel(RMS, revision="main")
    loaded = [entry for entry in kernels.get_loaded_kernels() if entry.module is k]
    assert len(loaded) == 1
    entry = loaded[0]
    assert entry.metadata.id == k.__name__ and str(entry.metadata.name) == "rms-norm"
    assert entry.repo_info.repo_id == RMS
    assert entry.repo_info.revision == jitkernels.inspect("hf", RMS, revision="main").revision
    jitkernels.unpatch()
    assert not [e for e in kernels.get_loaded_kernels() if e.module is k]  # upstream's own registry only


def test_get_kernel_dep_returns_the_loaded_kernel(online, monkeypatch):
    from jitkernels.upstream import patching

    monkeypatch.setattr(patching, "_LOADED", {})  # process-wide, like upstream's registry: start from none
    jitkernels.patch()
    with pytest.raises(RuntimeError, match="not found in kernel dependencies"):
        kernels.get_kernel_dep(RMS)
    k = kernels.get_kernel(RMS, revision="main")
    assert kernels.get_kernel_dep(RMS) is k
    deps_module = sys.modules[kernels.get_kernel_dep.__module__]  # kernels.deps; kernels._internals.deps in 0.19
    assert deps_module.get_kernel_dep(RMS) is k


# -- upstream's cache variables -------------------------------------------------------------------------

@pytest.mark.parametrize("var", ["KERNELS_CACHE", "HF_KERNELS_CACHE"])
def test_kernels_cache_variables_are_honoured(online, tmp_path, monkeypatch, caplog, var):
    caplog.set_level(logging.WARNING, logger="jitkernels")
    monkeypatch.setenv(var, str(tmp_path / "kernel-downloads"))
    jitkernels.load("hf", RMS, revision="main")
    stored = tmp_path / "kernel-downloads" / "kernels--jitkernels-examples--rms-norm"
    assert list(stored.glob("snapshots/*/build.toml"))
    deprecated = [r.getMessage() for r in caplog.records if "HF_KERNELS_CACHE" in r.getMessage()]
    assert bool(deprecated) == (var == "HF_KERNELS_CACHE")
