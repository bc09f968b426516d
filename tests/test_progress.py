"""Progress and log lines reach the user outside a terminal, can be silenced, and never override the application."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time

import pytest

from jitkernels import progress

from conftest import EXAMPLES, child_env


@pytest.fixture
def log_mode(monkeypatch):
    for var in ("JITKERNELS_PROGRESS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JITKERNELS_PROGRESS_INTERVAL", "0.2")
    progress.set_enabled(None)
    yield
    progress.set_enabled(None)


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jitkernels.progress"]


def test_counts_elapsed_and_an_estimate_once_enough_units_are_done(log_mode, caplog):
    caplog.set_level(logging.INFO, logger="jitkernels")
    with progress.task("jitkernels: building k", total=6, unit="unit", eta_after=3) as shown:
        for done in range(1, 7):
            time.sleep(0.25)
            shown.set(done, detail=f"CXX u{done}.cpp")
    lines = _lines(caplog)
    assert lines[0] == "jitkernels: building k: 0/6 units [00:00 elapsed]"
    assert any(re.fullmatch(r"jitkernels: building k: [12]/6 units \[00:0\d elapsed\], CXX u[12]\.cpp", l) for l in lines)
    assert not any("ETA" in l for l in lines if re.search(r": [012]/6", l))
    assert any(re.search(r": [345]/6 units \[00:0\d elapsed, ETA 00:0\d\], CXX u\d\.cpp$", l) for l in lines)
    assert re.fullmatch(r"jitkernels: building k: 6/6 units \[00:0\d elapsed\]", lines[-1])


def test_plain_lines_are_rate_limited(log_mode, caplog, monkeypatch):
    monkeypatch.setenv("JITKERNELS_PROGRESS_INTERVAL", "30")
    caplog.set_level(logging.INFO, logger="jitkernels")
    with progress.task("jitkernels: many", total=1000, unit="file") as shown:
        for done in range(1000):
            shown.set(done)
    assert len(_lines(caplog)) == 2  # the start and the end, nothing in between


def test_delay_hides_quick_work_but_not_slow_work(log_mode, caplog):
    caplog.set_level(logging.INFO, logger="jitkernels")
    with progress.task("jitkernels: quick", total=2, unit="file", delay=5) as shown:
        shown.set(2)
    assert _lines(caplog) == []
    with progress.task("jitkernels: slow", total=2, unit="file", delay=0.2) as shown:
        time.sleep(0.5)
        shown.set(2)
    assert [l for l in _lines(caplog) if l.endswith("2/2 files [00:00 elapsed]")]


@pytest.mark.parametrize("how", ["JITKERNELS_PROGRESS=0", "HF_HUB_DISABLE_PROGRESS_BARS=1", "set_enabled"])
def test_progress_can_be_silenced(log_mode, caplog, monkeypatch, how):
    caplog.set_level(logging.INFO, logger="jitkernels")
    if how == "set_enabled":
        progress.set_enabled(False)
    else:
        monkeypatch.setenv(*how.split("="))
    assert progress.display_mode() == "off"
    with progress.task("jitkernels: hidden", total=3, unit="unit") as shown:
        shown.set(3)
    assert _lines(caplog) == []


def test_jitkernels_progress_1_wins_over_the_hub_switch(log_mode, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("JITKERNELS_PROGRESS", "1")
    assert progress.display_mode() == "log"  # pytest's stderr is not a terminal


def test_a_failed_task_says_so(log_mode, caplog):
    caplog.set_level(logging.INFO, logger="jitkernels")
    with pytest.raises(RuntimeError):
        with progress.task("jitkernels: building k", total=4, unit="unit") as shown:
            shown.set(2)
            raise RuntimeError("boom")
    with progress.task("jitkernels: building j", total=4, unit="unit") as shown:
        shown.finish(ok=False, summary="FAILED in a.cpp; log: /x.log")
    lines = _lines(caplog)
    assert lines[-1] == "jitkernels: building j: 0/4 units [00:00 elapsed], FAILED in a.cpp; log: /x.log"
    assert "jitkernels: building k: 2/4 units [00:00 elapsed]" in lines


def test_children_report_to_one_combined_line(log_mode, caplog):
    caplog.set_level(logging.INFO, logger="jitkernels")
    with progress.task("jitkernels: warmup", total=2, unit="kernel") as parent:
        def work(label):
            with progress.combined(parent, label):
                with progress.task(f"jitkernels: building {label}", total=3, unit="unit") as child:
                    child.set(1)
                    time.sleep(0.3)
                    child.set(3)
            parent.advance()
        threads = [threading.Thread(target=work, args=(name,)) for name in ("relu", "gelu")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = _lines(caplog)
    assert all(l.startswith("jitkernels: warmup: ") for l in lines), lines  # children draw nothing of their own
    assert any("relu: building relu" in l or "gelu: building gelu" in l for l in lines)
    assert lines[-1].startswith("jitkernels: warmup: 2/2 kernels")


def test_hub_fetch_that_takes_a_while_shows_files_fetched(online, log_mode, caplog):
    import jitkernels

    caplog.set_level(logging.INFO, logger="jitkernels")
    prefix = "jitkernels: fetching hf://kernels/jitkernels-examples/rms-norm@"

    def release_when_shown():  # the stalled download goes on once the fetch has said where it is
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(l.startswith(prefix) for l in _lines(caplog)):
            time.sleep(0.05)
        online.stall.clear()

    online.stall.add("torch-ext/rms_norm/functional.py")  # half the file, then a pause
    releaser = threading.Thread(target=release_when_shown)
    releaser.start()
    try:
        jitkernels.load("hf", "jitkernels-examples/rms-norm", revision="main", backend="cpu")
    finally:
        online.stall.clear()
        releaser.join()
    fetch = [l for l in _lines(caplog) if l.startswith(prefix)]
    assert re.search(r": [0-3]/4 files \[00:0\d elapsed\]$", fetch[0])  # shown after its one-second delay
    assert re.search(r": 4/4 files \[00:0\d elapsed\]$", fetch[-1])


# -- logging etiquette (fresh interpreters: the logging setup is process-wide) -------------------------

_SAY = ("import jitkernels.log as l, logging; {setup}; "
        "l.info_once('jitkernels: hello'); logging.getLogger('jitkernels').debug('jitkernels: detail')")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=child_env(**env))


def test_without_logging_configured_info_lines_reach_stderr():
    out = _run(_SAY.format(setup="pass"))
    assert out.stderr.splitlines() == ["jitkernels: hello"]


def test_log_level_variable_sets_the_verbosity():
    assert _run(_SAY.format(setup="pass"), JITKERNELS_LOG_LEVEL="DEBUG").stderr.splitlines() == [
        "jitkernels: hello", "jitkernels: detail"]
    assert _run(_SAY.format(setup="pass"), JITKERNELS_LOG_LEVEL="WARNING").stderr == ""
    bad = _run(_SAY.format(setup="pass"), JITKERNELS_LOG_LEVEL="LOUD").stderr
    assert "JITKERNELS_LOG_LEVEL='LOUD' is not a logging level" in bad and "jitkernels: hello" in bad


def test_an_application_that_configured_logging_keeps_control():
    configured = "logging.basicConfig(format='APP %(name)s %(message)s')"
    assert _run(_SAY.format(setup=configured)).stderr == ""  # WARNING, the application's level
    out = _run(_SAY.format(setup=configured), JITKERNELS_LOG_LEVEL="INFO").stderr
    assert out.splitlines() == ["APP jitkernels jitkernels: hello"]  # through the app's handler, once
    late = ("import jitkernels.log as l, logging; l.info_once('jitkernels: one'); "
            "logging.basicConfig(format='APP %(message)s', level=logging.WARNING); l.info_once('jitkernels: two'); "
            "l.warning_once('jitkernels: three')")
    assert _run(late).stderr.splitlines() == ["jitkernels: one", "APP jitkernels: three"]


@pytest.mark.slow
def test_native_build_outside_a_terminal_prints_progress_lines(tmp_path):
    """A build in a process whose stderr is a pipe (CI, docker logs) shows N/M units, elapsed, and the end."""
    code = ("import sys, jitkernels; "
            f"k = jitkernels.load_local({str(EXAMPLES / 'scaled-add')!r}, backend='cpu'); print(k.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=child_env(JITKERNELS_PROGRESS_INTERVAL="1", JITKERNELS_CACHE=tmp_path / "c"))
    assert out.returncode == 0, out.stderr
    name = out.stdout.strip()
    lines = [l for l in out.stderr.splitlines() if l.startswith(f"jitkernels: building {name}: ")]
    assert lines[0] == f"jitkernels: building {name}: 0/3 steps [00:00 elapsed]"
    assert len(lines) >= 3  # a line every second while the compiler runs
    assert all(re.search(r": [0-3]/3 steps \[\d\d:\d\d elapsed", l) for l in lines)
    assert re.fullmatch(rf"jitkernels: building {name}: 3/3 steps \[\d\d:\d\d elapsed\]", lines[-1])
    assert "\r" not in out.stderr and "\x1b[" not in out.stderr  # plain lines, no terminal control
    events = [l for l in out.stderr.splitlines() if l.startswith(("jitkernels: compiling", "jitkernels: built"))]
    assert len(events) == 2
    # the header counts what the bar counts
    assert events[0].startswith("jitkernels: compiling local/scaled-add (cpu")
    assert events[0].endswith(": 2 translation units (0 CUDA) + the link = 3 build steps")
    assert re.fullmatch(rf"jitkernels: built {name} in \d+\.\ds", events[1])


_KERNELIZE_A_NATIVE_LAYER = f"""
import sys, torch, jitkernels, kernels
from kernels import LocalLayerRepository, Mode, kernelize, use_kernel_forward_from_hub, use_kernel_mapping

