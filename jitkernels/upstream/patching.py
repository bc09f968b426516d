"""``jitkernels.patch()``: make the upstream ``kernels`` package load kernels through JitKernels.

Existing call sites keep working unchanged::

    import jitkernels, kernels
    jitkernels.patch()                       # or: with jitkernels.patch(): ... / @jitkernels.patch()
    act = kernels.get_kernel("kernels-community/activation", version=1)   # a JitKernels module
    jitkernels.unpatch()                     # the exact upstream functions again

Supported: every ``kernels`` release transformers accepts, 0.17.2 to 0.19.x
(``pip install 'jitkernels[kernels]'``; CI runs these tests on 0.17.2, 0.18.3
and 0.19.1). Upstream's loader functions are redirected **by identity**
(:mod:`jitkernels.upstream.seam`): every module attribute anywhere that *is*
one of them (``kernels.get_kernel``, ``kernels._internals.layer.layer.get_kernel``
in 0.19, ``kernels.layer.layer.get_kernel`` in 0.17, transformers'
``hub_kernels.get_kernel_hub``, a module of yours that did ``from kernels
import get_kernel`` before ``patch()``...) gets the JitKernels wrapper, and
``unpatch()`` puts the same objects back, also into modules imported while
patched. After patching, a self-check walks the code of ``kernels`` and of
every patched module: no call site may still look up an upstream loader (it
warns naming any that does). A ``kernels`` release outside the tested range
is patched the same way, with one line naming the version, the range and
what the self-check found. :func:`selfcheck` calls every entry point with a
probe (no network, no load) and reports which reach JitKernels;
``jitkernels doctor`` shows it.

=======================================  ===========================================================
upstream function                        JitKernels replacement
=======================================  ===========================================================
``get_kernel`` (also what                ``jitkernels.load(provider, repo_id, revision|version,
``LayerRepository`` /                    backend, trust_remote_code)``
``FuncRepository.load`` and
transformers' ``attn_implementation=
"org/name"`` call)
``has_kernel``                           ``jitkernels.has`` (True iff JitKernels can load it here;
                                         ``trust_remote_code``/``check_arch`` accepted, not needed)
``get_local_kernel`` (and                ``jitkernels.load_local(repo_path, backend=...)``
``Local{Layer,Func}Repository``)
``load_kernel``, ``get_locked_kernel``   the locked commit of ``repo_id`` in ``lockfile`` (upstream's
                                         format; ``None`` = the caller's package metadata)
``get_kernel_with_resolver``             ``Locked{Layer,Func}Repository``: the commit the resolver's
                                         lock gives (other resolvers: upstream's own)
``select_revision_or_version``           kernels 0.17's ``LayerRepository(version=N)``: the branch
                                         ``vN`` without a Hub request (resolved when loading)
``install_kernel``                       prepares (fetches, builds) and imports the kernel; returns the
                                         package folder (``local_files_only=True``: nothing is fetched)
``get_loaded_kernels``                   upstream's records plus one ``LoadedKernel`` per kernel loaded
                                         through the patched functions (``metadata``: ``id`` is the op
                                         namespace, ``name`` the repo name, ``version`` the N of
                                         ``version=N`` else 0, ``license`` "unknown")
``get_kernel_dep``                       during an upstream load, upstream's; otherwise the module
                                         JitKernels loaded for that repo id in this process, a
                                         ``RuntimeError`` as upstream if none or several
=======================================  ===========================================================

``kernelize``, ``use_kernel_forward_from_hub``, ``use_kernel_mapping`` and the
``*Repository`` classes are not replaced: they call the functions above.
``patch()`` and ``unpatch()`` clear kernelize's layer memo (``_CACHED_LAYER``)
and 0.17's ``_resolve_revision`` caches, so a model kernelized after the
switch resolves through the active loader (one kernelized *before* keeps the
forward it was given; transformers' own cache of attention kernels it already
loaded, too).

Arguments keep their upstream meaning; upstream's signatures are enforced
(an unknown keyword is a ``TypeError``, exactly one of ``revision``/``version``
is required as upstream). ``user_agent`` is accepted and ignored (JitKernels
sends its own); ``check_arch`` is accepted: JitKernels builds or picks code
for this machine, so there is nothing to check. ``backend`` must be one of
JitKernels' backends. Errors are JitKernels' and also instances of what
upstream raises in the same situation (see :mod:`jitkernels.upstream.errors`):
a kernel that cannot be built here is an ``UnsupportedKernelError`` *and* a
``FileNotFoundError``, so ``kernelize(..., use_fallback=...)`` keeps the
original layer exactly as it does for a missing upstream build variant.

Opt-in fallback to upstream's binaries: ``patch(fallback="upstream")`` or
``JITKERNELS_FALLBACK=upstream`` hands a kernel JitKernels cannot build
(``UnsupportedKernelError``, ``BuildError``, ``ToolchainError``) to the
original upstream function, with one warning naming the kernel and the
reason; ``has_kernel`` asks upstream when JitKernels says no. Off by default:
the default stays "fail loudly". Inside such a hand-over upstream's own
helpers run unredirected.

``patch()`` is idempotent (a second call only changes the provider and fallback), thread
safe, and works whether ``kernels`` is imported before or after it (a wrapt
post-import hook patches it when it is first imported). ``unpatch()`` puts
the exact original function objects back (checked by identity in the
tests); a binding someone else re-wrapped after us is left alone with a warning.

Not redirected: a loader captured before ``patch()`` in a closure, a default
argument, a ``functools.partial`` or a container (nothing in kernels or
transformers does that); ``get_kernel_variants`` (it reports which prebuilt
variants fit this machine, which stays true; ``jitkernels.inspect`` says what
JitKernels would do); and the ``kernels`` CLI (``jitkernels`` has the
matching commands). ``load_kernel`` upstream never downloads; patched, a
locked commit that is not prepared yet is fetched (``HF_HUB_OFFLINE=1`` for
cache-only).

Opt-in background cold start: ``patch(cold_start="background")`` or
``JITKERNELS_COLD_START=background`` (read when ``patch()`` runs; the autopatch
hook reads it at startup): a layer whose native kernel is in neither the local
nor the remote cache keeps its original forward while the kernel builds in
another process, and switches on its next call once it is published
(:mod:`jitkernels.upstream.switching`, :mod:`jitkernels.coldstart`). A direct
``get_kernel`` call still waits for its build (it must return the module).

``kernels`` not installed: ``patch()`` raises :class:`~jitkernels.errors.PatchError`;
the autopatch hook (``JITKERNELS_AUTOPATCH=1``) instead warns once and does nothing.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import inspect
import sys
import threading
import warnings
from pathlib import Path

from ..errors import InvalidKernelNameError, LockfileError, PatchError
from . import seam

__all__ = ["patch", "unpatch", "is_patched", "Patch", "selfcheck", "patched_bindings"]

#: Functions that load a kernel: the upstream fallback applies to them, and what they return is recorded.
_LOADERS = ("get_kernel", "get_local_kernel", "load_kernel", "get_locked_kernel", "get_kernel_with_resolver",
            "install_kernel")
FALLBACK_ENV = "JITKERNELS_FALLBACK"

_LOCK = threading.RLock()

#: Set while an upstream function runs on behalf of the fallback: our wrappers pass straight through.
_IN_UPSTREAM: contextvars.ContextVar[bool] = contextvars.ContextVar("jitkernels_in_upstream", default=False)
#: A list while :func:`selfcheck` probes: wrappers record their name there and load nothing.
_PROBE: contextvars.ContextVar[list | None] = contextvars.ContextVar("jitkernels_patch_probe", default=None)


class _State:
    active = False
    provider = "hf_kernels"
    fallback: str | None = None  # patch(fallback=...); None: JITKERNELS_FALLBACK decides
    hook_registered = False
    #: the one-shot hook was used up by a module named ``kernels`` that is not upstream's (see rearm_import_hook)
    hook_spent = False
    #: upstream name -> (original function, our wrapper), for the ``kernels`` imported now
    wrappers: dict[str, tuple[object, object]] = {}
    swap = seam.Swap()


_STATE = _State()


def patched_bindings() -> dict[tuple[str, str], object]:
    """``(module name, attribute) -> object`` of every binding patch() swapped (empty when not patched)."""
    return {(module.__name__, attr): module.__dict__.get(attr) for module, attr, _o, _r in _STATE.swap.records}


# -- argument mapping ----------------------------------------------------------------

def _one_of(revision, version) -> None:
    # Upstream's contract (kernels._versions.select_revision_or_version), kept so call sites behave alike.
    if revision is not None and version is not None:
        raise InvalidKernelNameError("Only one of `revision` or `version` must be specified.")
    if revision is None and version is None:
        raise InvalidKernelNameError(
            "A kernel version or revision must be specified. Use `version=<major>` or "
            "`revision=<branch/tag/commit>` (as upstream kernels requires)."
        )


def _bind(original, args, kwargs) -> dict:
    """Bind a call against the *upstream* signature: unknown or missing arguments fail like upstream."""
    try:
        bound = inspect.signature(original).bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{original.__module__}.{original.__name__}() (patched by jitkernels): {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _get_kernel(original, a: dict):
    from ..pipeline import load_kernel

    _one_of(a["revision"], a["version"])
    # user_agent: ignored (documented); check_arch: nothing to check, code is built for this machine.
    return load_kernel(_STATE.provider, a["repo_id"], revision=a["revision"], version=a["version"],
                       backend=a["backend"], trust_remote_code=a["trust_remote_code"])


def _has_kernel(original, a: dict) -> bool:
    from ..pipeline import has_kernel

    _one_of(a["revision"], a["version"])
    return has_kernel(_STATE.provider, a["repo_id"], revision=a["revision"], version=a["version"],
                      backend=a["backend"])


def _get_local_kernel(original, a: dict):
    from ..pipeline import load_local_path

    return load_local_path(a["repo_path"], backend=a["backend"])


def _caller_lock_json() -> tuple[str, str]:
    """Upstream's ``lockfile=None``: ``kernels.lock`` in the metadata of the calling package's distribution."""
    import importlib.metadata

    skip = ("jitkernels", "kernels", "wrapt", "importlib", "functools", "contextlib")
    frame = sys._getframe(1)
    module_name = None
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.split(".")[0] not in skip:
            module_name = name
            break
        frame = frame.f_back
    if module_name:
        package = module_name.split(".")[0]
        for dist_name in importlib.metadata.packages_distributions().get(package, []):
            text = importlib.metadata.distribution(dist_name).read_text("kernels.lock")
            if text is not None:
                return text, f"kernels.lock of distribution {dist_name}"
    raise LockfileError(
        "Could not find a `kernels.lock` file in the caller's package metadata. Pass lockfile=Path(...) "
        "or lock kernels with `kernels lock <project>` and reinstall the project."
    )


def _locked_commit(repo_id: str, lockfile) -> str:
    from .lockfiles import parse_text, read_lock

    if lockfile is None:
        text, where = _caller_lock_json()
        locks = parse_text(text, where)
    else:
        locks = read_lock(Path(lockfile))
    if repo_id not in locks:
        raise LockfileError(
            f"Kernel `{repo_id}` is not locked in {lockfile or 'the caller package metadata'}. "
            f"Please lock it with `kernels lock <project>`."
        )
    return locks[repo_id].commit


def _load_kernel(original, a: dict):
    from ..pipeline import load_kernel

    commit = _locked_commit(a["repo_id"], a["lockfile"])
    return load_kernel(_STATE.provider, a["repo_id"], revision=commit, backend=a["backend"])


def _get_locked_kernel(original, a: dict):
    from ..pipeline import load_kernel

    commit = _locked_commit(a["repo_id"], a["lockfile"])
    return load_kernel(_STATE.provider, a["repo_id"], revision=commit,
                       trust_remote_code=a["trust_remote_code"])


_LOCKED_RESOLVERS = ("LockedHubResolver", "LockedHubCacheResolver")


def _get_kernel_with_resolver(original, a: dict):
    """``Locked{Layer,Func}Repository.load``: the resolver carries the lock; load its commit with JitKernels."""
    from ..pipeline import load_kernel

    resolver, kernel = a["resolver"], a["kernel"]
    if type(resolver).__name__ not in _LOCKED_RESOLVERS:
        return _upstream(original, (), a)  # upstream's own get_kernel (0.18+) calls it with a Hub resolver
    lock = resolver.kernel_locks.get(kernel)
    if lock is None:
        raise LockfileError(f"Kernel `{kernel.repo_id}` is not locked.")
    # KernelLock.commit: a str in kernels 0.17, an Oid in 0.18+
    return load_kernel(_STATE.provider, kernel.repo_id, revision=str(lock.commit), backend=a["backend"],
                       trust_remote_code=getattr(resolver, "trust_remote_code", False))


def _select_revision_or_version(original, a: dict) -> str:
    """kernels 0.17's ``LayerRepository(version=N)``: no Hub request here; JitKernels resolves ``vN`` when loading.

    Other callers (``get_kernel_variants``, the signature check) get upstream's commit, as before the patch.
    """
    from ..identity import revision_for

    if _upstream_caller() != "_resolve_revision":
        return _upstream(original, (), a)
    _one_of(a["revision"], a["version"])
    return revision_for(a["revision"], a["version"])


def _upstream_caller() -> str:
    """The name of the first function up the stack that is neither JitKernels' nor wrapt's."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("jitkernels", "wrapt"):
        frame = frame.f_back
    return frame.f_code.co_name if frame is not None else ""


