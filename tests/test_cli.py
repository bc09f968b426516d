"""The operator commands: output, ``--json`` on every command (errors included), exit codes, warmup from files."""

from __future__ import annotations

import json
import subprocess
import sys
import threading


import pytest

import jitkernels
from jitkernels import batch
from jitkernels.cli.main import COMMANDS, build_parser, main

from conftest import child_env

RMS = "jitkernels-examples/rms-norm"
TLN = "kernels-community/triton-layer-norm"


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _cli(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jitkernels", *args], capture_output=True, text=True, timeout=300,
                          env=child_env(**env))


# -- every command -------------------------------------------------------------------------------------

def test_every_command_takes_json():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert len(sub.choices) == len(COMMANDS)
    for name, parser in sub.choices.items():
        assert any("--json" in a.option_strings for a in parser._actions), name


def test_version():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"jitkernels {jitkernels.__version__}"


def test_errors_are_json_objects_with_json(online, capsys):
    assert main(["inspect", "kernels-community/no-such-kernel", "--revision", "main", "--json"]) == 1
    error = _json(capsys)["error"]
    assert error["type"] == "KernelNotFoundError" and error["exit_code"] == 1
    assert "kernels-community/no-such-kernel" in error["message"]
    assert main(["inspect", "kernels-community/no-such-kernel", "--revision", "main"]) == 1
    assert capsys.readouterr().err.startswith("error: Kernel repository 'kernels-community/no-such-kernel'")


def test_usage_errors_are_json_with_json_and_exit_2():
    out = _cli("warmup", "--jobs", "many", "--json")
    assert out.returncode == 2
    error = json.loads(out.stdout)["error"]
    assert error["type"] == "UsageError" and "--jobs" in error["message"] and error["exit_code"] == 2
    plain = _cli("warmup", "--jobs", "many")
    assert plain.returncode == 2 and plain.stdout == "" and "invalid int value" in plain.stderr


def test_cache_verify_lock_json(online, capsys, tmp_path, monkeypatch):
    import os

    assert main(["cache", "--json"]) == 0
    assert _json(capsys) == {"cache_dir": os.environ["JITKERNELS_CACHE"]}
    assert main(["verify", "--json"]) == 0
    assert _json(capsys) == {"entries": 0, "intact": 0, "damaged": []}
    lock = tmp_path / "jk.lock"
    assert main(["lock", RMS, "--revision", "main", "--backend", "cpu", "-o", str(lock), "--json"]) == 0
    data = _json(capsys)
    commit = jitkernels.inspect("hf", RMS, revision="main", backend="cpu").revision
    assert data == {"output": str(lock), "kernels": [{"repo_id": RMS, "commit": commit, "files": 4}]}


# -- warmup --------------------------------------------------------------------------------------------

