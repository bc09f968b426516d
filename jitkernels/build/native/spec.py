"""A native build described as a value: hashable, printable, testable without compiling.

:func:`make_spec` turns a parsed ``build.toml`` (for one backend) plus the
local toolchain into a :class:`BuildSpec`; the builder only executes specs.
``BuildSpec.key()`` is the cache key: every input file's digest, every flag,
torch (or stable-ABI) version and torch's build (``+cu130``), CUDA versions (torch's, and the
``major.minor`` of the nvcc :mod:`jitkernels.build.toolchain` chose: a local or a provisioned one),
GPU archs, the host compilers and their versions, Python ABI tag (``cp313t``
for free-threaded builds), platform, the recipe version, and the name, version
and digest of every resolved build input (CUTLASS...: their folders are not in
the key, their content is).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache

from ... import config, inputs, machine
from ...cache import entries
from ...errors import ToolchainError
from ...plan.buildconfig import TARGET_INCLUDES, BuildConfig
from . import flags as F


@dataclass(frozen=True)
class SourceUnit:
    """One translation unit: its path (relative to the source root), language and own flags."""

    path: str
    language: str  # "cxx" | "cuda"
    flags: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildSpec:
    extension_name: str
    kernel: str
    backend: str
    units: tuple[SourceUnit, ...]
    cxx_flags: tuple[str, ...]
    cuda_flags: tuple[str, ...]
    link_flags: tuple[str, ...]
    archs: tuple[str, ...]
    stable_abi: str | None
    inputs_digest: str
    toolchain: tuple[tuple[str, str], ...]
    #: (name, version, digest) of each resolved build input other than torch (``cutlass_3_8``...).
    build_inputs: tuple[tuple[str, str, str], ...] = ()
    #: Their include folders on this machine (searched by every unit, as kernel-builder's include_directories).
    include_dirs: tuple[str, ...] = ()
    #: CUDA: the compiler (:class:`jitkernels.build.toolchain.Compiler`); its version is in ``toolchain``.
    compiler: object = None

    def key(self) -> str:
        """The cache key: everything that changes the built library (not the label ``kernel``, not local paths)."""
        fields = asdict(self)
        fields.pop("kernel")
        fields.pop("include_dirs")
        fields.pop("compiler")
        data = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(f"{config.RECIPE_VERSION}|{data}".encode()).hexdigest()

    def describe(self) -> str:
        cu = sum(1 for u in self.units if u.language == "cuda")
        with_inputs = "".join(f", {name} {version}" for name, version, _ in self.build_inputs)
        return (
            f"{self.kernel} ({self.backend}{', archs ' + ' '.join(self.archs) if self.archs else ''}{with_inputs}): "
            f"{len(self.units)} translation units ({cu} CUDA) + the link = {self.steps()} build steps"
        )

    def steps(self) -> int:
        """What the progress bar counts: every translation unit, and the link."""
        return len(self.units) + 1




def _language(path: str) -> str | None:
    if path.endswith(F.CUDA_SUFFIXES):
        return "cuda"
    if path.endswith(F.CXX_SUFFIXES):
        return "cxx"
    return None


def target_archs(backend: str) -> list[str]:
    if backend != "cuda":
        return []
    archs = machine.cuda_archs()
    if not archs:
        raise ToolchainError(
            "No CUDA GPU is visible to pick the architectures to compile for. "
            "Set TORCH_CUDA_ARCH_LIST (e.g. '9.0') to build without a GPU."
        )
    return archs


@lru_cache(maxsize=None)
def _compiler_version(compiler: str) -> str:
    """The first line of ``<compiler> --version`` (``g++ (Debian 12.2.0-14) 12.2.0``), or why there is none."""
    try:
        out = subprocess.run([*shlex.split(compiler), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return f"unavailable: {exc.__class__.__name__}"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


def toolchain_identity() -> tuple[tuple[str, str], ...]:
    """The host compilers (``CXX``, ``CC``) by name and version: another compiler gives another build key."""
    facts = {"cxx": config.cxx(), "cxx_version": _compiler_version(config.cxx())}
    if config.cc():
        facts["cc"] = config.cc()
        facts["cc_version"] = _compiler_version(config.cc())
    return tuple(facts.items())


def toolchain_facts(backend: str, nvcc: str | None = None) -> tuple[tuple[str, str], ...]:
    """torch, the host compilers, Python ABI, platform and, for CUDA, the chosen nvcc's ``major.minor``."""
    import torch

    facts = {
        "torch": machine.torch_version(),
        "torch_build": torch.__version__,  # the local part (+cpu, +cu130) is another build of torch
        **dict(toolchain_identity()),
        "torch_cuda": str(machine.torch_cuda_version()),
        "python": machine.python_abi_tag(),
        "platform": machine.platform_tag(),
        "cxx11_abi": str(machine.cxx11_abi()),
    }
    if backend == "cuda":
        facts["nvcc"] = str(nvcc)
    return tuple(sorted(facts.items()))


