"""Trust: whose code may run, for every way a kernel is loaded (pinned or not, online or offline)."""

from __future__ import annotations

import importlib

import json
import os
from pathlib import Path

import pytest
import torch

import jitkernels
from jitkernels.errors import TrustError

from conftest import EXAMPLES, RMS, UNTRUSTED, entry_dirs, go_offline, run_python, tree


def test_untrusted_publisher_needs_opt_in(online, monkeypatch):
    with pytest.raises(TrustError, match="trust_remote_code=True") as err:
        jitkernels.load("hf", "some-user/rms-norm", revision="main", backend="cpu")
    assert "JITKERNELS_TRUSTED" in str(err.value)
    assert not entry_dirs("_rms_norm")  # nothing prepared
    k = jitkernels.load("hf", "some-user/rms-norm", revision="main", backend="cpu", trust_remote_code=True)
    assert k.rms_norm(torch.ones(1, 4), torch.ones(4)).shape == (1, 4)
    k2 = jitkernels.load("hf", "some-user/rms-norm", revision="main", backend="cpu",
                         trust_remote_code=["some-user/rms-norm"])
    assert k2 is k
    monkeypatch.setenv("JITKERNELS_TRUSTED", "some-user")
    assert jitkernels.load("hf", "some-user/rms-norm", revision="main", backend="cpu") is k


def test_trusted_publishers_load_by_default(online):
    assert jitkernels.load("hf", RMS, revision="main", backend="cpu") is not None


def test_offline_untrusted_kernel_in_the_hf_cache_is_refused_everywhere(online, monkeypatch):
    jitkernels.inspect("hf", UNTRUSTED, revision="main", backend="cpu")  # fills huggingface_hub's cache
    jitkernels.inspect("hf", UNTRUSTED, backend="cpu")  # and our record of the default revision
    assert jitkernels.has("hf", UNTRUSTED, revision="main", backend="cpu")
    go_offline(monkeypatch)
    with pytest.raises(TrustError, match="trust_remote_code"):
        jitkernels.load("hf", UNTRUSTED, revision="main", backend="cpu")
    with pytest.raises(TrustError):
        importlib.import_module("jitkernels.hub.hf.some_user__rms_norm")
    import kernels

    with jitkernels.patch():
        with pytest.raises(TrustError):
            kernels.get_kernel(UNTRUSTED, revision="main")
    assert not entry_dirs("_rms_norm")  # nothing of it was prepared, let alone imported
    # trust given by this call still works offline
    k = jitkernels.load("hf", UNTRUSTED, revision="main", backend="cpu", trust_remote_code=True)
    assert k.rms_norm is not None


def test_trust_given_by_a_caller_is_not_remembered_pinned_or_unpinned(online):
    commit = jitkernels.inspect("hf", UNTRUSTED, revision="main", backend="cpu").revision
    jitkernels.load("hf", UNTRUSTED, revision="main", backend="cpu", trust_remote_code=True)
    code = """
        import jitkernels
        from jitkernels.errors import TrustError
        for rev in ({commit!r}, "main"):
            try:
                jitkernels.load("hf", {name!r}, revision=rev, backend="cpu")
                print("LOADED", rev)
            except TrustError:
                print("REFUSED", rev)
    """.format(commit=commit, name=UNTRUSTED)
    for offline in ("0", "1"):
        out = run_python(code, HF_HUB_OFFLINE=offline, HF_ENDPOINT=online.endpoint)
        assert out.stdout.split() == ["REFUSED", commit, "REFUSED", "main"], (offline, out.stdout, out.stderr)


def test_a_hub_flag_grant_is_recorded_and_serves_offline_loads(online, monkeypatch):
    online.add_repo("flagged-org/rms-norm", {"main": tree(EXAMPLES / "rms-norm")})
    online.set_org("flagged-org", trusted=True)
    k = jitkernels.load("hf", "flagged-org/rms-norm", revision="main", backend="cpu")
    record = json.loads(next(Path(os.environ["JITKERNELS_CACHE"], "trust").rglob("*.json")).read_text())
    assert record["repo_id"] == "flagged-org/rms-norm" and record["granted_by"] == "hub-flag"
    assert record["commit"] == jitkernels.inspect("hf", "flagged-org/rms-norm", revision="main", backend="cpu").revision
    out = run_python(
        "import jitkernels; print(jitkernels.load('hf', 'flagged-org/rms-norm', revision='main', backend='cpu').__name__)",
        HF_HUB_OFFLINE="1")
    assert out.returncode == 0 and out.stdout.strip() == k.__name__, out.stderr