def test_warmup_from_an_upstream_lock_and_a_list_with_failures_listed(online, tmp_path, capsys):
    commit = jitkernels.inspect("hf", RMS, revision="main", backend="cpu").revision
    lock = tmp_path / "kernels.lock"
    lock.write_text(json.dumps([{"dependency": {"repo-id": RMS, "revision": "main"}, "lock": {"commit": commit}}]))
    assert main(["warmup", "--from", str(lock), "--backend", "cpu", "--json"]) == 0
    data = _json(capsys)
    assert data["ok"] and data["failed"] == 0
    [kernel] = data["kernels"]
    assert kernel["name"] == RMS and kernel["revision"] == commit and kernel["ok"]
    assert kernel["module"] == jitkernels.load("hf", RMS, revision=commit, backend="cpu").__name__

    listing = tmp_path / "kernels.txt"
    listing.write_text(f"# what the service needs\n{RMS}@main\n\nkernels-test/binary-only@v1\n"
                       "kernels-community/no-such-kernel   # a typo\n")
    code = main(["warmup", "--from", str(listing), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{RMS}@main: ready in " in err
    assert "error: 2 of 3 kernels failed to warm up:" in err
    assert "kernels-test/binary-only@v1: UnsupportedKernelError: Cannot load kernel kernels-test/binary-only " \
           "for cpu (missing-source)" in err
    assert "kernels-community/no-such-kernel: KernelNotFoundError: Kernel repository " in err

    assert main(["warmup", "--from", str(listing), "--backend", "cpu", "--json"]) == 1
    data = _json(capsys)
    assert not data["ok"] and data["failed"] == 2
    reasons = {k["name"]: (k["error"] or {}).get("reason") for k in data["kernels"]}
    assert reasons["kernels-test/binary-only"] == "missing-source"


def test_warmup_file_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("relu gelu\n")
    assert main(["warmup", "--from", str(bad)]) == 1
    assert "bad.txt:1: 'relu gelu' is not a kernel name" in capsys.readouterr().err
    assert main(["warmup", "--from", str(tmp_path / "missing.lock"), "--json"]) == 1
    assert _json(capsys)["error"]["type"] == "LockfileError"
    assert main(["warmup"]) == 1
    assert "name kernels, or give a file with --from" in capsys.readouterr().err


def test_warmup_runs_in_parallel_with_a_bounded_pool(monkeypatch):
    from jitkernels import pipeline

    running, peak, lock = 0, 0, threading.Lock()
    together = threading.Barrier(2)  # the first two loads meet here: both in flight at once

    def fake_load(provider, name, **kwargs):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        if name in ("a", "b"):
            together.wait(timeout=30)
        with lock:
            running -= 1
        if name == "broken":
            raise jitkernels.errors.BuildError("Compiling broken for cpu failed in a.cpp (ninja exit 1).")
        return type(sys)(f"_{name}_cpu_0")

    monkeypatch.setattr(pipeline, "load_kernel", fake_load)
    targets = [batch.Target(n) for n in ("a", "b", "c", "broken", "e")]
    outcomes = batch.run("hf", targets, jobs=2)
    assert peak == 2
    assert [o.ok for o in outcomes] == [True, True, True, False, True]
    assert outcomes[3].error == {"type": "BuildError", "message": "Compiling broken for cpu failed in a.cpp "
                                                                  "(ninja exit 1)."}
    peak, together = 0, threading.Barrier(4)  # by default four run at once

    def fake_load(provider, name, **kwargs):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        if name in ("a", "b", "c", "broken"):
            together.wait(timeout=30)
        with lock:
            running -= 1
        return type(sys)(f"_{name}_cpu_0")

    monkeypatch.setattr(pipeline, "load_kernel", fake_load)
    batch.run("hf", targets, jobs=None)
    assert peak == 4  # the default bound


def test_warmup_shows_one_combined_progress(online, tmp_path):
    out = _cli("warmup", RMS, TLN, "--revision", "main", "--backend", "cpu", "-j", "2",
               JITKERNELS_PROGRESS_INTERVAL="0.1", HF_ENDPOINT=online.endpoint,
               HF_HUB_CACHE=tmp_path / "hf", JITKERNELS_CACHE=tmp_path / "c")
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stderr.splitlines() if l.startswith("jitkernels: ")]
    assert lines and all(l.startswith("jitkernels: warmup: ") for l in lines), lines
    assert lines[0] == "jitkernels: warmup: 0/2 kernels [00:00 elapsed]"
    assert lines[-1].startswith("jitkernels: warmup: 2/2 kernels [")
    assert f"{RMS}@main: ready in " in out.stderr and f"{TLN}@main: ready in " in out.stderr


# -- doctor --------------------------------------------------------------------------------------------

def test_doctor_reports_the_machine_without_initialising_cuda(online, capsys):
    assert main(["doctor", "--json"]) == 0
    data = _json(capsys)
    assert data["python"]["free_threaded"] is False and data["python"]["abi"].startswith("cp3")
    assert data["torch"]["version"] == __import__("torch").__version__
    assert data["torch"]["stable_abi_served"] == "<= {}.{}".format(*__import__("torch").__version__.split(".")[:2])
    assert data["toolchain"]["ninja"]["path"] and data["toolchain"]["cxx"]["path"]
    assert data["gpus"]["backend"] == "cpu" and data["gpus"]["archs"] == []
    assert data["hub"] == {**data["hub"], "endpoint": online.endpoint, "reachable": True, "status": 200}
    assert data["cache"]["folder"].endswith("jkcache") and data["cache"]["entries"] == 0
    assert data["packages"]["jitkernels"] == jitkernels.__version__
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "[toolchain]" in text and "ninja.path" in text and "[hub]" in text


def test_doctor_hub_unreachable_and_offline(online, capsys, monkeypatch):
    online.down = True
    assert main(["doctor", "--json"]) == 0
    hub = _json(capsys)["hub"]
    assert hub["reachable"] is False and hub["seconds"] < 3
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["doctor", "--json"]) == 0
    assert _json(capsys)["hub"]["checked"] is False


