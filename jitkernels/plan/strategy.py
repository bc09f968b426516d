"""Decide how a source tree is loaded for a backend: ``python``, ``native-jit`` or ``unsupported`` (with a reason).

:func:`decide` is a pure function of a parsed ``build.toml``, the target
backend and the local toolchain versions, so it can be checked against every
kernel of kernels-community without a network or a compiler. Which declared
inputs are supported is asked of the registry in :mod:`jitkernels.inputs`
(names only: nothing is looked up or downloaded). :mod:`.planner` calls it
for the source tree it found.
"""

from __future__ import annotations

from dataclasses import dataclass

from .buildconfig import BuildConfig

PYTHON = "python"
NATIVE_JIT = "native-jit"
UNSUPPORTED = "unsupported"

MISSING_SOURCE = "missing-source"
UNSUPPORTED_DEPENDENCY = "unsupported-dependency"
NO_BACKEND = "no-backend"
TOOLCHAIN = "toolchain"
#: The source lives at a URL the publisher chose (metadata.json ``source``) and the publisher is not trusted:
#: nothing is fetched from it until trust is granted.
UNTRUSTED_SOURCE = "untrusted-source"

#: Backends JitKernels can compile native kernels for.
BUILDABLE_BACKENDS = ("cpu", "cuda")


@dataclass(frozen=True)
class CudaOption:
    """A CUDA compiler a build could use; :mod:`jitkernels.build.toolchain` lists them, best first."""

    version: str  # its nvcc's major.minor ("13.0"); for the index, the release torch was built with
    origin: str  # "local" (a toolkit on this machine) | "index" (provisioned from the package index)
    where: str  # "/usr/local/cuda-13.0 (CUDA_HOME)", "the package index (https://pypi.org/simple)"
    any_minor: bool = False  # the index also offers the later minors of this major (a kernel's minver may need one)
    home: str | None = None  # its CUDA home when it is on this machine (not for one still to provision)

    def describe(self, version: str | None = None) -> str:
        return f"nvcc {version or self.version} from {self.where}"


@dataclass(frozen=True)
class Toolchain:
    """Local versions that declared bounds are checked against (``None`` = unknown, not checked)."""

    torch: str | None = None
    cuda: str | None = None  # the local CUDA toolkit (nvcc) major.minor, as kernel-builder checks
    #: Every CUDA compiler a build may use, best first (None: only ``cuda``, the local toolkit).
    cuda_options: tuple[CudaOption, ...] | None = None
    torch_cuda: str | None = None  # torch.version.cuda: which CUDA torch itself was built with

    def options(self) -> tuple[CudaOption, ...]:
        if self.cuda_options is not None:
            return self.cuda_options
        return (CudaOption(self.cuda, "local", "the local CUDA toolkit"),) if self.cuda else ()


@dataclass(frozen=True)
class Decision:
    strategy: str
    reason: str | None
    detail: str
    kernels: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()
    unsupported_dependencies: tuple[str, ...] = ()
    stable_abi: str | None = None
    cuda_compiler: str | None = None  # which nvcc builds it, and from where (CUDA kernels)


def version_tuple(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(".") if p.isdigit()]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _at_most(local: str, bound: str) -> bool:
    """``local <= bound`` comparing as many components as the bound has (``2.9.1`` is within ``2.9``)."""
    b = tuple(int(p) for p in bound.split(".") if p.isdigit())
    loc = tuple(int(p) for p in local.split(".") if p.isdigit())[: max(len(b), 1)]
    return loc + (0,) * (len(b) - len(loc)) <= b


def _within(version: str, minver: str | None, maxver: str | None) -> bool:
    return (not minver or version_tuple(version) >= version_tuple(minver)) and (not maxver or _at_most(version, maxver))


def choose_cuda(options: tuple[CudaOption, ...], minver: str | None, maxver: str | None,
                ignore_bounds: bool = False) -> tuple[CudaOption | None, str | None]:
    """The first option within ``[general.cuda]`` bounds and the nvcc version it gives, or ``(None, None)``.

    An index option gives torch's own release when that is within bounds, else the lowest later minor of the
    same major that is (``minver = "13.2"`` with a CUDA 13.0 torch: 13.2). Never another major than torch's:
    ``torch.utils.cpp_extension`` refuses that, and the library would link a second CUDA runtime.
    """
    for option in options:
        if ignore_bounds or _within(option.version, minver, maxver):
            return option, option.version
        if option.any_minor and minver:
            major = version_tuple(option.version)[0]
            wanted = version_tuple(minver) + (0,)
            if wanted[0] == major:
                candidate = f"{major}.{wanted[1]}"
                if _within(candidate, minver, maxver):
                    return option, candidate
    return None, None