def _install_kernel(original, a: dict):
    """Upstream downloads a variant and returns its folder; JitKernels prepares (builds) and returns the package's."""
    from ..pipeline import load_kernel

    _one_of(a["revision"], a["version"])
    load = functools.partial(load_kernel, _STATE.provider, a["repo_id"], revision=a["revision"],
                             version=a["version"], backend=a["backend"], trust_remote_code=a["trust_remote_code"])
    module = _offline_call(load) if a["local_files_only"] else load()
    return Path(module.__file__).parent


_OFFLINE_LOCK = threading.Lock()


def _offline_call(call):
    """Run ``call`` as if HF_HUB_OFFLINE=1 (upstream's ``local_files_only=True``; one such call at a time).

    The switch is process-wide while it runs: another thread's load meanwhile is offline too.
    """
    import os

    with _OFFLINE_LOCK:
        saved = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            return call()
        finally:
            if saved is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = saved


#: id(module) -> (module, repo_id, revision, version) of every kernel the patched loaders returned.
_LOADED: dict[int, tuple] = {}


def _record(name: str, a: dict, module) -> None:
    if name == "install_kernel" or not hasattr(module, "__file__"):
        return
    repo_id = a.get("repo_id") or getattr(a.get("kernel"), "repo_id", None) or str(a.get("repo_path", ""))
    _LOADED.setdefault(id(module), (module, repo_id, a.get("revision"), a.get("version")))


