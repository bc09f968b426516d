"""Every CUDA kernel of kernels-community on the GPU machine: build it through JitKernels, run its own suite.

One command, repeated in back-to-back runs of the GPU machine, works through the corpus::

    python benchmarks/gpu_corpus.py --kc <kernels-community> --out $OUT --state /tmp/jk-corpus \\
        --cutlass-archives <archives> --deadline 540

1. The plan of every kernel whose ``build.toml`` declares ``cuda`` (``jitkernels.plan.strategy.decide``
   with this machine's torch and CUDA compilers, as ``jitkernels inspect`` does). Those that plan
   ``native-jit`` or ``python`` are the queue: Python kernels first, then native ones by number of
   CUDA units, the giants (flash-attn3 family, natten) last. ``--kernels`` picks and orders others.
2. CUTLASS: with ``--cutlass-archives`` (a folder of ``cutlass-<version>.tar.gz``, e.g.
   ``git archive --prefix=cutlass-3.8.0/ v3.8.0 include tools/util/include | gzip``), the archives are
   served on 127.0.0.1 and ``JITKERNELS_CUTLASS_URL`` points there (the machine has no internet).
3. For each kernel: a build in a fresh process (``jitkernels.load`` through ``LOCAL_KERNELS``, backend
   ``cuda``, ``MAX_JOBS`` default 16, the local GPU's arch), time-boxed (``--build-cap`` and the
   deadline). A build cut short is resumed by the next run: the cache (``<state>/cache``) keeps the
   build workspace, so ninja recompiles nothing it finished; the table counts the runs and adds their
   seconds. Small kernels (``--parallel``, at most 4 CUDA units each) build several at a time.
4. As soon as a kernel is built, its own ``tests/`` run (``--test-cap`` box; ``--testers`` suites at once on the
   one GPU) beside the builds that follow: the GPU idles while kernels compile (build seconds are then
   measured on a busier machine). The suite: ``kernels.get_kernel`` under ``JITKERNELS_AUTOPATCH=1``
   (the ``kernels`` package must be importable: ``--site``), and for suites that ``import <package>``,
   a one-line conftest binding the name to ``jitkernels.load``. Names a suite loads that are not the
   kernel's own (flash-mla's ``drbh/tmp-kernel-123``, a scratch repository) are mapped to the kernel's
   source through ``LOCAL_KERNELS`` (:data:`ALIASES`); where the suite loads that name without a
   version (which kernels >= 0.17 refuses), the copy asks for ``revision="main"``; the table says both.
5. Every step updates ``<state>/state.json`` and rewrites the table ``<out>/gpu-corpus.md`` (and
   copies ``state.json`` to ``<out>``), so a run killed at its limit keeps what it measured. A fresh
   machine (no ``<state>``) can start from an earlier run's ``state.json`` (``--resume-from``): the
   results stay, builds start over.

The failure cause column is a suggestion made from the evidence (the first error lines are kept):
``test environment`` for a missing Python module or a test that needs the Hub, ``kernel`` for a
compile error in the kernel's sources, ``JitKernels`` for a traceback through jitkernels; ``--causes``
(a JSON ``{kernel: "cause: evidence"}``) replaces it with a verdict after reading the logs.
Needs: a CUDA GPU, a CUDA build of torch, ``jitkernels`` importable (``PYTHONPATH`` = the repository).

The GPU machine gets the repository as a copy (64 MiB with its ignored extras), so first, here::

    python benchmarks/gpu_corpus.py --make-carry .gpu/i17-corpus --kc /work/kc --kernels flash-mla,flash-attn2 \
        --cutlass-archives <archives> --site <folder with kernels-0.17.2-*.whl>

copies the kernels' source trees (never committed: ``.gpu/`` is ignored), the archives and the
wheels into one folder to carry, and prints the command to run there.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import queue as queue_module
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

START = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent
#: Suites upstream's CI runs only partly (``pytest -m kernels_ci``): the rest sweeps hundreds of shapes.
TEST_SELECTION = {"deep-gemm": ["tests/test_kernels_ci.py"]}
#: Repositories a kernel's shipped tests load instead of the kernel's own name (scratch repos of its authors).
ALIASES = {"flash-mla": ["drbh/tmp-kernel-123"]}
#: Suites that are scripts, not pytest tests (their test functions take data, not fixtures): run as the authors
#: do, ``python tests/<file>.py``, each in a share of the box; the value is the GPU major a script needs (None: any).
SCRIPT_SUITES = {"flash-mla": {"tests/test_flash_mla_dense_decoding.py": 9, "tests/test_flash_mla_sparse_decoding.py": None,
                               "tests/test_flash_mla_sparse_prefill.py": None, "tests/test_fmha_sm100.py": 10}}
#: Built last, one at a time: hundreds of units each.
GIANTS = ("flash-attn3", "sgl-flash-attn3", "vllm-flash-attn3", "natten")


def elapsed() -> float:
    return time.monotonic() - START


# -- state and table -----------------------------------------------------------------------------

class State:
    """``<state>/state.json``: what every earlier run of this command found, per kernel."""

    def __init__(self, folder: Path, out: Path, resume_from: Path | None):
        self.folder, self.out = folder, out
        folder.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        self.path = folder / "state.json"
        if not self.path.exists() and resume_from is not None and resume_from.exists():
            data = json.loads(resume_from.read_text())
            for record in data.get("kernels", {}).values():
                if not (record.get("build") or {}).get("ok"):
                    record.pop("build", None)  # its objects are not on this machine: starts over
            data.setdefault("notes", []).append(f"resumed from {resume_from} on a fresh machine")
            self.data = data
        else:
            self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data.setdefault("kernels", {})
        self.data.setdefault("runs", [])
        self.lock = threading.Lock()

    def kernel(self, name: str) -> dict:
        return self.data["kernels"].setdefault(name, {})

    def save(self, causes: dict) -> None:
        with self.lock:
            for _ in range(20):  # a builder thread may be adding to a record while the tester saves
                try:
                    text = json.dumps(self.data, indent=1, sort_keys=True)
                    break
                except RuntimeError:
                    time.sleep(0.05)
            else:
                text = json.dumps(self.data, indent=1, sort_keys=True)  # still changing: its error, not ours
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)
            shutil.copyfile(self.path, self.out / "state.json")
            (self.out / "gpu-corpus.md").write_text(render(self.data, causes))


def cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ").strip() or "-"


def build_cell(record: dict) -> str:
    build = record.get("build") or {}
    runs = build.get("runs", [])
    if record.get("strategy") == "python":
        seconds = sum(r.get("seconds", 0) for r in runs)
        return f"import {seconds:.0f} s" if build.get("ok") else ("not loaded" if not runs else "failed to load")
    total = sum(r.get("seconds", 0) for r in runs)
    # A resumed ninja counts only what is left ([27/82] after 78 of 160 were done): steps of the whole build
    # minus those the newest run with a count had still to do.
    steps = max((r.get("total", 0) for r in runs), default=0)
    counted = [r for r in runs if r.get("total")]
    done = steps - (counted[-1]["total"] - counted[-1].get("done", 0)) if counted else 0
    each = " + ".join(f"{r.get('seconds', 0):.0f}" for r in runs)
    how = f"{total:.0f} s" + (f" in {len(runs)} runs ({each})" if len(runs) > 1 else "")
    if build.get("ok"):
        return f"built, {how}"
    if not runs:
        return "not started"
    last = runs[-1]
    state = "cut at its time box, resumes" if last.get("rc") is None else "FAILED"
    return f"{state}: {done}/{steps} ninja steps after {how}"


def render(data: dict, causes: dict) -> str:
    env = data.get("environment", {})
    lines = ["# kernels-community CUDA kernels through JitKernels: builds and their own test suites", ""]
    lines.append(" | ".join(f"{k}: {v}" for k, v in env.items()))
    lines.append("")
    for run in data.get("runs", []):
        lines.append(f"- run {run['n']} ({run['started']}): {run['seconds']:.0f} s, "
                     f"{run.get('steps', 0)} steps; `{run.get('command', '')}`")
    lines += ["", "| kernel | strategy | CUDA units | build (seconds, runs) | test route | passed | failed | skipped "
              "| errors | suite | failure cause (evidence) |", "|" + "---|" * 11]
    counts = {"green": 0, "boxed": 0, "failing": 0, "pending": 0, "no tests/": 0}
    for name, record in sorted(data.get("kernels", {}).items(),
                               key=lambda item: (item[1].get("order", 999), item[0])):
        if record.get("strategy") not in ("native-jit", "python"):
            continue
        tests = record.get("tests") or {}
        cause = causes.get(name) or record.get("cause") or tests.get("cause") or ""
        evidence = tests.get("evidence") or (record.get("build") or {}).get("why") or ""
        if cause and evidence and not causes.get(name):
            cause = f"{cause} (suggested): {evidence}"
        suite = tests.get("summary") or ("no tests/ folder in the kernel" if record.get("no_tests") else "")
        if tests.get("timed_out"):
            suite = f"time box ({tests.get('seconds', 0):.0f} s): {suite}"
        if tests.get("aliases"):
            suite += f"; {tests['aliases']}"
        if tests.get("adapted"):
            suite += f"; suite copy adapted: {tests['adapted']}"
        if record.get("no_tests"):
            counts["no tests/"] += 1
        elif tests.get("rc") == 0 and not tests.get("failed") and not tests.get("errors"):
            counts["green"] += 1
            counts["boxed"] += bool(tests.get("timed_out"))
        elif tests or (record.get("build") or {}).get("ok") is False:  # a failed load or a cut build counts here
            counts["failing"] += 1
        else:
            counts["pending"] += 1
        lines.append("| " + " | ".join(cell(x) for x in (
            name, record.get("strategy"), record.get("cuda_units", "-"), build_cell(record),
            ", ".join(tests.get("routes", [])) or "-", tests.get("passed", "-"), tests.get("failed", "-"),
            tests.get("skipped", "-"), tests.get("errors", "-"), suite, cause)) + " |")
    lines += ["", f"suites green: {counts['green']} ({counts['boxed']} of them cut by their time box, nothing failed); "
              f"with a failure, a failed load or a cut build: {counts['failing']}; not run yet: {counts['pending']}; "
              f"kernels without a tests/ folder: {counts['no tests/']}"]
    others = [(n, r) for n, r in sorted(data.get("kernels", {}).items())
              if r.get("strategy") not in ("native-jit", "python", None)]
    if others:
        lines += ["", "Not built (their plan on this machine):", ""]
        lines += [f"- {n}: {r.get('strategy')} ({r.get('reason')}): {r.get('detail', '')}" for n, r in others]
    return "\n".join(lines) + "\n"


# -- the plan ------------------------------------------------------------------------------------

def environment_facts() -> dict:
    import torch

    from jitkernels.build import toolchain

    compiler = toolchain.for_build(None)
    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if torch.cuda.is_available() else "-",
        "torch": torch.__version__,
        "nvcc": f"{compiler.version} from {compiler.where}",
        "cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "MAX_JOBS": os.environ.get("MAX_JOBS", ""),
    }


def plan(kc: Path, state: State, wanted: list[str] | None) -> list[str]:
    """Plan every CUDA kernel (recorded in the state); the queue of those to build, in order."""
    from jitkernels.build import toolchain
    from jitkernels.plan.buildconfig import parse_build_toml
    from jitkernels.plan.strategy import decide

    tc = toolchain.plan_toolchain("cuda")
    queue = []
    for path in sorted(kc.glob("*/build.toml")):
        name = path.parent.name
        try:
            config = parse_build_toml(path.read_bytes(), origin=str(path))
        except Exception as exc:  # report, never stop the run
            state.kernel(name).update(strategy="error", reason=type(exc).__name__, detail=str(exc)[:300])
            continue
        if "cuda" not in config.backends:
            continue
        d = decide(config, "cuda", tc)
        units = sum(1 for k in config.kernels_for("cuda") if k.name in d.kernels for s in k.src if s.endswith(".cu"))
        record = state.kernel(name)
        record.update(strategy=d.strategy, reason=d.reason, detail=d.detail[:600], cuda_units=units,
                      compiler=d.cuda_compiler, no_tests=not (path.parent / "tests").is_dir())
        if d.strategy in ("native-jit", "python"):
            queue.append(name)
    if wanted:
        missing = [n for n in wanted if n not in queue]
        for name in missing:
            print(f"note: {name} is not a kernel that plans native-jit or python here; skipped", flush=True)
        queue = [n for n in wanted if n in queue]
    else:
        def key(name):
            record = state.kernel(name)
            return (record["strategy"] != "python", name in GIANTS, record["cuda_units"], name)

        queue.sort(key=key)
    for order, name in enumerate(queue):
        state.kernel(name)["order"] = order
    return queue


# -- CUTLASS archives ------------------------------------------------------------------------------

def serve(folder: Path) -> str:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


# -- one kernel ------------------------------------------------------------------------------------

LOAD = r"""
import json, time
t = time.monotonic()
import jitkernels
k = jitkernels.load("hf", "kernels-community/{name}", backend="cuda")
print("JK-RESULT " + json.dumps({{"module": k.__name__, "seconds": time.monotonic() - t}}), flush=True)
"""

CONFTEST = """import sys
import jitkernels
sys.modules[{pkg!r}] = jitkernels.load("hf", "kernels-community/{name}", backend="cuda")
"""


def run_boxed(cmd, env, cwd, seconds: float, log: Path) -> tuple[int | None, float]:
    """Run with a time box; the whole process group (ninja, nvcc, pytest) dies at the limit."""
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            proc.wait()
            rc = None
    return rc, time.monotonic() - start


def kill_session(sid: int) -> None:
    """Kill every process of session ``sid``: ninja puts each compile in a process group of its own."""
    for _ in range(3):
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == sid:
                        found.append(int(entry.name))
                except OSError:
                    pass
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not found:
            return
        time.sleep(0.2)  # reaped children vanish; a fork in between is caught by the next pass


def ninja_progress(cache: Path, name: str, since: float) -> tuple[int, int, str]:
    """Steps finished / total of ``name``'s newest build log written after ``since``, and its spec line."""
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


