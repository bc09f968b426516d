"""Execute a :class:`BuildSpec`: compile with ninja in a private staging folder, publish atomically.

The cache policy, in the manner of FlashInfer's ``JitSpec.build_and_load``:
look for the published entry; else take the entry's file lock, look again
(another process may have built it while we waited), build, publish with one
rename. A second process that waited on the lock loads the result and never
rebuilds. Failures keep the full log in ``<cache>/logs/`` and publish nothing.

The ninja file is written here rather than by ``cpp_extension.load`` because
kernel-builder applies flags per kernel section (a kernel's ``cuda-flags`` to
its ``.cu`` files only); ``torch.utils.cpp_extension`` still supplies the
include and library folders and the CUDA home.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import replace
from pathlib import Path

from .. import cache, config, environment
from ..errors import BuildError, ToolchainError
from ..inspection import Inspection
from ..log import logger
from ..planning import SourcePlan, digest_files
from ..prepare import (
    check_entry,
    discard_entry,
    fetch_inputs,
    precompile,
    module_name_for,
    ops_py,
    stage_package,
    write_manifest,
)
from .codegen import REGISTRATION_H
from .spec import BuildSpec, make_spec


def prepare_spec(inspection: Inspection, plan: SourcePlan) -> tuple[Inspection, BuildSpec, Path, list[str]]:
    root, files = fetch_inputs(plan)
    digest = digest_files(root, files)
    name = module_name_for(inspection.python_name, inspection.backend, digest)
    spec = make_spec(plan.config, inspection.repo_id, inspection.backend, inspection.kernels, name, digest)
    inspection = replace(inspection, module_name=name, expected_extension_name=name, digest=digest)
    return inspection, spec, root, files


def entry_for(spec: BuildSpec) -> Path:
    return cache.entry_dir(f"{spec.extension_name}-{spec.key()[:16]}")


def build_native(inspection: Inspection, plan: SourcePlan) -> tuple[Inspection, Path]:
    """Return the published entry for this kernel and environment, compiling it if needed."""
    inspection, spec, root, files = prepare_spec(inspection, plan)
    entry = entry_for(spec)
    if check_entry(entry) is None:
        return inspection, entry
    if config.disable_build():
        raise BuildError(
            f"{inspection.repo_id} ({inspection.backend}) is not in the cache at {entry} and "
            f"JITKERNELS_DISABLE_BUILD=1 forbids compiling it. Prebuild it with `jitkernels warmup` "
            f"on a machine of this kind (same torch, CUDA, Python and GPU) and ship the cache."
        )
    lock = cache.file_lock(f"entry:{entry.name}")
    try:
        lock.acquire(timeout=0)
    except Exception:  # filelock.Timeout: someone else is building it
        logger.warning("Waiting for another process to finish building %s ...", spec.extension_name)
        lock.acquire()
    try:
        if check_entry(entry) is None:
            return inspection, entry
        if entry.exists():  # damaged, or a leftover without manifest: never loaded, replaced
            discard_entry(entry)
        _build_and_publish(inspection, plan, spec, root, files, entry)
    finally:
        lock.release()
    return inspection, entry


def _build_and_publish(inspection, plan, spec, root, files, entry) -> None:
    paths = toolchain_paths(spec)  # toolchain problems are ToolchainErrors, not cache errors
    staging = cache.staging_dir(spec.extension_name)
    try:
        src = staging / "src"
        for rel in files:
            inner = rel[len(plan.root) + 1:] if plan.root else rel
            dest = src / inner
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest)
        gen = staging / "gen"
        gen.mkdir()
        (gen / "registration.h").write_text(REGISTRATION_H)
        (src / "torch-ext").mkdir(exist_ok=True)
        if not (src / "torch-ext" / "registration.h").exists():
            (src / "torch-ext" / "registration.h").write_text(REGISTRATION_H)
        out = staging / "out"
        package = out / inspection.python_name
        package.mkdir(parents=True)
        library = package / (spec.extension_name + environment.extension_suffix())
        obj = staging / "obj"
        obj.mkdir()
        write_ninja(spec, src, gen, obj, library, paths)
        run_ninja(spec, obj, cache.log_file(spec.extension_name))
        stage_package(plan, root, package, native=True)
        (package / "_ops.py").write_text(ops_py(spec.extension_name, import_library=True))
        write_manifest(out, inspection, {"build_key": spec.key(), "spec": spec.describe()})
        precompile(out, entry)
        cache.publish(out, entry)
    except OSError as exc:
        raise cache.cache_error(staging, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- ninja -----------------------------------------------------------------------

def _q(arg: str) -> str:
    """Quote for the shell ninja runs, escaped for ninja itself."""
    return shlex.quote(arg).replace("$", "$$")


def _qs(args) -> str:
    return " ".join(_q(a) for a in args)


def toolchain_paths(spec: BuildSpec) -> dict:
    """Include and library folders, from torch.utils.cpp_extension (imported on the cold path only)."""
    try:
        from torch.utils import cpp_extension
    except OSError as exc:  # e.g. a CUDA build of torch that cannot find its toolkit
        raise ToolchainError(f"{spec.kernel}: torch.utils.cpp_extension is unusable here: {exc}") from exc

    device = "cuda" if spec.backend == "cuda" else "cpu"
    includes = list(cpp_extension.include_paths(device))
    python_include = sysconfig.get_path("include", scheme="posix_prefix")
    if python_include:
        includes.append(python_include)
    libs = [f"-L{path}" for path in cpp_extension.library_paths(device)]
    libs += ["-lc10", "-ltorch_cpu", "-ltorch"]
    nvcc = None
    if spec.backend == "cuda":
        home = environment.cuda_home() or cpp_extension.CUDA_HOME
        if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
            raise ToolchainError(
                f"{spec.kernel}: building a CUDA kernel needs nvcc; none found "
                f"(CUDA_HOME={home!r}). Install the CUDA toolkit or set CUDA_HOME."
            )
        nvcc = os.path.join(home, "bin", "nvcc")
        includes.append(os.path.join(home, "include"))
        libs += ["-lc10_cuda", "-ltorch_cuda", f"-L{os.path.join(home, 'lib64')}", "-lcudart"]
    return {"includes": list(dict.fromkeys(includes)), "libs": libs, "nvcc": nvcc}


def _merge_std(common: tuple[str, ...], own: tuple[str, ...]) -> list[str]:
    if any(f.startswith("-std=") for f in own):
        return [f for f in common if not f.startswith("-std=")] + list(own)
    return list(common) + list(own)


def write_ninja(spec: BuildSpec, src: Path, gen: Path, obj: Path, library: Path, paths: dict) -> Path:
    cxx = os.environ.get("CXX", "c++")
    system = [f"-isystem {_q(p)}" for p in paths["includes"]]
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {_q(cxx)}",
        f"system_includes = {' '.join(system)}",
        "",
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d $flags $system_includes -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $in",
        "",
    ]
    if paths["nvcc"]:
        ccbin = f"-ccbin {_q(os.environ['CC'])} " if os.environ.get("CC") else ""
        lines += [
            f"nvcc = {_q(paths['nvcc'])}",
            "rule cuda",
            f"  command = $nvcc {ccbin}--generate-dependencies-with-compile --dependency-output $out.d "
            "$flags $system_includes -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = NVCC $in",
            "",
        ]
    lines += [
        "rule link",
        "  command = $cxx -shared $in $ldflags -o $out",
        "  description = LINK $out",
        "",
    ]
    objects = []
    for index, unit in enumerate(spec.units):
        stem = Path(unit.path).name.replace(".", "_")
        obj_path = obj / f"{index:03d}_{stem}.o"
        objects.append(obj_path)
        includes = [f"-I{src / inc}" for inc in unit.includes if inc] + [f"-I{src}", f"-I{gen}"]
        includes += [flag for folder in spec.include_dirs for flag in ("-isystem", folder)]  # CUTLASS...
        common = spec.cuda_flags if unit.language == "cuda" else spec.cxx_flags
        flags = _merge_std(common, unit.flags) + includes
        lines += [
            f"build {_q(str(obj_path))}: {'cuda' if unit.language == 'cuda' else 'cxx'} {_q(str(src / unit.path))}",
            f"  flags = {_qs(flags)}",
        ]
    ldflags = [*paths["libs"], *spec.link_flags]
    lines += [
        f"build {_q(str(library))}: link {' '.join(_q(str(o)) for o in objects)}",
        f"  ldflags = {_qs(ldflags)}",
        f"default {_q(str(library))}",
        "",
    ]
    ninja_file = obj / "build.ninja"
    ninja_file.write_text("\n".join(lines))
    return ninja_file


def _ninja() -> str:
    found = shutil.which("ninja")
    if found:
        return found
    try:
        import ninja  # the PyPI package ships the binary

        return os.path.join(ninja.BIN_DIR, "ninja")
    except ImportError as exc:
        raise ToolchainError("Building native kernels needs ninja: pip install ninja") from exc


class _Progress:
    """A one-line progress display on a TTY; a log line per finished unit otherwise."""

    def __init__(self, spec: BuildSpec):
        self.spec = spec
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_log = 0.0

    def update(self, done: int, total: int, what: str) -> None:
        elapsed = time.monotonic() - self.start
        text = f"jitkernels: building {self.spec.extension_name} [{done}/{total}] {elapsed:5.1f}s {what}"
        if self.tty:
            sys.stderr.write("\r\033[K" + text[: shutil.get_terminal_size((100, 20)).columns - 1])
            sys.stderr.flush()
        else:
            logger.info(text)

    def finish(self, ok: bool) -> None:
        elapsed = time.monotonic() - self.start
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        message = f"jitkernels: {'built' if ok else 'FAILED building'} {self.spec.extension_name} in {elapsed:.1f}s"
        (logger.info if ok else logger.error)(message)


def run_ninja(spec: BuildSpec, obj: Path, log_path: Path) -> None:
    cache.ensure_dir(log_path.parent)
    cmd = [_ninja(), "-C", str(obj), "-j", str(config.max_jobs())]
    if config.verbose():
        cmd.append("-v")
    env = dict(os.environ, NINJA_STATUS="[%f/%t] ")
    logger.info("jitkernels: compiling %s", spec.describe())
    progress = _Progress(spec)
    tail: list[str] = []
    with open(log_path, "w") as log:
        log.write(f"# {spec.describe()}\n# {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            del tail[:-60]
            if config.verbose():
                sys.stderr.write(line)
            if line.startswith("[") and "/" in line.split("]", 1)[0]:
                counter, _, what = line.partition("] ")
                try:
                    done, total = (int(x) for x in counter[1:].split("/"))
                except ValueError:
                    continue
                progress.update(done, total, what.strip()[:80])
        code = proc.wait()
    progress.finish(code == 0)
    if code != 0:
        errors = [line for line in tail if not line.startswith("[")]
        raise BuildError(
            f"Compiling {spec.kernel} for {spec.backend} failed (ninja exit {code}). "
            f"Last compiler output:\n" + "\n".join(errors[-30:]) +
            f"\nFull log: {log_path}. Nothing was published to the cache; fix the source or toolchain and retry "
            f"(JITKERNELS_VERBOSE=1 shows every compiler command).",
            log_path=log_path,
        )
