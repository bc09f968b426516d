"""N processes loading the same cold native kernel at once, into one empty cache.

Kernel: kernels-community ``relu`` on CPU by default (``--backend cuda --kernel activation`` on the
GPU machine). A pinned commit is served by a local FakeHub; every child runs
``jitkernels.load("hf", <repo>, revision=<sha>, backend=...)`` with the same ``JITKERNELS_CACHE``
and ``HF_HOME`` (both empty at the start), then checks the op against torch.

How compiles are counted (two independent signals):

* the children's ``jitkernels`` logger is set to INFO on stderr: each build logs exactly one
  ``jitkernels: built <ext> in ...`` (and one ``jitkernels: compiling ...``) line; they are counted
  over all children;
* ``CXX`` points at a wrapper script that appends each invocation to a log before running the real
  compiler: the number of link steps (``-shared``) is the number of builds, whatever the logging says
  (on CUDA the .cu files go through nvcc, but the link still runs ``$CXX``).

Also reported: how many published entries the cache holds (must be 1), whether every child got a
working module, and the total wall time (first launch to last exit) next to one single cold load
(one process, same kernel, its own empty cache), measured in the same run. Rounds alternate
single and concurrent.

Targets (issue): exactly one compile; total wall <= 1.2 x one build.

Run::

    .venv/bin/python benchmarks/bench_concurrent.py --kc /work/ext/kc -n 8 --json /tmp/concurrent.json
    python benchmarks/bench_concurrent.py --backend cuda --kernel activation -n 8 --kc PATH
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common as C


def child_code(repo_id: str, sha: str, backend: str, kernel: str) -> str:
    setup = (
        "import logging\n"
        "_h = logging.StreamHandler(sys.stderr)\n"
        "_h.setFormatter(logging.Formatter('%(name)s:%(levelname)s:%(message)s'))\n"
        "logging.getLogger('jitkernels').addHandler(_h)\n"
        "logging.getLogger('jitkernels').setLevel(logging.INFO)\n"
        "_epoch0 = time.time()\n"
    )
    body = f"import jitkernels\nmod = jitkernels.load('hf', {repo_id!r}, revision={sha!r}, backend={backend!r})"
    check = C.op_check_code(kernel, None, backend, namespace_expr="mod.__name__")
    result = "R['epoch_start'] = _epoch0\nR['epoch_ready'] = _epoch0 + R['ms'] / 1e3\nR['module'] = mod.__name__"
    return C.timed_child_code(body, check, setup=setup, result=result)


def code_is_startup(results: list[dict]) -> bool:
    return bool(results) and all("module" not in r for r in results)


def cxx_wrapper(folder: Path) -> Path:
    real = shutil.which(os.environ.get("CXX", "c++"))
    if not real:
        sys.exit("no C++ compiler found (CXX or c++)")
    path = folder / "cxx-counting"
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "$JK_BENCH_CXX_LOG"\nexec {real!s} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def run_case(args, work: Path, tag: str, procs: int, code: str, endpoint: str, wrapper: Path) -> dict:
    base = work / tag
    base.mkdir(parents=True)
    cxx_log = base / "cxx.log"
    cxx_log.touch()
    env = C.child_env(args, work, JITKERNELS_CACHE=base / "cache", HF_HOME=base / "hf", HF_ENDPOINT=endpoint,
                      CXX=wrapper, JK_BENCH_CXX_LOG=cxx_log)
    handles = []
    start = time.perf_counter()
    for i in range(procs):
        out, err = open(base / f"child{i}.out", "w"), open(base / f"child{i}.err", "w")
        proc = subprocess.Popen([args.python, "-c", code], env=env, cwd=str(work), stdout=out, stderr=err)
        handles.append((proc, out, err, time.perf_counter()))
    results, failures = [], []
    for i, (proc, out, err, launched) in enumerate(handles):
        try:
            code_ = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code_ = proc.wait()
        ended = time.perf_counter()
        out.close()
        err.close()
        stdout = (base / f"child{i}.out").read_text()
        stderr = (base / f"child{i}.err").read_text()
        try:
            res = C.parse_child(code_, stdout, stderr, (ended - launched) * 1e3, f"{tag} child {i}")
            results.append(res)
        except RuntimeError as exc:
            failures.append(str(exc))
    wall = (time.perf_counter() - start) * 1e3
    all_err = "".join((base / f"child{i}.err").read_text() for i in range(procs))
    cxx_calls = [line for line in cxx_log.read_text().splitlines() if line.strip()]
    entries = base / "cache" / "entries"
    published = sorted(p.name for p in entries.iterdir()) if entries.is_dir() else []
    return {
        "procs": procs,
        "wall_ms": wall,
        "built_log_lines": all_err.count("jitkernels: built "),
        "compiling_log_lines": all_err.count("jitkernels: compiling "),
        "waiting_log_lines": all_err.count("Waiting for another process"),
        "link_steps": sum(1 for line in cxx_calls if " -shared " in f" {line} "),
        "compiler_calls": len(cxx_calls),
        "entries": published,
        "ok": len(results),
        "all_ok": not failures and len(results) == procs and all(r.get("ops_registered") for r in results),
        "startup_only": code_is_startup(results),
        "op_checked": all(r.get("op_checked") for r in results) if results else False,
        "load_ms": [round(r["ms"], 1) for r in results],
        "load_phase_ms": ((max(r["epoch_ready"] for r in results) - min(r["epoch_start"] for r in results)) * 1e3
                          if results and all("epoch_start" in r for r in results) else None),
        "process_wall_ms": [round(r["wall_ms"], 1) for r in results],
        "failures": failures,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, repeats=1, warmup=0)
    parser.add_argument("-n", "--procs", type=int, default=8, help="concurrent processes (default 8)")
    parser.add_argument("--kernel", default=None, help="kernels-community kernel (default relu; activation on cuda)")
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--no-startup", action="store_true",
                        help="skip the reference cases that only start 1 and N processes importing torch")
    args = parser.parse_args(argv)
    args.kernel = args.kernel or ("activation" if args.backend == "cuda" else "relu")

    folder = C.kernel_dir(args, args.kernel)
    build = C.read_build_toml(folder)
    name = build["general"]["name"]
    repo_id = (build["general"].get("hub") or {}).get("repo-id") or f"kernels-community/{name}"

    rounds = []
    with C.Workdir(args, "jk-bench-concurrent-") as work:
        info = C.machine_info(args, work, args.backend)
        wrapper = cxx_wrapper(work)
        hub, endpoint, sha = C.fake_hub(folder, repo_id)
        code = child_code(repo_id, sha, args.backend, args.kernel)
        startup = C.timed_child_code("pass", result="R['epoch_start'] = R['epoch_ready'] = time.time()")
        try:
            for r in range(args.warmup + args.repeats):
                cases = [("single", 1), ("concurrent", args.procs)]
                if r % 2:
                    cases.reverse()
                got = {}
                if not args.no_startup:
                    cases += [("startup-1", 1), (f"startup-{args.procs}", args.procs)]
                for tag, procs in cases:
                    print(f"  round {r + 1}: {tag} ({procs} process{'es' if procs > 1 else ''}) ...",
                          file=sys.stderr, flush=True)
                    got[tag] = run_case(args, work, f"r{r}-{tag}", procs,
                                        startup if tag.startswith("startup") else code, endpoint, wrapper)
                    print(f"    wall {got[tag]['wall_ms'] / 1e3:.1f} s, builds logged {got[tag]['built_log_lines']}, "
                          f"link steps {got[tag]['link_steps']}, ok {got[tag]['ok']}/{procs}", file=sys.stderr)
                    for failure in got[tag]["failures"]:
                        print(failure, file=sys.stderr)
                if r >= args.warmup:
                    rounds.append(got)
        finally:
            hub.stop()

    single_walls = [g["single"]["wall_ms"] for g in rounds]
    conc_walls = [g["concurrent"]["wall_ms"] for g in rounds]
    single_med, conc_med = statistics.median(single_walls), statistics.median(conc_walls)
    exactly_one = all(g["concurrent"]["built_log_lines"] == 1 and g["concurrent"]["link_steps"] == 1
                      and len(g["concurrent"]["entries"]) == 1 for g in rounds)
    all_ok = all(g["concurrent"]["all_ok"] and g["single"]["all_ok"] for g in rounds)
    ratio = conc_med / single_med
    targets = {
        f"exactly one compile for {args.procs} concurrent loads": exactly_one,
        f"all {args.procs} processes got a working module": all_ok,
        "total wall <= 1.2 x one build (median)": ratio <= 1.2,
    }
    print(f"\n## {args.procs} processes loading cold `{repo_id}` ({args.backend}) at once, one empty cache\n")
    device = f", GPU {info.get('gpu')}" if info.get("gpu") else ""
    print(f"Machine: {info.get('cpu_model', '?')}, {info.get('cpus_usable')} usable cores{device}; Python "
          f"{info.get('python_version')}, torch {info.get('torch')}; {len(rounds)} round(s)\n")
    print(C.describe_code(info) + "\n")
    rows = []
    for i, g in enumerate(rounds):
        for tag, c in g.items():
            if c["startup_only"]:
                rows.append([str(i + 1), tag + " (python + import torch only)", str(c["procs"]),
                             C.fmt(c["wall_ms"] / 1e3, 1), "-", "-", "-", "-", "-", f"{c['ok']}/{c['procs']}", "-", "-"])
                continue
            rows.append([str(i + 1), tag, str(c["procs"]), C.fmt(c["wall_ms"] / 1e3, 1), str(c["built_log_lines"]),
                         str(c["link_steps"]), str(c["compiler_calls"]), str(len(c["entries"])),
                         str(c["waiting_log_lines"]), f"{c['ok']}/{c['procs']}" + (" (op checked)" if c["op_checked"] else ""),
                         f"{min(c['load_ms']) / 1e3:.1f} / {statistics.median(c['load_ms']) / 1e3:.1f} / "
                         f"{max(c['load_ms']) / 1e3:.1f}" if c["load_ms"] else "-",
                         C.fmt(c["load_phase_ms"] / 1e3, 1) if c.get("load_phase_ms") else "-"])
    print(C.markdown_table(["round", "case", "procs", "total wall s", "builds (log)", "builds (link steps)",
                            "compiler calls", "cache entries", "waited (log)", "working modules",
                            "load s min/median/max", "load phase s"], rows))
    print()
    ratio_rows = [["concurrent wall / single build wall (median)", C.fmt(ratio)]]
    startup_extra = None
    if not args.no_startup:
        s1 = statistics.median(g["startup-1"]["wall_ms"] for g in rounds)
        sn = statistics.median(g[f"startup-{args.procs}"]["wall_ms"] for g in rounds)
        startup_extra = sn - s1
        ratio_rows.append([f"extra wall of starting {args.procs} instead of 1 python+torch processes (s)",
                           C.fmt(startup_extra / 1e3, 1)])
        ratio_rows.append(["(concurrent wall - that extra) / single build wall",
                           C.fmt((conc_med - startup_extra) / single_med)])
    phases = [g["concurrent"]["load_phase_ms"] for g in rounds if g["concurrent"].get("load_phase_ms")]
    singles = [g["single"]["load_ms"][0] for g in rounds if g["single"]["load_ms"]]
    if phases and singles:
        ratio_rows.append(["concurrent load phase (first start after import torch -> last ready) / single load",
                           C.fmt(statistics.median(phases) / statistics.median(singles))])
    print(C.markdown_table(["ratio", "value"], ratio_rows))
    print()
    print(C.markdown_table(["target", "result"], [[t, C.verdict(ok)] for t, ok in targets.items()]))
    C.write_json(args.json, {
        "benchmark": "concurrent", "kernel": repo_id, "commit": sha, "backend": args.backend,
        "machine": info, "args": vars(args), "rounds": rounds,
        "single_wall_ms_median": single_med, "concurrent_wall_ms_median": conc_med,
        "ratio_concurrent_over_single": ratio, "startup_extra_ms": startup_extra, "targets": targets,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