def suggest_cause(text: str) -> tuple[str, str]:
    """``(cause, evidence)`` from a log: a suggestion, the evidence being the lines it rests on."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]

    def first(pattern):
        return next((line for line in lines if re.search(pattern, line)), None)

    unversioned = first(r"A kernel version or revision must be specified")
    if unversioned:  # the suite's own get_kernel(repo) call: kernels >= 0.17 refuses it, patched or not
        return "the suite (get_kernel without version=/revision=, refused by kernels >= 0.17 too)", unversioned[:300]
    missing = first(r"ModuleNotFoundError: No module named|MissingPythonDependencyError")
    if missing:
        return "test environment", missing[:300]
    hub = first(r"(Could not reach the Hub|LocalEntryNotFoundError|OfflineError|huggingface\.co)")
    if hub:
        return "test environment", hub[:300]
    oom = first(r"CUDA out of memory|OutOfMemoryError")
    if oom:
        return "test environment", oom[:300]
    compiled = first(r"error: |fatal error:|error #\d+")
    if compiled and first(r"FAILED: |BuildError"):
        return "kernel or JitKernels (compile error: read the unit's command)", compiled[:300]
    ours = first(r"jitkernels/.*\.py\", line \d+") and first(r"(JitKernelsError|Error: )")
    if ours:
        return "JitKernels (traceback through jitkernels)", ours[:300]
    assertion = first(r"AssertionError|Mismatched elements|assert_close")
    if assertion:
        return "kernel (numerics: compare with the published build)", assertion[:300]
    last = first(r"(Error|error)")
    return ("unknown (read the log)", last[:300]) if last else ("", "")


def build(name: str, env: dict, cache: Path, logs: Path, seconds: float, record: dict) -> None:
    log = logs / f"{name}.build.{len((record.get('build') or {}).get('runs', [])) + 1}.log"
    since = time.time() - 1
    rc, wall = run_boxed([sys.executable, "-c", LOAD.format(name=name)], env, logs, seconds, log)
    text = log.read_text(errors="replace")
    done, total, header = ninja_progress(cache, name, since)
    built = record.setdefault("build", {"runs": []})
    run = {"seconds": round(wall, 1), "rc": rc, "done": done, "total": total}
    if rc == 0 and "JK-RESULT" in text:
        info = json.loads(text.split("JK-RESULT ", 1)[1].splitlines()[0])
        built.update(ok=True, module=info["module"], spec=header)
        built.pop("why", None)
    elif rc is not None:
        cause, evidence = suggest_cause(text)
        built.update(ok=False, why=evidence or " | ".join(text.splitlines()[-5:])[-400:])
        record["cause"] = cause or "build failed"
    built["runs"].append(run)


def pytest_outcome(out: str) -> tuple[dict, str]:
    """From a ``pytest -v`` log: {passed, failed, skipped, error: count} and pytest's summary line."""
    counts = {k.lower(): len(re.findall(rf"(?:::\S+| ){k}\b", out)) for k in ("PASSED", "FAILED", "SKIPPED", "ERROR")}
    summary = next((line.strip("= ") for line in reversed(out.splitlines())
                    if re.match(r"^=+ .*(passed|failed|error|skipped|no tests ran).* =+$", line)), "")
    return counts, summary