def test_a_trust_grant_is_not_remembered_in_process_either(online):
    commit = jitkernels.inspect("hf", UNTRUSTED, revision="main", backend="cpu").revision
    jitkernels.load("hf", UNTRUSTED, revision=commit, backend="cpu", trust_remote_code=True)
    with pytest.raises(TrustError):
        jitkernels.load("hf", UNTRUSTED, revision=commit, backend="cpu")


def test_no_request_reaches_a_source_url_an_untrusted_publisher_chose_before_trust(online):
    """inspect, has(), patched has_kernel and the CLI git-fetched metadata.json's `source` (7 requests to a
    127.0.0.1 address) for a publisher nobody trusts (issue 14, defect 7)."""
    import kernels

    from jitkernels.cli.main import main
    from jitkernels.errors import FetchError

    from conftest import binary_variant
    from cutlass_archives import ArchiveServer

    with ArchiveServer({}) as evil:  # answers 404 to everything, and records every request
        source = f"{evil.url}/evil.git"
        online.add_repo("evilorg/binonly", {"v1": binary_variant(
            "binonly", "binonly", "torch-stable-abi210-cpu-x86_64-linux", "cpu",
            source=source, provenance={"kernel": {"commit": "c" * 40, "dirty": False}})})
        online.set_org("evilorg", trusted=False)

        i = jitkernels.inspect("hf", "evilorg/binonly", version=1, backend="cpu")
        assert (i.strategy, i.reason) == ("unsupported", "untrusted-source")
        assert source in i.detail and "trust_remote_code" in i.detail and "JITKERNELS_TRUSTED" in i.detail
        assert jitkernels.has("hf", "evilorg/binonly", version=1, backend="cpu") is False
        with jitkernels.patch():
            assert kernels.has_kernel("evilorg/binonly", version=1, backend="cpu") is False
        assert main(["inspect", "evilorg/binonly", "--version", "1", "--backend", "cpu"]) == 0
        assert main(["doctor", "evilorg/binonly", "--version", "1", "--backend", "cpu"]) == 1
        with pytest.raises(TrustError):
            jitkernels.load("hf", "evilorg/binonly", version=1, backend="cpu")
        assert evil.requests == []

        # With trust granted the source is fetched; it is not there: has() is False, never a FetchError.
        assert jitkernels.has("hf", "evilorg/binonly", version=1, backend="cpu", trust_remote_code=True) is False
        assert evil.requests, "with trust the source is fetched"
        with pytest.raises(FetchError, match="evil.git"):
            jitkernels.inspect("hf", "evilorg/binonly", version=1, backend="cpu", trust_remote_code=["evilorg/binonly"])


def test_the_trust_advice_for_a_kernel_dependency_is_true(online, monkeypatch):
    """A kernel-depends entry of an untrusted publisher: the error said "pass trust_remote_code=True", which the
    dependency then ignored (issue 14, defect 11). The grant now reaches the dependencies it names; every way
    the error advises works."""
    files = tree(EXAMPLES / "rms-norm")
    files["build.toml"] = files["build.toml"].replace(
        b"[general.hub]", f'kernel-depends = [{{ repo-id = "{UNTRUSTED}", revision = "main" }}]\n\n[general.hub]'.encode())
    online.add_repo("kernels-test/needs-untrusted", {"main": files})
    with pytest.raises(TrustError) as err:
        jitkernels.load("hf", "kernels-test/needs-untrusted", revision="main", backend="cpu")
    message = str(err.value)
    assert message.startswith(f"kernels-test/needs-untrusted needs kernel {UNTRUSTED}@main (kernel-depends)")
    assert "trust_remote_code=True" in message and f"trust_remote_code=[{UNTRUSTED!r}]" in message
    assert "JITKERNELS_TRUSTED" in message
    assert not entry_dirs("_rms_norm")  # neither the dependency nor the kernel was prepared

    with pytest.raises(TrustError):  # a list that names only the kernel does not reach its dependency
        jitkernels.load("hf", "kernels-test/needs-untrusted", revision="main", backend="cpu",
                        trust_remote_code=["kernels-test/needs-untrusted"])
    for grant in (True, [UNTRUSTED]):  # what the message says, followed word for word
        k = jitkernels.load("hf", "kernels-test/needs-untrusted", revision="main", backend="cpu", trust_remote_code=grant)
        assert k.rms_norm(torch.ones(1, 4), torch.ones(4)).shape == (1, 4)
    out = run_python("import jitkernels; print(jitkernels.load('hf', 'kernels-test/needs-untrusted', "
                     "revision='main', backend='cpu').rms_norm.__name__)",
                     JITKERNELS_TRUSTED=UNTRUSTED.split("/")[0], HF_ENDPOINT=online.endpoint)
    assert out.returncode == 0 and out.stdout.strip() == "rms_norm", out.stderr[-2000:]
