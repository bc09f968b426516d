"""Run kernels-community's own test suites against JIT-built kernels, through autopatch.

    JITKERNELS_AUTOPATCH must take effect in the child: install the package (pip install .)
    or copy hooks/jitkernels-autopatch.pth into site-packages, then

    python benchmarks/run_upstream_tests.py --kc /path/to/kernels-community --kernels relu,activation

Each kernel's ``tests/`` folder is copied to a temp folder and run with
pytest in a child process with ``LOCAL_KERNELS`` pointing at the kernel's
source tree and ``JITKERNELS_AUTOPATCH=1``: their
``kernels.get_kernel("kernels-community/<name>", version=1)`` calls go to
JitKernels, which builds the kernel from source. Suites that import the
package by name instead (``from rmsnorm.layers import ...``) get it through
a generated ``conftest.py`` that registers ``jitkernels.load(...)`` under
that name; the table says which. Prints pass/fail counts per kernel.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CONFTEST = '''import sys
import jitkernels
sys.modules[{pkg!r}] = jitkernels.load("hf", {name!r}, backend={backend!r})
'''


def run(kc: Path, name: str, backend: str | None, work: Path, extra: list[str]) -> dict:
    tests = kc / name / "tests"
    target = work / name
    shutil.copytree(tests, target / "tests")
    text = "\n".join(p.read_text(errors="replace") for p in (target / "tests").rglob("*.py"))
    package = name.replace("-", "_")
    route = "kernels.get_kernel (autopatch)"
    if "get_kernel" not in text and re.search(rf"^\s*(from|import) {package}\b", text, re.M):
        (target / "conftest.py").write_text(CONFTEST.format(pkg=package, name=name, backend=backend))
        route = f"import {package} (conftest -> jitkernels.load)"
    env = dict(os.environ, JITKERNELS_AUTOPATCH="1", LOCAL_KERNELS=f"kernels-community/{name}={kc / name}")
    env.pop("HF_HUB_DISABLE_TELEMETRY", None)  # kernels 0.17.2 then sends an invalid User-Agent
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", *extra]
    out = subprocess.run(cmd, cwd=target, capture_output=True, text=True, env=env, timeout=3600)
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|deselected)", summary)}
    (work / f"{name}.log").write_text(out.stdout + "\n" + out.stderr)
    return {"kernel": name, "route": route, "rc": out.returncode, "summary": summary, **counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kc", required=True)
    parser.add_argument("--kernels", default="relu,activation")
    parser.add_argument("--backend", default=None, help="for suites imported by name (default: local)")
    parser.add_argument("--logs", default=None, help="keep logs here")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    work = Path(args.logs or tempfile.mkdtemp(prefix="jk-upstream-tests-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = [run(Path(args.kc).resolve(), n, args.backend, work, args.pytest_args) for n in args.kernels.split(",")]
    print("\n| kernel | route | passed | failed | skipped | errors | pytest summary |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['route']} | {r.get('passed', 0)} | {r.get('failed', 0)} | "
              f"{r.get('skipped', 0)} | {r.get('error', 0) + r.get('errors', 0)} | {r['summary']} |")
    print(f"\nlogs: {work}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
