"""What JitKernels plans to do with one kernel for one backend: the :class:`Inspection`, and why.

``jitkernels inspect`` prints it (``--json``: :meth:`Inspection.to_dict`);
errors about a kernel that cannot be loaded carry it. ``considered`` lists
every way of loading the kernel the planner looked at, the one it took and
the ones it rejected, each with its reason (as upstream's variant resolver
traces accepted and rejected variants).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .strategy import UNSUPPORTED


@dataclass(frozen=True)
class Option:
    """One way of loading a kernel the planner considered: ``chosen`` or rejected, and why."""

    option: str  # "source tree", "payload build/torch-cuda", "git source (metadata.json)", "native-jit"...
    chosen: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{'chosen' if self.chosen else 'rejected'}: {self.option}: {self.reason}"


@dataclass(frozen=True)
class Inspection:
    """What JitKernels plans to do with one kernel for one backend. ``to_json()`` is the CLI's ``--json``."""

    provider: str
    name: str
    repo_id: str
    revision: str | None
    requested_revision: str | None
    backend: str
    strategy: str
    reason: str | None
    detail: str
    source: str | None = None
    source_location: str | None = None
    python_name: str | None = None
    module_name: str | None = None
    expected_extension_name: str | None = None
    dependencies: tuple[str, ...] = ()
    unsupported_dependencies: tuple[str, ...] = ()
    python_depends: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    stable_abi: str | None = None
    edition: int | None = None
    digest: str | None = None
    #: ``org/name@v1`` / ``org/name@<revision>``: kernels loaded first (kernel-depends).
    kernel_depends: tuple[str, ...] = ()
    #: CUDA kernels: the nvcc that builds it and where it comes from (a local toolkit, the package index).
    cuda_compiler: str | None = None
    #: Every input and how it resolves (:class:`jitkernels.inputs.ResolvedInput`), for ``inspect``.
    inputs: tuple = field(default=(), compare=False)
    #: Every way of loading the kernel that was looked at (:class:`Option`), the chosen one last.
    considered: tuple = field(default=(), compare=False)

    @property
    def supported(self) -> bool:
        return self.strategy != UNSUPPORTED

    def to_dict(self) -> dict:
        data = asdict(self)
        data["inputs"] = [i.to_dict() if hasattr(i, "to_dict") else dict(i) for i in self.inputs]
        data["considered"] = [o.to_dict() if hasattr(o, "to_dict") else dict(o) for o in self.considered]
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
