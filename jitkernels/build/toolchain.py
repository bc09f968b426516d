"""Which CUDA compiler builds a kernel, and why; NVIDIA's compiler wheels from the package index when none here will.

Most people install torch with pip, which brings the CUDA runtime but no
``nvcc``. NVIDIA publishes the CUDA 13 compiler as wheels (``nvidia-cuda-nvcc``,
``nvidia-nvvm``, ``nvidia-cuda-crt``, ``nvidia-cuda-runtime``,
``nvidia-cuda-cccl``: 100 MB), so a build can have one without any install.

The compiler a CUDA build uses is the first of these that will do
(:func:`options`, then :func:`jitkernels.plan.strategy.choose_cuda` with the
kernel's ``[general.cuda]`` bounds):

1. a toolkit on this machine: ``CUDA_HOME`` / ``CUDA_PATH`` (when set, the
   only local one looked at), else the ``nvcc`` on ``PATH``, ``/usr/local/cuda``,
   or the compiler wheels installed in this Python environment (``pip install "cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.3"`` puts it in
   ``site-packages/nvidia/cu13``). It will do if it is complete, its ``nvcc``
   runs, and its CUDA major version is torch's (``torch.utils.cpp_extension``
   refuses another major, and the library would link a second CUDA runtime);
2. a compiler provisioned from the package index: already in the cache
   (``entries/cuda-<release>-<arch>/``), else provisioned now, unless
   ``JITKERNELS_CUDA_PROVISION=0`` or offline (``JITKERNELS_OFFLINE``). The
   release is the one torch declares (torch's wheels require
   ``cuda-toolkit[...]==13.0.3``), else the newest of ``torch.version.cuda``;
   a later minor of the same major when a kernel's ``minver`` asks for it.
   NVIDIA's ``cuda-toolkit`` metapackage pins the component wheels of each
   release (their numbers do not all follow CUDA's); an index without it gets
   the newest ``X.Y.*`` of each. Wheels come through
   :mod:`jitkernels.inputs.package_index` (pip's indexes, every file checked
   against the sha256 the index publishes), are unpacked by
   :mod:`jitkernels.inputs.archive` (its rules, bounds for binaries of 80 MB),
   merged into one CUDA home, checked (``nvcc --version`` must answer the
   release) and published through :func:`jitkernels.cache.entries.obtain`.
   PyPI has no CUDA 12 compiler (``nvidia-cuda-nvcc-cu12`` ships ``ptxas``
   only), so a CUDA 12 torch needs a local toolkit.

The nvcc version chosen (``major.minor``) is part of the build key; where it
comes from is not (the same compiler makes the same library). Torch's own
NVIDIA header folders (``site-packages/nvidia/cu13/include``: cuBLAS,
cuSPARSE, cuSOLVER, which ``ATen/cuda/CUDAContext.h`` includes) are searched
after the toolkit's, for any toolkit: a compiler-only home lacks them.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .. import config, machine
from ..cache import entries, layout, workspaces
from ..cache.manifest import check_entry, read_manifest
from ..errors import BuildInputError, FetchError, ToolchainError
from ..log import logger
from ..plan.strategy import CudaOption, Toolchain, choose_cuda, version_tuple

#: Compiler wheels of a CUDA 13 release when the index has no ``cuda-toolkit`` metapackage to pin them.
COMPONENTS = ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-runtime", "nvidia-cuda-cccl")
#: The metapackage's extras that pin them, one each: in 13.0.2 (torch 2.11's) the ``nvcc`` extra pins
#: nvcc alone (nvvm, crt and the runtime come from its own extras), from 13.0.3 on it pins all four.
EXTRAS = ("nvcc", "nvvm", "crt", "cudart", "cccl")
#: Never read by a compile (NVIDIA's JIT library, CMake files, packaging notes, two tools): not unpacked.
EXCLUDE = ("nvidia/*/lib/libnvvm.so*", "nvidia/*/lib/cmake", "nvidia/*/.metadata", "nvidia/*/bin/bin2c",
           "nvidia/*/bin/__nvcc_device_query")
#: What a home must hold for ``nvcc -c`` of a torch extension (nv/target: every cuda_fp16.h user).
REQUIRED = ("bin/nvcc", "bin/ptxas", "bin/fatbinary", "bin/cudafe++", "nvvm/bin/cicc", "include/cuda_runtime.h",
            "include/crt/host_config.h")
#: One wheel (the nvvm wheel is 59 MiB, 13.5's 72 MiB) and one unpacked binary (cicc: 77 MB).
MAX_WHEEL_BYTES = 512 << 20
MAX_BINARY_BYTES = 256 << 20
PROVISIONED = "cuda_toolkit"  # the manifest key of a provisioned compiler
#: Where a CUDA toolkit sits when nothing names it (NVIDIA's installers link it there).
SYSTEM_HOMES = ("/usr/local/cuda",)


@dataclass(frozen=True)
class LocalToolkit:
    """A CUDA toolkit found on this machine, and whether it will do (``problem`` is None)."""

    home: str
    how: str  # "CUDA_HOME", "nvcc on PATH", "/usr/local/cuda", "the compiler wheels installed in this environment"
    version: str | None
    problem: str | None

    def describe(self) -> str:
        state = "usable" if self.problem is None else f"not used: {self.problem}"
        return f"{self.home} ({self.how}): nvcc {self.version or '?'}, {state}"


@dataclass(frozen=True)
class Compiler:
    """The CUDA compiler of one build: its nvcc version (for the build key) and, once known, its home."""

    version: str
    origin: str  # "local" | "index" | "none"
    where: str
    home: str | None


# -- torch ------------------------------------------------------------------------------------------

def torch_cuda() -> str | None:
    """``torch.version.cuda`` (``13.0``), None for a CPU torch."""
    return machine.torch_cuda_version()


def torch_release() -> str | None:
    """The CUDA release torch's wheel declares (``cuda-toolkit[...]==13.0.3`` in its requirements), else None."""
    from importlib import metadata

    try:
        required = metadata.requires("torch") or []
    except metadata.PackageNotFoundError:
        return None
    for text in required:
        match = re.match(r"^\s*cuda[-_.]toolkit\s*(?:\[[^\]]*\])?\s*==\s*([0-9][0-9.]*)", text, re.I)
        if match:
            return match.group(1).rstrip(".")
    return None


