"""Where JitKernels meets upstream ``kernels``: its loader functions, found and swapped by identity.

Why identity and not a list of module paths: upstream moves its modules
(0.19 put everything under ``kernels._internals``), and other packages bind
its functions by name at import time (``transformers.integrations.hub_kernels``
does ``from kernels import get_kernel as get_kernel_hub``). What does not change
is the call pattern: ``kernelize``, the ``*Repository.load`` methods and
transformers look the loader up as a *module global at call time*. So every
module attribute anywhere in ``sys.modules`` that **is** one of upstream's
loader objects is swapped, and :class:`Swap` puts exactly those objects back.

The loaders are found from the public top level, which kernels 0.17 to 0.19
keep stable (``kernels.get_kernel``...); the two internal ones are found next
to a public object (the module that defines ``get_kernel``, the module that
defines ``LayerRepository``), never by a path.

What an identity swap cannot reach, and nothing in kernels 0.17.2-0.19.1 or
transformers 5.22-5.25 does: a loader captured before the swap in a closure,
a default argument, a ``functools.partial`` or a container.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable, Iterator

#: Public loaders of ``kernels`` (the same top-level names in 0.17.2, 0.18.3 and 0.19.1).
PUBLIC_LOADERS = ("get_kernel", "has_kernel", "get_local_kernel", "load_kernel", "get_locked_kernel",
                  "install_kernel", "get_loaded_kernels", "get_kernel_dep")

#: The ``kernels`` releases the tests run on (CI: one venv each), and the range pyproject's
#: ``jitkernels[kernels]`` extra declares. Outside it patch() still patches, and says so once.
TESTED_KERNELS = ("0.17.2", "0.18.3", "0.19.1")
TESTED_RANGE = ">=0.17.2,<0.20"
_LOWEST, _ABOVE = (0, 17, 2), (0, 20)


def kernels_version(kernels_module) -> str:
    return str(getattr(kernels_module, "__version__", "") or "unknown")


def _release(version: str) -> tuple[int, ...] | None:
    parts = []
    for piece in version.split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:  # 0.20.0rc1, 0.19.1.dev0: the release part is enough here
            break
    return tuple(parts) or None


def in_tested_range(version: str) -> bool:
    release = _release(version)
    return release is not None and _LOWEST <= release < _ABOVE


def targets(kernels_module) -> dict[str, Callable]:
    """Name -> upstream's function object to redirect, for the ``kernels`` module given."""
    found = {}
    for name in PUBLIC_LOADERS:
        obj = kernels_module.__dict__.get(name)
        if callable(obj):
            found[name] = obj
    # Locked{Layer,Func}Repository.load call it; defined next to get_kernel.
    load_module = sys.modules.get(getattr(found.get("get_kernel"), "__module__", "") or "")
    resolver_loader = getattr(load_module, "__dict__", {}).get("get_kernel_with_resolver")
    if callable(resolver_loader):
        found["get_kernel_with_resolver"] = resolver_loader
    # kernels 0.17 only: {Layer,Func}Repository._resolve_revision asks the Hub through it.
    layer_module = sys.modules.get(getattr(kernels_module.__dict__.get("LayerRepository"), "__module__", "") or "")
    select = getattr(layer_module, "__dict__", {}).get("select_revision_or_version")
    if callable(select):
        found["select_revision_or_version"] = select
    return found


def _module_dicts() -> Iterator[tuple[str, types.ModuleType, dict]]:
    """(name, module, its ``__dict__``) of every loaded module but ours, from a snapshot.

    The ``__dict__`` is read without ``getattr`` on the module, so a lazy module
    (transformers' ``_LazyModule``) imports nothing; ``None`` entries and non-modules are skipped.
    JitKernels' own modules are skipped: whatever they hold is not a call site.
    """
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or name == "jitkernels" or name.startswith("jitkernels."):
            continue
        try:
            namespace = object.__getattribute__(module, "__dict__")
        except Exception:  # pragma: no cover - an exotic module object
            continue
        if isinstance(namespace, dict):
            yield name, module, namespace


def bindings(objects: Iterable[object]) -> list[tuple[types.ModuleType, str, object]]:
    """Every ``(module, attribute, object)`` where a loaded module's attribute *is* one of ``objects``."""
    by_id = {id(o): o for o in objects}
    hits = []
    for _name, module, namespace in _module_dicts():
        for attr, value in list(namespace.items()):
            obj = by_id.get(id(value))
            if obj is not None and value is obj:  # `is`, never `==`: a wrapt proxy equals what it wraps
                hits.append((module, attr, obj))
    return hits