def run_suite(kc: Path, name: str, env: dict, work: Path, seconds: float, record: dict, via_cli: bool = False) -> None:
    if via_cli and name not in SCRIPT_SUITES and not ALIASES.get(name):
        run_jitkernels_test(kc, name, env, work, seconds, record)
        return
    target = work / f"{name}-tests"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(kc / name / "tests", target / "tests")
    package = name.replace("-", "_")
    text = "\n".join(p.read_text(errors="replace") for p in (target / "tests").rglob("*.py"))
    routes = []
    if re.search(r"^[^#\n]*get_kernel\(", text, re.M):
        routes.append("kernels.get_kernel (autopatch)")
    if re.search(rf"^\s*(from|import) {package}\b", text, re.M):
        (target / "conftest.py").write_text(CONFTEST.format(pkg=package, name=name))
        routes.append(f"import {package} (conftest)")
    aliases = [a for a in ALIASES.get(name, []) if a in text]
    env = dict(env)
    adapted = []
    for alias in aliases:
        # The scratch repository is loaded without a version, which kernels >= 0.17 refuses (upstream's loader
        # too): the copy of the suite asks for revision="main", which LOCAL_KERNELS below serves from the source.
        for path in (target / "tests").rglob("*.py"):
            code = path.read_text(errors="replace")
            call = r'^([^#\n]*get_kernel\(\s*["\'])' + re.escape(alias) + r'(["\'])\s*\)'
            fixed = re.sub(call, r'\1' + alias + r'\2, revision="main")', code, flags=re.M)
            if fixed != code:
                path.write_text(fixed)
                adapted.append(f'{path.relative_to(target)}: get_kernel("{alias}") -> get_kernel("{alias}", revision="main")')
    if aliases:
        env["LOCAL_KERNELS"] = ":".join([env.get("LOCAL_KERNELS", "")] + [f"{a}={kc / name}" for a in aliases]).strip(":")
        env["JITKERNELS_TRUSTED"] = ",".join(filter(None, [env.get("JITKERNELS_TRUSTED", ""), *aliases]))
    if name in SCRIPT_SUITES:
        run_scripts(name, package, env, target, seconds, record, routes, aliases, adapted, kc)
        return
    selection = TEST_SELECTION.get(name, ["tests"])
    log = work / f"{name}.pytest.log"
    # A module that fails to collect (flash-mla's lib.py calls get_kernel without a version, which kernels
    # >= 0.17 refuses, upstream's own loader too) is an error row; the suite's other modules still run.
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=",
           "--continue-on-collection-errors", *selection]
    rc, wall = run_boxed(cmd, env, target, seconds, log)
    out = log.read_text(errors="replace")
    counts, summary = pytest_outcome(out)
    tests = {"rc": rc, "seconds": round(wall, 1), "routes": routes, "selection": selection, "summary": summary,
             "passed": counts["passed"], "failed": counts["failed"], "skipped": counts["skipped"],
             "errors": counts["error"], "timed_out": rc is None}
    if adapted:
        tests["adapted"] = "; ".join(adapted)
    if aliases:
        tests["aliases"] = ", ".join(f"{a} mapped to kernels-community/{name}'s source" for a in aliases)
    if rc not in (0, None) or counts["failed"] or counts["error"]:
        tests["cause"], tests["evidence"] = suggest_cause(out)
    record["tests"] = tests