def _major_minor(version: str) -> str:
    return ".".join(str(p) for p in (version_tuple(version) + (0,))[:2])


def pip_line(version: str | None = None) -> str:
    """The ``pip install`` line that puts torch's CUDA compiler in this environment (found there afterwards)."""
    release = torch_release()
    wanted = version or torch_cuda() or "13.0"
    if release and _major_minor(release) == _major_minor(wanted):
        spec = f"=={release}"
    else:
        spec = f"=={_major_minor(wanted)}.*"
    return f'pip install "cuda-toolkit[{",".join(EXTRAS)}]{spec}"'


# -- toolkits on this machine -------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _nvcc_release(nvcc: str, stamp: tuple) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out.stdout)
    return match.group(1) if out.returncode == 0 and match else None


def nvcc_release(home: str | Path) -> str | None:
    """``major.minor`` that ``<home>/bin/nvcc --version`` answers, or None (memoised per file and mtime)."""
    nvcc = os.path.join(str(home), "bin", "nvcc")
    try:
        st = os.stat(nvcc)
    except OSError:
        return None
    return _nvcc_release(nvcc, (st.st_mtime_ns, st.st_size, st.st_ino))


def _unwrapped(nvcc: str) -> str:
    """The home of an ``nvcc`` found on PATH, seeing through a wrapper script (``exec /usr/local/cuda-13.0/bin/nvcc``)."""
    real = os.path.realpath(nvcc)
    try:
        with open(real, "rb") as fh:
            head = fh.read(512)
        if head.startswith(b"#!"):
            match = re.search(rb"(/\S+)/bin/nvcc", head)
            if match:
                return match.group(1).decode()
    except OSError:
        pass
    return os.path.dirname(os.path.dirname(real))