class Swap:
    """Module attributes that were one object and now hold another, to put back exactly."""

    def __init__(self) -> None:
        #: (module, attribute, original, replacement)
        self.records: list[tuple[types.ModuleType, str, object, object]] = []

    def apply(self, replacements: dict[int, tuple[object, object]]) -> int:
        """Swap every attribute that is an original (``id(original) -> (original, replacement)``)."""
        count = 0
        for module, attr, original in bindings(pair[0] for pair in replacements.values()):
            replacement = replacements[id(original)][1]
            setattr(module, attr, replacement)
            self.records.append((module, attr, original, replacement))
            count += 1
        return count

    def restore(self, replacements: dict[int, tuple[object, object]]) -> list[str]:
        """Put the originals back; returns what someone else rebound meanwhile (left as it is).

        Modules imported while swapped bound a replacement by name (``from kernels import
        get_kernel``); they are found by a new scan and get the original too.
        """
        rebound = []
        for module, attr, original, replacement in self.records:
            if module.__dict__.get(attr) is replacement:
                setattr(module, attr, original)
            else:
                rebound.append(f"{module.__name__}.{attr}")
        self.records.clear()
        back = {id(pair[1]): pair[0] for pair in replacements.values()}
        for module, attr, replacement in bindings(pair[1] for pair in replacements.values()):
            setattr(module, attr, back[id(replacement)])
        return rebound


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _functions(namespace: dict) -> Iterator[tuple[str, types.FunctionType]]:
    """Functions and methods reachable from a module namespace (wherever they were defined)."""
    for attr, value in list(namespace.items()):
        if isinstance(value, types.FunctionType):
            yield attr, value
        elif isinstance(value, type):
            for key, member in list(vars(value).items()):
                member = getattr(member, "__func__", member)
                member = member.fget if isinstance(member, property) else member
                member = getattr(member, "__wrapped__", member)  # lru_cache (0.17's _resolve_revision)
                if isinstance(member, types.FunctionType):
                    yield f"{attr}.{key}", member


def unreached(originals: Iterable[object], modules: Iterable[str] = ()) -> list[str]:
    """Call sites that would still reach an original: the static self-check, nothing is called.

    Every function and method reachable from ``kernels*`` (and from ``modules``) is read:
    a global name its code (nested code included) looks up must not resolve to an
    original, and no closure cell or default argument may hold one (a swap cannot reach
    those). Empty after a swap means every call of a loader from there reaches a replacement.
    """
    ids = {id(o) for o in originals}
    extra = set(modules)
    found, seen = set(), set()
    for name, _module, namespace in _module_dicts():
        if not (name == "kernels" or name.startswith("kernels.") or name in extra):
            continue
        for qualname, function in _functions(namespace):
            if id(function) in seen:
                continue
            seen.add(id(function))
            where = f"{function.__module__}.{function.__qualname__}"
            for global_name in _code_names(function.__code__):
                if id(function.__globals__.get(global_name)) in ids:
                    found.add(f"{where} -> {global_name}")
            cells = [c.cell_contents for c in function.__closure__ or () if _filled(c)]
            defaults = [*(function.__defaults__ or ()), *(function.__kwdefaults__ or {}).values()]
            if any(id(v) in ids for v in cells):
                found.add(f"{where} (a closure holds a loader)")
            if any(id(v) in ids for v in defaults):
                found.add(f"{where} (a default argument holds a loader)")
    return sorted(found)


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def forget_caches(kernels_module) -> None:
    """Layers kernelize memoised (and versions 0.17 resolved) must not outlive a switch of loader.

    ``_CACHED_LAYER`` (layer class per repository) lives in the module that defines
    ``LayerRepository``; kernels 0.17's ``{Layer,Func}Repository._resolve_revision`` is an ``lru_cache``.
    """
    for class_name in ("LayerRepository", "FuncRepository"):
        cls = kernels_module.__dict__.get(class_name)
        if cls is None:
            continue
        cached = getattr(sys.modules.get(cls.__module__), "_CACHED_LAYER", None)
        if isinstance(cached, dict):
            cached.clear()
        clear = getattr(cls.__dict__.get("_resolve_revision"), "cache_clear", None)
        if clear is not None:
            clear()


def defining_module(function) -> types.ModuleType | None:
    """The module an upstream function was defined in (for its private state, e.g. ``_KERNEL_DEPS``)."""
    function = getattr(function, "__wrapped__", function)
    return sys.modules.get(getattr(function, "__module__", "") or "")
