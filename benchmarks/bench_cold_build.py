"""Cold build of a native kernel: JitKernels vs a bare ``torch.utils.cpp_extension.load``.

Kernel: kernels-community ``relu`` on CPU by default; on the GPU machine use
``--backend cuda --kernel activation``. Each variant runs in a fresh process, timed from just after
``import torch`` until the module is loaded (the process's whole wall time is reported too):

* ``bare``       -- ``torch.utils.cpp_extension.load(name, sources=<the [torch] and [kernel.*] C++/CUDA
  sources of build.toml for the backend, in a copy of the kernel folder in the work folder>,
  extra_include_paths=<their include dirs + a temp dir holding
  jitkernels.build.native.codegen.REGISTRATION_H>, build_directory=<fresh temp dir>)`` with kernel-builder-like
  flags (``-O3 -DNDEBUG -D<BACKEND>_KERNEL``; for CUDA also ``--expt-extended-lambda -DENABLE_FP8``, the
  ``__CUDA_NO_HALF*`` defines undone, and ``TORCH_TARGET_VERSION`` for stable-ABI kernels).
  ``TORCH_EXTENSION_NAME`` is the ``name``. On CUDA it builds for the local GPU arch
  (``TORCH_CUDA_ARCH_LIST=<local arch>``, override with ``--bare-arch-list``);
* ``jitkernels`` -- ``jitkernels.load("hf", <repo>, revision=<pinned sha>, backend=...)`` into an empty
  cache (fresh ``JITKERNELS_CACHE`` and ``HF_HOME`` each round; the commit is served by a local FakeHub,
  so the Hub fetch is included), for the local arch only;
* ``jitkernels_all_archs`` (``--backend cuda`` only) -- the same with ``TORCH_CUDA_ARCH_LIST`` set to
  kernel-builder's default list for CUDA 13 (``7.5;8.0;8.6;8.7;8.9;9.0;10.0;11.0;12.0;12.1+PTX``,
  override with ``--full-arch-list``).

Targets (issue): jitkernels cold <= 1.1 x bare cpp_extension.load (median); on CUDA, local-arch
jitkernels >= 2.5x faster than the full default arch list.
Anchors: relu CPU cold cpp_extension.load 21-22 s (2 cores); activation CUDA sm_90 8.4 s, 8 archs 23.2 s.

Run::

    .venv/bin/python benchmarks/bench_cold_build.py --kc /work/ext/kc --json /tmp/cold_build.json
    python benchmarks/bench_cold_build.py --backend cuda --kernel activation --kc PATH --json cold_gpu.json

``--repeats`` defaults to 2 (builds are slow). ``MAX_JOBS`` applies to both (default: ninja's own for
cpp_extension, the usable cores for jitkernels).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys

import _common as C

STABLE_DEFINE = "-DTORCH_TARGET_VERSION=0x{:016x}"
UNDO_TORCH_NVCC_DEFINES = ["-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                           "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"]


#: Runs inside the clock, right after importing cpp_extension (microseconds): times its ninja run
#: through a private torch function, if present, so the report can split compile time from the rest.
BARE_PATCH = """
_ninja_s = []
if hasattr(cpp_extension, '_run_ninja_build'):
    _orig = cpp_extension._run_ninja_build
    def _timed(*a, **k):
        _s = time.perf_counter()
        try:
            return _orig(*a, **k)
        finally:
            _ninja_s.append(time.perf_counter() - _s)
    cpp_extension._run_ninja_build = _timed
"""
BARE_RESULT = "R['build_s'] = sum(_ninja_s) if _ninja_s else None"

#: Child setup: capture jitkernels' INFO log to read back the compile time it reports.
JK_SETUP = """
import logging, re
class _Cap(logging.Handler):
    def __init__(self):
        super().__init__()
        self.msgs = []
    def emit(self, record):
        self.msgs.append(record.getMessage())