@use_kernel_forward_from_hub("ScaledAdd")
class ScaledAdd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = 0.5

    def forward(self, x, y):
        return x + self.alpha * y

jitkernels.patch()
model = torch.nn.Sequential(ScaledAdd())
repo = LocalLayerRepository({str(EXAMPLES / 'scaled-add')!r}, layer_name="ScaledAdd")
with use_kernel_mapping({{"ScaledAdd": {{"cpu": {{Mode.INFERENCE: repo}}}}}}, inherit_mapping=False):
    kernelize(model, mode=Mode.INFERENCE, device="cpu", use_fallback=False)
x = torch.randn(16)
assert torch.equal(model[0](x, x), 1.5 * x)
print(type(model[0]).forward.__qualname__, [type(h).__name__ for h in __import__("logging").getLogger().handlers])
"""


@pytest.mark.slow
def test_a_build_under_kernelize_with_output_to_a_file_shows_its_progress(tmp_path):
    """kernelize's root logging.info() installs a root handler at WARNING; the build it triggers is not silent."""
    pytest.importorskip("kernels")
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stream:
        out = subprocess.run([sys.executable, "-c", _KERNELIZE_A_NATIVE_LAYER], stdout=subprocess.PIPE, stderr=stream,
                             text=True, timeout=600,
                             env=child_env(JITKERNELS_PROGRESS_INTERVAL="1", JITKERNELS_CACHE=tmp_path / "c"))
    text = err.read_text()
    assert out.returncode == 0, text
    assert out.stdout.split(" ", 1)[1].strip() == "['StreamHandler']"  # what kernelize's logging.info() left
    for prefix in ("jitkernels: compiling local/scaled-add (cpu", "jitkernels: built _scaled_add_cpu_"):
        assert len([l for l in text.splitlines() if l.startswith(prefix)]) == 1, text
    building = [l for l in text.splitlines() if l.startswith("jitkernels: building _scaled_add_cpu_")]
    assert building and building[-1].split(": ", 2)[2].startswith("3/3 steps")
    assert "INFO:" not in text  # not a second time through the root handler