def run_jitkernels_test(kc: Path, name: str, env: dict, work: Path, seconds: float, record: dict) -> None:
    """The suite as a kernel author runs it: ``jitkernels test <kc>/<name> [selection]`` (the package importable by its
    own name, ``kernels.get_kernel`` patched), in the kernel's own folder, the build reused from the cache."""
    selection = TEST_SELECTION.get(name, [])
    log = work / f"{name}.jitkernels-test.log"
    box = max(10.0, seconds - 20)  # jitkernels test stops starting tests; the outer box is the hard limit
    cmd = [sys.executable, "-m", "jitkernels", "test", str(kc / name), "--backend", "cuda", "--time-box", f"{box:.0f}",
           "--", "-v", *selection]  # its pytest cache goes to the JitKernels cache
    rc, wall = run_boxed(cmd, env, work, seconds, log)
    out = log.read_text(errors="replace")
    counts, summary = pytest_outcome(out)
    cut = re.search(r"cut by the \S+ time box after (\d+) tests", out)
    tests = {"rc": rc, "seconds": round(wall, 1), "routes": ["jitkernels test"], "selection": selection or ["tests"],
             "summary": summary + (f"; cut by the time box after {cut.group(1)} tests" if cut else ""),
             "passed": counts["passed"], "failed": counts["failed"], "skipped": counts["skipped"],
             "errors": counts["error"], "timed_out": rc is None or bool(cut), "command": " ".join(cmd[1:])}
    if rc not in (0, None) or counts["failed"] or counts["error"]:
        tests["cause"], tests["evidence"] = suggest_cause(out)
    record["tests"] = tests