def _get_loaded_kernels(original, a: dict) -> list:
    """Upstream's records, then the kernels the patched loaders returned (see the module docstring)."""
    import json

    from ..cache.manifest import read_manifest

    kernels = sys.modules["kernels"]
    LoadedKernel, RepoInfo = kernels.LoadedKernel, getattr(kernels, "RepoInfo", None)
    # the Metadata class the importer module uses (kernels._rust's, re-exported there in 0.17-0.19)
    Metadata = getattr(sys.modules.get(LoadedKernel.__module__), "Metadata", None)
    if Metadata is None:  # pragma: no cover - a release that stops importing it there
        from kernels._rust import Metadata

    out = list(original())
    seen = {id(k.module) for k in out}
    for module, repo_id, revision, version in list(_LOADED.values()):
        if id(module) in seen:
            continue
        entry = Path(module.__file__).parent.parent  # <entry>/<python_name>/__init__.py
        inspection = (read_manifest(entry) or {}).get("inspection") or {}
        commit = inspection.get("revision") or revision
        metadata = Metadata.from_bytes(json.dumps({
            "id": inspection.get("module_name") or module.__name__,
            "name": (repo_id or module.__name__).rsplit("/", 1)[-1].replace("_", "-"),
            "version": version if isinstance(version, int) else 0,
            "license": "unknown",
            "python-depends": list(inspection.get("python_depends", [])),
            "backend": {"type": inspection.get("backend", "cpu")},
        }).encode())
        info = RepoInfo(repo_id=repo_id, revision=commit) if RepoInfo and repo_id and commit else None
        out.append(LoadedKernel(metadata=metadata, module=module, repo_info=info))
    return out


