"""Startup hook behind ``JITKERNELS_AUTOPATCH=1`` (see hooks/README.md).

Imported by ``jitkernels-autopatch.pth`` (installed into site-packages with
the package) only when the variable is set, or by a ``sitecustomize`` that
imports it. It registers :func:`jitkernels.upstream.patching.autopatch`: ``kernels``
is patched when it is first imported (or right away if it already is). It
never imports torch or ``kernels`` itself; ``kernels`` not installed is a
no-op with one ``RuntimeWarning``. A failure here never breaks interpreter
startup: it is reported as a warning.
"""

from __future__ import annotations

from .. import config

ENV = "JITKERNELS_AUTOPATCH"


def enabled() -> bool:
    return config.autopatch()


def run() -> bool:
    """Patch (or arrange to patch) ``kernels`` if ``JITKERNELS_AUTOPATCH`` is set; True if it did."""
    if not enabled():
        return False
    try:
        from .patching import autopatch

        return autopatch()
    except Exception as exc:  # never break startup of an unrelated program
        import warnings

        warnings.warn(f"{ENV}: jitkernels could not patch `kernels`: {exc!r}", RuntimeWarning, stacklevel=2)
        return False


run()
