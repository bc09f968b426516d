"""From a snapshot's file list to an :class:`Inspection` and a :class:`SourcePlan` (what to fetch, from where).

Where the source comes from, in order:

1. a source tree (``build.toml`` at the root of the revision, the older Hub
   layout, or of a local folder);
2. for Python kernels, a noarch build payload ``build/torch-<backend>`` or
   ``build/torch-universal``;
3. for native kernels, the source a build variant's ``metadata.json`` names
   (``source`` git URL at ``provenance.kernel.commit``), fetched with git, and
   only for a trusted publisher (``snapshot.trust``): a URL an untrusted
   publisher chose is never contacted before trust is granted
   (``unsupported`` / ``untrusted-source``, naming the URL and how to grant trust);
4. else ``unsupported`` / ``missing-source``.

Only small files are fetched here (``build.toml``, one ``metadata.json``);
never a binary. Every option looked at is recorded in the inspection's
``considered``, the chosen one last. :func:`fetch_sources` then brings the
files the plan needs, once per load, and hashes them.
"""

from __future__ import annotations

import hashlib
import keyword
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import BuildConfigError
from ..providers.base import Snapshot
from . import strategy as st
from .buildconfig import TARGET_INCLUDES, BuildConfig, parse_build_toml
from .inspection import Inspection, Option
from .metadata import noarch_variant_backend, parse_metadata, variant_backend


@dataclass(frozen=True)
class SourcePlan:
    """Which files of which snapshot make the kernel, and where its Python package is."""

    snapshot: Snapshot
    root: str  # prefix inside the snapshot of the kernel tree or payload ("" = the root)
    patterns: tuple[str, ...]
    package: str  # the Python package folder, inside the snapshot
    config: BuildConfig | None
    kind: str  # "source-tree" | "noarch-payload" | "git"


@dataclass(frozen=True)
class Sources:
    """The files a plan needs, fetched: the snapshot root, the files (sorted, snapshot-relative), their digest."""

    root: Path
    files: tuple[str, ...]
    digest: str


def fetch_sources(plan: SourcePlan) -> Sources:
    """Fetch what the plan needs (once per load; every later step is handed the result) and hash it."""
    root = plan.snapshot.fetch(list(plan.patterns))
    files = tuple(
        f for f in plan.snapshot.match(list(plan.patterns))
        if "/__pycache__/" not in f and not f.endswith(".pyc") and (root / f).is_file()
    )
    return Sources(root, files, digest_files(root, files))


def _prefix(root: str, path: str) -> str:
    return f"{root}/{path}" if root else path


