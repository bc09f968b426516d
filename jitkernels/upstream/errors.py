"""JitKernels errors raised through patched ``kernels`` functions, made subclasses of what upstream raises.

Code written against upstream ``kernels`` catches upstream's exception types.
The one that matters most: ``kernelize`` keeps a layer's original forward
when loading its kernel raises ``FileNotFoundError`` (and the user asked for
``KernelizeFallback.CANNOT_LOAD``). So, under :func:`jitkernels.patch`, an
error is re-raised as a class deriving from both the JitKernels error (so
``except UnsupportedKernelError`` keeps working, ``.inspection`` and
``.log_path`` included) and upstream's type in the same situation
(kernels 0.17.2, ``kernels/resolver.py``, ``hf_hub.py``, ``_versions.py``):

==============================  ===============================================  ======================================
JitKernels error                upstream raises, in the same situation          upstream type
==============================  ===============================================  ======================================
``UnsupportedKernelError``      no build variant for this system                 ``FileNotFoundError``
``BuildError``,                 (the build variant cannot be made here;          ``FileNotFoundError``
``ToolchainError``              upstream: no variant for this system)
``OfflineError``                offline and the kernel is not in the cache       ``FileNotFoundError``
``TrustError``                  publisher not trusted                            ``ValueError``
``RevisionNotFoundError``       ``version=N`` missing / revision missing         ``ValueError`` and huggingface_hub's
                                                                                 ``RevisionNotFoundError``
``KernelNotFoundError``         the repository does not exist                    huggingface_hub's
                                                                                 ``RepositoryNotFoundError``
==============================  ===============================================  ======================================

Already compatible without conversion: ``MissingPythonDependencyError``
(``ImportError``, as upstream), ``InvalidKernelNameError`` and
``LockfileError`` (``ValueError``, as upstream).
"""

from __future__ import annotations

import threading

from ..errors import (
    BuildError,
    KernelNotFoundError,
    OfflineError,
    RevisionNotFoundError,
    TrustError,
    UnsupportedKernelError,
)

_CLASSES: dict[tuple[type, tuple[type, ...]], type] = {}
_LOCK = threading.Lock()


def _hub_error(name: str) -> tuple[type, ...]:
    try:
        from huggingface_hub import errors
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return ()
    cls = getattr(errors, name, None)
    return (cls,) if isinstance(cls, type) else ()


def upstream_types(exc: BaseException) -> tuple[type, ...]:
    """The upstream exception types ``exc`` must also be an instance of (most specific rule first)."""
    if isinstance(exc, (UnsupportedKernelError, BuildError, OfflineError)):
        return (FileNotFoundError,)
    if isinstance(exc, TrustError):
        return (ValueError,)
    if isinstance(exc, RevisionNotFoundError):
        return (ValueError, *_hub_error("RevisionNotFoundError"))
    if isinstance(exc, KernelNotFoundError):
        return _hub_error("RepositoryNotFoundError")
    return ()


def _compatible_class(ours: type, theirs: tuple[type, ...]) -> type:
    key = (ours, theirs)
    with _LOCK:
        cls = _CLASSES.get(key)
        if cls is None:
            cls = type(ours.__name__, (ours, *theirs), {
                "__module__": __name__,
                "__doc__": f"{ours.__name__}, also a {', '.join(t.__name__ for t in theirs)} as upstream kernels raises.",
            })
            _CLASSES[key] = cls
    return cls


def upstream_compatible(exc: BaseException) -> BaseException:
    """``exc`` itself if it already is what upstream would raise, else an equal error of a compatible class."""
    theirs = tuple(t for t in upstream_types(exc) if not isinstance(exc, t))
    if not theirs:
        return exc
    cls = _compatible_class(type(exc), theirs)
    new = _instance(cls, exc.args)
    new.args = exc.args
    new.__dict__.update(exc.__dict__)  # inspection, log_path...
    if any(t.__module__.startswith("huggingface_hub") for t in theirs):
        for name in ("response", "server_message", "request_id"):  # what its HTTP errors carry; no response here
            new.__dict__.setdefault(name, None)
    new.__cause__ = exc.__cause__
    new.__suppress_context__ = exc.__suppress_context__
    new.__traceback__ = exc.__traceback__
    return new


def _instance(cls: type, args: tuple) -> BaseException:
    """An instance of ``cls`` without running any ``__init__`` (theirs want an HTTP response, ours an inspection).

    The ``__new__`` must be the one of the builtin whose memory layout ``cls``
    has (``OSError``'s when it derives from ``FileNotFoundError``).
    """
    for base in cls.__mro__[1:]:
        if base.__new__ is not object.__new__:
            try:
                return base.__new__(cls, *args)
            except TypeError:  # "X.__new__(cls) is not safe": not the layout-defining base
                continue
    raise TypeError(f"cannot make a {cls.__name__}")  # pragma: no cover