def _get_kernel_dep(original, a: dict):
    """Inside upstream's loader: upstream's. Otherwise the one module JitKernels loaded for that repo id."""
    context = getattr(seam.defining_module(original), "_KERNEL_DEPS", None)
    if context is not None and context.get() is not None:
        return original(**a)
    from .. import warm

    repo_id = a["repo_id"]
    found = {id(m): m for m in warm.loaded_for(repo_id)}
    found.update({id(m): m for m, rid, _r, _v in list(_LOADED.values()) if rid == repo_id})
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise RuntimeError(
            f"Dependency '{repo_id}' not found in kernel dependencies. Ensure the dependency is added to "
            f"`kernel-deps` in build.toml (jitkernels: no kernel of that repository is loaded in this process)."
        )
    raise RuntimeError(f"Dependency '{repo_id}': {len(found)} different builds of it are loaded in this process "
                       f"({', '.join(sorted(m.__name__ for m in found.values()))}); jitkernels cannot tell which one.")


_REPLACEMENTS = {
    "get_kernel": _get_kernel,
    "has_kernel": _has_kernel,
    "get_local_kernel": _get_local_kernel,
    "load_kernel": _load_kernel,
    "get_locked_kernel": _get_locked_kernel,
    "get_kernel_with_resolver": _get_kernel_with_resolver,
    "select_revision_or_version": _select_revision_or_version,
    "install_kernel": _install_kernel,
    "get_loaded_kernels": _get_loaded_kernels,
    "get_kernel_dep": _get_kernel_dep,
}


