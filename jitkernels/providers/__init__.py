"""Provider registry: names and aliases to provider objects.

A provider registers a factory and its aliases; nothing is imported until a
provider is first used, so ``import jitkernels`` stays cheap.
"""

from __future__ import annotations

import enum
import importlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from .base import Provider

from .. import config
from ..errors import UnknownProviderError

_BASE_NAMES = ("KernelRef", "Provider", "Snapshot")


def __getattr__(name: str):
    # The interfaces are imported lazily: the warm path only needs provider_name().
    if name in _BASE_NAMES:
        from . import base

        return getattr(base, name)
    raise AttributeError(name)


class KernelProvider(str, enum.Enum):
    """Known kernel providers. Strings (and aliases such as ``"hf"``) are accepted wherever this is."""

    HF_KERNELS = "hf_kernels"

    def __str__(self) -> str:  # "hf_kernels", not "KernelProvider.HF_KERNELS"
        return self.value


_FACTORIES: dict[str, Callable[[], Provider]] = {}
_ALIASES: dict[str, str] = {}
_INSTANCES: dict[str, Provider] = {}


def register_provider(name: str, factory: Callable[[], Provider], aliases: tuple[str, ...] = ()) -> None:
    """Register a provider under its canonical ``name`` and ``aliases`` (case-insensitive)."""
    _FACTORIES[name] = factory
    for alias in (name, *aliases):
        _ALIASES[alias.lower()] = name
    _INSTANCES.pop(name, None)


def _lazy(module: str, attr: str) -> Callable[[], Provider]:
    def factory() -> Provider:
        return getattr(importlib.import_module(module, __name__), attr)()

    return factory


register_provider(
    KernelProvider.HF_KERNELS.value,
    _lazy(".hf", "HfKernelsProvider"),
    aliases=(*(a for a, v in config.BUILTIN_PROVIDER_ALIASES.items() if v == "hf_kernels"),
             "KernelProvider.HF_KERNELS"),
)


def provider_name(provider: "str | KernelProvider") -> str:
    """Canonical provider name for an enum member, name or alias; a clear error otherwise."""
    if isinstance(provider, KernelProvider):
        return provider.value
    if isinstance(provider, str):
        canonical = _ALIASES.get(provider.strip().lower())
        if canonical:
            return canonical
    known = ", ".join(sorted(_ALIASES))
    raise UnknownProviderError(
        f"Unknown kernel provider {provider!r}. Known providers and aliases: {known}. "
        f"Use jitkernels.KernelProvider.HF_KERNELS or \"hf\"."
    )


def get_provider(provider: "str | KernelProvider"):
    name = provider_name(provider)
    instance = _INSTANCES.get(name)
    if instance is None:
        instance = _INSTANCES[name] = _FACTORIES[name]()
    return instance


def known_aliases() -> dict[str, str]:
    return dict(_ALIASES)


__all__ = [
    "KernelProvider",
    "KernelRef",
    "Provider",
    "Snapshot",
    "get_provider",
    "known_aliases",
    "provider_name",
    "register_provider",
]
