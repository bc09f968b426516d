"""Execute a :class:`BuildSpec`: compile with ninja in a build workspace, hand the library to the lifecycle.

The cache policy (lock, re-check, stage, publish) is :func:`jitkernels.cache.entries.obtain`;
this module says what a native entry holds and how to compile it. Compiling
happens in ``<cache>/builds/<workspace>/`` (sources, generated headers,
objects, ninja's logs), owned by a lock:

* a build that was interrupted (SIGKILL, OOM, timeout, Ctrl-C) leaves its
  finished objects there, and the next builder reuses every object ninja
  considers up to date (sources are copied in only when their content
  changed, so their timestamps stay put);
* a local kernel (``LOCAL_KERNELS``, ``load_local``) keeps one workspace per
  folder and one op namespace per folder, so editing one file recompiles the
  units that depend on it (ninja's depfiles), while the published entry is
  still keyed by the new source digest. Hub kernels' workspaces are removed
  once their entry is published.

The ninja file is written here rather than by ``cpp_extension.load`` because
kernel-builder applies flags per kernel section (a kernel's ``cuda-flags`` to
its ``.cu`` files only); ``torch.utils.cpp_extension`` still supplies the
include and library folders and the CUDA home.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import replace
from pathlib import Path

from ... import config, machine
from ...cache import entries, layout
from ...cache.files import ensure_dir, write_atomic
from ...errors import BuildError, ToolchainError
from ...log import logger
from ...plan.inspection import Inspection
from ...plan.planner import SourcePlan, Sources
from ..python import entry_module_name, ops_py, stage_package
from . import compiler_cache
from .codegen import REGISTRATION_H
from .spec import BuildSpec, make_spec


def _is_local(plan: SourcePlan) -> bool:
    return getattr(plan.snapshot, "kind", None) == "local"


def spec_for(inspection: Inspection, plan: SourcePlan, sources: Sources) -> tuple[Inspection, BuildSpec]:
    """The build of a planned kernel on this machine, and its inspection completed with the op namespace."""
    name = entry_module_name(inspection, plan, sources.digest)
    spec = make_spec(plan.config, inspection.repo_id, inspection.backend, inspection.kernels, name, sources.digest)
    inspection = replace(inspection, module_name=name, expected_extension_name=name, digest=sources.digest)
    return inspection, spec


def entry_name(spec: BuildSpec) -> str:
    return f"{spec.extension_name}-{spec.key()[:16]}"


def build_native_entry(inspection: Inspection, plan: SourcePlan, sources: Sources) -> tuple[Inspection, Path]:
    """Return the published entry for this kernel and environment, compiling it if needed."""
    inspection, spec = spec_for(inspection, plan, sources)
    name = entry_name(spec)
    local = _is_local(plan)
    if local:
        where = hashlib.sha256(f"{plan.snapshot.location}|{spec.backend}".encode()).hexdigest()[:16]
        workspace = f"local-{spec.extension_name}-{where}"
    else:
        workspace = name

    def fill(out: Path, work: Path) -> dict:
        return _compile_into(inspection, plan, spec, sources, out, work)

    recipe = entries.Recipe(
        name=name, what=f"building {inspection.repo_id} ({spec.backend})", inspection=inspection, fill=fill,
        compiled=True, build_key=spec.key(), workspace=workspace, keep_workspace=local,
        log=layout.log_file(spec.extension_name),
    )
    return inspection, entries.obtain(recipe)


def _compile_into(inspection, plan, spec, sources: Sources, out: Path, work: Path) -> dict:
    """Compile in ``work`` (reusing what is up to date there) and put the package into ``out``."""
    paths = toolchain_paths(spec)  # toolchain problems are ToolchainErrors, not cache errors
    src, gen, obj = work / "src", work / "gen", work / "obj"
    root = sources.root
    wanted: dict[str, bytes | Path] = {}
    for rel in sources.files:
        wanted[rel[len(plan.root) + 1:] if plan.root else rel] = root / rel
    wanted.setdefault("torch-ext/registration.h", REGISTRATION_H.encode())
    sync_tree(src, wanted)
    sync_tree(gen, {"registration.h": REGISTRATION_H.encode()})
    obj.mkdir(exist_ok=True)
    library = work / "lib" / (spec.extension_name + machine.extension_suffix())
    library.parent.mkdir(exist_ok=True)
    write_ninja(spec, src, gen, obj, library, paths)
    run_ninja(spec, obj, layout.log_file(spec.extension_name))
    package = out / inspection.python_name
    package.mkdir(parents=True)
    shutil.copyfile(library, package / library.name)
    stage_package(plan, root, package, native=True)
    (package / "_ops.py").write_text(ops_py(spec.extension_name, import_library=True))
    launcher = compiler_cache.describe()
    return {"build_key": spec.key(), "spec": spec.describe() + (f"; through {launcher}" if launcher else ""),
            "archs": list(spec.archs), "toolchain": dict(spec.toolchain)}


def sync_tree(folder: Path, wanted: dict[str, "bytes | Path"]) -> int:
    """Make ``folder`` hold exactly ``wanted`` (relative path -> content or source file); returns files written.

    A file whose content is already right is left alone, timestamp included: ninja then sees
    that nothing changed and reuses the objects made from it.
    """
    written = 0
    for rel, content in wanted.items():
        dest = folder / rel
        data = content.read_bytes() if isinstance(content, Path) else content
        try:
            if dest.stat().st_size == len(data) and dest.read_bytes() == data:
                continue
        except OSError:
            pass
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, data)
        written += 1
    keep = set(wanted)
    if folder.is_dir():
        for path in sorted(folder.rglob("*"), reverse=True):
            rel = str(path.relative_to(folder)).replace(os.sep, "/")
            if path.is_file() and rel not in keep:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return written


# -- ninja -----------------------------------------------------------------------

def _q(arg: str) -> str:
    """A word of a command: quoted for the shell ninja runs, then escaped for ninja itself."""
    return shlex.quote(arg).replace("$", "$$")


def _qs(args) -> str:
    return " ".join(_q(a) for a in args)


def _path(path: Path | str) -> str:
    """A path in a ninja ``build`` line, escaped as ninja_syntax does (``$``, spaces, colons)."""
    text = str(path)
    if "\n" in text:
        raise ToolchainError(f"A build path cannot contain a newline: {text!r}")
    return text.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def toolchain_paths(spec: BuildSpec) -> dict:
    """Include and library folders: torch's from ``torch.utils.cpp_extension``, CUDA's from the chosen home.

    The CUDA home is :mod:`jitkernels.build.toolchain`'s choice (provisioned now if it comes from the
    package index), never ``cpp_extension.CUDA_HOME``, which torch fixed when it was imported: one home
    only on the command line. Torch's NVIDIA header folders follow the home's ``include``.
    """
    from .. import toolchain

    try:
        from torch.utils import cpp_extension
    except OSError as exc:  # e.g. a CUDA build of torch that cannot find its toolkit
        raise ToolchainError(f"{spec.kernel}: torch.utils.cpp_extension is unusable here: {exc}") from exc

    home = toolchain.home(spec.kernel, spec.compiler) if spec.backend == "cuda" else None
    try:
        includes = list(cpp_extension.include_paths("cpu"))
        libs = [f"-L{path}" for path in cpp_extension.library_paths("cpu")]
    except OSError as exc:  # a toolchain problem, not a cache problem
        raise ToolchainError(f"{spec.kernel}: torch.utils.cpp_extension cannot find torch's headers: {exc}") from exc
    nvcc = None
    if home is not None:
        nvcc = os.path.join(home, "bin", "nvcc")
        includes.append(os.path.join(home, "include"))
        if config.cuda_inc_path():
            includes.append(config.cuda_inc_path())
        cudnn = getattr(cpp_extension, "CUDNN_HOME", None)  # torch read CUDNN_HOME / CUDNN_PATH at import
        if cudnn:
            includes.append(os.path.join(cudnn, "include"))
            libs.append(f"-L{os.path.join(cudnn, 'lib64' if os.path.isdir(os.path.join(cudnn, 'lib64')) else 'lib')}")
        includes += toolchain.library_include_dirs(home)
    python_include = sysconfig.get_path("include", scheme="posix_prefix")
    if python_include:
        includes.append(python_include)
    libs += ["-lc10", "-ltorch_cpu", "-ltorch"]
    if home is not None:
        libs += ["-lc10_cuda", "-ltorch_cuda", *toolchain.link_flags(home)]
    return {"includes": list(dict.fromkeys(includes)), "libs": libs, "nvcc": nvcc}


def _merge_std(common: tuple[str, ...], own: tuple[str, ...]) -> list[str]:
    if any(f.startswith("-std=") for f in own):
        return [f for f in common if not f.startswith("-std=")] + list(own)
    return list(common) + list(own)


def object_name(unit_path: str) -> str:
    """The object file of a unit: named by its source path, so adding a unit renames no other object."""
    return unit_path.replace("/", "__") + ".o"


def write_ninja(spec: BuildSpec, src: Path, gen: Path, obj: Path, library: Path, paths: dict) -> Path:
    launch = "".join(_q(arg) + " " for arg in compiler_cache.launcher())  # sccache/ccache, or nothing
    system = [f"-isystem {_q(p)}" for p in paths["includes"]]
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {_qs(shlex.split(config.cxx()))}",  # CXX may carry a launcher ("ccache g++"), as torch allows
        f"system_includes = {' '.join(system)}",
        "",
        "rule cxx",
        f"  command = {launch}$cxx -MMD -MF $out.d $flags $system_includes -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $in",
        "",
    ]
    if paths["nvcc"]:
        ccbin = f"-ccbin {_q(config.cc())} " if config.cc() else ""
        lines += [
            f"nvcc = {_q(paths['nvcc'])}",
            "rule cuda",
            f"  command = {launch}$nvcc {ccbin}--generate-dependencies-with-compile --dependency-output $out.d "
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
    for unit in spec.units:
        obj_path = obj / object_name(unit.path)
        objects.append(obj_path)
        includes = [f"-I{src / inc}" for inc in unit.includes if inc] + [f"-I{src}", f"-I{gen}"]
        includes += [flag for folder in spec.include_dirs for flag in ("-isystem", folder)]  # CUTLASS...
        common = spec.cuda_flags if unit.language == "cuda" else spec.cxx_flags
        flags = _merge_std(common, unit.flags) + includes
        lines += [
            f"build {_path(obj_path)}: {'cuda' if unit.language == 'cuda' else 'cxx'} {_path(src / unit.path)}",
            f"  flags = {_qs(flags)}",
        ]
    ldflags = [*paths["libs"], *spec.link_flags]
    lines += [
        f"build {_path(library)}: link {' '.join(_path(o) for o in objects)}",
        f"  ldflags = {_qs(ldflags)}",
        f"default {_path(library)}",
        "",
    ]
    ninja_file = obj / "build.ninja"
    sync_file = "\n".join(lines).encode()
    try:
        unchanged = ninja_file.read_bytes() == sync_file
    except OSError:
        unchanged = False
    if not unchanged:
        write_atomic(ninja_file, sync_file)
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


def _failed_unit(spec: BuildSpec, lines: list[str]) -> str | None:
    """The source (or link step) of the first edge ninja reports as ``FAILED:``, from its target and command."""
    for index, line in enumerate(lines):
        if not line.startswith("FAILED: "):
            continue
        text = " ".join(lines[index:index + 2])
        matches = [unit.path for unit in spec.units if f"/{unit.path}" in text]
        if matches:
            return max(matches, key=len)
        if spec.extension_name in line:
            return "the link step"
        return line[len("FAILED: "):].strip()
    return None


def run_ninja(spec: BuildSpec, obj: Path, log_path: Path) -> None:
    """Run the build, showing N/M units, elapsed time and an estimate (see :mod:`jitkernels.progress`).

    The full output goes to ``log_path``, which is kept; a failure names the unit that failed.
    """
    from ... import progress

    ensure_dir(log_path.parent)
    cmd = [_ninja(), "-C", str(obj), "-j", str(config.max_jobs())]
    if config.verbose():
        cmd.append("-v")
    env = dict(os.environ, NINJA_STATUS="[%f/%t] ")
    progress.say(logger, f"jitkernels: compiling {spec.describe()}")  # seen whatever logging is configured
    tail: list[str] = []
    failed: list[str] = []
    steps = spec.steps()
    left = _steps_left(cmd, env)
    if left is not None and 0 < left < steps:  # a build cut short, or a local kernel edited: finished units are kept
        progress.say(logger, f"jitkernels: {spec.extension_name}: {steps - left} of {steps} build steps are up to "
                             f"date from an earlier build, {left} to go")
        steps = left
    with progress.task(f"jitkernels: building {spec.extension_name}", total=steps, unit="step",
                       eta_after=min(3, steps)) as shown, open(log_path, "w", buffering=1) as log:
        # Line-buffered: waiters on the cache lock judge this build alive by the log changing, step by step.
        log.write(f"# {spec.describe()}\n# {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            del tail[:-60]
            if line.startswith("FAILED: ") or (failed and len(failed) < 2):
                failed.append(line.rstrip("\n"))
            if config.verbose():
                sys.stderr.write(line)
            if line.startswith("[") and "/" in line.split("]", 1)[0]:
                counter, _, what = line.partition("] ")
                try:
                    done, total = (int(x) for x in counter[1:].split("/"))
                except ValueError:
                    continue
                shown.set(done, total=total, detail=_short(what.strip()))
        code = proc.wait()
        unit = _failed_unit(spec, failed) if code != 0 else None
        if code != 0:
            shown.finish(ok=False, summary=f"FAILED in {unit or 'an unknown step'}; log: {log_path}")
    if code == 0:
        progress.say(logger, f"jitkernels: built {spec.extension_name} in {shown.elapsed():.1f}s")
    else:
        logger.error("jitkernels: FAILED building %s in %.1fs", spec.extension_name, shown.elapsed())
        errors = [line for line in tail if not line.startswith("[")]
        where = f" in {unit}" if unit else ""
        raise BuildError(
            f"Compiling {spec.kernel} for {spec.backend} failed{where} (ninja exit {code}). "
            f"Last compiler output:\n" + "\n".join(errors[-30:]) +
            f"\nFull log: {log_path}. Nothing was published to the cache; fix the source or toolchain and retry "
            f"(JITKERNELS_VERBOSE=1 shows every compiler command).",
            log_path=log_path,
        )


def _steps_left(cmd: list[str], env: dict) -> int | None:
    """How many steps ninja would run (a dry run, ``-n``), so a resumed build counts what is left to do."""
    try:
        dry = subprocess.run([*cmd, "-n"], capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if dry.returncode != 0:
        return None
    totals = re.findall(r"^\[\d+/(\d+)\] ", dry.stdout, re.M)
    return int(totals[-1]) if totals else 0


def _short(what: str) -> str:
    """``CXX /long/staging/path/src/relu_cpu/relu.cpp`` -> ``CXX relu_cpu/relu.cpp``."""
    verb, _, path = what.partition(" ")
    marker = "/src/"
    if marker in path:
        path = path.split(marker, 1)[1]
    elif path:
        path = Path(path).name
    return f"{verb} {path}".strip()[:80]