def fallback_mode() -> str | None:
    """``"upstream"`` when kernels JitKernels cannot build go to upstream's loader, else None (the default)."""
    from .. import config

    value = _STATE.fallback if _STATE.fallback is not None else config.fallback()
    value = value.strip().lower()
    if value in ("", "none", "off", "0", "false", "no"):
        return None
    if value == "upstream":
        return "upstream"
    from ..log import warning_once

    warning_once(f"{FALLBACK_ENV}={value!r} is not understood (use 'upstream' or leave it unset); no fallback.")
    return None


def _check_fallback(value) -> str | None:
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in ("upstream", "none", "off"):
        return value.strip().lower()
    raise PatchError(f"jitkernels.patch(fallback={value!r}): use fallback='upstream' or None.")


def _cannot_build(exc: BaseException) -> bool:
    from ..errors import BuildError, UnsupportedKernelError

    return isinstance(exc, (UnsupportedKernelError, BuildError))


def _kernel_named(a: dict) -> str:
    kernel = a.get("kernel")
    return a.get("repo_id") or getattr(kernel, "repo_id", None) or str(a.get("repo_path", "the kernel"))


def _hand_to_upstream(name: str, a: dict, exc: BaseException, wrapped, args, kwargs):
    from ..log import warning_once

    reason = getattr(exc, "reason", None)
    why = f"{reason}: " if reason else ""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    warning_once(f"jitkernels: cannot build {_kernel_named(a)} here ({why}{first_line}); "
                 f"{FALLBACK_ENV}=upstream hands it to upstream kernels' {name}.")
    return _upstream(wrapped, args, kwargs)


def _make_wrapper(original, replacement, name: str):
    import wrapt

    from ..errors import JitKernelsError
    from .errors import upstream_compatible

    def wrapper(wrapped, instance, args, kwargs):
        if _IN_UPSTREAM.get():
            return wrapped(*args, **kwargs)
        a = _bind(wrapped, args, kwargs)
        probe = _PROBE.get()
        if probe is not None:
            probe.append(name)
            return _probe_answer(name, a)
        try:
            result = replacement(wrapped, a)
        except JitKernelsError as exc:
            if name in _LOADERS and fallback_mode() == "upstream" and _cannot_build(exc):
                return _hand_to_upstream(name, a, exc, wrapped, args, kwargs)
            compatible = upstream_compatible(exc)
            if compatible is exc:
                raise
            raise compatible from exc.__cause__
        if name == "has_kernel" and result is False and fallback_mode() == "upstream":
            return _upstream(wrapped, args, kwargs)
        if name in _LOADERS:
            _record(name, a, result)
        return result

    return wrapt.FunctionWrapper(original, wrapper)


def _upstream(wrapped, args, kwargs):
    token = _IN_UPSTREAM.set(True)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _IN_UPSTREAM.reset(token)


# -- applying ---------------------------------------------------------------------------

def _apply() -> None:
    """Swap every binding of upstream's loaders (``kernels`` is imported). Caller holds ``_LOCK``."""
    kernels = sys.modules["kernels"]
    for name, found in seam.targets(kernels).items():
        known = _STATE.wrappers.get(name)
        if known is not None and (found is known[0] or found is known[1]):
            continue  # already wrapped (a second call, or the import hook firing after patch())
        _STATE.wrappers[name] = (found, _make_wrapper(found, _REPLACEMENTS[name], name))
    by_id = {id(o): (o, w) for o, w in _STATE.wrappers.values()}
    _STATE.swap.apply(by_id)
    seam.forget_caches(kernels)
    _switching().apply()
    _say_what_is_redirected(kernels)


