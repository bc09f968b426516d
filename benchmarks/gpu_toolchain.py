"""A CUDA kernel built with a compiler JitKernels provisions, on a GPU machine whose own toolkit is hidden.

Two steps. Here (any machine with PyPI access), prepare what travels in the 64 MiB carry::

    python benchmarks/gpu_toolchain.py carry --dest .gpu-carry --release 13.0.2 \\
        --kc /work/kc --kernels relu,activation --site /path/to/kernels-0.17.2-...whl

* NVIDIA's compiler wheels of CUDA ``--release`` (the ``cuda-toolkit`` metapackage and the five
  wheels it pins for its ``nvcc`` and ``cccl`` extras: nvcc, nvvm, crt, runtime, cccl), downloaded from
  the package index by JitKernels' own code and checked against the index's sha256. Together they are
  100 MB, over the carry. So each component wheel is repacked, with LZMA instead of deflate and
  without the members JitKernels never unpacks (``jitkernels.build.toolchain.EXCLUDE``: libnvvm.so,
  CMake files, bin2c, the device query): same names, same files otherwise, about 39 MB;
* a ``file://`` package index (PEP 503, with the sha256 of the repacked files) over them;
* ``expected-home.json``: the sha256 of every file of the CUDA home JitKernels provisions *here* from
  the original wheels. On the GPU machine the home made from the repacked wheels must match it file
  for file: the repacking changed nothing that a build reads;
* the kernels' source trees (``--kc``/``--kernels``) and the wheels for their suites (``--site``).

There (the GPU machine, as root)::

    python benchmarks/gpu_toolchain.py run --carry .gpu-carry --out $OUT

re-runs itself under ``.ci/hide-cuda-toolkit`` (no nvcc on PATH, every ``/usr/local/cuda*`` covered, no
``CUDA_HOME``), points ``JITKERNELS_CUDA_INDEX`` at the carried index and provisions the compiler into a
fresh cache (timed), compares the home with ``expected-home.json``, then builds each kernel through
JitKernels (``benchmarks/gpu_corpus.py``'s build step) and checks that its compile commands ran the
provisioned nvcc, and runs the kernel's own test suite (``gpu_corpus.py``'s suite step, time-boxed).
Results: ``<out>/gpu-toolchain.md`` and ``.json``, logs in ``<out>/toolchain-logs.tar.gz``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


# -- carry (here) --------------------------------------------------------------------------------------

def download_release(release: str, folder: Path) -> tuple[Path, list[Path]]:
    """The metapackage and the compiler wheels it pins, from the configured index, verified by its sha256."""
    from jitkernels.build import toolchain
    from jitkernels.inputs import package_index

    indexes, source = package_index.configured()
    print(f"index: {' '.join(indexes)} ({source})", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    meta = package_index.find_wheel(indexes, "cuda-toolkit", f"=={release}")
    meta_path = folder / meta.filename
    if not meta_path.exists() or sha256(meta_path) != meta.sha256:
        package_index.download(meta, folder, 1 << 20)
    pins = package_index.requirements(package_index.wheel_metadata(meta_path), toolchain.EXTRAS)
    wheels = []
    for project, spec in sorted(pins.items()):
        entry = package_index.find_wheel(indexes, project, spec)
        path = folder / entry.filename
        if not path.exists() or sha256(path) != entry.sha256:
            package_index.download(entry, folder, toolchain.MAX_WHEEL_BYTES)
        wheels.append(path)
        print(f"  {entry.filename}: {mib(path.stat().st_size)}, sha256 {entry.sha256[:16]}... (the index's)", flush=True)
    return meta_path, wheels


def expected_home(release: str, meta: Path, wheels: list[Path], work: Path) -> dict[str, str]:
    """``{file: sha256}`` of the home JitKernels provisions from the original wheels, here."""
    from jitkernels.build import toolchain
    from jitkernels.cache.manifest import read_manifest
    from jitkernels.testing import cudawheels

    url = cudawheels.write_index(work / "original-index", [meta, *wheels])
    saved = dict(os.environ)
    os.environ.update(JITKERNELS_CUDA_INDEX=url, JITKERNELS_CACHE=str(work / "cache"), JITKERNELS_PROGRESS="0")
    real = toolchain.torch_release
    toolchain.torch_release = lambda: release  # the GPU machine's torch requires this release
    try:
        version = ".".join(release.split(".")[:2])
        home = toolchain.provision(version)
        manifest = read_manifest(home)
    finally:
        toolchain.torch_release = real
        os.environ.clear()
        os.environ.update(saved)
    return manifest["sha256"]


def repack(wheel: Path, dest: Path) -> Path:
    """The same wheel with LZMA compression and without the members JitKernels never unpacks."""
    from jitkernels.build import toolchain

    target = dest / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_LZMA) as out:
        for info in src.infolist():
            parts = info.filename.split("/")
            if any(fnmatch.fnmatchcase("/".join(parts[:n]), pattern) for pattern in toolchain.EXCLUDE
                   for n in range(1, len(parts) + 1)):
                continue
            copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            copy.external_attr = info.external_attr
            copy.compress_type = zipfile.ZIP_LZMA
            with src.open(info) as data, out.open(copy, "w") as sink:
                shutil.copyfileobj(data, sink, 1 << 20)
    return target


def cmd_carry(args) -> int:
    from jitkernels.testing import cudawheels

    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "wheels").mkdir(parents=True)
    originals = Path(args.originals)
    meta, wheels = download_release(args.release, originals)
    with tempfile.TemporaryDirectory(prefix="jk-carry-") as work:
        print("provisioning here from the original wheels (the reference home)...", flush=True)
        expected = expected_home(args.release, meta, wheels, Path(work))
    repacked = [repack(w, dest / "wheels") for w in wheels]
    shutil.copyfile(meta, dest / "wheels" / meta.name)
    url = cudawheels.write_index(dest / "index", [dest / "wheels" / meta.name, *repacked])
    shutil.rmtree(dest / "wheels")  # write_index copied them under index/files
    (dest / "expected-home.json").write_text(json.dumps(expected, indent=0, sort_keys=True))
    provenance = {"release": args.release, "originals": [
        {"wheel": w.name, "sha256": sha256(w), "bytes": w.stat().st_size} for w in [meta, *wheels]],
        "repacked": [{"wheel": p.name, "sha256": sha256(dest / "index" / "files" / p.name),
                      "bytes": (dest / "index" / "files" / p.name).stat().st_size} for p in repacked],
        "home_files": len(expected)}
    (dest / "provenance.json").write_text(json.dumps(provenance, indent=1))
    for name in [n for n in args.kernels.split(",") if n]:
        shutil.copytree(Path(args.kc) / name, dest / "kc" / name, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    if args.site:
        (dest / "site").mkdir()
        for wheel in args.site:
            shutil.copyfile(wheel, dest / "site" / Path(wheel).name)
    print(f"\nindex: {url} (rewritten on the GPU machine: the carried folder's own path)")
    total = 0
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        total += path.stat().st_size
    for item in provenance["originals"]:
        print(f"  original {item['wheel']}: {mib(item['bytes'])}")
    for item in provenance["repacked"]:
        print(f"  carried  {item['wheel']}: {mib(item['bytes'])}")
    print(f"carry {dest}: {total} bytes = {mib(total)} (64 MiB = 67108864 bytes, the repository's files come on top)")
    return 0


# -- run (the GPU machine) -------------------------------------------------------------------------------

def nvcc_answers() -> str | None:
    found = shutil.which("nvcc")
    if not found:
        return None
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return found if out.returncode == 0 else None


def cmd_run(args) -> int:
    if not os.environ.get("JK_TOOLKIT_HIDDEN") and not args.keep_toolkit:
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0:
            hide = ROOT / ".ci" / "hide-cuda-toolkit"
            os.execv(str(hide), [str(hide), "env", "JK_TOOLKIT_HIDDEN=mount", sys.executable, *sys.argv])
        # no private mount namespace here: name a CUDA_HOME without nvcc (then the only local one looked at)
        os.environ.update(JK_TOOLKIT_HIDDEN="CUDA_HOME=/nonexistent (unshare -m refused)", CUDA_HOME="/nonexistent")
    import torch

    import gpu_corpus
    from jitkernels.build import toolchain
    from jitkernels.cache.manifest import read_manifest

    carry = Path(args.carry).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = Path(args.state)
    shutil.rmtree(state, ignore_errors=True)
    cache, logs = state / "cache", state / "logs"
    logs.mkdir(parents=True)
    report: dict = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
                    "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                    "torch_release": toolchain.torch_release(), "python": sys.version.split()[0],
                    "nvcc_on_path_answers": nvcc_answers(), "hidden": os.environ.get("JK_TOOLKIT_HIDDEN") or "no",
                    "cuda_variables": {k: v for k, v in os.environ.items() if "CUDA" in k or "/cuda" in v}}
    os.environ.update(JITKERNELS_CACHE=str(cache), JITKERNELS_CUDA_INDEX=(carry / "index" / "simple").as_uri(),
                      JITKERNELS_PROGRESS="0")
    os.environ.setdefault("MAX_JOBS", "16")
    report["before"] = toolchain.describe()
    started = time.monotonic()
    compiler = toolchain.for_build(None)
    report["chosen"] = {"origin": compiler.origin, "version": compiler.version, "where": compiler.where}
    home = toolchain.provision(compiler.version) if compiler.home is None else Path(compiler.home)
    report["provision_seconds"] = round(time.monotonic() - started, 1)
    manifest = read_manifest(home) or {}
    report["home"] = str(home)
    report["components"] = manifest.get("components")
    expected = json.loads((carry / "expected-home.json").read_text())
    got = manifest.get("sha256") or {}
    report["home_matches_reference"] = got == expected
    report["home_differences"] = sorted(set(got.items()) ^ set(expected.items()))[:20]
    nvcc = os.path.join(str(home), "bin", "nvcc")
    kc = carry / "kc"
    names = [n for n in args.kernels.split(",") if n] or sorted(p.name for p in kc.iterdir())
    env = dict(os.environ, JITKERNELS_AUTOPATCH="1", PYTHONUNBUFFERED="1", JITKERNELS_VERBOSE="1",
               LOCAL_KERNELS=":".join(f"kernels-community/{n}={kc / n}" for n in names))
    env.pop("HF_HUB_DISABLE_TELEMETRY", None)
    paths = [str(ROOT), str(ROOT / "hooks")]
    if (carry / "site").is_dir():
        site = state / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, (carry / "site").glob("*.whl"))], check=True)
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
    report["kernels"] = {}
    for name in names:
        record: dict = {}
        left = args.deadline - (time.monotonic() - started)
        if left < 60:
            record["skipped"] = "deadline"
            report["kernels"][name] = record
            continue
        gpu_corpus.build(name, env, cache, logs, min(args.build_cap, left - 30), record)
        compiler_logs = sorted((cache / "logs").glob(f"_{name.replace('-', '_')}_cuda_*.log"))
        commands = [line for log in compiler_logs for line in log.read_text(errors="replace").splitlines()
                    if " -c " in line and ("nvcc" in line)]
        record["nvcc_commands"] = len(commands)
        record["all_with_provisioned_nvcc"] = bool(commands) and all(f"{nvcc} " in line for line in commands)
        libraries = list((cache / "entries").glob(f"_{name.replace('-', '_')}_cuda_*/*/*.so"))
        if libraries:
            needed = subprocess.run(["readelf", "-d", str(libraries[0])], capture_output=True, text=True).stdout
            record["needed_cudart"] = sorted({w.strip("[]") for w in needed.split() if "libcudart" in w})
        left = args.deadline - (time.monotonic() - started)
        if (record.get("build") or {}).get("ok") and (kc / name / "tests").is_dir() and left > 40:
            shutil.copytree(kc / name, logs / f"{name}-src", dirs_exist_ok=True)
            gpu_corpus.run_suite(kc, name, env, logs, min(args.test_cap, left - 10), record)
        report["kernels"][name] = record
        write_report(report, out)
    write_report(report, out)
    subprocess.run(["tar", "-czf", str(out / "toolchain-logs.tar.gz"), "-C", str(state), "logs", "-C", str(cache),
                    "logs"], capture_output=True)
    print((out / "gpu-toolchain.md").read_text())
    ok = report["hidden"] != "no" and report["home_matches_reference"] and all(
        r.get("all_with_provisioned_nvcc") and (r.get("tests") or {}).get("rc") == 0 for r in report["kernels"].values())
    return 0 if ok else 1


def write_report(report: dict, out: Path) -> None:
    (out / "gpu-toolchain.json").write_text(json.dumps(report, indent=1, default=str))
    lines = ["# A CUDA kernel built with the compiler JitKernels provisions, the machine's toolkit hidden", "",
             f"GPU {report['gpu']}, torch {report['torch']} (CUDA {report['torch_cuda']}, its wheel requires "
             f"cuda-toolkit=={report['torch_release']}), Python {report['python']}; toolkit hidden by "
             f".ci/hide-cuda-toolkit: {report['hidden']}; nvcc on PATH answers: {report['nvcc_on_path_answers']}", "",
             f"- local toolkits seen before: {'; '.join(report['before']['local'])}",
             f"- compiler chosen: nvcc {report['chosen']['version']} from {report['chosen']['where']}",
             f"- provisioned in {report['provision_seconds']} s into {report['home']} from the carried index: "
             + ", ".join(f"{c['project']} {c['version']}" for c in report.get("components") or []),
             f"- the home's files match the reference home provisioned from PyPI's original wheels, file by file "
             f"(sha256): {report['home_matches_reference']}"
             + (f" (differences: {report['home_differences']})" if report["home_differences"] else ""), "",
             "| kernel | build | compile commands with the provisioned nvcc | libcudart | passed | failed | skipped "
             "| errors | suite |", "|---|---|---|---|---|---|---|---|---|"]
    import gpu_corpus

    for name, record in report.get("kernels", {}).items():
        tests = record.get("tests") or {}
        build = gpu_corpus.build_cell({"build": record.get("build"), "strategy": "native-jit"}) \
            if record.get("build") else record.get("skipped", "-")
        lines.append("| " + " | ".join(gpu_corpus.cell(x) for x in (
            name, build, f"{record.get('nvcc_commands', 0)} commands, all provisioned: "
                         f"{record.get('all_with_provisioned_nvcc')}",
            ", ".join(record.get("needed_cudart", [])) or "-", tests.get("passed", "-"), tests.get("failed", "-"),
            tests.get("skipped", "-"), tests.get("errors", "-"),
            ("time box " + str(tests.get("seconds")) + " s: " if tests.get("timed_out") else "")
            + f"{tests.get('summary') or '-'} ({', '.join(tests.get('routes', []))})")) + " |")
    (out / "gpu-toolchain.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("carry", help="here: the repacked compiler wheels, their index, the reference home, sources")
    p.add_argument("--dest", required=True, help="an ignored folder of the repository, carried to the GPU machine")
    p.add_argument("--release", default="13.0.2", help="the CUDA release the GPU machine's torch requires "
                                                      "(torch 2.11.0+cu130: cuda-toolkit==13.0.2)")
    p.add_argument("--originals", default="/tmp/jk-carry-originals", help="where the original wheels are kept")
    p.add_argument("--kc", default="/work/kc")
    p.add_argument("--kernels", default="relu,activation")
    p.add_argument("--site", nargs="*", default=[], help="wheels for the suites (kernels 0.17.2 for get_kernel)")
    p.set_defaults(func=cmd_carry)
    p = sub.add_parser("run", help="the GPU machine: hide its toolkit, provision, build, run the suites")
    p.add_argument("--carry", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--state", default="/tmp/jk-toolchain")
    p.add_argument("--kernels", default="", help="default: every kernel in the carry")
    p.add_argument("--deadline", type=float, default=500)
    p.add_argument("--build-cap", type=float, default=300)
    p.add_argument("--test-cap", type=float, default=150)
    p.add_argument("--keep-toolkit", action="store_true", help="do not hide the machine's toolkit (a baseline)")
    p.set_defaults(func=cmd_run)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
