"""``JITKERNELS_AUTOPATCH=1``: unchanged programs get JitKernels kernels from ``kernels.get_kernel``.

The fast tests process the shipped ``hooks/jitkernels-autopatch.pth`` exactly as
``site`` processes site-packages at startup (``site.addsitedir`` on a folder
holding only that file), before any user code runs; the slow test installs the
package into a fresh virtualenv (``pip install .`` and ``pip install -e .``) and
relies on real interpreter startup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, child_env

pytest.importorskip("kernels")

PTH = ROOT / "hooks" / "jitkernels-autopatch.pth"
RMS = "jitkernels-examples/rms-norm"

USER_CODE = textwrap.dedent(f"""
    import sys
    print("before", sorted(m for m in ("kernels", "torch", "jitkernels.upstream.patching", "wrapt") if m in sys.modules))
    import kernels
    print("kind", type(kernels.get_kernel).__name__)
    try:
        k = kernels.get_kernel({RMS!r}, revision="main")
        print("file", k.__file__)
    except OSError as exc:
        print("upstream", type(exc).__name__)
""")


@pytest.fixture
def site_dir(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    shutil.copy(PTH, folder / PTH.name)
    return folder


def _run(site_dir, code, **env):
    prelude = f"import site; site.addsitedir({str(site_dir)!r})\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=180,
                          env=child_env(**env))


def _lines(out):
    assert out.returncode == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())


def test_pth_is_one_guarded_import_line():
    lines = [line for line in PTH.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("import os;")
    assert "JITKERNELS_AUTOPATCH" in lines[0] and "jitkernels.upstream.autopatch" in lines[0]


def test_autopatch_redirects_an_unchanged_program(online, site_dir):
    out = _lines(_run(site_dir, USER_CODE, JITKERNELS_AUTOPATCH="1", HF_ENDPOINT=online.endpoint))
    # nothing heavy at startup: neither torch nor kernels, only the tiny patcher (+ wrapt for the hook)
    assert out["before"] == "['jitkernels.upstream.patching', 'wrapt']"
    assert out["kind"] == "FunctionWrapper"
    assert Path(out["file"]).is_relative_to(Path(os.environ["JITKERNELS_CACHE"]))


@pytest.mark.parametrize("value", [None, "0", "", "off"])
def test_unset_or_false_costs_nothing_and_upstream_runs(online, site_dir, value):
    env = {"HF_ENDPOINT": online.endpoint}
    if value is not None:
        env["JITKERNELS_AUTOPATCH"] = value
    code = (
        "import sys\n"
        "print('jk', sorted(m for m in sys.modules if m.startswith('jitkernels')))\n" + USER_CODE
    )
    base_env = child_env(**env)
    base_env.pop("JITKERNELS_AUTOPATCH", None) if value is None else None
    # upstream kernels 0.17.2 builds an invalid User-Agent (trailing space) when telemetry is disabled
    base_env.pop("HF_HUB_DISABLE_TELEMETRY", None)
    prelude = f"import site; site.addsitedir({str(site_dir)!r})\n"
    res = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=180,
                         env=base_env)
    out = _lines(res)
    assert out["jk"] == "[]"  # the .pth line imported nothing
    assert out["kind"] == "function"
    assert out["upstream"] == "RemoteEntryNotFoundError"  # upstream found no build/ folder


def test_autopatch_without_kernels_warns_once_and_does_nothing(site_dir):
    import sysconfig

    # -S: site-packages (and an installed copy of the .pth) are added only after `kernels` is hidden.
    code = "import sys\nsys.modules['kernels'] = None\n"  # as if kernels were not installed
    prelude = code + (
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r}); "
        f"site.addsitedir({str(site_dir)!r})\n"
    )
    res = subprocess.run([sys.executable, "-S", "-c", prelude + "import jitkernels.upstream.patching as p; print(p.is_patched())"],
                         capture_output=True, text=True, timeout=60, env=child_env(JITKERNELS_AUTOPATCH="1"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
    assert res.stderr.count("RuntimeWarning") == 1 and "not installed" in res.stderr


def test_sitecustomize_fallback(online, tmp_path):
    folder = tmp_path / "sc"
    folder.mkdir()
    shutil.copy(ROOT / "hooks" / "sitecustomize.py", folder / "sitecustomize.py")
    env = child_env(JITKERNELS_AUTOPATCH="1", HF_ENDPOINT=online.endpoint)
    env["PYTHONPATH"] = str(folder) + os.pathsep + env["PYTHONPATH"]
    res = subprocess.run([sys.executable, "-c", USER_CODE], capture_output=True, text=True, timeout=180, env=env)
    out = _lines(res)
    assert out["kind"] == "FunctionWrapper" and "file" in out


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_real_install_puts_the_pth_into_site_packages(online, tmp_path, editable):
    """pip installs the .pth (wheel root / editable wheel root); real startup then autopatches."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site_packages = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    # the new venv sees this venv's packages (torch, kernels, setuptools, pip) through a path .pth
    parent_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site_packages / "000-parent.pth").write_text(parent_site + "\n")
    work = tmp_path / "src"
    skip = shutil.ignore_patterns(".venv*", ".git", "*.egg-info", "__pycache__", ".pytest_cache", "tests")

    def ignore(folder, names):  # setuptools' build/ at the root, never the jitkernels.build package
        return set(skip(folder, names)) | ({"build"} if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, work, ignore=ignore)
    cmd = [str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    cmd += ["-e", str(work)] if editable else [str(work)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (site_packages / PTH.name).read_text() == PTH.read_text()
    env = child_env(JITKERNELS_AUTOPATCH="1", HF_ENDPOINT=online.endpoint)
    env["PYTHONPATH"] = ""  # jitkernels must come from the install
    res = subprocess.run([str(py), "-c", USER_CODE + "import jitkernels; print('jk', jitkernels.__file__)"],
                         capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    out = _lines(res)
    assert out["kind"] == "FunctionWrapper" and "file" in out
    assert out["jk"].startswith(str(work if editable else site_packages))