def make_spec(config_: BuildConfig, kernel: str, backend: str, kernels: tuple[str, ...],
              extension_name: str, inputs_digest: str) -> BuildSpec:
    """The build of ``kernels`` (section names) of ``config_`` for ``backend`` on this machine."""
    stable = config_.stable_abi_for(backend)
    torch_mm = machine.torch_major_minor()
    archs = target_archs(backend)
    units: list[SourceUnit] = []
    torch_section = config_.torch
    if torch_section is not None:
        for src in torch_section.src:
            lang = _language(src)
            if lang == "cuda" and backend != "cuda":
                continue
            if lang:
                extra = torch_section.cxx_flags if lang == "cxx" else F.gencode(archs)
                units.append(SourceUnit(src, lang, tuple(extra), (*TARGET_INCLUDES, *torch_section.include)))
    link: list[str] = []
    sections = [s for s in config_.kernels_for(backend) if s.name in kernels]
    shared: dict[str, dict] = {}  # a file listed by several sections is one unit, as in kernel-builder's target
    for section in sections:
        for src in section.src:
            lang = _language(src)
            if lang is None or (lang == "cuda" and backend != "cuda"):
                continue
            own = section.cuda_flags if lang == "cuda" else tuple(f for f in section.cxx_flags if not _library(f))
            unit = shared.setdefault(src, {"lang": lang, "caps": [], "flags": [], "includes": list(TARGET_INCLUDES)})
            unit["caps"].append(section.cuda_capabilities)
            unit["flags"] += [f for f in own if f not in unit["flags"]]
            unit["includes"] += [i for i in section.include if i not in unit["includes"]]
        link += [f for f in (*section.cxx_flags, *section.cuda_flags) if _library(f)]
    for src, unit in shared.items():
        gencode = unit_gencode(unit["caps"], archs) if unit["lang"] == "cuda" else []
        units.append(SourceUnit(src, unit["lang"], (*gencode, *unit["flags"]), tuple(unit["includes"])))
    if not units:
        raise ToolchainError(f"{kernel}: nothing to compile for {backend} (no C++/CUDA sources).")
    declared = sorted({d for s in sections for d in s.depends if d != "torch"})
    # With JITKERNELS_DISABLE_BUILD, or when a missing build is deferred to a background builder
    # (jitkernels.coldstart), nothing is fetched here: the key needs only the pinned digests.
    resolved = inputs.resolve_build_inputs(declared, backend,
                                           fetch=not (config.disable_build() or entries.deferring_builds()))
    defines = F.common_defines(extension_name, backend, stable, machine.cxx11_abi())
    cxx = [*defines, *F.release_flags(), *F.host_cxx_flags(), *F.cxx_standard(torch_mm)]
    cuda = [*defines, *F.release_flags(), *F.NVCC_COMMON, *F.nvcc_host_flags(), *F.cxx_standard(torch_mm)]
    if config.nvcc_threads() is not None:
        cuda.append(f"--threads={config.nvcc_threads()}")
    compiler = None
    if backend == "cuda":  # which nvcc (local or from the package index) follows torch and [general.cuda]
        from .. import toolchain

        compiler = toolchain.for_build(config_)
    return BuildSpec(
        extension_name=extension_name,
        kernel=kernel,
        backend=backend,
        units=tuple(units),
        cxx_flags=tuple(cxx),
        cuda_flags=tuple(cuda),
        link_flags=tuple(dict.fromkeys(link)),
        archs=tuple(archs),
        stable_abi=stable,
        inputs_digest=inputs_digest,
        toolchain=toolchain_facts(backend, compiler.version if compiler is not None else None),
        build_inputs=tuple((r.name, r.version or "", r.digest or "") for r in resolved),
        include_dirs=tuple(dict.fromkeys(d for r in resolved for d in r.include_dirs)),
        compiler=compiler,
    )


def _library(flag: str) -> bool:
    """``-lfoo`` in a section's flags is a library to link; nvcc's ``-lineinfo`` is not."""
    return flag.startswith("-l") and flag != "-lineinfo"


def unit_gencode(capability_sets: list[tuple[str, ...]], targets: list[str]) -> list[str]:
    """``-gencode`` flags of a file listed by one or more sections (flash-mla lists ``api_impl.cu`` in two).

    kernel-builder compiles such a file once, with the flags of every section
    appended (``set_property(SOURCE ... APPEND PROPERTY COMPILE_OPTIONS ...)``
    in kernel.cmake): here the union of the sections' archs for these GPUs,
    or, if none of them runs here, PTX only (see :func:`section_gencode`).
    Its include folders are every section's (kernel-builder *sets* them per
    section, so one section's win, in an order that is not defined: sections
    are a Rust ``HashMap``); its flags are every section's, in file order.
    """
    matching = sorted({a for caps in capability_sets for a in F.kernel_archs(caps, targets)}, key=F._arch_key)
    if matching:
        return F.gencode(matching)
    lowest = sorted((c for caps in capability_sets for c in caps), key=F._arch_key)[:1]
    return F.ptx_only(lowest)


def section_gencode(capabilities: tuple[str, ...], targets: list[str]) -> list[str]:
    """The ``-gencode`` flags of one ``[kernel.*]`` section's CUDA files for the target GPUs.

    A section's archs are kernel-builder's loose intersection of its
    ``cuda-capabilities`` with the targets (none declared: the targets).
    A section none of whose capabilities runs on the targets (flash-attn3's
    ``flash_attn_sm80`` on an H100) is still compiled, never left out:
    kernel-builder never skips one (huggingface/kernels 8ac69fc5,
    ``kernel-builder/src/pyproject/templates/kernel.cmake`` lines 34-44:
    ``cuda_archs_loose_intersection`` of the capabilities with ``CUDA_ARCHS``,
    the whole default arch list of ``templates/torch/preamble.cmake`` lines
    99-107 and 135, even in a local build for one GPU, lines 138-146; an empty
    intersection is a ``FATAL_ERROR``, kernel.cmake lines 37-39), and the torch
    binding calls into it (sage-attention's binding calls ``mha_fwd``, defined
    in its ``10.0a``-only section): without it the library does not load. Its
    device code can never run here, so it is compiled to PTX only, for its
    lowest capability: the same front end as kernel-builder's build for that
    arch, without ptxas and SASS.
    """
    matching = F.kernel_archs(capabilities, targets)
    if matching or not capabilities:
        return F.gencode(matching)
    return F.ptx_only(sorted(capabilities, key=F._arch_key)[:1])