def _say_what_is_redirected(kernels) -> None:
    """The cheap self-check run by every patch(), and the one line for an untested ``kernels``."""
    from ..log import warning_once

    version = seam.kernels_version(kernels)
    missing = [n for n in seam.PUBLIC_LOADERS if n not in _STATE.wrappers]
    not_ours = [f"kernels.{n}" for n, (_o, w) in _STATE.wrappers.items()
                if n in seam.PUBLIC_LOADERS and kernels.__dict__.get(n) is not w]
    modules = {module.__name__ for module, _a, _o, _r in _STATE.swap.records}
    unreached = seam.unreached([o for o, _w in _STATE.wrappers.values()], modules)
    problems = not_ours + unreached
    if problems:
        warning_once(f"jitkernels.patch(): with kernels {version} these call sites still reach upstream's "
                     f"loaders and keep upstream behaviour: {', '.join(problems)}.")
    if missing:
        warning_once(f"jitkernels.patch(): kernels {version} has no {', '.join(missing)}; nothing to redirect there.")
    if not seam.in_tested_range(version):
        works = ("every call site of its loaders now reaches JitKernels (get_kernel, kernelize and the "
                 "*Repository classes included)" if not problems else "see the line above for what does not")
        warning_once(f"jitkernels.patch(): kernels {version} is outside the releases JitKernels is tested with "
                     f"({seam.TESTED_RANGE}: {', '.join(seam.TESTED_KERNELS)}); patched by identity, the "
                     f"self-check found {'nothing missed' if not problems else 'gaps'}: {works}.")


def _switching():
    """The background cold start's hooks into kernelize (:mod:`jitkernels.upstream.switching`)."""
    from . import switching

    return switching


def _restore() -> None:
    _switching().reset()
    by_id = {id(o): (o, w) for o, w in _STATE.wrappers.values()}
    for binding in _STATE.swap.restore(by_id):
        warnings.warn(
            f"jitkernels.unpatch(): {binding} was replaced by someone else after jitkernels.patch(); "
            f"leaving it as it is.",
            RuntimeWarning,
            stacklevel=3,
        )
    _STATE.wrappers.clear()
    kernels = sys.modules.get("kernels")
    if kernels is not None:
        seam.forget_caches(kernels)


def _on_kernels_imported(module) -> None:
    with _LOCK:
        if not hasattr(module, "get_kernel"):  # a kernel's tests/kernels/ package, imported under that name
            _STATE.hook_spent = True
            return
        if _STATE.active:
            _apply()


def rearm_import_hook() -> None:
    """Register the post-import hook again if a module named ``kernels`` that is not upstream's used it up and has
    left ``sys.modules`` (``jitkernels test`` on a suite whose ``tests/kernels/`` takes the name): wrapt calls a hook
    once, and upstream's ``kernels``, imported later, must still be patched."""
    with _LOCK:
        if _STATE.hook_spent and sys.modules.get("kernels") is None:
            import wrapt

            _STATE.hook_spent = False
            wrapt.register_post_import_hook(_on_kernels_imported, "kernels")


def _kernels_installed() -> bool:
    if sys.modules.get("kernels") is not None:
        return True
    try:
        return importlib.util.find_spec("kernels") is not None
    except (ImportError, ValueError):
        return False


def _patch(provider, *, autopatch: bool = False, fallback=None, cold_start=None) -> tuple[bool, tuple | None]:
    """(whether this call patched, and, when a patch was already on, its settings, which :meth:`Patch._undo` puts back)."""
    from ..providers import provider_name

    canonical = provider_name(provider)
    fallback = _check_fallback(fallback)
    cold_start = _switching().check(cold_start)
    with _LOCK:
        if not _kernels_installed():
            message = ("jitkernels.patch(): the upstream `kernels` package is not installed, so there is "
                       "nothing to patch (pip install 'jitkernels[kernels]').")
            if autopatch:
                warnings.warn(message + " JITKERNELS_AUTOPATCH is ignored.", RuntimeWarning, stacklevel=3)
                return False, None
            raise PatchError(message)
        was_active = _STATE.active
        previous = (_STATE.provider, _STATE.fallback, _switching().configured()) if was_active else None
        _settings(canonical, fallback, cold_start)
        _STATE.active = True
        if was_active:
            return False, previous
        if sys.modules.get("kernels") is not None:
            _apply()
        if not _STATE.hook_registered:
            import wrapt

            _STATE.hook_registered = True  # one hook per process; it re-checks _STATE.active
            wrapt.register_post_import_hook(_on_kernels_imported, "kernels")
        return True, None


