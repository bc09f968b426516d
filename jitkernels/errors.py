"""The one exception hierarchy of JitKernels.

Every message says what was asked, what was found, and what the user can do.
Subclasses also derive from the closest builtin (``LookupError``,
``ValueError``, ``OSError``...) so generic ``except`` clauses keep working.
"""

from __future__ import annotations

from typing import Any


class JitKernelsError(Exception):
    """Base class of every error JitKernels raises on purpose."""


class UnknownProviderError(JitKernelsError, ValueError):
    """The provider name is not one of the registered providers."""


class InvalidKernelNameError(JitKernelsError, ValueError):
    """A kernel name, repo id or revision that cannot be used (bad characters, path escapes...)."""


class KernelNotFoundError(JitKernelsError, LookupError):
    """The kernel (repository) does not exist at the provider."""


class RevisionNotFoundError(KernelNotFoundError):
    """The repository exists but the asked revision or version does not."""


class FetchError(JitKernelsError, OSError):
    """Downloading from the provider failed (network, server, git)."""


class OfflineError(FetchError):
    """Offline mode (or no network) and what is needed is not in the cache."""


class BuildConfigError(JitKernelsError, ValueError):
    """A kernel's ``build.toml`` or ``metadata.json`` is invalid or refers to missing files."""


class BuildInputError(JitKernelsError, RuntimeError):
    """A declared build input (CUTLASS headers, ...) cannot be found, fetched safely or verified."""


class UnsupportedKernelError(JitKernelsError, RuntimeError):
    """JitKernels inspected the kernel and cannot load it for this backend.

    ``inspection`` carries the full decision (strategy, machine-readable
    ``reason``, dependencies...).
    """

    def __init__(self, message: str, inspection):
        super().__init__(message)
        self.inspection = inspection

    @property
    def reason(self) -> str | None:
        return self.inspection.reason


class MissingPythonDependencyError(JitKernelsError, ImportError):
    """The kernel declares ``python-depends`` that are not importable here."""


class KernelImportError(JitKernelsError, ImportError):
    """The kernel's own Python package raised while being imported."""


class BuildError(JitKernelsError, RuntimeError):
    """Compiling a native kernel failed; ``log_path`` keeps the full compiler output."""

    def __init__(self, message: str, log_path: Any = None):
        super().__init__(message)
        self.log_path = log_path


class ToolchainError(BuildError):
    """The local compiler toolchain cannot build this kernel (missing nvcc, version bounds...)."""


class CacheError(JitKernelsError, OSError):
    """The cache directory cannot be used (read-only, full, owned by someone else...)."""


class LockTimeoutError(CacheError, TimeoutError):
    """Another process holds a cache lock and showed no sign of progress for ``JITKERNELS_LOCK_TIMEOUT`` seconds."""


class TrustError(JitKernelsError, PermissionError):
    """The kernel's publisher is not trusted and the user did not opt in."""


class LockfileError(JitKernelsError, ValueError):
    """A lock file is invalid, or a loaded kernel does not match it."""


class PatchError(JitKernelsError, RuntimeError):
    """``jitkernels.patch()`` could not redirect the upstream ``kernels`` package."""


class ColdStartError(JitKernelsError, ValueError):
    """An unknown ``cold_start`` mode, or a background cold start asked for without a fallback to serve."""


class RemoteCacheError(CacheError):
    """``JITKERNELS_REMOTE_CACHE`` is misconfigured (bad URL or mode, missing fsspec backend).

    Only configuration problems raise; a remote that is down, slow or holds a
    damaged entry is reported with a warning and treated as a miss.
    """


def error_record(exc: BaseException) -> dict:
    """An error as JSON-ready data: its type, its message, and what it carries (reason, log path)."""
    record = {"type": type(exc).__name__, "message": str(exc).strip()}
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        record["reason"] = reason
    log_path = getattr(exc, "log_path", None)
    if log_path is not None:
        record["log_path"] = str(log_path)
    return record