def _installed_homes() -> list[str]:
    """``site-packages/nvidia/cu13`` folders holding an ``nvcc`` installed from NVIDIA's wheels."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    found = []
    for root in (spec.submodule_search_locations or []) if spec else []:
        for nvcc in sorted(Path(root).glob("cu*/bin/nvcc")):
            found.append(str(nvcc.parent.parent))
    return found


def _missing(home: str) -> list[str]:
    missing = [rel for rel in REQUIRED if not os.path.exists(os.path.join(home, rel))]
    if not any(os.path.exists(os.path.join(home, rel)) for rel in ("include/nv/target", "include/cccl/nv/target")):
        missing.append("include/nv/target")
    return missing


def local_toolkits() -> list[LocalToolkit]:
    """Every CUDA toolkit found here, in the order they are preferred, with what stops one from being used."""
    candidates: list[tuple[str, str]] = []
    setting = config.cuda_home_setting()
    if setting is not None:  # named: the only local one (as torch's cpp_extension); the index stays a fallback
        candidates.append((setting[1], setting[0]))
    else:
        nvcc = shutil.which("nvcc")
        if nvcc:
            candidates.append((_unwrapped(nvcc), "nvcc on PATH"))
        candidates += [(home, home) for home in SYSTEM_HOMES]
        candidates += [(home, "the compiler wheels installed in this environment") for home in _installed_homes()]
    wanted = torch_cuda()
    found, seen = [], set()
    for home, how in candidates:
        real = os.path.realpath(home)
        if real in seen:
            continue
        seen.add(real)
        if not os.path.exists(os.path.join(home, "bin", "nvcc")):
            if how in ("CUDA_HOME", "CUDA_PATH"):
                found.append(LocalToolkit(home, how, None, "it has no bin/nvcc"))
            continue
        version = nvcc_release(home)
        missing = _missing(home)
        if version is None:
            problem = "its bin/nvcc does not run (or does not print its release)"
        elif missing:
            problem = f"incomplete, no {', '.join(missing)}"
        elif wanted and version_tuple(version)[0] != version_tuple(wanted)[0]:
            problem = (f"CUDA {version}, but torch is built with CUDA {wanted}: another major version (torch's "
                       f"cpp_extension refuses it)")
        else:
            problem = None
        found.append(LocalToolkit(home, how, version, problem))
    return found


# -- provisioned compilers in the cache ----------------------------------------------------------------------

def _arch() -> str:
    name = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def provisioned() -> list[tuple[str, Path]]:
    """``(nvcc major.minor, entry)`` of every intact provisioned compiler in the cache, newest release first."""
    found = []
    for entry in sorted(layout.entries_dir().glob(f"cuda-*-{_arch()}")) if layout.entries_dir().is_dir() else []:
        manifest = read_manifest(entry) or {}
        nvcc = manifest.get("nvcc_release")
        if manifest.get(PROVISIONED) and isinstance(nvcc, str) and check_entry(entry) is None:
            found.append((nvcc, str(manifest[PROVISIONED]), entry))
    found.sort(key=lambda item: version_tuple(item[1]), reverse=True)
    return [(nvcc, entry) for nvcc, _release, entry in found]


def _provisioned_for(version: str) -> Path | None:
    """The cached compiler for nvcc ``version``: torch's release if there, else the newest of that major.minor."""
    matches = [entry for nvcc, entry in provisioned() if nvcc == version]
    release = torch_release()
    exact = [e for e in matches if release and e.name == f"cuda-{release}-{_arch()}"]
    return (exact or matches or [None])[0]


def provisioning_blocked() -> str | None:
    """Why no compiler may be downloaded now (the variable to change), or None."""
    if not config.cuda_provision():
        return "JITKERNELS_CUDA_PROVISION=0"
    if config.offline():
        return "offline (JITKERNELS_OFFLINE / HF_HUB_OFFLINE)"
    return None


# -- the options and the choice --------------------------------------------------------------------------

def options() -> tuple[CudaOption, ...]:
    """Every CUDA compiler a build could use here, best first (see the module docstring)."""
    found = [CudaOption(t.version, "local", f"{t.home} ({t.how})", home=t.home)
             for t in local_toolkits() if t.problem is None and t.version]
    wanted = torch_cuda()
    for version, entry in provisioned():
        if not wanted or version_tuple(version)[0] == version_tuple(wanted)[0]:
            found.append(CudaOption(version, "index", f"the JitKernels cache ({entry.name}, provisioned)",
                                    home=str(entry)))
    if wanted and version_tuple(wanted)[0] >= 13 and provisioning_blocked() is None:
        found.append(CudaOption(_major_minor(wanted), "index", "the package index (provisioned into the cache)",
                                any_minor=True))
    return tuple(found)


def plan_toolchain(backend: str) -> Toolchain:
    """What planning checks declared bounds against (:func:`jitkernels.plan.strategy.decide`)."""
    if backend != "cuda":
        return Toolchain(torch=machine.torch_version())
    found = options()
    local = next((o.version for o in found if o.origin == "local"), None)
    return Toolchain(torch=machine.torch_version(), cuda=local, cuda_options=found, torch_cuda=torch_cuda())


