"""`jitkernels build`: prepare kernels into the cache without importing them."""

from __future__ import annotations

import sys

import pytest

import jitkernels
from jitkernels import config
from jitkernels.cli.main import main


@pytest.mark.parametrize("argv,message", [
    (["--backend", "cpu", "--arch", "9.0"], "--arch needs --backend cuda"),
    (["--backend", "cuda", "--arch", "sm_90"], "is not a CUDA capability"),
    (["--backend", "cuda", "--arch", "9.0,hopper"], "is not a CUDA capability"),
])
def test_arch_usage_errors(argv, message, capsys):
    assert main(["build", "jitkernels-examples/scaled-add", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not config.cache_dir().exists()  # nothing fetched, nothing written


def test_arch_suffixes_name_the_gpu_capability():
    from jitkernels.cli.main import _normalise_archs

    assert _normalise_archs(["9.0a", "8.0,8.9", "10.0f", "9.0", "8.6+PTX"]) == ["9.0", "8.0", "8.9", "10.0", "8.6+PTX"]


def test_build_prepares_and_indexes_without_importing_then_a_pinned_load_is_warm(online, monkeypatch, capsys):
    commit = jitkernels.inspect("hf", "jitkernels-examples/rms-norm", revision="main", backend="cpu").revision
    name = jitkernels.inspect("hf", "jitkernels-examples/rms-norm", revision="main", backend="cpu").module_name
    already = sys.modules.get(name)  # an earlier test may have loaded the same content from its own cache
    assert main(["build", "jitkernels-examples/rms-norm", "--revision", "main", "--backend", "cpu"]) == 0
    assert "cpu ready in" in capsys.readouterr().err
    assert sys.modules.get(name) is already  # prepared, never imported
    online.down = True  # the Hub is gone: the pinned load is served by the index the build wrote
    online.clear_log()
    k = jitkernels.load("hf", "jitkernels-examples/rms-norm", revision=commit, backend="cpu")
    assert k.__name__ == name and online.requests == []


def test_build_failure_reports_each_kernel_and_exits_1(online, capsys):
    assert main(["build", "kernels-test/missing-src", "jitkernels-examples/rms-norm", "--revision", "main",
                 "--backend", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "[1/2] kernels-test/missing-src: FAILED" in err and "[2/2] jitkernels-examples/rms-norm: cpu ready" in err
    assert "error: 1 of 2 kernels failed to build" in err


def test_untrusted_publisher_needs_trust_remote_code(online, capsys):
    assert main(["build", "some-user/rms-norm", "--revision", "main", "--backend", "cpu"]) == 1
    assert "trust_remote_code" in capsys.readouterr().err
    assert main(["build", "some-user/rms-norm", "--revision", "main", "--backend", "cpu",
                 "--trust-remote-code"]) == 0
