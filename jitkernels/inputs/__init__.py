"""What a kernel needs besides its own sources, resolved by one small resolver per kind, registered by name.

A ``build.toml`` declares three sorts of inputs:

- ``[kernel.*] depends = ["torch", "cutlass_3_8"]``: build inputs (headers,
  libraries), resolved by the resolver whose kind handles the name
  (:mod:`.torch`, :mod:`.cutlass`); a name no resolver handles makes the kernel
  ``unsupported`` / ``unsupported-dependency``, naming it;
- ``python-depends`` (general and per backend): Python packages that must be
  importable (:mod:`.python_deps`, upstream's table; never installed);
- ``kernel-depends`` (build.toml and metadata.json): other kernels, loaded
  first through the same pipeline (:mod:`.kernels`).

``describe`` never downloads or builds (``jitkernels inspect`` shows its
result); ``resolve`` fetches what is missing (CUTLASS archives) for a build.
A new kind is one module with a :class:`Resolver` and one :func:`register` call.
"""

from __future__ import annotations

from .base import DEPENDS, KERNEL_DEPENDS, PYTHON_DEPENDS, ResolvedInput, Resolver

__all__ = ["DEPENDS", "KERNEL_DEPENDS", "PYTHON_DEPENDS", "ResolvedInput", "Resolver", "register", "resolvers",
           "resolver_for", "unsupported", "supported_names", "describe_build_inputs", "resolve_build_inputs",
           "describe_all"]


_RESOLVERS: dict[str, Resolver] = {}


def register(resolver: Resolver) -> Resolver:
    """Register (or replace) the resolver of ``resolver.kind``."""
    _RESOLVERS[resolver.kind] = resolver
    return resolver


def resolvers() -> dict[str, Resolver]:
    return dict(_RESOLVERS)


def resolver_for(name, backend: str, declared_in: str = DEPENDS) -> Resolver | None:
    """The resolver that handles ``name`` declared in ``declared_in``, or None (an unsupported dependency)."""
    for resolver in _RESOLVERS.values():
        if resolver.declared_in == declared_in and resolver.handles(name, backend):
            return resolver
    return None


def unsupported(names, backend: str, declared_in: str = DEPENDS) -> tuple:
    """The names no registered resolver handles (sorted, without duplicates)."""
    return tuple(sorted({n for n in names if resolver_for(n, backend, declared_in) is None}))


def supported_names(backend: str) -> str:
    """A short list of what the build-input resolvers handle, for error messages."""
    return ", ".join(getattr(r, "names_hint", r.kind) for r in _RESOLVERS.values() if r.declared_in == DEPENDS)


def _each(names, backend: str, declared_in: str, fetch: bool | None) -> tuple[ResolvedInput, ...]:
    out = []
    for name in names:
        resolver = resolver_for(name, backend, declared_in)
        if resolver is None:
            out.append(ResolvedInput(str(name), "unknown", status="unsupported",
                                     detail=f"no resolver handles {declared_in} {name!r}"))
        elif fetch is None:
            out.append(resolver.describe(name, backend))
        else:
            out.append(resolver.resolve(name, backend, fetch=fetch))
    return tuple(out)


def describe_build_inputs(names, backend: str) -> tuple[ResolvedInput, ...]:
    return _each(names, backend, DEPENDS, None)


def resolve_build_inputs(names, backend: str, fetch: bool = True) -> tuple[ResolvedInput, ...]:
    """Resolve every build input for a compile; raises the resolver's error for one that cannot be had."""
    return _each(names, backend, DEPENDS, fetch)


def describe_all(depends, python_depends, kernel_depends, backend: str) -> tuple[ResolvedInput, ...]:
    """Every input of a kernel for ``inspect``: build inputs, Python packages, kernels."""
    return (
        _each(depends, backend, DEPENDS, None)
        + _each(python_depends, backend, PYTHON_DEPENDS, None)
        + _each(kernel_depends, backend, KERNEL_DEPENDS, None)
    )


def _register_builtins() -> None:
    from . import cutlass, kernels, python_deps, torch

    for module in (torch, cutlass, python_deps, kernels):
        register(module.RESOLVER)


_register_builtins()