def for_build(build_config, ignore_bounds: bool | None = None) -> Compiler:
    """The compiler of a CUDA build of ``build_config`` (a parsed build.toml): its version always, its home if local.

    Nothing is downloaded here (the build key needs only the version; :func:`home` provisions when a
    compile starts). Without any compiler, the version is torch's CUDA (a fleet that only loads
    prebuilt entries computes the same key as the machine that built them).
    """
    ignore = config.ignore_toolchain_bounds() if ignore_bounds is None else ignore_bounds
    found = options()
    minver = getattr(build_config, "cuda_minver", None)
    maxver = getattr(build_config, "cuda_maxver", None)
    option, version = choose_cuda(found, minver, maxver, ignore)
    if option is None:
        wanted = torch_cuda()
        return Compiler(_major_minor(wanted) if wanted else "None", "none", "", None)
    return Compiler(version, option.origin, option.where, option.home if version == option.version else None)


def no_compiler_message(kernel: str, version: str | None = None) -> str:
    """Why a CUDA build has no compiler, and the exact ways to give it one."""
    seen = "; ".join(t.describe() for t in local_toolkits()) or "no CUDA_HOME, no nvcc on PATH, no /usr/local/cuda"
    wanted = torch_cuda()
    if not wanted:
        why = "this torch is a CPU build (torch.version.cuda is None), so no CUDA compiler matches it"
        fix = "Install a CUDA build of torch (pip install torch); JitKernels then finds or provisions its compiler."
    else:
        want = version or _major_minor(wanted)
        blocked = provisioning_blocked()
        if version_tuple(want)[0] < 13:
            why = (f"torch is built with CUDA {wanted} and the package index has no CUDA {version_tuple(want)[0]} nvcc "
                   f"(nvidia-cuda-nvcc-cu12 ships ptxas only), so JitKernels cannot provision nvcc {want}")
            fix = f"Install NVIDIA's CUDA {want} toolkit and set CUDA_HOME to it."
        else:
            why = (f"provisioning nvcc {want} (torch is built with CUDA {wanted}) from the package index is off "
                   f"({blocked or 'pip no-index: no index configured'})")
            allow = ("unset JITKERNELS_CUDA_PROVISION" if blocked and "PROVISION" in blocked else
                     "go online" if blocked else "set JITKERNELS_CUDA_INDEX to an index")
            fix = (f"Install torch's compiler with `{pip_line(want)}`, or set CUDA_HOME to a CUDA {want} toolkit, "
                   f"or {allow}.")
    return f"{kernel}: building a CUDA kernel needs nvcc and none here will do: {why}. Found: {seen}. {fix}"


def home(kernel: str, compiler: Compiler) -> str:
    """The CUDA home to compile with: the local one, or the provisioned one (provisioning it now if needed)."""
    if compiler.home is not None:
        return compiler.home
    if compiler.origin == "none" or compiler.version == "None":
        raise ToolchainError(no_compiler_message(kernel))
    return str(provision(compiler.version, kernel))


# -- provisioning ----------------------------------------------------------------------------------------

def provision(version: str, kernel: str = "a CUDA kernel") -> Path:
    """The provisioned CUDA home for nvcc ``version`` (``13.0``): from the cache, else made from the index now."""
    from ..inputs import package_index

    cached = _provisioned_for(version)
    if cached is not None:
        _touch(cached)
        return cached
    if version_tuple(version)[0] < 13 or provisioning_blocked() is not None:
        raise ToolchainError(no_compiler_message(kernel, version))
    indexes, source = package_index.configured()
    if not indexes:
        raise ToolchainError(no_compiler_message(kernel, version) + f" ({source})")
    try:
        release, metapackage = _release(indexes, version)
        name = f"cuda-{release}-{_arch()}"
        what = f"the CUDA {release} compiler"

        def fill(out: Path, _work) -> dict:
            return _fill(out, name, release, version, metapackage, indexes)

        entry = entries.obtain(entries.Recipe(name=name, what=f"provisioning {what}", inspection=None, fill=fill))
    except FetchError as exc:
        raise FetchError(f"{exc} {kernel} needs the CUDA {version} compiler from the package index ({source}). "
                         f"Point JITKERNELS_CUDA_INDEX at a reachable index (a mirror, or a file:// folder), or "
                         f"install it with `{pip_line(version)}`, or set CUDA_HOME to a CUDA {version} "
                         f"toolkit.") from exc
    logger.info("jitkernels: %s is in %s", what, entry)
    return entry


