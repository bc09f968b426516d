"""Build workspaces: an interrupted build resumes, a local edit recompiles only what depends on it.

The kernel is the bundled ``scaled-add`` example with a third translation unit (the layout
stays kernel-builder's: ``[torch]`` binding plus one ``[kernel.*]`` section). Compiler runs
are counted with a ``CXX`` wrapper that logs every ``-c`` invocation.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, child_env

pytestmark = pytest.mark.slow

EXTRA_UNIT = """\
#include "scaled_add_cpu.hpp"

namespace scaled_add_cpu {
int extra_unit_marker() { return 3; }
}  // namespace scaled_add_cpu
"""


@pytest.fixture
def kernel(tmp_path) -> Path:
    """scaled-add with three units: the binding, the kernel, and one more kernel file."""
    folder = tmp_path / "scaled-add"
    shutil.copytree(EXAMPLES / "scaled-add", folder)
    (folder / "scaled_add_cpu" / "extra.cpp").write_text(EXTRA_UNIT)
    toml = folder / "build.toml"
    toml.write_text(toml.read_text().replace(
        '    "scaled_add_cpu/scaled_add_cpu.hpp",\n]',
        '    "scaled_add_cpu/scaled_add_cpu.hpp",\n    "scaled_add_cpu/extra.cpp",\n]'))
    return folder


@pytest.fixture
def counting_cxx(tmp_path) -> tuple[Path, Path]:
    """A ``CXX`` that logs ``start``/``done`` around every compile (not the link)."""
    log = tmp_path / "compiles.log"
    wrapper = tmp_path / "cxx-counting"
    real = shutil.which(os.environ.get("CXX", "c++"))
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case " $* " in *" -c "*) echo "start $$" >> {log} ;; esac
        {real} "$@"
        rc=$?
        case " $* " in *" -c "*) [ $rc -eq 0 ] && echo "done $$" >> {log} ;; esac
        exit $rc
    """))
    wrapper.chmod(0o755)
    return wrapper, log


def _count(log: Path, what: str) -> int:
    return log.read_text().split().count(what) if log.exists() else 0


LOAD = """
import torch, jitkernels
k = jitkernels.load_local({path!r}, backend="cpu")
x = torch.randn(64)
assert torch.allclose(k.scaled_add(x, x, 1.0), 2 * x)
print("OK", k.__file__)
"""


def _load(kernel: Path, cxx: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOAD.format(path=str(kernel))], capture_output=True, text=True,
                          timeout=600, env=child_env(CXX=str(cxx), MAX_JOBS="1", **env))


def test_a_killed_build_resumes_with_the_units_it_had_not_finished(kernel, counting_cxx):
    cxx, log = counting_cxx
    child = subprocess.Popen([sys.executable, "-c", LOAD.format(path=str(kernel))], env=child_env(
        CXX=str(cxx), MAX_JOBS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _count(log, "done") < 1 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert _count(log, "done") == 1, (log.read_text() if log.exists() else "", child.poll())
        os.killpg(child.pid, signal.SIGKILL)  # the loader, ninja and the compiler at work
        child.wait(30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    cache = Path(os.environ["JITKERNELS_CACHE"])
    assert not list((cache / "entries").glob("_scaled_add_cpu_*")), "a half-built entry was published"
    log.write_text("")
    out = _load(kernel, cxx)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
    assert _count(log, "start") == 2, log.read_text()  # the finished unit was reused
    # The user is told, and the bar counts what is left (it used to start at 0/4, then jump to 1/3).
    assert re.search(r"_scaled_add_cpu_\w+: 1 of 4 build steps are up to date from an earlier build, 3 to go",
                     out.stderr), out.stderr[-2000:]
    assert "/4 steps" not in out.stderr and "3/3 steps" in out.stderr, out.stderr[-2000:]


def test_editing_a_local_kernel_recompiles_only_what_depends_on_the_edit(kernel, counting_cxx):
    cxx, log = counting_cxx
    first = _load(kernel, cxx)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _count(log, "start") == 3

    log.write_text("")
    unit = kernel / "scaled_add_cpu" / "extra.cpp"
    unit.write_text(unit.read_text().replace("return 3;", "return 4;"))
    second = _load(kernel, cxx)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _count(log, "start") == 1, log.read_text()
    assert first.stdout.split()[1] != second.stdout.split()[1]  # a new entry, keyed by the new sources
    assert re.search(r"2 of 4 build steps are up to date from an earlier build, 2 to go", second.stderr), \
        second.stderr[-2000:]

    log.write_text("")
    header = kernel / "torch-ext" / "torch_binding.h"  # included by the binding unit only
    header.write_text(header.read_text() + "\n// edited\n")
    third = _load(kernel, cxx)
    assert third.returncode == 0, third.stderr[-3000:]
    assert _count(log, "start") == 1, log.read_text()
