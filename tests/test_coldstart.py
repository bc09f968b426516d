"""Background cold start (issue 18): layers serve with their own forward while a native kernel builds, then switch.

The kernel is the bundled ``scaled-add`` example (a native CPU kernel in kernels-community's
relu layout), served by the fixture Hub or ``LOCAL_KERNELS``. Its builds are held at a
barrier: ``CXX`` is a wrapper that waits for a shared ``flock`` on a file the test holds
exclusively, so "the build is still running" is a fact the test controls, not a race.
In the probe copy, the kernel's layer and function count their calls per thread and per
layer (``_calls.py``), and the model's original forwards count theirs: every call is
accounted to exactly one of the two.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
import torch

kernels = pytest.importorskip("kernels")

import jitkernels  # noqa: E402
from jitkernels import coldstart  # noqa: E402
from jitkernels.cache import admin  # noqa: E402
from jitkernels.cli.main import main  # noqa: E402
from jitkernels.errors import ColdStartError, PatchError  # noqa: E402
from jitkernels.upstream import patching, switching  # noqa: E402

from conftest import EXAMPLES, entry_dirs, run_python, tree, wait_for  # noqa: E402

RMS = "jitkernels-examples/rms-norm"


@pytest.fixture(autouse=True)
def unpatched():
    jitkernels.unpatch()
    yield
    jitkernels.unpatch()
    for build in coldstart.builds():  # a failed test must not leave its builder running
        if build.state == "building" and build.pid:
            try:
                os.killpg(build.pid, 15)  # the builder's own session: it and its compilers
            except OSError:
                pass


def _hooks():
    module = switching.layer_module()
    return tuple(module.__dict__[name] for name in switching.HOOKS)


ORIGINAL_HOOKS = _hooks()


# -- the switch itself: off by default, one argument or one variable ---------------------------------------------


def test_cold_start_is_off_by_default_and_patch_changes_nothing_in_kernelize():
    assert coldstart.mode() == "block"
    jitkernels.patch()
    assert _hooks() == ORIGINAL_HOOKS and not switching.installed()
    jitkernels.patch(cold_start="background")  # a second patch() changes the mode in place
    assert switching.installed() and all(h is not o for h, o in zip(_hooks(), ORIGINAL_HOOKS))
    jitkernels.patch(cold_start="block")
    assert all(h is o for h, o in zip(_hooks(), ORIGINAL_HOOKS))
    jitkernels.patch(cold_start="background")
    jitkernels.unpatch()
    assert all(h is o for h, o in zip(_hooks(), ORIGINAL_HOOKS))


def test_the_variable_decides_when_the_argument_is_not_given(monkeypatch, caplog):
    monkeypatch.setenv("JITKERNELS_COLD_START", "background")
    with jitkernels.patch():
        assert switching.installed()
    assert not switching.installed()
    with jitkernels.patch(cold_start="block"):  # the argument wins
        assert not switching.installed()
    monkeypatch.setenv("JITKERNELS_COLD_START", "later")
    caplog.set_level(logging.WARNING, logger="jitkernels")
    with jitkernels.patch():
        assert not switching.installed()
    assert "JITKERNELS_COLD_START='later' is not understood" in caplog.text


def test_a_bad_argument_is_a_clear_error_and_changes_nothing(online):
    with pytest.raises(PatchError, match="cold_start='soon'"):
        jitkernels.patch(cold_start="soon")
    assert not patching.is_patched() and _hooks() == ORIGINAL_HOOKS
    with pytest.raises(ColdStartError, match="use 'background'"):
        jitkernels.function("hf", RMS, "rms_norm", revision="main", cold_start=True)
    with pytest.raises(ColdStartError, match="needs fallback="):
        jitkernels.function("hf", RMS, "rms_norm", revision="main", cold_start="background")
    assert entry_dirs() == []


def test_autopatch_reads_the_variable():
    out = run_python("""
        import jitkernels.upstream.autopatch
        import kernels
        from jitkernels.upstream import switching
        print("installed", switching.installed())
    """, JITKERNELS_AUTOPATCH="1", JITKERNELS_COLD_START="background")
    assert out.returncode == 0, out.stderr
    assert "installed True" in out.stdout


def test_a_kernel_with_nothing_to_compile_loads_at_once(online):
    """A Python kernel is prepared in the calling process as always: no background build, no fallback."""
    from kernels import LayerRepository, Mode, kernelize, use_kernel_forward_from_hub, use_kernel_mapping

    @use_kernel_forward_from_hub("RMSNorm")
    class MyRMSNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.rand(8))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            return x

    model = torch.nn.Sequential(MyRMSNorm())
    jitkernels.patch(cold_start="background")
    with use_kernel_mapping({"RMSNorm": {"cpu": LayerRepository(RMS, layer_name="RMSNorm", revision="main")}},
                            inherit_mapping=False):
        kernelize(model, mode=Mode.INFERENCE, device="cpu")
    k = jitkernels.load("hf", RMS, revision="main")
    assert model[0].forward.__func__ is k.layers.RMSNorm.forward
    assert not [b for b in coldstart.builds() if b.kernel.startswith(RMS)]
    fn = jitkernels.function("hf", RMS, "rms_norm", revision="main", fallback=torch.nn.functional.rms_norm,
                             cold_start="background")
    assert fn is k.rms_norm


# -- a native kernel built in the background --------------------------------------------------------------------


class Barrier:
    """Holds native builds at their first compiler call: ``CXX`` waits for a shared flock on a file held here."""

    def __init__(self, folder: Path):
        self.lock_file = folder / "barrier.lock"
        self.calls = folder / "compiler-calls.txt"
        self.wrapper = folder / "cxx-at-barrier"
        self.wrapper.write_text(
            "#!/bin/sh\n"
            'case " $* " in *" -c "*|*" -shared "*)\n'
            f'  echo "$$" >> "{self.calls}"\n'
            f'  "{sys.executable}" -c "import fcntl, sys; fcntl.flock(open(sys.argv[1]), fcntl.LOCK_SH)" '
            f'"{self.lock_file}" ;;\n'
            "esac\n"
            'exec c++ "$@"\n')
        self.wrapper.chmod(0o755)
        self.lock_file.touch()
        self._fh = open(self.lock_file)
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()

    def compiler_calls(self) -> int:
        return len(self.calls.read_text().split()) if self.calls.exists() else 0


@pytest.fixture
def barrier(tmp_path, monkeypatch):
    held = Barrier(tmp_path)
    monkeypatch.setenv("CXX", str(held.wrapper))
    yield held
    if not held._fh.closed:
        held.release()


PROBE = '''"""Test probe: the kernel's calls, per thread and per layer."""
import collections
import threading