def _touch(entry: Path) -> None:
    """A use, for ``jitkernels cache prune --older-than`` (the entry folder's mtime is its last use)."""
    try:
        os.utime(entry)
    except OSError:
        pass


def _release(indexes: tuple[str, ...], version: str):
    """``(release, metapackage wheel or None)`` for nvcc ``version``: torch's release, else the index's newest."""
    from ..inputs import package_index

    found = package_index.releases(indexes, "cuda-toolkit")
    wheels = found[1] if found else []
    torch_pin = torch_release()
    mine = [w for w in wheels if _major_minor(w.version) == version]
    if torch_pin and _major_minor(torch_pin) == version:
        exact = [w for w in mine if version_tuple(w.version) == version_tuple(torch_pin)]
        if exact:
            return _release_name(exact[0].version), exact[0]
    if mine:
        return _release_name(mine[0].version), mine[0]
    if torch_pin and _major_minor(torch_pin) == version:
        return torch_pin, None  # no metapackage on this index: the newest X.Y.* of each component
    return version, None


def _release_name(text: str) -> str:
    """``13.0.3.0`` (the metapackage's re-uploads) -> ``13.0.3``."""
    parts = text.split(".")
    while len(parts) > 3 and parts[-1] == "0":
        parts.pop()
    return ".".join(parts)


def _pins(metapackage, version: str, downloads: Path) -> dict[str, str]:
    """``{project: specifier}`` of the compiler wheels: the metapackage's pins, else the newest ``X.Y.*``."""
    from ..inputs import package_index

    if metapackage is not None:
        wheel = package_index.download(metapackage, downloads, 1 << 20)
        pins = package_index.requirements(package_index.wheel_metadata(wheel), EXTRAS)
        if pins:
            return pins
    major, minor = version_tuple(version + ".0")[:2]
    pins = {project: f"=={major}.{minor}.*" for project in COMPONENTS}
    pins["nvidia-cuda-cccl"] = f">={major}.0,<{major}.{minor + 1}"  # CCCL has its own numbers since CUDA 13.4
    return pins


def _fill(out: Path, name: str, release: str, version: str, metapackage, indexes: tuple[str, ...]) -> dict:
    from .. import progress
    from ..inputs import package_index
    from ..inputs.archive import Limits, unpack_folders

    components = []
    with workspaces.staging(f"{name}.download") as downloads:
        pins = _pins(metapackage, version, downloads)
        wheels = [package_index.find_wheel(indexes, project, spec) for project, spec in sorted(pins.items())]
        total = sum(w.size or 0 for w in wheels)
        with progress.task(f"jitkernels: downloading the CUDA {release} compiler ({total / 2**20:.1f} MiB)",
                           total=total or None, unit="B") as shown:
            files = [package_index.download(w, downloads, MAX_WHEEL_BYTES, shown) for w in wheels]
        for wheel, path in zip(wheels, files):
            unpacked = downloads / f"{wheel.filename}.d"
            unpacked.mkdir()
            unpack_folders(path, ("nvidia",), unpacked, exclude=EXCLUDE,
                           limits=Limits(file_bytes=MAX_BINARY_BYTES, unpacked_bytes=2 << 30))
            _merge(unpacked / "nvidia", out, wheel.filename)
            path.unlink()
            components.append({"project": package_index.normalize(wheel.filename.split("-")[0]),
                               "version": wheel.version, "wheel": wheel.filename, "sha256": wheel.sha256,
                               "index": wheel.index})
    missing = _missing(str(out))
    if missing:
        raise BuildInputError(f"The CUDA {release} wheels ({', '.join(sorted(pins))}) make no compiler: "
                              f"{', '.join(missing)} missing. Nothing was added to the cache.")
    answered = nvcc_release(out)
    if answered != version:
        raise BuildInputError(f"The provisioned nvcc of CUDA {release} answers {answered!r}, not {version}. "
                              f"Nothing was added to the cache.")
    logger.info("jitkernels: the CUDA %s compiler is assembled from %s", release,
                ", ".join(f"{c['project']} {c['version']}" for c in components))
    return {PROVISIONED: release, "nvcc_release": version, "components": components,
            "metapackage": metapackage.filename if metapackage is not None else None}