def _settings(provider: str, fallback: str | None, cold_start: str) -> None:
    """The active patch's provider, fallback and cold-start mode (under _LOCK)."""
    _STATE.provider = provider
    _STATE.fallback = fallback
    _switching().configure(cold_start)
    if _STATE.active and sys.modules.get("kernels") is not None:
        _switching().apply()


class Patch:
    """What :func:`patch` returns: usable as a context manager and as a decorator.

    As a context manager, leaving the block unpatches only if this ``patch()``
    call is the one that patched; a nested ``patch()`` puts the enclosing one's
    ``fallback`` and ``cold_start`` back when its block ends. As a decorator
    (``@jitkernels.patch()``) the function runs patched and the patch made
    for decorating is undone right away.
    """

    def __init__(self, provider: str, owned: bool, fallback: str | None = None, cold_start: str | None = None,
                 previous: tuple | None = None):
        self.provider = provider
        self.owned = owned
        self.fallback = fallback
        self.cold_start = cold_start
        self._previous = previous  # the enclosing patch's settings, when this call found one active

    def __enter__(self) -> "Patch":
        return self

    def __exit__(self, *exc) -> None:
        self._undo()

    def _undo(self) -> None:
        """Unpatch if this call patched; otherwise give the enclosing patch its own settings back."""
        if self.owned:
            unpatch()
        elif self._previous is not None:
            previous, self._previous = self._previous, None
            with _LOCK:
                if _STATE.active:
                    _settings(*previous)

    def __call__(self, func):
        self._undo()  # decorating is not calling: patch only while func runs
        provider, fallback, cold_start = self.provider, self.fallback, self.cold_start

        @functools.wraps(func)
        def patched(*args, **kwargs):
            with patch(provider, fallback=fallback, cold_start=cold_start):
                return func(*args, **kwargs)

        return patched

    def __repr__(self) -> str:
        return f"<jitkernels.patch provider={self.provider!r} active={is_patched()}>"


def patch(provider="hf_kernels", *, fallback: str | None = None, cold_start: str | None = None) -> Patch:
    """Redirect the upstream ``kernels`` package to JitKernels (see the module docstring).

    ``fallback="upstream"``: kernels JitKernels cannot build go to upstream's
    loader (one warning each); None (default): ``JITKERNELS_FALLBACK`` decides.
    ``cold_start="background"``: kernelize serves layers with their own forward while a cold
    native kernel builds in another process, then switches; ``"block"`` waits for the build;
    None (default): ``JITKERNELS_COLD_START`` decides.
    """
    owned, previous = _patch(provider, fallback=fallback, cold_start=cold_start)
    from ..providers import provider_name

    return Patch(provider_name(provider), owned, fallback, cold_start, previous)


def unpatch() -> None:
    """Restore the exact upstream functions everywhere; a no-op when not patched."""
    with _LOCK:
        _STATE.active = False
        _STATE.fallback = None
        _restore()


def is_patched() -> bool:
    return _STATE.active


def autopatch() -> bool:
    """What the ``JITKERNELS_AUTOPATCH`` startup hook calls: like :func:`patch`, but a missing
    ``kernels`` is a warning, and ``kernels`` is patched when first imported (never imported here).
    ``JITKERNELS_COLD_START`` applies as for ``patch()``."""
    return _patch("hf_kernels", autopatch=True)[0]


# -- the behavioural self-check -------------------------------------------------------------------

PROBE_REPO = "jitkernels-selfcheck/probe"


def _probe_answer(name: str, a: dict):
    import types

    if name == "has_kernel":
        return True
    if name == "get_loaded_kernels":
        return []
    if name == "install_kernel":
        return Path("/nonexistent/jitkernels-selfcheck")
    if name == "select_revision_or_version":
        return "v1"
    return types.ModuleType("jitkernels_selfcheck_probe")  # no layers: the caller's next step fails, as planned