CALLS = collections.Counter()
_LOCK = threading.Lock()


def count(owner) -> None:
    with _LOCK:
        CALLS[(threading.get_ident(), owner)] += 1
'''


def probe_copy(where: Path, bad_flag: bool = False) -> Path:
    """The scaled-add example with counting added to its layer and function (or a compiler flag that fails)."""
    kernel = where / "scaled-add-probe"
    shutil.copytree(EXAMPLES / "scaled-add", kernel)
    package = kernel / "torch-ext" / "scaled_add"
    (package / "_calls.py").write_text(PROBE)
    layers = package / "layers" / "__init__.py"
    layers.write_text(layers.read_text().replace(
        "        out = torch.empty_like(x)\n", "        count(id(self))\n        out = torch.empty_like(x)\n", 1)
        .replace("from .._ops import ops\n", "from .._ops import ops\nfrom .._calls import count\n"))
    init = package / "__init__.py"
    init.write_text(init.read_text().replace(
        "    if out is None:\n", "    count('scaled_add')\n    if out is None:\n", 1)
        .replace("from ._ops import ops\n", "from ._ops import ops\nfrom ._calls import count\n"))
    if bad_flag:
        toml = kernel / "build.toml"
        toml.write_text(toml.read_text().replace('"-DSCALED_ADD_OPENMP"', '"-DSCALED_ADD_OPENMP", "-fjk-no-such-flag"'))
    return kernel


ORIGINAL_CALLS: collections.Counter = collections.Counter()
_ORIGINAL_LOCK = threading.Lock()


def _count_original(owner) -> None:
    with _ORIGINAL_LOCK:
        ORIGINAL_CALLS[(threading.get_ident(), owner)] += 1


def tiny_model_classes(counting: bool = True):
    """A tiny model: two residual layers (``x + alpha * y``) and a function layer, all with kernel mappings.

    ``counting``: the original forwards count their calls (a lock: torch.compile graph-breaks there,
    so the compiled model's classes do not count).
    """
    from kernels import use_kernel_forward_from_hub, use_kernel_func_from_hub

    count = _count_original if counting else (lambda owner: None)

    @use_kernel_forward_from_hub("ScaledAdd")
    class Residual(torch.nn.Module):
        def __init__(self, alpha):
            super().__init__()
            self.alpha = alpha

        if counting:
            def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                count(id(self))
                return x + self.alpha * y
        else:
            def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return x + self.alpha * y

    @use_kernel_func_from_hub("scaled_add")
    def scaled_add(x, y, alpha=1.0, out=None):
        count("scaled_add")
        return x + alpha * y

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)
            self.r1, self.r2 = Residual(0.5), Residual(2.0)
            self.add = scaled_add

        def forward(self, x):
            h = self.r1(x, self.down(torch.relu(self.up(x))))
            h = self.add(h, x, 0.25)
            return self.r2(h, self.down(torch.relu(self.up(h))))

    return Tiny


def _mapping(repo_id: str):
    from kernels import FuncRepository, LayerRepository, Mode

    return {
        "ScaledAdd": {"cpu": {Mode.INFERENCE: LayerRepository(repo_id, layer_name="ScaledAdd", revision="main")}},
        "scaled_add": {"cpu": {Mode.INFERENCE: FuncRepository(repo_id, func_name="scaled_add", revision="main")}},
    }


def _kernelize(model, repo_id):
    from kernels import Mode, kernelize, use_kernel_mapping

    with use_kernel_mapping(_mapping(repo_id), inherit_mapping=False):
        kernelize(model, mode=Mode.INFERENCE, device="cpu")


def _kernel_calls() -> collections.Counter:
    """The probe kernel's call counts once it is imported in this process (empty before)."""
    found = [m for name, m in list(sys.modules.items())
             if name.startswith("_scaled_add_cpu_") and name.endswith("._calls")]
    # the watcher thread may be importing it right now: no CALLS yet means no kernel call yet
    return getattr(found[0], "CALLS", collections.Counter()) if found else collections.Counter()


def _messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.slow
def test_a_tiny_model_serves_while_its_kernel_builds_then_switches_once(online, barrier, tmp_path, caplog, capsys):
    repo = "kernels-test/scaled-add-probe"
    online.add_repo(repo, {"main": tree(probe_copy(tmp_path))})
    caplog.set_level(logging.INFO, logger="jitkernels")
    Tiny, Plain = tiny_model_classes(), tiny_model_classes(counting=False)
    model, compiled_model = Tiny(), Plain()
    x = torch.randn(4, 16)
    with torch.no_grad():
        reference = model(x)
    ORIGINAL_CALLS.clear()

    jitkernels.patch(cold_start="background")
    _kernelize(model, repo)  # returns at once: the build waits at the barrier
    _kernelize(compiled_model, repo)
    (build,) = [b for b in coldstart.builds() if b.kernel.startswith(repo)]
    assert build.state == "building" and entry_dirs("_scaled_add_cpu_") == []
    layers = {id(model.r1): "r1", id(model.r2): "r2", "scaled_add": "add"}
    assert model.r1.forward.__func__ is type(model.r1).forward  # the original forward, attached by upstream's code
    # JitKernels' own API shares the build (one builder per entry, not one per user).
    fn = jitkernels.function("hf", repo, "scaled_add", revision="main", cold_start="background",
                             fallback=lambda a, b, alpha=1.0: a + alpha * b)
    assert isinstance(fn, coldstart.SwitchingFunction) and fn.build is build and not fn.switched
    assert len([b for b in coldstart.builds() if b.kernel.startswith(repo)]) == 1
    assert len(_messages(caplog, "is not built for this machine")) == 1

    # Visible while it builds: cache list and doctor name the builder and its log.
    assert wait_for(lambda: any(b.state == "building" for b in admin.background_builds()), 120)
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert "background builds:" in listed and f"{repo}@" in listed and f"log: {build.log}" in listed
    assert main(["cache", "list", "--json"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["kind"] == "background-build"]
    assert row["state"] == "building" and row["pid"] == build.pid and row["log"] == str(build.log)
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["background"]["building"] == 1

    # torch.compile before the switch: the graph holds the original forwards.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), reference)
        torch.testing.assert_close(compiled(x), reference)
    graphs_before = counters["stats"]["unique_graphs"]

    # Threads call the model across the switch; each call notes which code served each layer.
    threads, per_thread_calls = 4, collections.defaultdict(list)
    warmed, switched_enough, stop = threading.Semaphore(0), threading.Semaphore(0), threading.Event()
    failures = []

    def worker():
        me = threading.get_ident()
        after_done = 0
        while not stop.is_set():
            done_before = build.wait(0)  # the switch (every callback) finished before this call started
            before_o, before_k = dict(ORIGINAL_CALLS), dict(_kernel_calls())
            with torch.no_grad():
                out = model(x)
            if not torch.allclose(out, reference, atol=1e-5):
                failures.append("wrong output")
            after_o, after_k = dict(ORIGINAL_CALLS), dict(_kernel_calls())
            served = {}
            for owner, name in layers.items():
                o = after_o.get((me, owner), 0) - before_o.get((me, owner), 0)
                k = after_k.get((me, owner), 0) - before_k.get((me, owner), 0)
                served[name] = "original" if (o, k) == (1, 0) else "kernel" if (o, k) == (0, 1) else f"o{o}k{k}"
            per_thread_calls[me].append((done_before, served))
            if len(per_thread_calls[me]) == 3:
                warmed.release()
            if done_before:
                after_done += 1
                if after_done == 3:
                    switched_enough.release()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    try:
        for _ in range(threads):
            assert warmed.acquire(timeout=300)
        # The builder is a subprocess; on a loaded machine it can reach its first compiler call after the threads warm.
        assert wait_for(lambda: barrier.compiler_calls() >= 1, 300)
        assert build.state == "building"  # held at the barrier all along
        barrier.release()
        assert build.wait(timeout=900), "the background build did not end"
        for _ in range(threads):
            assert switched_enough.acquire(timeout=300)
    finally:
        stop.set()
        for t in pool:
            t.join()

    assert build.ready, build.error
    assert failures == []
    for me, calls in per_thread_calls.items():
        for name in layers.values():
            sequence = [served[name] for _, served in calls]
            assert set(sequence) <= {"original", "kernel"}, (name, sequence)  # never lost, never run twice
            switch_at = sequence.index("kernel")
            assert set(sequence[:switch_at]) == {"original"} and set(sequence[switch_at:]) == {"kernel"}, sequence
            assert switch_at >= 3  # calls made while it built ran the original forward
        assert all(served == dict.fromkeys(layers.values(), "kernel") for done, served in calls if done)
    k = jitkernels.load("hf", repo, revision="main")
    assert model.r1.forward.__func__ is k.layers.ScaledAdd.forward and model.r2.forward.__func__ is k.layers.ScaledAdd.forward
    assert barrier.compiler_calls() == 3  # one build: two units and the link, by the one background builder
    (ready,) = _messages(caplog, "is ready (built in the background")
    assert ready.count("2 Residual layers") == 2 and ready.count("1 Func layer") == 2, ready
    assert f"function {repo}.scaled_add" in ready
    assert _messages(caplog, "FAILED") == []
    assert len(_messages(caplog, "is not built for this machine")) == 1

    # JitKernels' own function switched too; its fallback ran before.
    assert fn.switched
    kernel_before = _kernel_calls()[(threading.get_ident(), "scaled_add")]
    torch.testing.assert_close(fn(x, x, 0.5), 1.5 * x)
    assert _kernel_calls()[(threading.get_ident(), "scaled_add")] == kernel_before + 1

    # torch.compile: dynamo guards on each layer's forward; the first call after the switch recompiles,
    # runs the kernel, and later calls reuse that graph.
    me = threading.get_ident()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), reference)
        graphs_after_first = counters["stats"]["unique_graphs"]
        torch.testing.assert_close(compiled(x), reference)
        torch.testing.assert_close(compiled(x), reference)
    assert graphs_after_first > graphs_before and counters["stats"]["unique_graphs"] == graphs_after_first
    assert _kernel_calls()[(me, id(compiled_model.r1))] == 3 and _kernel_calls()[(me, id(compiled_model.r2))] == 3
    print(f"torch.compile: {graphs_before} graphs before the switch, {graphs_after_first} after its first call, "
          f"{counters['stats']['unique_graphs']} after two more")

    # A model kernelized after the switch gets the kernel directly, and the builder's record is gone.
    late = Tiny()
    _kernelize(late, repo)
    assert late.r1.forward.__func__ is k.layers.ScaledAdd.forward
    assert admin.background_builds() == []


@pytest.mark.slow
def test_a_failed_background_build_is_said_once_with_its_log_and_its_layers_stay_on_their_forward(
        online, tmp_path, caplog, capsys):
    repo = "kernels-test/scaled-add-broken"
    online.add_repo(repo, {"main": tree(probe_copy(tmp_path, bad_flag=True))})
    caplog.set_level(logging.INFO, logger="jitkernels")
    Tiny = tiny_model_classes()
    model = Tiny()
    x = torch.randn(4, 16)
    with torch.no_grad():
        reference = model(x)

    jitkernels.patch(cold_start="background")
    _kernelize(model, repo)
    (build,) = [b for b in coldstart.builds() if b.kernel.startswith(repo)]
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)  # served at once, whatever the builder does
    assert build.wait(timeout=600), "the background build did not end"
    assert build.failed and "-fjk-no-such-flag" in build.log.read_text()

    (failed,) = _messages(caplog, "the background build of")
    assert repo in failed and str(build.log) in failed and "no retry" in failed
    assert model.r1.forward.__func__ is type(model.r1).forward
    ORIGINAL_CALLS.clear()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)
    assert ORIGINAL_CALLS[(threading.get_ident(), id(model.r1))] == 1

    # No retry storm: kernelize again, a new model, the function API: no second builder, no new message.
    again = Tiny()
    _kernelize(again, repo)
    _kernelize(model, repo)
    fn = jitkernels.function("hf", repo, "scaled_add", revision="main", cold_start="background",
                             fallback=lambda a, b, alpha=1.0: a + alpha * b)
    torch.testing.assert_close(fn(x, x, 0.5), 1.5 * x)
    assert fn.build is build and not fn.switched
    assert again.r1.forward.__func__ is type(again.r1).forward
    assert len([b for b in coldstart.builds() if b.kernel.startswith(repo)]) == 1
    assert len(_messages(caplog, "the background build of")) == 1 and len(_messages(caplog, "is not built for this machine")) == 1
    assert entry_dirs("_scaled_add_cpu_") == []

    # The operator sees it, with the logs.
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert "FAILED" in listed and f"log: {build.log}" in listed
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["background"]["failed"] == 1


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps orphans here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_builder_takes_its_compilers_with_it(online, barrier, tmp_path):
    """Its ninja and compilers went on as orphans, and the next build of the workspace ran beside them."""
    import signal

    repo = "kernels-test/scaled-add-killed"
    online.add_repo(repo, {"main": tree(probe_copy(tmp_path))})
    model = tiny_model_classes()()
    jitkernels.patch(cold_start="background")
    _kernelize(model, repo)
    (build,) = [b for b in coldstart.builds() if b.kernel.startswith(repo)]
    assert wait_for(lambda: barrier.compiler_calls() >= 1, 300)  # a compiler is running, held at the barrier
    compilers = [int(pid) for pid in barrier.calls.read_text().split()]
    assert all(_running(pid) for pid in compilers)
    os.kill(build.pid, signal.SIGKILL)
    assert build.wait(timeout=60) and build.failed
    assert wait_for(lambda: not any(_running(pid) for pid in compilers), 30), "the builder's compilers run on"
    assert model.r1.forward.__func__ is type(model.r1).forward  # still served by its own forward
