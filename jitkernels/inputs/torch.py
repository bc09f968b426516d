"""``torch``: the installed PyTorch, whose headers and libraries every native kernel builds against.

Its version (and CUDA version, C++ ABI) is already part of the build key
(:func:`jitkernels.build.native.spec.toolchain_facts`); its include and library
folders come from ``torch.utils.cpp_extension`` when the build runs.
"""

from __future__ import annotations

import importlib.util
import os

from .base import ResolvedInput, Resolver


class TorchResolver(Resolver):
    kind = "torch"
    names_hint = "torch"

    def handles(self, name, backend: str) -> bool:
        return name == "torch"

    def describe(self, name, backend: str) -> ResolvedInput:
        from .. import machine

        spec = importlib.util.find_spec("torch")
        location = os.path.dirname(spec.origin) if spec is not None and spec.origin else None
        return ResolvedInput(name, self.kind, version=machine.torch_version(), origin="installed",
                             status="ready", location=location)


RESOLVER = TorchResolver()
