"""Units a minute of a giant kernel's build: JitKernels against a bare ``torch.utils.cpp_extension`` build of
the same units with the same flags, side by side on one machine (issue 17).

The flash-attn3 family has 183-404 CUDA units; a full build does not fit one 10-minute run of the GPU machine.
This takes a sample of one section's units (every k-th ``.cu`` of ``--section``, so forward and backward
kernels and the head dimensions are mixed as in the whole list) and builds it twice at the same time:

* **JitKernels**: a copy of the kernel's source tree whose ``build.toml`` keeps ``[general]``, ``[torch]`` and
  ``--section`` with only the sample, loaded with ``jitkernels.load`` through ``LOCAL_KERNELS`` (backend
  ``cuda``, the local GPU's arch), ``MAX_JOBS=--jobs``. It also compiles the kernel's torch binding (which
  includes kernel-builder's ``registration.h``, written by JitKernels); the load fails after linking, as the
  sample lacks most of what the binding calls. Expected, and not counted.
* **bare**: ``cpp_extension.load`` of the sample's files with the section's ``cuda-flags``, the same include
  folders and arch (``TORCH_CUDA_ARCH_LIST``), and the flags kernel-builder adds to torch's (the ``-U`` of the
  half defines, ``--expt-extended-lambda``, ``-DENABLE_FP8``, the backend defines), ``MAX_JOBS=--jobs``.

Each unit's compile seconds come from the side's ``.ninja_log`` (ninja records an edge when it ends), found by the
object name each side gives the unit. The ratio is over the units both sides finished: sum of JitKernels' seconds
/ sum of the bare ones. With ``2 * --jobs`` equal to the cores, the machine is as loaded as by one full build on all cores
until the first units end, so ``cores * 60 / mean unit seconds`` estimates a full build's rate (the last units run
on a less busy machine, so it errs high), from which the table projects each giant.

    python benchmarks/gpu_build_rate.py --kc <kernels-community> --kernel flash-attn3 --section flash_attn_sm90 \\
        --units 7 --jobs 8 --cutlass-archive <cutlass-4.0.0.tar.gz> --out $OUT --deadline 540
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: What kernel-builder passes to nvcc beyond torch's common flags (see jitkernels/build/native/flags.py).
KERNEL_BUILDER_NVCC = ["-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                       "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__",
                       "--expt-extended-lambda", "-DENABLE_FP8", "-DUSE_CUDA=1", "-DCUDA_KERNEL"]

JK = r"""
import jitkernels
jitkernels.load("hf", "kernels-community/{name}", backend="cuda")
"""

BARE = r"""
import json, sys
from torch.utils import cpp_extension
a = json.loads(sys.argv[1])
cpp_extension.load(name="bare_sample", sources=a["sources"], extra_cflags=a["cflags"], extra_cuda_cflags=a["cuda"],
                   extra_include_paths=a["includes"], build_directory=a["build"], verbose=True, is_python_module=False)
"""


def sample_units(config: dict, section: str, count: int) -> list[str]:
    units = [s for s in config["kernel"][section]["src"] if s.endswith(".cu")]
    stride = max(1, len(units) // count)
    sample = units[::stride][:count]
    stems = [Path(u).stem for u in sample]
    if len(set(stems)) < len(stems):  # cpp_extension names objects by file name alone
        raise SystemExit(f"the sample has two units of the same file name: {sample}")
    return sample


def object_names(unit: str) -> dict[str, str]:
    """The object file each side writes for ``unit``: JitKernels' ``<path with / as __>.o`` (builder.py),
    cpp_extension's ``<file stem>.cuda.o``."""
    return {"jitkernels": unit.replace("/", "__") + ".o", "bare": Path(unit).stem + ".cuda.o"}