def selfcheck() -> dict[str, bool]:
    """Call every public entry point of the imported ``kernels`` (and transformers' ``get_kernel`` if
    transformers is loaded) with a probe repository; True where the call reached JitKernels.

    Needs an active :func:`patch`. Nothing is downloaded or loaded, no log handler is left behind
    (``kernelize`` would install one through ``logging.info``), no memo keeps the probe.
    """
    import logging
    import tempfile

    if not _STATE.active or "kernels" not in sys.modules:
        raise PatchError("jitkernels.patch.selfcheck(): patch() first (and import kernels).")
    import kernels

    results: dict[str, bool] = {}
    probe = PROBE_REPO

    def reached(label: str, call, expect: str) -> None:
        calls: list[str] = []
        token = _PROBE.set(calls)
        try:
            call()
        except Exception:  # the probe module has no layers: what follows the load fails, as planned
            pass
        finally:
            _PROBE.reset(token)
        results[label] = expect in calls

    def public(name: str, *args, **kwargs):
        if name in kernels.__dict__:
            reached(f"kernels.{name}", lambda: getattr(kernels, name)(*args, **kwargs), name)

    public("get_kernel", probe, version=1)
    public("has_kernel", probe, version=1)
    public("get_local_kernel", Path("/nonexistent/jitkernels-selfcheck"))
    public("install_kernel", probe, version=1)
    public("get_loaded_kernels")
    public("get_kernel_dep", probe)
    quiet = logging.getLogger("kernels")
    saved_level, root = quiet.level, logging.getLogger()
    guard = logging.NullHandler()
    root_was_bare = not root.handlers
    if root_was_bare:
        root.addHandler(guard)  # kernelize's logging.info would otherwise basicConfig() the root logger
    quiet.setLevel(logging.ERROR)  # FuncRepository says it is deprecated (0.19)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            lock = Path(tmp) / "kernels.lock"
            lock.write_text('[{"dependency": {"repo-id": "%s", "version": 1}, "lock": {"commit": "%s"}}]'
                            % (probe, "0" * 40))
            public("load_kernel", probe, lockfile=lock)
            public("get_locked_kernel", probe, lockfile=lock)
            for cls_name, kw in (("LockedLayerRepository", {"layer_name": "Probe"}),
                                 ("LockedFuncRepository", {"func_name": "probe"})):
                cls = kernels.__dict__.get(cls_name)
                if cls is not None:
                    reached(f"{cls_name}.load", lambda: cls(probe, lockfile=lock, **kw).load(),
                            "get_kernel_with_resolver")
        for cls_name, args, kw, expect in (
                ("LayerRepository", (probe,), {"layer_name": "Probe", "version": 1}, "get_kernel"),
                ("FuncRepository", (probe,), {"func_name": "probe", "version": 1}, "get_kernel"),
                ("LocalLayerRepository", (Path("/nonexistent"),), {"layer_name": "Probe"}, "get_local_kernel"),
                ("LocalFuncRepository", (Path("/nonexistent"),), {"func_name": "probe"}, "get_local_kernel")):
            cls = kernels.__dict__.get(cls_name)
            if cls is not None:
                reached(f"{cls_name}.load", lambda: cls(*args, **kw).load(), expect)
        reached("kernels.kernelize", _kernelize_probe, "get_kernel")
    finally:
        quiet.setLevel(saved_level)
        if root_was_bare:
            root.removeHandler(guard)
        seam.forget_caches(kernels)
    hub_kernels = sys.modules.get("transformers.integrations.hub_kernels")  # never imported here
    if callable(getattr(hub_kernels, "get_kernel", None)):
        reached("transformers hub_kernels.get_kernel", lambda: hub_kernels.get_kernel(probe, version=1),
                "get_kernel")
    return results


def _kernelize_probe() -> None:
    import kernels
    import torch.nn as nn

    @kernels.use_kernel_forward_from_hub("JitKernelsSelfcheckProbe")
    class Probe(nn.Module):
        def forward(self, x):
            return x

    repo = kernels.LayerRepository(PROBE_REPO, layer_name="Probe", version=1)
    mapping = {"JitKernelsSelfcheckProbe": {"cpu": {kernels.Mode.INFERENCE: repo}}}
    with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
        kernels.kernelize(nn.Sequential(Probe()), mode=kernels.Mode.INFERENCE, device="cpu", use_fallback=False)
