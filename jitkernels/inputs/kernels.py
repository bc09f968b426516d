"""``kernel-depends``: other kernels a kernel needs, loaded (or built) first through the same pipeline.

Declared in ``build.toml`` (``[general] kernel-depends`` and per backend,
``[general.cuda] kernel-depends``) and in a build variant's ``metadata.json``,
as upstream's ``kernels-data`` schema has them:
``{ repo-id = "org/name", version = N }`` or ``{ repo-id = "org/name", revision = "..." }``.
``version = N`` pins the branch ``vN`` (as ``load(version=N)``). The pipeline
loads them first (:func:`jitkernels.pipeline.load_dependencies`); a dependency
that cannot be found names the kernel that needs it; a cycle names the chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import KERNEL_DEPENDS, ResolvedInput, Resolver


@dataclass(frozen=True)
class KernelDependency:
    repo_id: str
    version: int | None = None
    revision: str | None = None

    @classmethod
    def from_entry(cls, entry: dict) -> "KernelDependency":
        """From a validated ``{repo-id, version | revision}`` table (see :func:`jitkernels.plan.buildconfig.check_kernel_dependency`)."""
        return cls(entry["repo-id"], entry.get("version"), entry.get("revision"))

    @classmethod
    def parse(cls, text: str) -> "KernelDependency":
        repo_id, _, pin = text.rpartition("@")
        if pin.startswith("v") and pin[1:].isdigit():
            return cls(repo_id, version=int(pin[1:]))
        return cls(repo_id, revision=pin)

    @property
    def pin(self) -> str:
        return f"v{self.version}" if self.version is not None else str(self.revision)

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.pin}"


def as_strings(entries) -> tuple[str, ...]:
    """``({"repo-id": "org/x", "version": 1},)`` -> ``("org/x@v1",)``: how inspections carry them."""
    return tuple(str(KernelDependency.from_entry(e)) for e in entries)


class KernelDependsResolver(Resolver):
    kind = "kernel-depends"
    declared_in = KERNEL_DEPENDS

    def handles(self, name, backend: str) -> bool:
        return isinstance(name, str) and "/" in name and "@" in name

    def describe(self, name, backend: str) -> ResolvedInput:
        from ..providers.base import KernelRef
        from ..providers.local import local_override

        dep = KernelDependency.parse(name)
        local = local_override(KernelRef("hf_kernels", dep.repo_id))
        if local is not None:
            return ResolvedInput(dep.repo_id, self.kind, dep.pin, "LOCAL_KERNELS", "load-first", location=str(local.path),
                                 detail="loaded (or built) before this kernel")
        return ResolvedInput(dep.repo_id, self.kind, dep.pin, "hub", "load-first", location=dep.repo_id,
                             detail="resolved, loaded (or built) before this kernel")


RESOLVER = KernelDependsResolver()