BIND = """import sys
import jitkernels
sys.modules[__name__] = jitkernels.load("hf", "kernels-community/{name}", backend="cuda")
"""


def run_scripts(name, package, env, target: Path, seconds: float, record: dict, routes, aliases, adapted, kc) -> None:
    """A suite of scripts (:data:`SCRIPT_SUITES`): each case prints ``Running on``; a failed case ends the script
    with an exception or exit 1; a script cut by its time box passed every case it finished."""
    import torch

    major = torch.cuda.get_device_capability()[0]
    (target / "tests" / f"{package}.py").write_text(BIND.format(name=name))  # `import flash_mla` -> JitKernels
    runnable = {f: need for f, need in SCRIPT_SUITES[name].items() if need is None or need == major}
    share = seconds / max(1, len(runnable))
    scripts, passed, failed, started_total, timed_out = [], 0, 0, 0, False
    for script, need in SCRIPT_SUITES[name].items():
        if script not in runnable:
            scripts.append(f"{script}: not for this GPU (needs sm{need}x)")
            continue
        log = target / (Path(script).stem + ".log")
        rc, wall = run_boxed([sys.executable, script], env, target, share, log)
        out = log.read_text(errors="replace")
        started = out.count("Running on")
        ok = started if rc == 0 else max(0, started - 1)
        passed += ok
        failed += 1 if rc not in (0, None) else 0
        started_total += started
        timed_out |= rc is None
        state = "all passed" if rc == 0 else f"time box ({wall:.0f} s)" if rc is None else f"exit {rc}"
        scripts.append(f"{script}: {ok} cases passed, {state}")
        if rc not in (0, None):
            record.setdefault("script_failures", []).append(out[-3000:])
    tests = {"rc": 0 if not failed else 1, "seconds": round(seconds, 1), "routes": routes + ["python tests/<script>.py"],
             "selection": list(runnable), "summary": "; ".join(scripts), "passed": passed, "failed": failed,
             "skipped": len(SCRIPT_SUITES[name]) - len(runnable), "errors": 0, "timed_out": timed_out}
    if adapted:
        tests["adapted"] = "; ".join(adapted)
    if aliases:
        tests["aliases"] = ", ".join(f"{a} mapped to kernels-community/{name}'s source" for a in aliases)
    if failed:
        tests["cause"], tests["evidence"] = suggest_cause("\n".join(record.get("script_failures", [])))
    record["tests"] = tests