def _variants(files: frozenset[str], prefix: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in files:
        if prefix and not f.startswith(prefix):
            continue
        rest = f[len(prefix):].split("/")
        if len(rest) >= 2:
            found.setdefault(rest[0], []).append(f)
    return {v: fs for v, fs in found.items() if variant_backend(v) is not None}


def _base(snapshot: Snapshot, asked: str, backend: str):
    return dict(
        provider=snapshot.ref.provider,
        name=asked,
        repo_id=snapshot.ref.repo_id,
        revision=snapshot.commit,
        requested_revision=snapshot.requested,
        backend=backend,
        python_name=snapshot.ref.python_name,
    )


def plan(snapshot: Snapshot, asked: str, backend: str, toolchain: st.Toolchain, ignore_bounds: bool = False):
    """Decide the strategy for ``backend``; returns ``(Inspection, SourcePlan | None)``.

    The inspection's ``considered`` says which ways of loading were looked at, in order, and why
    each was taken or not.
    """
    considered: list[Option] = []
    inspection, source_plan = _plan(snapshot, asked, backend, toolchain, ignore_bounds, considered)
    return replace(inspection, considered=tuple(considered)), source_plan


def _plan(snapshot, asked, backend, toolchain, ignore_bounds, considered: list[Option]):
    base = _base(snapshot, asked, backend)
    files = snapshot.files
    local_kind = getattr(snapshot, "kind", None)

    # 1. a source tree
    root = _source_root(snapshot)
    if root is not None:
        return _plan_source_tree(snapshot, root, base, backend, toolchain, ignore_bounds,
                                 kind="git" if local_kind == "git" else "source-tree", considered=considered)
    considered.append(Option("source tree", False, f"no build.toml at the root of {snapshot.location}"))

    # 2./3. build variants: under build/, or (local folders) the folder is build/ itself
    variants = _variants(files, "build/") or (_variants(files, "") if snapshot.is_local else {})
    prefix = "build/" if any(f.startswith("build/") for f in files) else ""
    if snapshot.is_local and "metadata.json" in files and "__init__.py" in files:
        variants = {"": sorted(files)}  # the folder is one build variant
        prefix = ""
    if not variants:
        considered.append(Option("build variants", False, "no build/<variant>/ folders"))
        return _unsupported(base, st.MISSING_SOURCE,
                            f"{snapshot.location} has no build.toml and no build/ variants: nothing to load."), None

    noarch_order = [f"torch-{backend}", "torch-universal", ""]  # "": a local folder that is one variant
    for variant in noarch_order:
        label = f"Python payload {prefix}{variant}" if variant else "the folder as one Python build variant"
        if variant in variants and (variant or _is_python_only(variants[variant])):
            considered.append(Option(label, True, "Python only: imported as it is"))
            return _plan_payload(snapshot, prefix, variant, base, backend)
        if variant:
            considered.append(Option(label, False, "not in the repository"))

    arch = {v: fs for v, fs in variants.items() if noarch_variant_backend(v) is None}
    if not arch:
        have = ", ".join(sorted(v for v in variants if v)) or "none"
        return _unsupported(base, st.NO_BACKEND,
                            f"Only Python payloads for other backends ({have}); none for {backend}."), None
    considered.append(Option(f"prebuilt binaries ({', '.join(sorted(arch))})", False,
                             "JitKernels never loads a prebuilt binary; it looks for the source they were built from"))
    return _plan_from_metadata(snapshot, prefix, arch, base, backend, toolchain, ignore_bounds, considered)


def _is_python_only(files: list[str]) -> bool:
    return not any(re.search(r"\.(so|dylib|dll|pyd)$", f) for f in files)


def _source_root(snapshot: Snapshot) -> str | None:
    if "build.toml" in snapshot.files:
        return ""
    return None


def _unsupported(base: dict, reason: str, detail: str, **extra) -> Inspection:
    return Inspection(**base, strategy=st.UNSUPPORTED, reason=reason, detail=detail, **extra)


def _read_build_toml(snapshot: Snapshot, root: str) -> BuildConfig:
    path = _prefix(root, "build.toml")
    local = snapshot.fetch_one(path)
    try:
        data = local.read_bytes()
    except OSError as exc:
        raise BuildConfigError(f"{snapshot.location}: cannot read {path}: {exc}") from exc
    return parse_build_toml(data, origin=f"{snapshot.location}/{path}")


def _inputs(depends, python_depends, kernel_depends, backend):
    """How every declared input resolves, asked of the registry (:mod:`jitkernels.inputs`); nothing is fetched."""
    from .. import inputs

    build_inputs = depends if backend in st.BUILDABLE_BACKENDS else ()
    return inputs.describe_all(build_inputs, python_depends, kernel_depends, backend)


def _plan_source_tree(snapshot, root, base, backend, toolchain, ignore_bounds, kind, considered: list[Option]):
    from ..inputs.kernels import as_strings

    config = _read_build_toml(snapshot, root)
    decision = st.decide(config, backend, toolchain, ignore_bounds)
    where = "git source" if kind == "git" else "source tree"
    considered.append(Option(f"{where} ({decision.strategy})", decision.strategy != st.UNSUPPORTED,
                             f"{decision.reason + ': ' if decision.reason else ''}{decision.detail}"))
    base = dict(base, python_name=config.python_name)
    package = _prefix(root, f"torch-ext/{config.python_name}")
    kernel_depends = as_strings(config.kernel_depends_for(backend))
    python_depends = config.python_depends_for(backend)
    extra = dict(
        source=kind,
        source_location=f"{snapshot.location}" + (f" ({root})" if root else ""),
        dependencies=decision.dependencies,
        unsupported_dependencies=decision.unsupported_dependencies,
        python_depends=python_depends,
        kernels=decision.kernels,
        stable_abi=decision.stable_abi,
        edition=config.edition,
        kernel_depends=kernel_depends,
        cuda_compiler=decision.cuda_compiler,
        inputs=_inputs(decision.dependencies, python_depends, kernel_depends, backend),
    )
    inspection = Inspection(**base, strategy=decision.strategy, reason=decision.reason,
                            detail=decision.detail, **extra)
    if decision.strategy == st.UNSUPPORTED:
        return inspection, None
    if f"{package}/__init__.py" not in snapshot.files:
        raise BuildConfigError(
            f"{snapshot.location}: build.toml names kernel {config.name!r} but {package}/__init__.py "
            f"is missing; a kernel's Python package lives in torch-ext/<name with _>/."
        )
    patterns = [_prefix(root, "build.toml"), f"{package}/**"]
    if decision.strategy == st.NATIVE_JIT:
        patterns += _native_patterns(config, backend, root, decision.kernels)
        for folder in TARGET_INCLUDES:  # searched by every file, as kernel-builder does: fetched whole
            if any(f.startswith(_prefix(root, folder) + "/") for f in snapshot.files):
                patterns.append(_prefix(root, folder) + "/**")
        missing = _missing_inputs(snapshot, config, backend, root, decision.kernels)
        if missing:
            raise BuildConfigError(
                f"{snapshot.location}: build.toml lists files that are not in the kernel: "
                f"{', '.join(missing[:8])}. The source tree is incomplete."
            )
    source_plan = SourcePlan(snapshot, root, tuple(dict.fromkeys(patterns)), package, config, kind)
    return inspection, source_plan


def _native_inputs(config: BuildConfig, backend: str, kernels: tuple[str, ...]):
    sections = [k for k in config.kernels_for(backend) if k.name in kernels]
    srcs = list(config.torch.src if config.torch else ())
    includes = list(config.torch.include if config.torch else ())
    for k in sections:
        srcs += k.src
        includes += k.include
    return srcs, includes


def _native_patterns(config, backend, root, kernels) -> list[str]:
    """Sources, their folders (for headers they include but do not list) and include dirs."""
    srcs, includes = _native_inputs(config, backend, kernels)
    patterns = []
    for src in srcs:
        patterns.append(_prefix(root, src))
        folder = src.rsplit("/", 1)[0] if "/" in src else ""
        if folder:
            patterns.append(_prefix(root, folder) + "/**")
    for inc in includes:
        if inc not in (".", ""):
            patterns.append(_prefix(root, inc) + "/**")
    return patterns


def _missing_inputs(snapshot, config, backend, root, kernels) -> list[str]:
    srcs, includes = _native_inputs(config, backend, kernels)
    missing = [s for s in srcs if _prefix(root, s) not in snapshot.files]
    for inc in includes:
        if inc in (".", ""):
            continue
        prefix = _prefix(root, inc) + "/"
        if not any(f.startswith(prefix) for f in snapshot.files):
            missing.append(inc + "/")
    return missing


def _plan_payload(snapshot, prefix, variant, base, backend):
    vroot = f"{prefix}{variant}".rstrip("/")
    files = snapshot.files
    init_here = f"{vroot}/__init__.py" if vroot else "__init__.py"
    python_name = base["python_name"]
    if init_here in files:
        package = vroot
    else:
        candidates = sorted(
            f.split("/")[-2] for f in files
            if f.startswith(f"{vroot}/" if vroot else "") and f.endswith("/__init__.py")
            and f.count("/") == (vroot.count("/") + 2 if vroot else 1)
        )
        name = python_name if python_name in candidates else (candidates[0] if candidates else None)
        if name is None:
            raise BuildConfigError(f"{snapshot.location}: build variant {vroot} has no Python package (__init__.py).")
        if not name.isidentifier() or keyword.iskeyword(name):
            raise BuildConfigError(
                f"{snapshot.location}: the Python package {vroot + '/' if vroot else ''}{name} of this build variant "
                f"is not a valid package name (letters, digits and '_', not starting with a digit)."
            )
        python_name = name
        package = f"{vroot}/{name}" if vroot else name
    python_depends, kernel_depends = _payload_depends(snapshot, vroot)
    strategy, reason, detail = st.PYTHON, None, f"Python payload {vroot or snapshot.location} (no compiled code)."
    from .. import inputs
    from ..inputs.kernels import as_strings

    unknown = inputs.unsupported(python_depends, backend, inputs.PYTHON_DEPENDS)
    if unknown:
        strategy, reason = st.UNSUPPORTED, st.UNSUPPORTED_DEPENDENCY
        detail = (f"Its metadata.json declares python-depends that upstream's dependency table does not know "
                  f"for {backend}: {', '.join(unknown)}.")
    kernel_depends = as_strings(kernel_depends)
    inspection = Inspection(
        **dict(base, python_name=python_name),
        strategy=strategy, reason=reason, detail=detail,
        source="noarch-payload", source_location=f"{snapshot.location}/{vroot}" if vroot else snapshot.location,
        python_depends=python_depends, unsupported_dependencies=unknown, kernel_depends=kernel_depends,
        inputs=_inputs((), python_depends, kernel_depends, backend),
    )
    if strategy == st.UNSUPPORTED:
        return inspection, None
    patterns = (f"{vroot}/**",) if vroot else ("**",)
    return inspection, SourcePlan(snapshot, vroot, patterns, package, None, "noarch-payload")


def _payload_depends(snapshot, vroot: str) -> tuple[tuple[str, ...], tuple]:
    """``python-depends`` and ``kernel-depends`` of a payload's ``metadata.json`` (a small file), if it has one."""
    path = f"{vroot}/metadata.json" if vroot else "metadata.json"
    if path not in snapshot.files:
        return (), ()
    meta = parse_metadata(snapshot.fetch_one(path).read_bytes(), origin=f"{snapshot.location}/{path}")
    return meta.python_depends, meta.kernel_depends


def _plan_from_metadata(snapshot, prefix, arch, base, backend, toolchain, ignore_bounds, considered: list[Option]):
    from ..providers.git import fetch_git_commit

    ours = sorted(v for v in arch if variant_backend(v) == backend)
    ordered = ours + sorted(v for v in arch if v not in ours)
    meta = None
    meta_variant = None
    for variant in ordered:
        path = f"{prefix}{variant}/metadata.json" if variant else "metadata.json"
        if path in snapshot.files:
            meta_variant = variant
            meta = parse_metadata(snapshot.fetch_one(path).read_bytes(), origin=f"{snapshot.location}/{path}")
            break
    have = ", ".join(sorted(arch))
    if meta is None or not meta.source or not meta.source_commit:
        what = "no metadata.json" if meta is None else (
            "no 'source' git URL" if not meta.source else "no provenance.kernel commit")
        considered.append(Option("the source named by metadata.json", False, what))
        return _unsupported(
            base, st.MISSING_SOURCE,
            f"Binary-only kernel (build variants: {have}) and {what} in "
            f"{'its variants' if meta is None else meta_variant + '/metadata.json'}, so JitKernels cannot find "
            f"the source to compile. It never loads a prebuilt binary; ask the publisher to add 'source' and "
            f"provenance to metadata.json, or point LOCAL_KERNELS at a source tree.",
        ), None
    if snapshot.trust is None:  # the publisher chose this URL: no request to it before trust is granted
        org = snapshot.ref.repo_id.split("/", 1)[0]
        considered.append(Option(f"git source {meta.source}@{meta.source_commit[:12]}", False,
                                 "not fetched: the publisher is not trusted"))
        return _unsupported(
            base, st.UNTRUSTED_SOURCE,
            f"Binary-only kernel (build variants: {have}); its {meta_variant}/metadata.json names the source "
            f"{meta.source} at {meta.source_commit[:12]}, a URL its publisher chose, and {snapshot.ref.repo_id} is "
            f"not from a trusted publisher, so JitKernels does not fetch it. If you trust it, pass "
            f"trust_remote_code=True (or trust_remote_code=[{snapshot.ref.repo_id!r}]; `--trust-remote-code` on "
            f"the command line), or add {org!r} to JITKERNELS_TRUSTED.",
            source="git", source_location=f"{meta.source}@{meta.source_commit}",
        ), None
    git_snapshot = fetch_git_commit(snapshot.ref, meta.source, meta.source_commit)
    root = _find_kernel_root(git_snapshot, snapshot.ref.short_name, meta.name)
    if root is None:
        considered.append(Option(f"git source {meta.source}@{meta.source_commit[:12]}", False,
                                 f"no build.toml for kernel {meta.name or snapshot.ref.short_name}"))
        return _unsupported(
            base, st.MISSING_SOURCE,
            f"The source named by metadata.json ({meta.source} at {meta.source_commit[:12]}) has no build.toml "
            f"for kernel {meta.name or snapshot.ref.short_name}.",
        ), None
    inspection, source_plan = _plan_source_tree(git_snapshot, root, base, backend, toolchain, ignore_bounds,
                                                kind="git", considered=considered)
    inspection = replace(
        inspection,
        revision=snapshot.commit,
        source_location=f"{meta.source}@{meta.source_commit}" + (f" ({root})" if root else ""),
    )
    return inspection, source_plan


def _find_kernel_root(snapshot: Snapshot, short_name: str, meta_name: str | None) -> str | None:
    if "build.toml" in snapshot.files:
        return ""
    candidates = sorted(f[: -len("/build.toml")] for f in snapshot.files if f.endswith("/build.toml") and f.count("/") == 1)
    for wanted in (meta_name, short_name):
        if wanted and wanted in candidates:
            return wanted
    return None


def digest_files(root: Path, files: list[str]) -> str:
    """sha256 over sorted (path, sha256(content)): the identity of a kernel's inputs."""
    outer = hashlib.sha256()
    for rel in sorted(files):
        inner = hashlib.sha256()
        with open(root / rel, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(rel.encode() + b"\0" + inner.digest())
    return outer.hexdigest()