_LINES = ("from jitkernels import progress; import logging; {setup}\n"
          "with progress.task('jitkernels: building k', total=2, unit='step') as t:\n"
          "    t.set(2)\n"
          "progress.say(logging.getLogger('jitkernels'), 'jitkernels: built k in 0.1s')\n")


def test_progress_survives_the_root_handler_kernelize_installs():
    # upstream kernelize_layer calls logging.info() on the root logger: basicConfig() then adds a root handler
    out = _run(_LINES.format(setup="logging.info('kernels picked a layer')"), JITKERNELS_PROGRESS_INTERVAL="5")
    assert out.stderr.splitlines() == ["jitkernels: building k: 0/2 steps [00:00 elapsed]",
                                       "jitkernels: building k: 2/2 steps [00:00 elapsed]",
                                       "jitkernels: built k in 0.1s"]


def test_an_application_logging_info_gets_progress_once_in_its_format():
    out = _run(_LINES.format(setup="logging.basicConfig(level=logging.INFO, format='APP %(name)s %(message)s')"))
    assert out.stderr.splitlines() == ["APP jitkernels.progress jitkernels: building k: 0/2 steps [00:00 elapsed]",
                                       "APP jitkernels.progress jitkernels: building k: 2/2 steps [00:00 elapsed]",
                                       "APP jitkernels jitkernels: built k in 0.1s"]


