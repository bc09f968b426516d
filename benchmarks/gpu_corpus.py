"""The CUDA corpus on a GPU machine: every kernels-community CUDA kernel's strategy, and cold builds plus
the kernels' own test suites for the CUTLASS kernels that fit.

    python benchmarks/gpu_corpus.py --kc /path/to/kernels-community --out results/ \\
        --cutlass-archives /path/to/archives --kernels punica-sgmv,deep-gemm,megablocks,sage-attention \\
        --partial flash-attn2 --deadline 540

1. Strategy of every kernel whose ``build.toml`` declares ``cuda`` (``decide`` with the local torch and
   nvcc, and how each build input resolves), from ``build.toml`` alone.
2. CUTLASS: with ``--cutlass-archives`` (a folder of ``cutlass-<version>.tar.gz``, e.g.
   ``git archive --prefix=cutlass-3.8.0/ v3.8.0 include tools/util/include | gzip``), the archives are
   served on 127.0.0.1 and ``JITKERNELS_CUTLASS_URL`` points there: each version the kernels need is
   downloaded, checked against the pinned git tree ids and unpacked into the cache, timed, before any
   build (so build times are compile times).
3. For each ``--kernels`` entry, in order: a cold ``jitkernels.load`` in a fresh process (``MAX_JOBS``,
   default 16; the local GPU's arch) from its source tree through ``LOCAL_KERNELS``, timed; then its own
   ``tests/`` with ``JITKERNELS_AUTOPATCH=1`` (``kernels.get_kernel`` goes to JitKernels) and, for suites
   that import the package by name, a one-line conftest binding it to ``jitkernels.load``. Each step is
   time-boxed; a build cut short reports the units it finished per minute and the projected total.
4. ``--partial NAME`` builds are cut at ``--partial-seconds`` on purpose (kernels known not to fit):
   units per minute and projected time.

Every result line is appended to ``<out>/gpu-corpus.md`` (and ``.jsonl``) as soon as it is known, so a
run killed at its limit keeps what it measured. Needs: a CUDA GPU, nvcc, a CUDA build of torch,
``kernels`` (for autopatch) and ``jitkernels`` importable, and the autopatch hook installed
(``hooks/jitkernels-autopatch.pth`` in site-packages, or ``hooks/sitecustomize.py`` on the path).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

START = time.monotonic()
#: Suites upstream's CI runs only partly (``pytest -m kernels_ci``): the rest sweeps hundreds of shapes.
TEST_SELECTION = {"deep-gemm": ["tests/test_kernels_ci.py"]}


class Report:
    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.md = out / "gpu-corpus.md"
        self.jsonl = out / "gpu-corpus.jsonl"

    def line(self, text: str = "") -> None:
        with open(self.md, "a") as fh:
            fh.write(text + "\n")
        print(text, flush=True)

    def record(self, **data) -> None:
        data["t"] = round(time.monotonic() - START, 1)
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(data) + "\n")


def remaining(deadline: float) -> float:
    return deadline - (time.monotonic() - START)


def environment_facts() -> dict:
    import torch

    from jitkernels import machine as environment

    facts = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if torch.cuda.is_available() else "-",
        "torch": torch.__version__,
        "nvcc": str(environment.nvcc_version()),
        "cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
    }
    return facts


# -- 1. strategies ---------------------------------------------------------------------

def cuda_units(config) -> int:
    return sum(1 for k in config.kernels_for("cuda") for s in k.src if s.endswith(".cu"))


def strategies(kc: Path, report: Report) -> None:
    from jitkernels import environment, inputs
    from jitkernels.plan.buildconfig import parse_build_toml
    from jitkernels.plan.strategy import Toolchain, decide

    toolchain = Toolchain(torch=environment.torch_version(), cuda=environment.nvcc_version())
    report.line(f"\n## Strategy of every kernel with a CUDA backend (torch {toolchain.torch}, nvcc {toolchain.cuda})\n")
    report.line("| kernel | strategy | reason | .cu units | build inputs (how they resolve here) |")
    report.line("|---|---|---|---|---|")
    counts: dict[str, int] = {}
    for path in sorted(kc.glob("*/build.toml")):
        name = path.parent.name
        try:
            config = parse_build_toml(path.read_bytes(), origin=str(path))
        except Exception as exc:  # report, never stop the run
            report.line(f"| {name} | error | {type(exc).__name__}: {exc} | | |")
            continue
        if "cuda" not in config.backends:
            continue
        d = decide(config, "cuda", toolchain)
        described = inputs.describe_all([x for x in d.dependencies if x != "torch"],
                                        config.python_depends_for("cuda"), (), "cuda")
        how = ", ".join(f"{x.name} {x.version or '-'} ({x.origin}, {x.status})" for x in described) or "torch only"
        counts[d.strategy] = counts.get(d.strategy, 0) + 1
        report.line(f"| {name} | {d.strategy} | {d.reason or '-'} | {cuda_units(config)} | {how} |")
        report.record(step="strategy", kernel=name, strategy=d.strategy, reason=d.reason,
                      units=cuda_units(config), inputs=[x.to_dict() for x in described])
    report.line("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


# -- 2. CUTLASS archives served locally -------------------------------------------------

def serve(folder: Path) -> str:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def resolve_cutlass(kc: Path, names: list[str], report: Report) -> None:
    from jitkernels import inputs
    from jitkernels.plan.buildconfig import parse_build_toml

    wanted = sorted({d for n in names if (kc / n / "build.toml").exists()
                     for k in parse_build_toml((kc / n / "build.toml").read_bytes()).kernels_for("cuda")
                     for d in k.depends if d.startswith("cutlass_")})
    report.line("\n## CUTLASS headers (downloaded from the local server, verified against the pinned git tree ids)\n")
    report.line("| input | version | origin | seconds | digest (include tree + tools/util/include tree) |")
    report.line("|---|---|---|---|---|")
    for dep in wanted:
        start = time.monotonic()
        try:
            got = inputs.resolve_build_inputs([dep], "cuda")[0]
            seconds = time.monotonic() - start
            report.line(f"| {dep} | {got.version} | {got.origin} | {seconds:.2f} | {got.digest} |")
            report.record(step="cutlass", input=dep, version=got.version, origin=got.origin, seconds=seconds,
                          digest=got.digest, include_dirs=list(got.include_dirs))
        except Exception as exc:
            report.line(f"| {dep} | - | FAILED | - | {type(exc).__name__}: {str(exc)[:300]} |")


# -- 3. cold builds --------------------------------------------------------------------

BUILD = r"""
import json, sys, time
t = time.monotonic()
import jitkernels
k = jitkernels.load("hf", "kernels-community/{name}", backend="cuda")
print("JK-RESULT " + json.dumps({{"module": k.__name__, "seconds": time.monotonic() - t}}), flush=True)
"""


def _run(cmd, env, cwd, timeout, log: Path) -> tuple[int | None, float]:
    """Run with a time box; the whole process group (ninja, nvcc) dies at the limit. (rc or None, seconds)."""
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, time.monotonic() - start


def _progress(cache: Path, name: str, since: float) -> tuple[int, int, str]:
    """Units finished / total and the spec line (``# <describe>``) of ``name``'s build log written after ``since``."""
    pattern = f"_{name.replace('-', '_')}_cuda_*.log"
    logs = sorted((p for p in (cache / "logs").glob(pattern) if p.stat().st_mtime >= since),
                  key=lambda p: p.stat().st_mtime)
    done = total = 0
    header = ""
    if logs:
        text = logs[-1].read_text(errors="replace")
        header = text.splitlines()[0].lstrip("# ") if text else ""
        for match in re.finditer(r"^\[(\d+)/(\d+)\]", text, re.M):
            done, total = max(done, int(match.group(1))), int(match.group(2))
    return done, total, header


def build(kc: Path, name: str, env: dict, cache: Path, work: Path, seconds: float, report: Report) -> dict:
    log = work / f"{name}.build.log"
    since = time.time()
    rc, wall = _run([sys.executable, "-c", BUILD.format(name=name)], env, work, seconds, log)
    text = log.read_text(errors="replace")
    done, total, header = _progress(cache, name, since)
    described = re.search(r"(\d+) translation units", header)
    units = described.group(1) if described else "?"
    result = {"kernel": name, "rc": rc, "wall": wall, "units": units, "done": done, "total": total, "spec": header}
    if rc == 0 and "JK-RESULT" in text:
        info = json.loads(text.split("JK-RESULT ", 1)[1].splitlines()[0])
        result.update(ok=True, module=info["module"], seconds=info["seconds"],
                      cell=f"built in {info['seconds']:.1f} s: {header}")
    else:
        rate = done / (wall / 60) if wall > 0 else 0.0
        projected = f"{total / rate:.1f} min projected for all {total} ninja steps" if rate and total else "no unit finished"
        why = "cut at its time box" if rc is None else "failed: " + " | ".join(
            line.strip() for line in text.splitlines()[-12:] if line.strip())[-500:]
        result.update(ok=False, rate=rate, why=why,
                      cell=f"NOT built, {why}; {done}/{total} ninja steps in {wall:.0f} s = {rate:.2f} units/min, {projected}")
    report.record(step="build", **{k: v for k, v in result.items() if k != "cell"})
    return result


# -- 4. the kernels' own tests --------------------------------------------------------

CONFTEST = """import sys
import jitkernels
sys.modules[{pkg!r}] = jitkernels.load("hf", "kernels-community/{name}", backend="cuda")
"""


def run_tests(kc: Path, name: str, env: dict, work: Path, seconds: float, report: Report) -> dict:
    target = work / f"{name}-tests"
    shutil.copytree(kc / name / "tests", target / "tests")
    package = name.replace("-", "_")
    text = "\n".join(p.read_text(errors="replace") for p in (target / "tests").rglob("*.py"))
    routes = []
    if "get_kernel" in text:
        routes.append("kernels.get_kernel (autopatch)")
    if re.search(rf"^\s*(from|import) {package}\b", text, re.M):
        (target / "conftest.py").write_text(CONFTEST.format(pkg=package, name=name))
        routes.append(f"import {package} (conftest)")
    selection = TEST_SELECTION.get(name, ["tests"])
    log = target / "pytest.log"
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=", *selection]
    rc, wall = _run(cmd, env, target, seconds, log)
    out = log.read_text(errors="replace")
    shutil.copyfile(log, work / f"{name}.pytest.log")
    counts = {k: len(re.findall(rf"(?:::\S+| ){k}\b", out)) for k in ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL")}
    summary = next((line for line in reversed(out.splitlines()) if re.match(r"^=+ .*(passed|failed|error|skipped).* =+$", line)), "")
    state = "cut at its time box (counts so far)" if rc is None else f"rc {rc}"
    report.record(step="tests", kernel=name, rc=rc, wall=wall, routes=routes, selection=selection, summary=summary, **counts)
    return {"cells": f"{', '.join(routes) or '-'} | {' '.join(selection)} | {counts['PASSED']} | {counts['FAILED']} | "
                     f"{counts['SKIPPED']} | {counts['ERROR']} | {wall:.0f} s, {state}: {summary.strip('= ') or '-'}"}


def cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def cuda_library_headers(report: Report) -> None:
    """torch's CUDA headers include cusparse.h/cublas_v2.h; a toolkit without them (nvcc only) gets the pip
    nvidia-* wheels' include folders through CPATH, and the report says so."""
    import site

    from jitkernels import machine as environment

    home = Path(str(environment.cuda_home() or "/usr/local/cuda"))
    if (home / "include" / "cusparse.h").exists():
        return
    roots = [Path(p) for p in site.getsitepackages() + [site.getusersitepackages()]] + [Path(p) for p in sys.path if p]
    found = sorted({str(inc) for root in roots for inc in root.glob("nvidia/*/include") if (inc / "cusparse.h").exists()})
    if found:
        os.environ["CPATH"] = os.pathsep.join(found + [os.environ.get("CPATH", "")]).strip(os.pathsep)
        report.line(f"\nnote: {home}/include has no cusparse.h; CPATH={os.environ['CPATH']} (pip nvidia headers)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kc", required=True, help="kernels-community checkout (source trees)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--kernels", default="punica-sgmv,deep-gemm,megablocks,sage-attention,flash-mla",
                        help="in order; 'a+b' builds a and b at the same time (for kernels with few units)")
    parser.add_argument("--partial", default="", help="kernels to build for --partial-seconds only (units/min)")
    parser.add_argument("--partial-seconds", type=float, default=150)
    parser.add_argument("--cutlass-archives", default=None)
    parser.add_argument("--deadline", type=float, default=540, help="seconds after start to stop starting work")
    parser.add_argument("--build-cap", type=float, default=420)
    parser.add_argument("--test-cap", type=float, default=120)
    parser.add_argument("--no-strategies", action="store_true")
    parser.add_argument("--cache", default=None, help="JITKERNELS_CACHE (default: a fresh temp folder)")
    args = parser.parse_args()

    kc = Path(args.kc).resolve()
    report = Report(Path(args.out))
    cache = Path(args.cache or tempfile.mkdtemp(prefix="jk-corpus-cache-"))
    os.environ["JITKERNELS_CACHE"] = str(cache)
    work = Path(tempfile.mkdtemp(prefix="jk-corpus-"))
    names = [n for n in args.kernels.split(",") if n]  # "a+b": built at the same time (fewer units than cores)
    partial = [n for n in args.partial.split(",") if n]
    every = [n for group in names for n in group.split("+")] + partial
    os.environ["LOCAL_KERNELS"] = ":".join(f"kernels-community/{n}={kc / n}" for n in every)
    os.environ.setdefault("MAX_JOBS", "16")
    facts = environment_facts()
    report.line(f"\n# JitKernels CUDA corpus run ({time.strftime('%Y-%m-%d %H:%M')})\n")
    report.line(" | ".join(f"{k}: {v}" for k, v in facts.items()) + f" | MAX_JOBS: {os.environ['MAX_JOBS']}")
    report.record(step="environment", **facts)
    cuda_library_headers(report)
    if not args.no_strategies:
        strategies(kc, report)
    if args.cutlass_archives:
        os.environ["JITKERNELS_CUTLASS_URL"] = serve(Path(args.cutlass_archives)) + "/cutlass-{version}.tar.gz"
        resolve_cutlass(kc, every, report)
    env = dict(os.environ, JITKERNELS_AUTOPATCH="1", PYTHONUNBUFFERED="1")
    env.pop("HF_HUB_DISABLE_TELEMETRY", None)
    dg = next((p for p in (cache / "inputs" / "cutlass" / "4.0.0" / "include",) if p.is_dir()), None)
    if dg is not None:  # deep-gemm JIT-compiles at run time with CUTLASS headers (its DG_CUTLASS_INCLUDE)
        env.setdefault("DG_CUTLASS_INCLUDE", str(dg))
    report.line("\n## Cold builds (local arch only, a fresh cache, CUTLASS already fetched) and the kernels' own tests "
                "(JITKERNELS_AUTOPATCH=1, LOCAL_KERNELS, warm cache)\n")
    report.line("| kernel | cold build | test route | selection | passed | failed | skipped | errors | tests |")
    report.line("|---|---|---|---|---|---|---|---|---|")
    for group in [g.split("+") for g in names] + [[n] for n in partial]:
        left = remaining(args.deadline)
        if left < 30:
            for name in group:
                report.line(f"| {name} | not started (deadline) |" + " |" * 7)
            continue
        results: dict[str, dict] = {}

        def one(name: str) -> None:
            cap = min(args.partial_seconds if name in partial else args.build_cap, left)
            results[name] = build(kc, name, env, cache, work, cap, report)

        threads = [threading.Thread(target=one, args=(name,)) for name in group]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for name in group:
            result = results[name]
            alongside = [n for n in group if n != name]
            note = f" (built at the same time as {', '.join(alongside)})" if alongside else ""
            tests = "|" + " |" * 7
            left_tests = remaining(args.deadline + 45)
            if result.get("ok") and name not in partial and left_tests > 20:
                tests = "| " + run_tests(kc, name, env, work, min(args.test_cap, left_tests), report)["cells"] + " |"
                tests = tests.replace("\n", " ")
            elif result.get("ok"):
                tests = "| not run (deadline) |" + " |" * 6
            report.line(f"| {name} | {cell(result['cell'] + note)} {tests}")
    logs = Path(args.out) / "logs.tar.gz"
    subprocess.run(["tar", "-czf", str(logs), "-C", str(work.parent), work.name, "-C", str(cache), "logs"],
                   capture_output=True)
    report.line(f"\ntotal {time.monotonic() - START:.0f} s; logs (build, pytest, compiler): {logs.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