def test_doctor_name_says_what_would_happen_and_why(online, capsys):
    assert main(["doctor", RMS, "--revision", "main", "--backend", "cpu", "--json"]) == 0
    k = _json(capsys)["kernel"]
    assert k["would"] == "import" and k["strategy"] == "python"
    jitkernels.load("hf", RMS, revision="main", backend="cpu")
    assert main(["doctor", RMS, "--revision", "main", "--backend", "cpu", "--json"]) == 0
    assert _json(capsys)["kernel"]["would"] == "load-cached"

    assert main(["doctor", "jitkernels-examples/scaled-add", "--revision", "main", "--backend", "cpu",
                 "--json"]) == 0
    k = _json(capsys)["kernel"]
    assert k["would"] == "compile" and "compiled here once" in k["why"]

    assert main(["doctor", "kernels-test/cutlass-gemm", "--revision", "main", "--backend", "cuda"]) == 1
    out = capsys.readouterr().out  # CUTLASS resolves; what is missing here is a GPU (or an arch list)
    assert "kernels-test/cutlass-gemm: would fail: no GPU arch to build for" in out

    from conftest import EXAMPLES, tree

    files = tree(EXAMPLES / "scaled-add")
    files["build.toml"] = files["build.toml"].replace(b'depends = ["torch"]\ncuda', b'depends = ["torch", "sycl_tla"]\ncuda')
    online.add_repo("kernels-test/needs-sycl", {"main": files})
    assert main(["doctor", "kernels-test/needs-sycl", "--revision", "main", "--backend", "cuda"]) == 1
    assert "kernels-test/needs-sycl: would fail: unsupported-dependency: " in capsys.readouterr().out

    assert main(["doctor", "kernels-community/no-such-kernel", "--revision", "main", "--json"]) == 1
    k = _json(capsys)["kernel"]
    assert k["would"] == "fail" and k["error"]["type"] == "KernelNotFoundError"


def test_doctor_reads_gpus_from_the_memo_without_detecting(monkeypatch):
    from jitkernels import machine
    from jitkernels.cache.files import write_json
    from jitkernels.cli import doctor

    def no_detection():
        raise AssertionError("doctor asked the GPUs although the per-boot memo knows them")

    monkeypatch.setattr(machine, "static_backend", lambda torch: None)  # as a CUDA build of torch
    monkeypatch.setattr(machine, "_detect_gpus", no_detection)
    write_json(machine.machine_memo_file(), {"backend": "cuda", "archs": ["9.0"]})
    gpus = doctor.gpus()
    assert gpus["backend"] == "cuda" and gpus["archs"] == ["9.0"] and gpus["source"].startswith("per-boot memo")


def test_demo_json_prints_only_the_verdict_on_stdout():
    out = _cli("demo", "--no-native", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"passed": True}
    assert "rms_norm max error vs PyTorch" in out.stderr


def test_doctor_says_a_kernel_dependency_cycle_fails(online, capsys):
    from conftest import EXAMPLES, tree

    for me, other in (("cyc-a", "cyc-b"), ("cyc-b", "cyc-a")):
        files = tree(EXAMPLES / "rms-norm")
        files["build.toml"] = files["build.toml"].replace(
            b"[general.hub]", f'kernel-depends = [{{ repo-id = "kernels-test/{other}", revision = "main" }}]\n\n[general.hub]'.encode())
        online.add_repo(f"kernels-test/{me}", {"main": files})
    assert main(["doctor", "kernels-test/cyc-a", "--revision", "main", "--backend", "cpu"]) == 1
    assert "would fail: kernel dependency cycle: kernels-test/cyc-a -> kernels-test/cyc-b -> kernels-test/cyc-a" \
        in capsys.readouterr().out


def test_warmup_from_a_file_that_is_not_text_is_a_clear_json_error(tmp_path, capsys):
    bad = tmp_path / "bad.lock"
    bad.write_bytes(b"\xff\xfe garbage\n")
    assert main(["warmup", "--from", str(bad), "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "LockfileError" and "not UTF-8" in error["message"]


@pytest.mark.slow
def test_demo_shows_the_build_and_no_numpy_warning(tmp_path):
    # a newcomer's venv: `pip install torch jitkernels` has no NumPy; the build's lines are on stderr
    code = ("import sys; sys.modules['numpy'] = None\n"
            "from jitkernels.cli.main import main\n"
            "sys.exit(main(['demo']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=child_env(TMPDIR=tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[0].startswith("Local Hub at http://127.0.0.1:")
    assert "NumPy" not in out.stdout + out.stderr
    stderr = out.stderr.splitlines()
    assert len([l for l in stderr if l.startswith("jitkernels: compiling jitkernels-examples/scaled-add")]) == 1
    assert len([l for l in stderr if l.startswith("jitkernels: built _scaled_add_cpu_")]) == 1
    assert stderr[0].startswith("jitkernels: ")  # nothing before JitKernels' own lines
    assert out.stdout.splitlines()[-1] == "demo passed"