def _merge(unpacked: Path, out: Path, wheel: str) -> None:
    """``nvidia/cu13/{bin,include,lib,nvvm}`` of one wheel -> ``out/{bin,...}``; a name two wheels ship differently is refused."""
    prefixes = [p for p in unpacked.iterdir()] if unpacked.is_dir() else []
    if len(prefixes) != 1 or not prefixes[0].is_dir():
        raise BuildInputError(f"{wheel} is not laid out as NVIDIA's CUDA 13 wheels (nvidia/cu13/...): "
                              f"{', '.join(p.name for p in prefixes) or 'nothing under nvidia/'}.")
    for source in sorted(prefixes[0].rglob("*")):
        if source.is_dir():
            continue
        rel = source.relative_to(prefixes[0])
        target = out / rel
        clash = next((parent for parent in reversed(rel.parents) if (out / parent).is_file()), None)
        if clash is not None or target.is_dir():  # a file where another wheel has a folder, or the reverse
            raise BuildInputError(f"{wheel} ships {rel}, but another CUDA wheel ships "
                                  f"{clash if clash is not None else rel} as a {'file' if clash is not None else 'folder'}.")
        if target.exists():
            if target.read_bytes() != source.read_bytes():
                raise BuildInputError(f"{wheel} ships {rel}, which another CUDA wheel ships differently.")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)


# -- compiling with a home ---------------------------------------------------------------------------------

def library_include_dirs(home: str) -> list[str]:
    """Torch's NVIDIA header folders (cuBLAS, cuSPARSE, cuSOLVER...: ``ATen/cuda/CUDAContext.h`` needs them),
    of torch's CUDA major, other than ``home/include``."""
    import importlib.util

    wanted = torch_cuda()
    if not wanted:
        return []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    major = version_tuple(wanted)[0]
    own = os.path.realpath(os.path.join(home, "include"))
    found = []
    for root in (spec.submodule_search_locations or []) if spec else []:
        folders = [Path(root) / f"cu{major}" / "include"] if major >= 13 else sorted(Path(root).glob("*/include"))
        for folder in folders:
            if folder.is_dir() and os.path.realpath(folder) != own and (
                    any(folder.glob("cusparse*.h")) or any(folder.glob("cublas*.h")) or any(folder.glob("curand*.h"))):
                found.append(str(folder))
    return found


def link_flags(home: str) -> list[str]:
    """``-L<lib folder> -lcudart`` (the versioned ``libcudart.so.13`` when the home has no unversioned link)."""
    libdir = os.path.join(home, "lib64")
    if not os.path.isdir(libdir):
        libdir = os.path.join(home, "lib")
    if os.path.exists(os.path.join(libdir, "libcudart.so")):
        return [f"-L{libdir}", "-lcudart"]
    versioned = sorted(Path(libdir).glob("libcudart.so.*"), key=lambda p: len(p.name))
    return [f"-L{libdir}", f"-l:{versioned[0].name}" if versioned else "-lcudart"]


def describe(build_config=None) -> dict:
    """For ``jitkernels doctor``: what torch needs, what is here, whether provisioning may run, and the choice."""
    from ..inputs import package_index

    wanted = torch_cuda()
    blocked = provisioning_blocked()
    facts: dict = {"torch_cuda": wanted, "torch_release": torch_release()}
    facts["local"] = [t.describe() for t in local_toolkits()] or ["none found (CUDA_HOME, PATH, /usr/local/cuda, "
                                                                  "installed compiler wheels)"]
    facts["provisioned"] = [f"{entry} (nvcc {v})" for v, entry in provisioned()] or ["none"]
    if not wanted:
        facts["provisioning"] = "no: a CPU build of torch"
    elif version_tuple(wanted)[0] < 13:
        facts["provisioning"] = (f"no: the package index has no CUDA {version_tuple(wanted)[0]} nvcc (install "
                                 f"NVIDIA's toolkit, set CUDA_HOME)")
    elif blocked:
        facts["provisioning"] = f"off: {blocked}"
    else:
        indexes, source = package_index.configured()
        facts["provisioning"] = (f"on: {' '.join(indexes)} ({source})" if indexes else f"off: {source}")
    compiler = for_build(build_config)
    if compiler.origin == "none":
        facts["would_use"] = None
        facts["why"] = no_compiler_message("a CUDA kernel")
    else:
        facts["would_use"] = f"nvcc {compiler.version} from {compiler.where}"
        facts["why"] = ("the first usable local toolkit: same CUDA major as torch" if compiler.origin == "local" else
                        "no local toolkit will do; the compiler of torch's CUDA release from the package index")
    facts["pip_install"] = pip_line() if wanted and version_tuple(wanted)[0] >= 13 else None
    return facts
