"""Parse a build variant's ``metadata.json`` and variant folder names (``build/<variant>/``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .buildconfig import check_kernel_dependency
from ..errors import BuildConfigError

_OID_RE = re.compile(r"^[0-9a-fA-F]{40}$|^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class VariantMetadata:
    id: str | None
    name: str | None
    source: str | None
    #: The commit of the kernel sources this variant was built from (``provenance.kernel.commit`` or ``sha``).
    source_commit: str | None
    backend: str | None
    python_depends: tuple[str, ...]
    #: ``kernel-depends``: validated ``{repo-id, version | revision}`` tables.
    kernel_depends: tuple = ()


def parse_metadata(text: str | bytes, origin: str = "metadata.json") -> VariantMetadata:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise BuildConfigError(f"{origin}: invalid JSON ({what}).") from exc
    if not isinstance(data, dict):
        raise BuildConfigError(f"{origin}: must be a JSON object.")
    provenance = data.get("provenance") or {}
    kernel = provenance.get("kernel") if isinstance(provenance, dict) else None
    commit = None
    if isinstance(kernel, dict):
        commit = kernel.get("commit") or kernel.get("sha")
        if commit is not None and (not isinstance(commit, str) or not _OID_RE.match(commit)):
            raise BuildConfigError(f"{origin}: provenance.kernel.commit {commit!r} is not a full git commit hash.")
    backend = data.get("backend")
    source = data.get("source")
    if source is not None and not isinstance(source, str):
        raise BuildConfigError(f"{origin}: 'source' must be a git URL string.")
    deps = data.get("python-depends") or []
    kernel_deps = data.get("kernel-depends") or []
    if not isinstance(kernel_deps, list):
        raise BuildConfigError(f"{origin}: 'kernel-depends' must be a list of {{repo-id, version | revision}} objects.")
    kernel_deps = tuple(check_kernel_dependency(item, origin) for item in kernel_deps)
    return VariantMetadata(
        id=data.get("id") if isinstance(data.get("id"), str) else None,
        name=data.get("name") if isinstance(data.get("name"), str) else None,
        source=source,
        source_commit=commit.lower() if commit else None,
        backend=backend.get("type") if isinstance(backend, dict) else None,
        python_depends=tuple(d for d in deps if isinstance(d, str)),
        kernel_depends=kernel_deps,
    )


NOARCH_UNIVERSAL = "torch-universal"
_NOARCH_RE = re.compile(r"^torch-(cpu|cuda|rocm|metal|xpu|npu|cann|neuron|tpu)$")


def noarch_variant_backend(variant: str) -> str | None:
    """``torch-cuda`` -> ``cuda``; ``torch-universal`` -> ``universal``; arch variants -> None."""
    if variant == NOARCH_UNIVERSAL:
        return "universal"
    match = _NOARCH_RE.match(variant)
    return match.group(1) if match else None


def variant_backend(variant: str) -> str | None:
    """The backend an arch variant was built for (``torch211-cxx11-cu130-x86_64-linux`` -> ``cuda``)."""
    noarch = noarch_variant_backend(variant)
    if noarch:
        return noarch
    for part in variant.split("-"):
        if re.match(r"^cu\d+$", part):
            return "cuda"
        if re.match(r"^rocm\d+$", part):
            return "rocm"
        if re.match(r"^xpu\d+$", part):
            return "xpu"
        if part in ("cpu", "metal", "npu", "tpu", "neuron"):
            return part
    return None
