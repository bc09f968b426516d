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
class Toolchain:
    """Local versions that declared bounds are checked against (``None`` = unknown, not checked)."""

    torch: str | None = None
    cuda: str | None = None  # the CUDA toolkit (nvcc) major.minor, as kernel-builder checks


@dataclass(frozen=True)
class Decision:
    strategy: str
    reason: str | None
    detail: str
    kernels: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()
    unsupported_dependencies: tuple[str, ...] = ()
    stable_abi: str | None = None


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
    if backend == "cuda" and toolchain.cuda:
        kept = []
        for k in sections:
            if k.cuda_minver and version_tuple(toolchain.cuda) < version_tuple(k.cuda_minver):
                skipped.append(f"{k.name} (needs CUDA >= {k.cuda_minver})")
            else:
                kept.append(k)
        sections = tuple(kept)
    if not sections:
        extra = f"; skipped for the local CUDA {toolchain.cuda}: {', '.join(skipped)}" if skipped else ""
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
    problems = [] if ignore_bounds else _bound_problems(config, backend, toolchain, stable)
    if problems:
        return Decision(
            UNSUPPORTED, TOOLCHAIN,
            "; ".join(problems) + ". Set JITKERNELS_IGNORE_TOOLCHAIN_BOUNDS=1 to try anyway.",
            names, deps, (), stable,
        )
    note = f" (skipped for the local CUDA {toolchain.cuda}: {', '.join(skipped)})" if skipped else ""
    return Decision(
        NATIVE_JIT, None,
        f"Native {backend} kernel from source: {', '.join(names)}, depends on {', '.join(deps)}{note}.",
        names, deps, (), stable,
    )


def _bound_problems(config: BuildConfig, backend: str, toolchain: Toolchain, stable: str | None) -> list[str]:
    problems = []
    if backend == "cuda" and toolchain.cuda:
        if config.cuda_minver and version_tuple(toolchain.cuda) < version_tuple(config.cuda_minver):
            problems.append(f"[general.cuda] minver = {config.cuda_minver} but the local CUDA toolkit is {toolchain.cuda}")
        if config.cuda_maxver and not _at_most(toolchain.cuda, config.cuda_maxver):
            problems.append(f"[general.cuda] maxver = {config.cuda_maxver} but the local CUDA toolkit is {toolchain.cuda}")
    if toolchain.torch and config.torch is not None:
        if config.torch.minver and version_tuple(toolchain.torch) < version_tuple(config.torch.minver):
            problems.append(f"[torch] minver = {config.torch.minver} but the local torch is {toolchain.torch}")
        if config.torch.maxver and not _at_most(toolchain.torch, config.torch.maxver):
            problems.append(f"[torch] maxver = {config.torch.maxver} but the local torch is {toolchain.torch}")
        if stable and version_tuple(toolchain.torch)[:2] < version_tuple(stable)[:2]:
            problems.append(f"[torch.stable-abi] targets torch {stable} but the local torch is {toolchain.torch}")
    return problems