def make_carry(args) -> int:
    """One folder with what a run on the GPU machine reads: sources, CUTLASS archives, suite wheels."""
    dest = Path(args.make_carry)
    names = [n for n in args.kernels.split(",") if n]
    if not names:
        raise SystemExit("--make-carry needs --kernels")
    shutil.rmtree(dest, ignore_errors=True)
    for name in names:
        shutil.copytree(Path(args.kc) / name, dest / "kc" / name, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    run = ["python", "benchmarks/gpu_corpus.py", "--kc", str(dest / "kc"), "--kernels", args.kernels]
    for option, folder, pattern in (("--cutlass-archives", args.cutlass_archives, "cutlass-*.tar.gz"),
                                    ("--site", args.site, "*.whl")):
        if folder:
            target = dest / option.strip("-")
            target.mkdir(parents=True)
            for path in Path(folder).glob(pattern):
                shutil.copyfile(path, target / path.name)
            run += [option, str(target)]
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"carry {dest}: {total} bytes = {total / 2**20:.2f} MiB; on the GPU machine:")
    print(" ".join(run + ["--out", "$OUT", "--deadline", str(int(args.deadline))]))
    return 0


# -- main ------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--kc", required=True, help="kernels-community checkout (source trees)")
    parser.add_argument("--out", help="where the table and state.json are written ($OUT)")
    parser.add_argument("--make-carry", default=None, metavar="DEST",
                        help="here: copy --kernels' sources from --kc, --cutlass-archives and --site into DEST "
                             "(an ignored folder the GPU machine gets), print its size and the command, and stop")
    parser.add_argument("--state", default="/tmp/jk-corpus",
                        help="state folder kept between back-to-back runs: state.json, cache/, logs/")
    parser.add_argument("--resume-from", default=None, help="an earlier run's state.json (fresh machine)")
    parser.add_argument("--kernels", default="", help="only these, in this order (default: the whole queue)")
    parser.add_argument("--skip", default="", help="kernels left out of this run")
    parser.add_argument("--cutlass-archives", default=None)
    parser.add_argument("--site", default=None, help="a folder of wheels installed with --no-deps for the suites "
                                                     "(upstream kernels 0.17.2 for get_kernel)")
    parser.add_argument("--deadline", type=float, default=540, help="seconds after start to stop starting work")
    parser.add_argument("--build-cap", type=float, default=480, help="seconds one build may take in one run")
    parser.add_argument("--test-cap", type=float, default=150, help="seconds one suite may take")
    parser.add_argument("--parallel", type=int, default=4, help="small kernels (<= 4 CUDA units) built at once")
    parser.add_argument("--testers", type=int, default=1, help="suites run at once (on the one GPU)")
    parser.add_argument("--retest", action="store_true", help="run suites again that already ran")
    parser.add_argument("--causes", default=None, help="JSON {kernel: 'cause: evidence'} (verdicts after reading)")
    parser.add_argument("--no-tests", action="store_true", help="build only")
    parser.add_argument("--via-jitkernels-test", action="store_true",
                        help="run pytest suites through `jitkernels test <kc>/<name>` (script suites and suites that "
                             "load another repository's name keep their own runner)")
    args = parser.parse_args()
    if args.make_carry:
        return make_carry(args)
    if not args.out:
        parser.error("--out is required (unless --make-carry)")

    kc = Path(args.kc).resolve()
    out = Path(args.out)
    state_dir = Path(args.state)
    state = State(state_dir, out, Path(args.resume_from) if args.resume_from else None)
    causes = json.loads(Path(args.causes).read_text()) if args.causes else {}
    cache, logs = state_dir / "cache", state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["JITKERNELS_CACHE"] = str(cache)
    os.environ.setdefault("MAX_JOBS", "16")
    os.environ.setdefault("JITKERNELS_PROGRESS", "0")
    sys.path.insert(0, str(ROOT))
    run = {"n": len(state.data["runs"]) + 1, "started": time.strftime("%Y-%m-%d %H:%M"), "seconds": 0.0,
           "steps": 0, "command": " ".join(sys.argv[1:])}
    state.data["runs"].append(run)
    state.data["environment"] = environment_facts()
    wanted = [n for n in args.kernels.split(",") if n]
    queue = [n for n in plan(kc, state, wanted or None) if n not in args.skip.split(",")]
    state.save(causes)
    env = dict(os.environ, JITKERNELS_AUTOPATCH="1", PYTHONUNBUFFERED="1",
               LOCAL_KERNELS=":".join(f"kernels-community/{n}={kc / n}" for n in queue))
    env.pop("HF_HUB_DISABLE_TELEMETRY", None)  # kernels 0.17.2 then sends an invalid User-Agent
    paths = [str(ROOT), str(ROOT / "hooks")]  # hooks/sitecustomize.py: autopatch without the .pth
    if args.site:
        site = state_dir / "site"
        if not site.exists():
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--target", str(site), *map(str, Path(args.site).glob("*.whl"))], check=True)
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
    if args.cutlass_archives:
        env["JITKERNELS_CUTLASS_URL"] = serve(Path(args.cutlass_archives)) + "/cutlass-{version}.tar.gz"
    dg = cache / "entries" / "cutlass-4.0.0" / "include"
    env.setdefault("DG_CUTLASS_INCLUDE", str(dg))  # deep-gemm JIT-compiles at run time with CUTLASS headers

    step_lock = threading.Lock()

    def step_done() -> None:
        with step_lock:
            run["seconds"] = round(elapsed(), 1)
            run["steps"] += 1
        state.save(causes)

    def left() -> float:
        return args.deadline - elapsed()

    def needs_build(name: str) -> bool:  # never tried, or cut at a time box (a failed build is not retried)
        built = state.kernel(name).get("build") or {}
        return not built.get("ok") and not (built.get("runs") and built["runs"][-1].get("rc") is not None)

    pending = [n for n in queue if needs_build(n)]
    ready: queue_module.Queue = queue_module.Queue()  # kernels whose suite can run, in build order
    for n in queue:  # built in an earlier run
        if (state.kernel(n).get("build") or {}).get("ok"):
            ready.put(n)

    crashes: list[str] = []  # a worker's own exception (not a kernel's failure): the run ends with exit code 1

    def builder() -> None:
        try:
            build_all()
        except Exception:
            crashes.append("builder: " + traceback.format_exc())
        finally:  # every tester gets its end mark, whatever happened here
            for _ in range(args.testers):
                ready.put(None)

    def build_all() -> None:
        while pending and left() > 30:
            small = [n for n in pending if state.kernel(n)["cuda_units"] <= 4][:max(1, args.parallel)]
            group = small if small and pending[0] in small else [pending[0]]
            cap = min(args.build_cap, left() - 15)
            threads = [threading.Thread(target=build, args=(n, env, cache, logs, cap, state.kernel(n))) for n in group]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for n in group:
                pending.remove(n)
                if (state.kernel(n).get("build") or {}).get("ok"):
                    ready.put(n)
            step_done()

    def tester() -> None:
        # The GPU idles while kernels compile: each suite runs as soon as its kernel is built, beside the next
        # builds (their seconds are then measured on a busier machine; the table says so).
        while True:
            n = ready.get()
            if n is None:
                return
            record = state.kernel(n)
            if args.no_tests or left() < 40 or record.get("no_tests"):
                continue
            if args.retest or "tests" not in record:
                try:
                    run_suite(kc, n, env, logs, min(args.test_cap, left() - 10), record, args.via_jitkernels_test)
                except Exception as exc:  # the runner's failure: recorded, and the next suites still run
                    crashes.append(f"tester, {n}: " + traceback.format_exc())
                    record["tests"] = {"rc": None, "errors": 1, "summary": f"the runner failed: {exc!r}",
                                       "cause": "benchmark runner", "evidence": repr(exc)}
                step_done()

    workers = [threading.Thread(target=builder)] + [threading.Thread(target=tester) for _ in range(args.testers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    run["seconds"] = round(elapsed(), 1)
    state.save(causes)
    subprocess.run(["tar", "-czf", str(out / "logs.tar.gz"), "-C", str(state_dir), "logs", "-C", str(cache), "logs"],
                   capture_output=True)
    print((out / "gpu-corpus.md").read_text())
    for crash in crashes:
        print(crash, file=sys.stderr)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
