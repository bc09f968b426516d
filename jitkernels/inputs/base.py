"""What every build input is (:class:`ResolvedInput`) and what a resolver of one kind does (:class:`Resolver`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: Where an input is declared.
DEPENDS = "depends"
PYTHON_DEPENDS = "python-depends"
KERNEL_DEPENDS = "kernel-depends"


@dataclass(frozen=True)
class ResolvedInput:
    """One input and how it is (or will be) resolved; ``to_dict()`` is what ``inspect --json`` shows."""

    name: str  # as declared: "cutlass_3_8", "torch", "einops", "org/kernel"
    kind: str  # the resolver's kind: "torch", "cutlass", "python-depends", "kernel-depends"
    version: str | None = None
    #: Where it comes from: "installed", "dir-override", "wheel", "cache", "download", "LOCAL_KERNELS", a provider.
    origin: str | None = None
    #: "ready", "cached", "to-download", "missing", "load-first".
    status: str = "ready"
    digest: str | None = None
    location: str | None = None
    detail: str = ""
    include_dirs: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("include_dirs")
        return data


class Resolver:
    """A kind of input. Subclasses set ``kind`` and ``declared_in`` and implement the three methods."""

    kind: str = ""
    declared_in: str = DEPENDS

    def handles(self, name, backend: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self, name, backend: str) -> ResolvedInput:  # pragma: no cover - interface
        """How ``name`` would be resolved; never downloads, builds or imports the input."""
        raise NotImplementedError

    def resolve(self, name, backend: str, fetch: bool = True) -> ResolvedInput:
        """Resolve for a build (``fetch``: download what is missing). Default: :meth:`describe`."""
        return self.describe(name, backend)
