"""kernelize's side of the background cold start: a layer whose kernel is building keeps its forward, then switches.

How upstream ``kernelize`` attaches a kernel to a layer (kernels 0.17.2 ``kernels/layer/layer.py``,
0.19.1 ``kernels/_internals/layer/layer.py``: the module of ``kernels.LayerRepository``)::

    kernelize(model) -> kernelize_layer(module) for each layer with a kernel_layer_name
                                            (and each Func that use_kernelized_func attached)
        layer = _get_layer_memoize(repo, type(module))
                    # _CACHED_LAYER, else repo.load() -> get_kernel(...) (patched: JitKernels)
                    # -> kernel.layers.<name> (a Func class for a function), then _validate_layer
        _conditionally_replace_forward(module=module, layer=layer, mode=..., [repo=...,] use_fallback=...)
                    # -> module.forward = MethodType(layer.forward, module)     the kernel
                    # -> _replace_forward(module, type(module))                 a mode it cannot do:
                    #                                                            the original forward

A layer's *original forward* is its class's own ``forward``; for a function made a
layer by ``use_kernel_forward_from_hub`` / ``use_kernel_func_from_hub`` it is the
``Func`` class's forward, which calls the function. Upstream's own fallbacks attach
exactly that (``_replace_forward(module, type(module))``).

While patched with ``cold_start="background"`` (:mod:`jitkernels.coldstart`),
:func:`install` wraps those two module globals, which ``kernelize_layer`` looks up at
each call:

* ``_get_layer_memoize`` runs upstream's inside
  :func:`~jitkernels.cache.entries.deferring`. A native kernel in neither the local nor
  the remote cache starts its background build and returns a *pending* class (one per
  repository and layer class) instead of waiting.
* ``_conditionally_replace_forward`` given a pending class attaches upstream's fallback
  (the original forward) and remembers the layer with kernelize's arguments.
* When the build is published, the watcher thread calls upstream's
  ``_get_layer_memoize`` (import, validation, memo) and, for each remembered layer,
  upstream's ``_conditionally_replace_forward`` with kernelize's arguments: the layers
  end exactly as a blocking kernelize leaves them. The switch is one assignment of
  ``module.forward``, which ``nn.Module.__call__`` reads once per call: a call in flight
  finishes on the original forward, the next call (from any thread) runs the kernel.
  Under ``torch.compile``, dynamo guards on the layer's ``forward``: the first call after
  the switch recompiles once and runs the kernel (tests/test_coldstart.py measures it).
  A layer the kernel cannot replace (validation, mode) keeps its original forward, said once.
* A failed build: the layers keep their original forward (:mod:`jitkernels.coldstart`
  says so once, with the builder's log).

:func:`uninstall` (``unpatch()``) puts the two functions back; layers still pending
then keep their original forward.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import warnings
import weakref

from .. import coldstart, config
from ..cache.entries import BuildDeferred, deferring
from ..errors import JitKernelsError, PatchError
from ..log import warning_once

#: The module globals of kernelize's layer module that are wrapped.
HOOKS = ("_get_layer_memoize", "_conditionally_replace_forward")

_LOCK = threading.RLock()
#: hook name -> (module, upstream's function, our wrapper)
_INSTALLED: dict[str, tuple] = {}
#: (cache root, repository, layer class) -> _Pending
_PENDING: dict[tuple, "_Pending"] = {}
#: pending class -> _Pending
_BY_CLASS: dict[type, "_Pending"] = {}


#: The mode patch() asked for (jitkernels.upstream.patching calls configure/apply/reset under its lock).
_MODE = coldstart.BLOCK


def check(cold_start) -> str:
    """``patch(cold_start=...)``: ``background`` or ``block`` (None: ``JITKERNELS_COLD_START``); else PatchError."""
    try:
        return coldstart.mode(cold_start)
    except JitKernelsError as exc:
        raise PatchError(f"jitkernels.patch(): {exc}") from None


def configure(mode: str) -> None:
    """Remember the mode of the active patch; :func:`apply` acts on it once ``kernels`` is imported."""
    global _MODE
    _MODE = mode


def configured() -> str:
    """The mode :func:`configure` was last given (a nested ``patch()`` puts the outer one's back)."""
    return _MODE


def apply() -> None:
    """kernelize's hooks installed or removed, as the configured mode says (``kernels`` is imported)."""
    if _MODE == coldstart.BACKGROUND:
        install()
    else:
        uninstall()


def reset() -> None:
    """``unpatch()``: back to blocking, upstream's functions back."""
    configure(coldstart.BLOCK)
    uninstall()


def layer_module():
    """The upstream module that defines ``LayerRepository`` and ``kernelize_layer`` (any kernels version), or None."""
    kernels = sys.modules.get("kernels")
    owner = getattr(getattr(kernels, "LayerRepository", None), "__module__", None)
    return sys.modules.get(owner) if owner else None


def installed() -> bool:
    return bool(_INSTALLED)


def install() -> bool:
    """Wrap kernelize's two hooks (idempotent). False, with a warning, if this ``kernels`` lacks them."""
    with _LOCK:
        if _INSTALLED:
            return True
        module = layer_module()
        missing = [name for name in HOOKS if not callable(getattr(module, name, None))]
        if module is None or missing:
            warnings.warn(
                "jitkernels.patch(cold_start='background'): this kernels version has no "
                f"{', '.join(missing) or 'layer module'}; kernelize blocks on cold builds as before.",
                RuntimeWarning, stacklevel=4)
            return False
        for name in HOOKS:
            original = module.__dict__[name]
            wrapper = _WRAPPERS[name](original)
            setattr(module, name, wrapper)
            _INSTALLED[name] = (module, original, wrapper)
        return True


def uninstall() -> None:
    """Put upstream's functions back; layers still waiting for a build keep their original forward."""
    with _LOCK:
        for name, (module, original, wrapper) in list(_INSTALLED.items()):
            if module.__dict__.get(name) is wrapper:
                setattr(module, name, original)
            else:
                warnings.warn(f"jitkernels.unpatch(): {module.__name__}.{name} was replaced by someone else after "
                              f"jitkernels.patch(); leaving it as it is.", RuntimeWarning, stacklevel=4)
        _INSTALLED.clear()
        for pending in list(_PENDING.values()):
            pending.abandon()
        _PENDING.clear()


def _original(name: str):
    entry = _INSTALLED.get(name)
    if entry is not None:
        return entry[1]
    module = layer_module()
    return getattr(module, name)


class _Pending:
    """Layers of one class waiting for one repository's kernel to be built."""

    def __init__(self, build, repo, module_class, get_layer, conditionally_replace):
        import torch.nn as nn

        self.build, self.repo, self.module_class = build, repo, module_class
        self.state = "pending"  # pending | switched | failed | abandoned
        self.layer = None
        self.layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> kernelize's arguments
        self._get_layer, self._conditionally_replace = get_layer, conditionally_replace
        # What kernelize_layer gets instead of the kernel's class: it passes every check upstream
        # makes before _conditionally_replace_forward (0.17's _validate_layer_has_mode included), and
        # its forward is the original one, should anything attach it directly.
        self.cls = type(f"Pending{module_class.__name__}", (nn.Module,), {
            "__module__": __name__, "forward": module_class.forward,
            "can_torch_compile": True, "has_backward": True,
        })

    def attach(self, module, arguments: dict) -> None:
        with _LOCK:
            state = self.state
            if state == "pending":
                self.layers[module] = arguments
        if state == "switched":
            self._conditionally_replace(module=module, layer=self.layer, **arguments)
        else:
            _original_forward(module)

    def abandon(self) -> None:
        with _LOCK:
            if self.state == "pending":
                self.state = "abandoned"

    def finish(self, build) -> str | None:
        """The build ended (the watcher thread): switch every waiting layer, or leave them on their forward."""
        if not build.ready:
            with _LOCK:
                self.state = "failed" if self.state == "pending" else self.state
            return None
        with _LOCK:
            if self.state != "pending":
                return None
        name = self.module_class.__name__
        try:
            with deferring():  # published by the builder: an import, never a build in this process
                layer = self._get_layer(self.repo, self.module_class)
        except (Exception, BuildDeferred) as exc:  # noqa: BLE001 - validation, import: the layer stays as it is
            with _LOCK:
                self.state = "failed"
            warning_once(f"jitkernels: {build.kernel} was built, but {self.repo} cannot replace {name} "
                         f"({type(exc).__name__}: {exc}); those layers keep their original forward.")
            return None
        with _LOCK:
            self.layer, self.state = layer, "switched"
            waiting = list(self.layers.items())
            self.layers.clear()
        switched = kept = 0
        for module, arguments in waiting:
            try:
                self._conditionally_replace(module=module, layer=layer, **arguments)
            except ValueError as exc:  # a mode the kernel cannot do and no fallback allowed for it
                _original_forward(module)
                warning_once(f"jitkernels: {self.repo} cannot run {name} in mode {arguments.get('mode')} ({exc}); "
                             f"those layers keep their original forward.")
            if getattr(module.__dict__.get("forward"), "__func__", None) is layer.forward:
                switched += 1
            else:
                kept += 1
        return f"{switched} {name} layer{'s' if switched != 1 else ''}" + (
            f" ({kept} kept their original forward: the kernel does not support their mode)" if kept else "")


def _original_forward(module) -> None:
    """Upstream's own fallback: the layer's class forward (``_replace_forward(module, type(module))``)."""
    replace = getattr(layer_module(), "_replace_forward", None)
    if replace is not None:
        replace(module, type(module))
    else:
        module.__dict__.pop("forward", None)


def _wrap_get_layer(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def _get_layer_memoize(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        repo, module_class = bound.arguments["repo"], bound.arguments["module_class"]
        key = (str(config.cache_dir()), repo, module_class)
        with _LOCK:
            pending = _PENDING.get(key)
        if pending is not None and pending.state != "switched":
            return pending.cls  # still building (or failed: the layer stays on its forward, no retry)
        layer, build = coldstart.load_or_defer(functools.partial(original, *args, **kwargs))
        if build is None:
            return layer
        with _LOCK:
            pending, new = _PENDING.get(key), False
            if pending is None:
                pending, new = _Pending(build, repo, module_class, original,
                                        _original("_conditionally_replace_forward")), True
                _PENDING[key] = pending
                _BY_CLASS[pending.cls] = pending
        if new:
            build.when_done(pending.finish)  # at once if it ended meanwhile
        return pending.cls

    return _get_layer_memoize


def _wrap_conditionally_replace(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def _conditionally_replace_forward(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        layer = bound.arguments.get("layer")
        pending = _BY_CLASS.get(layer) if isinstance(layer, type) else None
        if pending is None:
            return original(*args, **kwargs)
        arguments = {k: v for k, v in bound.arguments.items() if k not in ("module", "layer")}
        pending.attach(bound.arguments["module"], arguments)

    return _conditionally_replace_forward


_WRAPPERS = {"_get_layer_memoize": _wrap_get_layer, "_conditionally_replace_forward": _wrap_conditionally_replace}