#: PyTorch's CUDA builds (``https://download.pytorch.org/whl/cuXYZ``), for the advice on a kernel whose CUDA
#: bounds exclude the local torch's CUDA.
PYTORCH_CUDA_BUILDS = ("11.8", "12.1", "12.4", "12.6", "12.8", "12.9", "13.0")


def _major_minor(version: str) -> str:
    return ".".join(str(p) for p in (version_tuple(version) + (0,))[:2])


def cuda_advice(config: BuildConfig, toolchain: Toolchain) -> str:
    """What builds a kernel whose ``[general.cuda]`` bounds exclude every compiler here: a sentence, or ""."""
    torch_cuda = toolchain.torch_cuda
    if torch_cuda and _within(torch_cuda, config.cuda_minver, config.cuda_maxver):
        wanted = _major_minor(torch_cuda)  # torch is right: only the compiler is not
        text = f"The CUDA {wanted} compiler (torch's own CUDA) builds it: point CUDA_HOME at a CUDA {wanted} toolkit"
        if version_tuple(wanted)[0] >= 13:
            text += (", or let JitKernels provision one from the package index (JITKERNELS_CUDA_PROVISION, "
                     "JITKERNELS_CUDA_INDEX; not offline)")
        return text + "."
    fits = [v for v in PYTORCH_CUDA_BUILDS if _within(v, config.cuda_minver, config.cuda_maxver)]
    if not fits:
        return ""
    best = fits[-2:][::-1]
    major = version_tuple(best[0])[0]
    torch_bounds = ""
    if config.torch is not None and (config.torch.minver or config.torch.maxver):
        torch_bounds = " " + " and ".join(part for part in (
            f">= {config.torch.minver}" if config.torch.minver else "",
            f"<= {config.torch.maxver}" if config.torch.maxver else "") if part)
    builds = " or ".join(f"cu{v.replace('.', '')}" for v in best)
    text = (f"It builds with a torch{torch_bounds} built for CUDA {' or '.join(best)} (PyTorch's {builds} wheels, "
            f"e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu{best[0].replace('.', '')}`) "
            f"and a CUDA {best[0]} compiler")
    if major < 13:
        text += (f" installed on this machine (NVIDIA's CUDA {major} toolkit; set CUDA_HOME): the package index has "
                 f"no CUDA {major} nvcc (nvidia-cuda-nvcc-cu{major} ships ptxas only), so JitKernels cannot "
                 f"provision that one")
    else:
        text += ", which JitKernels provisions from the package index"
    return text + "."


def _cuda_problem(config: BuildConfig, options: tuple[CudaOption, ...]) -> str:
    bounds = " and ".join(part for part in (
        f"minver = {config.cuda_minver}" if config.cuda_minver else "",
        f"maxver = {config.cuda_maxver}" if config.cuda_maxver else "") if part)
    seen = []
    for option in options:
        if option.origin == "local":
            seen.append(f"the local CUDA toolkit is {option.version}" + (
                f" ({option.where})" if option.where != "the local CUDA toolkit" else ""))
        else:
            major = version_tuple(option.version)[0]
            seen.append(f"the package index offers CUDA {major}.x compilers for this torch (CUDA {option.version})")
    return f"[general.cuda] {bounds} but {' and '.join(seen)}"


def _unknown_python_depends(config: BuildConfig, backend: str) -> Decision | None:
    from .. import inputs

    unknown = inputs.unsupported(config.python_depends_for(backend), backend, inputs.PYTHON_DEPENDS)
    if not unknown:
        return None
    return Decision(
        UNSUPPORTED, UNSUPPORTED_DEPENDENCY,
        f"Declares python-depends that upstream's dependency table does not know for {backend}: "
        f"{', '.join(unknown)} (kernel-builder refuses them too).",
        unsupported_dependencies=unknown,
    )