def trimmed_tree(src: Path, dest: Path, section: str, sample: list[str]) -> None:
    """The kernel's tree with a ``build.toml`` of [general], [torch] and ``section`` holding its headers + the sample."""
    import tomllib

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("tests", "benchmarks", ".git"))
    config = tomllib.loads((src / "build.toml").read_text())
    kernel = config["kernel"][section]
    kernel["src"] = [s for s in kernel["src"] if not s.endswith(".cu")] + sample
    lines = [(dest / "build.toml").read_text().split("[kernel.", 1)[0].rstrip(), "", f"[kernel.{section}]"]
    for key, value in kernel.items():
        if isinstance(value, dict):
            raise SystemExit(f"[kernel.{section}] {key} is a table; this rewrite writes strings, numbers and lists")
        lines.append(f"{key} = {json.dumps(value)}")  # a JSON string, number, bool or list is TOML too
    (dest / "build.toml").write_text("\n".join(lines) + "\n")


def ninja_seconds(log: Path) -> dict[str, float]:
    """``{object file name: seconds}`` from a ``.ninja_log`` (``start_ms end_ms mtime target hash`` per line; a
    target built again, after a restart, keeps its last line)."""
    found: dict[str, float] = {}
    if not log.exists():
        return found
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 4 and parts[0].isdigit():
            found[Path(parts[3]).name] = (int(parts[1]) - int(parts[0])) / 1000
    return found


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kc", required=True)
    parser.add_argument("--kernel", default="flash-attn3")
    parser.add_argument("--section", default="flash_attn_sm90")
    parser.add_argument("--units", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--cutlass-archive", required=True, help="cutlass-<version>.tar.gz (git archive of the tag)")
    parser.add_argument("--work", default="/tmp/jk-build-rate")
    parser.add_argument("--out", required=True)
    parser.add_argument("--deadline", type=float, default=540)
    parser.add_argument("--arch", default=None, help="default: the local GPU's (for example 9.0a)")
    parser.add_argument("--project", default="",
                        help="JSON {kernel: [units, of which PTX only]} to project full builds from the measured rate")
    args = parser.parse_args()
    import tomllib

    import torch

    began = time.monotonic()
    kc, work, out = Path(args.kc).resolve(), Path(args.work), Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.cutlass_archive) as tar:
        tar.extractall(work / "cutlass", filter="data")
    cutlass = next((work / "cutlass").iterdir())
    source = kc / args.kernel
    config = tomllib.loads((source / "build.toml").read_text())
    sample = sample_units(config, args.section, args.units)
    section = config["kernel"][args.section]
    name = args.kernel
    trimmed_tree(source, work / "jk-src" / name, args.section, sample)
    if args.arch:
        arch = args.arch
    else:
        major, minor = torch.cuda.get_device_capability()
        arch = f"{major}.{minor}" + ("a" if major >= 9 else "")
    version = next(d for d in section["depends"] if d.startswith("cutlass_"))
    base = dict(os.environ, MAX_JOBS=str(args.jobs), PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    base.pop("JITKERNELS_COMPILER_CACHE", None)
    jk_env = dict(base, JITKERNELS_CACHE=str(work / "jk-cache"), JITKERNELS_PROGRESS="1",
                  LOCAL_KERNELS=f"kernels-community/{name}={work / 'jk-src' / name}",
                  **{f"JITKERNELS_{version.upper()}_DIR": str(cutlass)})
    bare_env = dict(base, TORCH_CUDA_ARCH_LIST=arch)
    (work / "bare").mkdir()
    bare_args = {
        "sources": [str(source / s) for s in sample],
        "cflags": ["-O3", "-DNDEBUG"],
        "cuda": section.get("cuda-flags", []) + KERNEL_BUILDER_NVCC,
        "includes": [str(source / i) for i in section.get("include", [])]
                    + [str(cutlass / "include"), str(cutlass / "tools" / "util" / "include")],
        "build": str(work / "bare"),
    }
    t0 = time.monotonic()
    procs = {
        "jitkernels": start([sys.executable, "-c", JK.format(name=name)], jk_env, work / "jitkernels.log"),
        "bare": start([sys.executable, "-c", BARE, json.dumps(bare_args)], bare_env, work / "bare.log"),
    }
    ended: dict[str, float] = {}
    while len(ended) < len(procs) and time.monotonic() - began < args.deadline:
        for side, proc in procs.items():
            if side not in ended and proc.poll() is not None:
                ended[side] = time.monotonic() - t0
        time.sleep(1)
    for side, proc in procs.items():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    jk_logs = list((work / "jk-cache").rglob(".ninja_log"))
    seconds = {"jitkernels": ninja_seconds(jk_logs[0]) if jk_logs else {},
               "bare": ninja_seconds(work / "bare" / ".ninja_log")}
    stems = [Path(s).stem for s in sample]
    rows, both_jk, both_bare = [], 0.0, 0.0
    for unit, stem in zip(sample, stems):
        names = object_names(unit)
        jk, bare = seconds["jitkernels"].get(names["jitkernels"]), seconds["bare"].get(names["bare"])
        rows.append((stem, jk, bare))
        if jk is not None and bare is not None:
            both_jk += jk
            both_bare += bare
    finished = [r for r in rows if r[1] is not None and r[2] is not None]
    cores = len(os.sched_getaffinity(0))
    mean = (both_jk / len(finished)) if finished else None
    result = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", "arch": arch, "torch": torch.__version__, "cores": cores,
        "jobs_per_side": args.jobs, "kernel": name, "section": args.section, "sample": sample,
        "cutlass": cutlass.name, "seconds": {"jitkernels": {stem: jk for stem, jk, _ in rows},
                                             "bare": {stem: bare for stem, _, bare in rows}},
        "ended": ended, "units_on_both": len(finished),
        "ratio_jitkernels_over_bare": round(both_jk / both_bare, 3) if finished else None,
        "mean_unit_seconds_jitkernels": round(mean, 1) if mean else None,
        "units_per_minute_full_load": round(cores * 60 / mean, 2) if mean else None,
        "command": " ".join(sys.argv[1:]),
    }
    projections = json.loads(args.project) if args.project else {}
    lines = [f"# {name}: units a minute, JitKernels vs bare cpp_extension, side by side", "",
             f"{result['gpu']} | arch {arch} | torch {torch.__version__} | {cores} cores | MAX_JOBS={args.jobs} per side "
             f"| {cutlass.name} | `python benchmarks/gpu_build_rate.py {result['command']}`", "",
             "| unit | JitKernels s | bare cpp_extension s | ratio |", "|---|---|---|---|"]
    for stem, jk, bare in rows:
        ratio = f"{jk / bare:.3f}" if jk and bare else "-"
        lines.append(f"| {stem} | {jk if jk is not None else 'not finished'} | "
                     f"{bare if bare is not None else 'not finished'} | {ratio} |")
    lines += ["", f"units finished on both sides: {len(finished)} of {len(stems)}; "
              f"ratio (sum JitKernels / sum bare): {result['ratio_jitkernels_over_bare']}; "
              f"mean unit {result['mean_unit_seconds_jitkernels']} s with {2 * args.jobs} compilers at the start -> "
              f"{result['units_per_minute_full_load']} units/min on {cores} cores"]
    if mean and projections:
        lines += ["", "| kernel | CUDA units | of which PTX only | projected full build on one machine like this |",
                  "|---|---|---|---|"]
        for kernel, (units, ptx) in projections.items():
            lines.append(f"| {kernel} | {units} | {ptx} | {units * mean / cores / 60:.0f} min |")
        result["projections"] = {k: round(u * mean / cores / 60, 1) for k, (u, _) in projections.items()}
    (out / f"build-rate-{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"build-rate-{name}.json").write_text(json.dumps(result, indent=1))
    for side in procs:
        shutil.copyfile(work / f"{side}.log", out / f"build-rate-{name}-{side}.log")
    print("\n".join(lines))
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
