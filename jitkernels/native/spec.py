"""A native build described as a value: hashable, printable, testable without compiling.

:func:`make_spec` turns a parsed ``build.toml`` (for one backend) plus the
local toolchain into a :class:`BuildSpec`; the builder only executes specs.
``BuildSpec.key()`` is the cache key: every input file's digest, every flag,
torch (or stable-ABI) version and torch's build (``+cu130``), CUDA versions,
GPU archs, the host compilers and their versions, Python ABI tag (``cp313t``
for free-threaded builds), platform and the recipe version.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache

from .. import config, environment
from ..buildconfig import BuildConfig
from ..errors import ToolchainError
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

    def key(self) -> str:
        """The cache key: everything that changes the built library (not the label ``kernel``)."""
        fields = asdict(self)
        fields.pop("kernel")
        data = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(f"{config.RECIPE_VERSION}|{data}".encode()).hexdigest()

    def describe(self) -> str:
        cu = sum(1 for u in self.units if u.language == "cuda")
        return (
            f"{self.kernel} ({self.backend}{', archs ' + ' '.join(self.archs) if self.archs else ''}): "
            f"{len(self.units)} translation units ({cu} CUDA)"
        )


def _language(path: str) -> str | None:
    if path.endswith(F.CUDA_SUFFIXES):
        return "cuda"
    if path.endswith(F.CXX_SUFFIXES):
        return "cxx"
    return None


def target_archs(backend: str) -> list[str]:
    if backend != "cuda":
        return []
    archs = environment.cuda_archs()
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


def toolchain_facts(backend: str) -> tuple[tuple[str, str], ...]:
    import torch

    facts = {
        "torch": environment.torch_version(),
        "torch_build": torch.__version__,  # the local part (+cpu, +cu130) is another build of torch
        **dict(toolchain_identity()),
        "torch_cuda": str(environment.torch_cuda_version()),
        "python": environment.python_abi_tag(),
        "platform": environment.platform_tag(),
        "cxx11_abi": str(environment.cxx11_abi()),
    }
    if backend == "cuda":
        facts["nvcc"] = str(environment.nvcc_version())
    return tuple(sorted(facts.items()))


def make_spec(config_: BuildConfig, kernel: str, backend: str, kernels: tuple[str, ...],
              extension_name: str, inputs_digest: str) -> BuildSpec:
    """The build of ``kernels`` (section names) of ``config_`` for ``backend`` on this machine."""
    stable = config_.stable_abi_for(backend)
    torch_mm = environment.torch_major_minor()
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
                units.append(SourceUnit(src, lang, tuple(extra), torch_section.include))
    link: list[str] = []
    for section in config_.kernels_for(backend):
        if section.name not in kernels:
            continue
        section_archs = F.kernel_archs(section.cuda_capabilities, archs) if backend == "cuda" else []
        if backend == "cuda" and not section_archs and section.cuda_capabilities:
            # None of its capabilities runs on these GPUs; compile it for its lowest one so the
            # library still links (kernel-builder builds it for every default arch).
            section_archs = [sorted(section.cuda_capabilities, key=F._arch_key)[0]]
        for src in section.src:
            lang = _language(src)
            if lang is None:
                continue
            if lang == "cuda" and backend != "cuda":
                continue
            if lang == "cuda":
                extra = (*F.gencode(section_archs), *section.cuda_flags)
            else:
                extra = tuple(f for f in section.cxx_flags if not f.startswith("-l"))
            units.append(SourceUnit(src, lang, tuple(extra), section.include))
        link += [f for f in (*section.cxx_flags, *section.cuda_flags) if f.startswith("-l")]
    if not units:
        raise ToolchainError(f"{kernel}: nothing to compile for {backend} (no C++/CUDA sources).")
    defines = F.common_defines(extension_name, backend, stable, environment.cxx11_abi())
    cxx = [*defines, *F.release_flags(), *F.host_cxx_flags(), *F.cxx_standard(torch_mm)]
    cuda = [*defines, *F.release_flags(), *F.NVCC_COMMON, *F.nvcc_host_flags(), *F.cxx_standard(torch_mm)]
    if config.nvcc_threads() is not None:
        cuda.append(f"--threads={config.nvcc_threads()}")
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
        toolchain=toolchain_facts(backend),
    )