def decide(config: BuildConfig, backend: str, toolchain: Toolchain = Toolchain(), ignore_bounds: bool = False) -> Decision:
    """What a careful reader of ``build.toml`` concludes for ``backend`` on this toolchain."""
    from .. import inputs

    declared = ", ".join(config.backends) or "none"
    if config.is_noarch:
        if backend in config.backends:
            return _unknown_python_depends(config, backend) or Decision(
                PYTHON, None, f"Python-only kernel ([torch-noarch]) for {declared}.")
        return Decision(
            UNSUPPORTED, NO_BACKEND,
            f"Python-only kernel declared for backends {declared}, not {backend}.",
        )
    if config.framework == "tvm-ffi":
        return Decision(
            UNSUPPORTED, UNSUPPORTED_DEPENDENCY,
            "tvm-ffi kernels need the tvm-ffi build framework, which JitKernels does not build.",
            dependencies=("tvm-ffi",), unsupported_dependencies=("tvm-ffi",),
        )
    if backend not in config.backends:
        return Decision(UNSUPPORTED, NO_BACKEND, f"The kernel is built for {declared}, not {backend}.")

    sections = config.kernels_for(backend)
    skipped = []
    cuda = cuda_problem = compiler = None
    if backend == "cuda" and toolchain.options():
        option, cuda = choose_cuda(toolchain.options(), config.cuda_minver, config.cuda_maxver, ignore_bounds)
        if option is None:
            cuda_problem = _cuda_problem(config, toolchain.options())
            cuda = toolchain.options()[0].version  # for the [kernel.*] sections below
        else:
            compiler = option.describe(cuda)
    if cuda:
        kept = []
        for k in sections:
            if k.cuda_minver and version_tuple(cuda) < version_tuple(k.cuda_minver):
                skipped.append(f"{k.name} (needs CUDA >= {k.cuda_minver})")
            else:
                kept.append(k)
        sections = tuple(kept)
    if not sections:
        extra = f"; skipped for CUDA {cuda}: {', '.join(skipped)}" if skipped else ""
        return Decision(UNSUPPORTED, NO_BACKEND, f"No [kernel.*] section has backend = \"{backend}\"{extra}.")

    deps = tuple(sorted({d for k in sections for d in k.depends} | {"torch"}))
    unsupported = inputs.unsupported(deps, backend)
    names = tuple(k.name for k in sections)
    stable = config.stable_abi_for(backend)
    if unsupported:
        who = ", ".join(f"{k.name}: {'+'.join(d for d in k.depends if d in unsupported)}"
                        for k in sections if set(k.depends) & set(unsupported))
        return Decision(
            UNSUPPORTED, UNSUPPORTED_DEPENDENCY,
            f"Needs build inputs JitKernels cannot resolve: {', '.join(unsupported)} ({who}). "
            f"JitKernels resolves {inputs.supported_names(backend)}.",
            names, deps, unsupported, stable,
        )
    python_problem = _unknown_python_depends(config, backend)
    if python_problem is not None:
        return python_problem
    if backend not in BUILDABLE_BACKENDS:
        return Decision(
            UNSUPPORTED, TOOLCHAIN,
            f"JitKernels compiles native kernels for {', '.join(BUILDABLE_BACKENDS)} only, not {backend}.",
            names, deps, (), stable,
        )
    problems = [] if ignore_bounds else _bound_problems(config, toolchain, stable, cuda_problem)
    if problems:
        advice = f" {cuda_advice(config, toolchain)}" if cuda_problem and cuda_advice(config, toolchain) else ""
        return Decision(
            UNSUPPORTED, TOOLCHAIN,
            "; ".join(problems) + ". Set JITKERNELS_IGNORE_TOOLCHAIN_BOUNDS=1 to try anyway." + advice,
            names, deps, (), stable,
        )
    note = f" (skipped for CUDA {cuda}: {', '.join(skipped)})" if skipped else ""
    built = f"; {compiler}" if compiler else ""
    return Decision(
        NATIVE_JIT, None,
        f"Native {backend} kernel from source: {', '.join(names)}, depends on {', '.join(deps)}{note}{built}.",
        names, deps, (), stable, compiler,
    )


def _bound_problems(config: BuildConfig, toolchain: Toolchain, stable: str | None, cuda_problem: str | None) -> list[str]:
    problems = [cuda_problem] if cuda_problem else []
    if toolchain.torch and config.torch is not None:
        if config.torch.minver and version_tuple(toolchain.torch) < version_tuple(config.torch.minver):
            problems.append(f"[torch] minver = {config.torch.minver} but the local torch is {toolchain.torch}")
        if config.torch.maxver and not _at_most(toolchain.torch, config.torch.maxver):
            problems.append(f"[torch] maxver = {config.torch.maxver} but the local torch is {toolchain.torch}")
        if stable and version_tuple(toolchain.torch)[:2] < version_tuple(stable)[:2]:
            problems.append(f"[torch.stable-abi] targets torch {stable} but the local torch is {toolchain.torch}")
    return problems