_cap = _Cap()
logging.getLogger('jitkernels').addHandler(_cap)
logging.getLogger('jitkernels').setLevel(logging.INFO)
"""
JK_RESULT = """
_built = [float(m.group(1)) for x in _cap.msgs for m in [re.search(r'jitkernels: built \\S+ in ([0-9.]+)s', x)] if m]
R['build_s'] = _built[0] if _built else None
"""


def bare_flags(build: dict, backend: str, section_cxx: list[str], section_cuda: list[str]):
    """Flags for cpp_extension.load close to what kernel-builder passes."""
    defines = ["-DCPU_KERNEL"] if backend == "cpu" else ["-DCUDA_KERNEL", "-DUSE_CUDA=1"]
    stable = C.stable_abi(build, backend)
    if stable:
        major, minor = (int(p) for p in stable.split(".")[:2])
        defines.append(STABLE_DEFINE.format((major << 56) | (minor << 48)))
    cflags = ["-O3", "-DNDEBUG", "-fno-gnu-unique", *defines, *[f for f in section_cxx if not f.startswith("-l")]]
    cuda = ["-O3", "-DNDEBUG", *defines, "--expt-extended-lambda", "-DENABLE_FP8", *UNDO_TORCH_NVCC_DEFINES,
            *section_cuda]
    ldflags = [f for f in section_cxx + section_cuda if f.startswith("-l")]
    return cflags, cuda, ldflags


def collect_commands(work) -> dict:
    """The compiler commands of round 1: cpp_extension's build.ninja and jitkernels' verbose build log."""
    out: dict = {}
    ninja = work / "bare" / "r0" / "build.ninja"
    if ninja.is_file():
        out["bare_build_ninja"] = ninja.read_text()
    for log in sorted((work / "jk").glob("local-r0/cache/logs/*.log")):
        lines = log.read_text(errors="replace").splitlines()
        out["jitkernels_build_log"] = "\n".join(line for line in lines if not line.startswith("In file included"))[:20000]
        out["jitkernels_commands"] = [line.split("] ", 1)[1] for line in lines
                                      if line.startswith("[") and "] " in line and (" -c " in line or " -shared" in line)]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, repeats=2, warmup=0)
    parser.add_argument("--kernel", default=None, help="kernels-community kernel (default relu; activation on cuda)")
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bare-arch-list", help="TORCH_CUDA_ARCH_LIST for the bare build (default: local arch)")
    parser.add_argument("--full-arch-list", default=C.KERNEL_BUILDER_CUDA13_ARCHS,
                        help="TORCH_CUDA_ARCH_LIST of the jitkernels_all_archs variant (kernel-builder's CUDA 13 list)")
    parser.add_argument("--no-all-archs", action="store_true", help="skip the jitkernels_all_archs variant on cuda")
    parser.add_argument("--show-commands", action="store_true",
                        help="print the compiler commands of both builds (first round); they always go to the JSON")
    args = parser.parse_args(argv)
    args.kernel = args.kernel or ("activation" if args.backend == "cuda" else "relu")

    folder = C.kernel_dir(args, args.kernel)
    build = C.read_build_toml(folder)
    name = build["general"]["name"]
    repo_id = (build["general"].get("hub") or {}).get("repo-id") or f"kernels-community/{name}"
    sys.path.insert(0, str(C.REPO_ROOT))
    from jitkernels.build.native.codegen import REGISTRATION_H

    with C.Workdir(args, "jk-bench-cold-") as work:
        log = print
        # The bare build compiles a copy in the work folder, as jitkernels compiles its staging copy.
        src_copy = work / "src" / folder.name
        shutil.copytree(folder, src_copy, dirs_exist_ok=True,
                          ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
        sources, includes, section_cxx, section_cuda = C.cpp_sources(src_copy, build, args.backend)
        if not sources:
            sys.exit(f"{name}: no C++/CUDA sources for {args.backend}")
        cflags, cuda_flags, ldflags = bare_flags(build, args.backend, section_cxx, section_cuda)
        info = C.machine_info(args, work, args.backend)
        gen = work / "gen"
        gen.mkdir(exist_ok=True)
        (gen / "registration.h").write_text(REGISTRATION_H)
        local_arch = info.get("gpu_capability")
        if args.backend == "cuda" and not (local_arch or args.bare_arch_list):
            sys.exit("--backend cuda: no GPU visible to pick the local arch; pass --bare-arch-list")
        bare_arch = args.bare_arch_list or local_arch
        hub, endpoint, sha = C.fake_hub(folder, repo_id)
        check_bare = lambda ns: C.op_check_code(args.kernel, ns, args.backend)  # noqa: E731

        def bare(r: int):
            ext = f"bare_{name.replace('-', '_')}_r{r}"
            build_dir = work / "bare" / f"r{r}"
            build_dir.mkdir(parents=True, exist_ok=True)
            body = (
                "from torch.utils import cpp_extension\n" + BARE_PATCH +
                f"mod = cpp_extension.load(name={ext!r}, sources={sources!r}, "
                f"extra_include_paths={[*includes, str(gen)]!r}, extra_cflags={cflags!r}, "
                f"extra_cuda_cflags={cuda_flags!r}, extra_ldflags={ldflags!r}, "
                f"build_directory={str(build_dir)!r}, verbose=False)"
            )
            env = C.child_env(args, work, TORCH_CUDA_ARCH_LIST=bare_arch if args.backend == "cuda" else None)
            return C.timed_child_code(body, check_bare(ext), result=BARE_RESULT), env

        def jk(arch_list: str | None, tag: str):
            def make(r: int):
                base = work / "jk" / f"{tag}-r{r}"
                # JITKERNELS_VERBOSE=1 only makes ninja echo each command into the build log (kept for
                # comparing flags with the bare build); it does not change what is compiled.
                env = C.child_env(args, work, JITKERNELS_CACHE=base / "cache", HF_HOME=base / "hf",
                                  HF_ENDPOINT=endpoint, TORCH_CUDA_ARCH_LIST=arch_list, JITKERNELS_VERBOSE=1)
                body = (f"import jitkernels\nmod = jitkernels.load('hf', {repo_id!r}, revision={sha!r}, "
                        f"backend={args.backend!r})")
                check = C.op_check_code(args.kernel, None, args.backend, namespace_expr="mod.__name__")
                return C.timed_child_code(body, check, setup=JK_SETUP, result=JK_RESULT), env
            return make

        variants = {"bare": bare, "jitkernels": jk(None, "local")}
        if args.backend == "cuda" and not args.no_all_archs:
            variants["jitkernels_all_archs"] = jk(args.full_arch_list, "all")
        try:
            log(f"cold builds of {repo_id} ({args.backend}, {len(sources)} sources): {args.repeats} rounds of "
                f"{', '.join(variants)}", file=sys.stderr)
            samples = C.interleaved(args, variants, work)
        finally:
            hub.stop()
        commands = collect_commands(work)
    summary = C.summarize(samples)
    walls = C.summarize(samples, key="wall_ms")

    def sec(v: float) -> str:
        return f"{v / 1e3:.2f}"

    bare_s, jk_s = summary["bare"], summary["jitkernels"]
    ratios = {"jitkernels_over_bare_median": jk_s["median"] / bare_s["median"],
              "jitkernels_over_bare_min": jk_s["min"] / bare_s["min"]}
    targets = {"jitkernels cold <= 1.1 x bare cpp_extension.load (median)": ratios["jitkernels_over_bare_median"] <= 1.1}
    if "jitkernels_all_archs" in summary:
        all_s = summary["jitkernels_all_archs"]
        ratios["all_archs_over_local_median"] = all_s["median"] / jk_s["median"]
        ratios["all_archs_over_local_min"] = all_s["min"] / jk_s["min"]
        targets["full arch list / local arch >= 2.5 (median)"] = ratios["all_archs_over_local_median"] >= 2.5
    builds = {n: [x["build_s"] for x in runs if x.get("build_s") is not None] for n, runs in samples.items()}
    build_med = {n: (statistics.median(v) if v else None) for n, v in builds.items()}
    rows = [[n, sec(s["median"]), sec(s["min"]), sec(s["max"]), str(s["n"]),
             C.fmt(build_med[n]) if build_med[n] is not None else "-",
             C.fmt(s["median"] / 1e3 - build_med[n]) if build_med[n] is not None else "-",
             sec(walls[n]["median"])]
            for n, s in summary.items()]
    device = f", GPU {info.get('gpu')} (sm {local_arch})" if info.get("gpu") else ""
    print(f"\n## Cold build of `{repo_id}` ({args.backend}, {len(sources)} translation units)\n")
    print(f"Machine: {info.get('cpu_model', '?')}, {info.get('cpus_usable')} usable cores{device}; Python "
          f"{info.get('python_version')}, torch {info.get('torch')}; MAX_JOBS={os.environ.get('MAX_JOBS', 'unset')}"
          + (f"; bare arch list {bare_arch}; full list {args.full_arch_list}" if args.backend == "cuda" else "") + "\n")
    print(C.describe_code(info) + "\n")
    print(C.markdown_table(["variant", "median s", "min s", "max s", "n", "of which ninja s (median)",
                            "rest s", "process wall median s"], rows))
    print()
    ratio_rows = [["jitkernels / bare", C.fmt(ratios["jitkernels_over_bare_median"]),
                   C.fmt(ratios["jitkernels_over_bare_min"])]]
    if "all_archs_over_local_median" in ratios:
        ratio_rows.append(["all archs / local arch (jitkernels)", C.fmt(ratios["all_archs_over_local_median"]),
                           C.fmt(ratios["all_archs_over_local_min"])])
    print(C.markdown_table(["ratio", "median", "min"], ratio_rows))
    print()
    print(C.markdown_table(["target", "result"], [[t, C.verdict(ok)] for t, ok in targets.items()]))
    if args.show_commands:
        print("\n### Compiler commands, round 1\n\nbare (cpp_extension build.ninja):\n```")
        print(commands.get("bare_build_ninja", "(not found)").strip())
        print("```\n\njitkernels (ninja -v):\n```")
        print("\n".join(commands.get("jitkernels_commands", ["(not found)"])))
        print("```")
    C.write_json(args.json, {
        "commands": commands,
        "benchmark": "cold_build", "kernel": repo_id, "commit": sha, "backend": args.backend,
        "sources": sources, "bare_flags": {"cflags": cflags, "cuda_cflags": cuda_flags, "ldflags": ldflags,
                                           "arch_list": bare_arch},
        "machine": info, "args": vars(args), "variants": summary, "process_wall": walls,
        "ninja_s": builds,
        "ratios": ratios, "targets": targets,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