@pytest.mark.parametrize("env", [{"JITKERNELS_PROGRESS": "0"}, {"JITKERNELS_LOG_LEVEL": "WARNING"}])
def test_the_switches_still_silence_progress_under_a_root_handler(env):
    assert _run(_LINES.format(setup="logging.info('kernels picked a layer')"), **env).stderr == ""


def test_silenced_progress_leaves_the_build_events_to_the_applications_log():
    app = "logging.basicConfig(level=logging.INFO, format='APP %(name)s %(message)s')"
    out = _run(_LINES.format(setup=app), JITKERNELS_PROGRESS="0")
    assert out.stderr.splitlines() == ["APP jitkernels jitkernels: built k in 0.1s"]
    silenced = "logging.basicConfig(format='APP %(message)s'); logging.getLogger('jitkernels').setLevel('ERROR')"
    assert _run(_LINES.format(setup=silenced)).stderr == ""  # a level the application set on our logger wins


def test_a_level_the_application_sets_after_us_is_kept():
    # the demo did this: jitkernels' stderr handler was installed first, then the application added its own
    code = ("import logging, sys, jitkernels.log as l; l.setup(); log = logging.getLogger('jitkernels'); "
            "h = logging.StreamHandler(sys.stdout); h.setFormatter(logging.Formatter('OUT %(message)s')); "
            "log.addHandler(h); log.setLevel(logging.DEBUG); l.info_once('jitkernels: one'); "
            "log.debug('jitkernels: two'); print(logging.getLevelName(log.level))")
    out = _run(code)
    assert out.stdout.splitlines() == ["OUT jitkernels: one", "OUT jitkernels: two", "DEBUG"]
    assert out.stderr == ""


# -- terminals and notebooks -----------------------------------------------------------------------------

_BAR = ("from jitkernels import progress\n"
        "with progress.task('jitkernels: building k', total=4, unit='unit', eta_after=2) as t:\n"
        "    for i in range(1, 5):\n"
        "        t.set(i, detail=f'CXX u{i}.cpp')\n")


def test_a_terminal_gets_a_tqdm_bar():
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", _BAR], stderr=slave, stdout=subprocess.PIPE,
                            env=child_env(JITKERNELS_PROGRESS_INTERVAL="0.1"))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "\r" in shown and "jitkernels: building k: 100%|" in shown and "4/4 units" in shown
    assert "jitkernels.progress" not in shown and "\njitkernels: building k: 0/4 units [" not in shown  # no log lines


def test_a_notebook_gets_a_tqdm_display(monkeypatch, capsys, log_mode):
    import types

    class ZMQInteractiveShell:  # what Jupyter's kernel runs
        pass

    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert progress.display_mode() == "notebook"
    with progress.task("jitkernels: building k", total=2, unit="unit") as shown:
        shown.set(2)
    err = capsys.readouterr().err
    assert "jitkernels: building k: 100%|" in err and "2/2 units" in err  # tqdm (no ipywidgets here: its text bar)
