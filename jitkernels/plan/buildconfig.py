"""Parse a kernel's ``build.toml`` into plain values, and refuse anything unsafe.

Reads every edition found in kernels-community: the pre-edition files
(kernel-builder's v3/v4 schema, no ``edition`` key) and ``edition = 5``; the
older v1/v2 keys (``[torch] universal``, ``language``) are mapped too. Unknown
keys are an error, as in kernel-builder: a key we do not understand may change
how the kernel must be built.

Safety rules (documented in the README): every path is relative, without
``..``, NUL or shell metacharacters; every compiler flag matches an allow-list
(``FLAG_RULES``): defines, optimisation, warnings, ``-f``/``-m`` code
generation switches and the nvcc switches the corpus uses. Output, linker,
plugin, include and response-file switches are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import BuildConfigError

try:  # Python 3.11+
    import tomllib as _toml
except ImportError:  # pragma: no cover
    import tomli as _toml  # type: ignore[no-redef]

BACKENDS = ("cann", "cpu", "cuda", "metal", "neuron", "rocm", "tpu", "xpu")
SUPPORTED_EDITIONS = (5,)
_NAME_RE = re.compile(r"^[A-Za-z][-A-Za-z0-9_]*[A-Za-z0-9]$")
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9_.+@=,/-]+$")
_VERSION_RE = re.compile(r"^\d+(\.\d+)*$")
_DEP_RE = re.compile(r"^[a-z][a-z0-9_-]*$")

#: Compiler flags a build.toml may ask for. Anything else is refused.
FLAG_RULES = [
    r"-D[A-Za-z_][A-Za-z0-9_]*(=[A-Za-z0-9_.+:-]*)?",
    r"-U[A-Za-z_][A-Za-z0-9_]*",
    r"-O[0-3sz]?",
    r"-g[0-3]?",
    r"-lineinfo",
    r"-std=(c|gnu)\+\+(1[1-7]|2[0-6]|2[a-c])",
    r"-f(?!plugin|profile|dump|record)[a-z][a-z0-9-]*(=[0-9]+)?",
    r"-m[a-z][a-z0-9-]*(=[a-z0-9-]+)?",
    r"-W(?!l,|a,|p,)[a-z][a-z0-9-=+]*",
    r"-l[a-z][a-z0-9_]*",
    r"--use_fast_math|-use_fast_math",
    r"--expt-[a-z-]+",
    r"--extended-lambda|--extra-device-vectorization|-res-usage|--resource-usage",
    r"--ftemplate-backtrace-limit=[0-9]+",
    r"--threads=[0-9]+",
    r"-diag-suppress=[0-9,]+",
    r"-Xptxas=[-A-Za-z0-9_,=.]+|--ptxas-options=[-A-Za-z0-9_,=.]+",
    r"-Xfatbin=-compress-all",
    r"-static-global-template-stub=(true|false)",
]
_FLAG_RE = re.compile("^(?:" + "|".join(f"(?:{rule})" for rule in FLAG_RULES) + ")$")


#: Include folders of the whole extension, before each file's own: kernel-builder's
#: ``define_gpu_extension_target`` does ``target_include_directories(... PRIVATE csrc ...)``
#: (huggingface/kernels 8ac69fc5, kernel-builder/src/pyproject/templates/utils.cmake line 573).
#: megablocks' and deep-gemm's bindings include headers from csrc/ without declaring it.
TARGET_INCLUDES = ("csrc",)


@dataclass(frozen=True)
class KernelSection:
    """One ``[kernel.<name>]`` table: sources built for one backend."""

    name: str
    backend: str
    src: tuple[str, ...]
    depends: tuple[str, ...]
    include: tuple[str, ...] = ()
    cxx_flags: tuple[str, ...] = ()
    cuda_flags: tuple[str, ...] = ()
    cuda_capabilities: tuple[str, ...] = ()
    cuda_minver: str | None = None
    rocm_archs: tuple[str, ...] = ()
    hip_flags: tuple[str, ...] = ()
    sycl_flags: tuple[str, ...] = ()

    @property
    def extra_depends(self) -> tuple[str, ...]:
        """Dependencies other than torch (CUTLASS, sycl-tla...)."""
        return tuple(d for d in self.depends if d != "torch")


@dataclass(frozen=True)
class TorchSection:
    """``[torch]`` (native binding) or ``[tvm-ffi]``."""

    src: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    pyext: tuple[str, ...] = ()
    minver: str | None = None
    maxver: str | None = None
    cxx_flags: tuple[str, ...] = ()
    #: backend -> torch version of the stable ABI to target.
    stable_abi: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BuildConfig:
    name: str
    version: int | None
    edition: int | None
    license: str | None
    backends: tuple[str, ...]
    framework: str  # "torch" | "torch-noarch" | "tvm-ffi"
    torch: TorchSection | None
    kernels: tuple[KernelSection, ...]
    pyext: tuple[str, ...] = ()
    python_depends: tuple[str, ...] = ()
    backend_python_depends: dict = field(default_factory=dict)
    cuda_minver: str | None = None
    cuda_maxver: str | None = None
    hub_repo_id: str | None = None
    source: str | None = None
    upstream: str | None = None
    kernel_depends: tuple = ()
    backend_kernel_depends: dict = field(default_factory=dict)

    @property
    def python_name(self) -> str:
        return self.name.replace("-", "_")

    @property
    def is_noarch(self) -> bool:
        return self.framework == "torch-noarch"

    def kernels_for(self, backend: str) -> tuple[KernelSection, ...]:
        return tuple(k for k in self.kernels if k.backend == backend)

    def stable_abi_for(self, backend: str) -> str | None:
        if self.torch is None:
            return None
        return self.torch.stable_abi.get(backend)

    def python_depends_for(self, backend: str) -> tuple[str, ...]:
        return self.python_depends + tuple(self.backend_python_depends.get(backend, ()))

    def kernel_depends_for(self, backend: str) -> tuple:
        """General plus ``[general.<backend>]`` kernel-depends (upstream's ``all_kernel_depends``)."""
        return self.kernel_depends + tuple(self.backend_kernel_depends.get(backend, ()))


# -- helpers -------------------------------------------------------------------

class _Reader:
    """Typed access to one TOML table, collecting the keys it has read."""

    def __init__(self, table, where: str, origin: str):
        if not isinstance(table, dict):
            raise BuildConfigError(f"{origin}: {where} must be a table, found {type(table).__name__}.")
        self.table = table
        self.where = where
        self.origin = origin
        self.known: set[str] = set()

    def error(self, message: str) -> BuildConfigError:
        return BuildConfigError(f"{self.origin}: {self.where}: {message}")

    def get(self, key: str, kind, default=None, required: bool = False):
        self.known.add(key)
        if key not in self.table:
            if required:
                raise self.error(f"missing required key '{key}'.")
            return default
        value = self.table[key]
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self.error(f"'{key}' must be a list of strings, found {value!r}.")
            return tuple(value)
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(f"'{key}' must be an integer, found {value!r}.")
            return value
        if kind is str:
            if not isinstance(value, str):
                raise self.error(f"'{key}' must be a string, found {value!r}.")
            return value
        if kind is dict:
            if not isinstance(value, dict):
                raise self.error(f"'{key}' must be a table, found {value!r}.")
            return value
        return value

    def version(self, key: str) -> str | None:
        value = self.get(key, str)
        if value is not None and not _VERSION_RE.match(value.strip()):
            raise self.error(f"'{key}' must be a version like '12.8', found {value!r}.")
        return value.strip() if value is not None else None

    def paths(self, key: str, required: bool = False) -> tuple[str, ...]:
        return tuple(_check_path(p, f"{self.where}.{key}", self.origin) for p in self.get(key, list, (), required))

    def flags(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list, ())
        for flag in values:
            if not _FLAG_RE.match(flag):
                raise self.error(
                    f"'{key}' contains {flag!r}, which JitKernels does not pass to a compiler. "
                    f"Allowed: defines (-D/-U), -O, -g, -std=, -f/-m/-W switches, -l<lib>, and nvcc's "
                    f"--use_fast_math, --expt-*, -Xptxas=..., --threads=N (see FLAG_RULES)."
                )
        return values

    def finish(self, extra_ok: tuple[str, ...] = ()) -> None:
        unknown = sorted(set(self.table) - self.known - set(extra_ok))
        if unknown:
            raise self.error(
                f"unknown key(s) {', '.join(unknown)}. JitKernels reads kernel-builder editions up to "
                f"{max(SUPPORTED_EDITIONS)}; if this kernel needs a newer JitKernels, upgrade it."
            )


def _check_path(path: str, where: str, origin: str) -> str:
    if "\x00" in path or not _SAFE_PATH_RE.match(path) or "\\" in path:
        raise BuildConfigError(f"{origin}: {where}: path {path!r} has characters JitKernels refuses (NUL, shell metacharacters).")
    if path.startswith("/"):
        raise BuildConfigError(f"{origin}: {where}: path {path!r} is absolute; paths must stay inside the kernel.")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BuildConfigError(f"{origin}: {where}: path {path!r} contains '..'; paths must stay inside the kernel.")
    return "/".join(parts) or "."


def _backend(value: str, reader: _Reader, key: str) -> str:
    if value not in BACKENDS:
        raise reader.error(f"'{key}' = {value!r} is not a backend ({', '.join(BACKENDS)}).")
    return value


def _depends(reader: _Reader) -> tuple[str, ...]:
    values = reader.get("depends", list, None)
    if values is None:
        raise reader.error("missing required key 'depends' (use depends = [\"torch\"]).")
    for dep in values:
        if not _DEP_RE.match(dep):
            raise reader.error(f"dependency {dep!r} is not a dependency name.")
    return values


_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$")


def check_kernel_dependency(item, where: str) -> dict:
    """One ``kernel-depends`` entry as upstream's kernels-data reads it (``kernel_deps.rs``):
    ``{repo-id, version = N}`` or ``{repo-id, revision = "..."}``, nothing else. Raises :class:`BuildConfigError`."""
    if not isinstance(item, dict):
        raise BuildConfigError(f"{where}: kernel-depends entries are tables {{repo-id = ..., version = N}}, found {item!r}.")
    unknown = sorted(set(item) - {"repo-id", "version", "revision"})
    if unknown:
        raise BuildConfigError(f"{where}: kernel-depends entry has unknown key(s) {', '.join(unknown)}.")
    repo_id = item.get("repo-id")
    if not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise BuildConfigError(f"{where}: kernel-depends 'repo-id' must be 'org/name', found {repo_id!r}.")
    version, revision = item.get("version"), item.get("revision")
    if (version is None) == (revision is None):
        raise BuildConfigError(f"{where}: kernel-depends {repo_id}: give exactly one of 'version' and 'revision'.")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise BuildConfigError(f"{where}: kernel-depends {repo_id}: 'version' must be a non-negative integer, found {version!r}.")
    if revision is not None and (not isinstance(revision, str) or not revision.strip() or "\x00" in revision
                                 or ".." in revision or "@" in revision):
        raise BuildConfigError(f"{where}: kernel-depends {repo_id}: 'revision' must be a branch, tag or commit, found {revision!r}.")
    return {"repo-id": repo_id, **({"version": version} if version is not None else {"revision": revision.strip()})}


def _kernel_depends(reader: _Reader, key: str = "kernel-depends") -> tuple:
    value = reader.get(key, None, ())
    if not isinstance(value, (list, tuple)):
        raise reader.error(f"'{key}' must be a list of {{repo-id = ..., version = N}} tables.")
    return tuple(check_kernel_dependency(item, f"{reader.origin}: {reader.where}") for item in value)


# -- the parser -----------------------------------------------------------------

#: build.toml nests tables and arrays three deep at most; far deeper input is refused before tomllib
#: recurses into it (a RecursionError deep inside the parser can surface in unrelated places).
MAX_NESTING = 64


def _check_nesting(text: str, origin: str) -> None:
    depth = deepest = 0
    quote = None
    for char in text:
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    if deepest > MAX_NESTING:
        raise BuildConfigError(f"{origin}: invalid TOML: nested more than {MAX_NESTING} levels deep. "
                               f"Fix the file (it must be kernel-builder's build.toml).")


def parse_build_toml(text: str | bytes, origin: str = "build.toml") -> BuildConfig:
    """Parse ``build.toml`` text. Raises :class:`BuildConfigError` with the file and key at fault."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BuildConfigError(f"{origin}: not UTF-8 text ({exc}).") from exc
    _check_nesting(text, origin)
    try:
        data = _toml.loads(text)
    except (_toml.TOMLDecodeError, RecursionError, ValueError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BuildConfigError(f"{origin}: invalid TOML: {what}. Fix the file (it must be kernel-builder's build.toml).") from exc
    top = _Reader(data, "top level", origin)
    general = _Reader(top.get("general", dict, required=True), "[general]", origin)

    edition = general.get("edition", int)
    if edition is not None and edition not in SUPPORTED_EDITIONS:
        raise general.error(
            f"edition {edition} is not supported (JitKernels reads files without an edition and "
            f"edition {', '.join(map(str, SUPPORTED_EDITIONS))}). Upgrade JitKernels."
        )
    name = general.get("name", str, required=True)
    if not _NAME_RE.match(name) or not name.replace("-", "_").isidentifier():
        raise general.error(
            f"name {name!r} is not a kernel name (letters, digits and '-', starting with a letter), "
            f"so it cannot become a Python package name."
        )
    version = general.get("version", int)
    license_ = general.get("license", str)
    upstream = general.get("upstream", str)
    source = general.get("source", str)
    python_depends = general.get("python-depends", list, ())
    kernel_depends = _kernel_depends(general)
    universal_v2 = bool(general.get("universal", bool, False))
    cuda_minver = cuda_maxver = None
    backend_python_depends: dict[str, tuple[str, ...]] = {}
    backend_kernel_depends: dict[str, tuple] = {}
    for backend_key in ("cuda", "neuron", "tpu", "xpu"):
        if backend_key in general.table:
            sub = _Reader(general.get(backend_key, dict), f"[general.{backend_key}]", origin)
            if backend_key == "cuda":
                cuda_minver = sub.version("minver")
                cuda_maxver = sub.version("maxver")
            deps = sub.get("python-depends", list, ())
            if deps:
                backend_python_depends[backend_key] = deps
            if backend_key != "tpu":  # upstream's TpuGeneral has no kernel-depends
                kdeps = _kernel_depends(sub)
                if kdeps:
                    backend_kernel_depends[backend_key] = kdeps
            sub.finish()
    # v2 spelled the CUDA bounds at the top of [general]
    cuda_minver = cuda_minver or general.version("cuda-minver")
    cuda_maxver = cuda_maxver or general.version("cuda-maxver")
    hub_repo_id = None
    if "hub" in general.table:
        hub = _Reader(general.get("hub", dict), "[general.hub]", origin)
        hub_repo_id = hub.get("repo-id", str)
        hub.get("branch", str)
        hub.finish()

    frameworks = [key for key in ("torch", "torch-noarch", "tvm-ffi") if key in data]
    if len(frameworks) > 1:
        raise top.error(f"has {', '.join(frameworks)}; a kernel has exactly one of [torch], [torch-noarch], [tvm-ffi].")
    torch_section = None
    pyext: tuple[str, ...] = ()
    framework = frameworks[0] if frameworks else "torch-noarch"
    if framework == "torch":
        torch_reader = _Reader(top.get("torch", dict), "[torch]", origin)
        if torch_reader.get("universal", bool, False):  # v1: a Python-only kernel
            framework = "torch-noarch"
        stable = torch_reader.get("stable-abi", None, None)
        stable_abi: dict[str, str] = {}
        if isinstance(stable, str):
            if not _VERSION_RE.match(stable):
                raise torch_reader.error(f"'stable-abi' must be a torch version like '2.10', found {stable!r}.")
            stable_abi = {b: stable for b in BACKENDS}
        elif isinstance(stable, dict):
            for key, value in stable.items():
                _backend(key, torch_reader, "stable-abi")
                if not isinstance(value, str) or not _VERSION_RE.match(value):
                    raise torch_reader.error(f"[torch.stable-abi] {key} must be a torch version, found {value!r}.")
                stable_abi[key] = value
        elif stable is not None:
            raise torch_reader.error(f"'stable-abi' must be a version or a table of backend = version, found {stable!r}.")
        torch_section = TorchSection(
            src=torch_reader.paths("src"),
            include=torch_reader.paths("include"),
            pyext=torch_reader.get("pyext", list, ()),
            minver=torch_reader.version("minver"),
            maxver=torch_reader.version("maxver"),
            cxx_flags=torch_reader.flags("cxx-flags"),
            stable_abi=stable_abi,
        )
        pyext = torch_section.pyext
        torch_reader.finish()
    elif framework == "tvm-ffi":
        reader = _Reader(top.get("tvm-ffi", dict), "[tvm-ffi]", origin)
        torch_section = TorchSection(
            src=reader.paths("src", required=True),
            include=reader.paths("include"),
            pyext=reader.get("pyext", list, ()),
            cxx_flags=reader.flags("cxx-flags"),
        )
        pyext = torch_section.pyext
        reader.finish()
    elif "torch-noarch" in data:
        reader = _Reader(top.get("torch-noarch", dict), "[torch-noarch]", origin)
        pyext = reader.get("pyext", list, ())
        for key in ("cuda_capabilities", "rocm_archs", "cuda-capabilities", "rocm-archs"):
            reader.get(key, list, ())
        reader.finish()
    if universal_v2:
        framework = "torch-noarch"

    kernels = []
    kernel_table = top.get("kernel", dict, {})
    for kname, ktable in kernel_table.items():
        kernels.append(_parse_kernel(kname, ktable, origin))

    backends = general.get("backends", list, None)
    if backends is None:  # v1/v2 derived the backends from the kernels
        backends = tuple(sorted({k.backend for k in kernels})) or (BACKENDS if framework == "torch-noarch" else ())
    for b in backends:
        _backend(b, general, "backends")
    general.finish(extra_ok=("cuda", "neuron", "tpu", "xpu", "hub"))
    top.finish()
    return BuildConfig(
        name=name,
        version=version,
        edition=edition,
        license=license_,
        backends=tuple(backends),
        framework=framework,
        torch=torch_section,
        kernels=tuple(kernels),
        pyext=pyext,
        python_depends=python_depends,
        backend_python_depends=backend_python_depends,
        cuda_minver=cuda_minver,
        cuda_maxver=cuda_maxver,
        hub_repo_id=hub_repo_id,
        source=source,
        upstream=upstream,
        kernel_depends=kernel_depends,
        backend_kernel_depends=backend_kernel_depends,
    )


_LANGUAGE_BACKEND = {"cuda": "cuda", "cuda-hipify": "cuda", "metal": "metal"}


def _parse_kernel(kname: str, table, origin: str) -> KernelSection:
    reader = _Reader(table, f"[kernel.{kname}]", origin)
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", kname):
        raise reader.error("the kernel section name must be letters, digits, '_', '-' or '.'.")
    backend = reader.get("backend", str)
    language = reader.get("language", str)  # v1
    if backend is None:
        if language is None:
            raise reader.error("missing required key 'backend' (cuda, cpu, rocm, metal or xpu).")
        backend = _LANGUAGE_BACKEND.get(language)
        if backend is None:
            raise reader.error(f"unknown language {language!r}.")
    _backend(backend, reader, "backend")
    section = KernelSection(
        name=kname,
        backend=backend,
        src=reader.paths("src", required=True),
        depends=_depends(reader),
        include=reader.paths("include"),
        cxx_flags=reader.flags("cxx-flags"),
        cuda_flags=reader.flags("cuda-flags"),
        cuda_capabilities=reader.get("cuda-capabilities", list, ()),
        cuda_minver=reader.version("cuda-minver"),
        rocm_archs=reader.get("rocm-archs", list, ()),
        hip_flags=reader.flags("hip-flags"),
        sycl_flags=reader.flags("sycl-flags"),
    )
    for cap in section.cuda_capabilities:
        if not re.match(r"^\d+\.\d+[af]?(\+PTX)?$", cap):
            raise reader.error(f"cuda-capabilities entry {cap!r} is not like '8.0', '9.0a' or '8.0+PTX'.")
    reader.finish()
    return section
