"""Fallback autopatch hook for environments where the .pth file is not installed.

Copy (or symlink) this file as ``sitecustomize.py`` onto ``sys.path`` (for
example into a virtualenv's site-packages, or a folder on ``PYTHONPATH``).
Python imports ``sitecustomize`` once at startup; with ``JITKERNELS_AUTOPATCH``
unset it costs one environment lookup. Only one ``sitecustomize`` module is
ever imported per interpreter, so merge this into an existing one instead of
shadowing it.
"""

import os

if os.environ.get("JITKERNELS_AUTOPATCH", "").strip().lower() in ("1", "true", "yes", "on"):
    try:
        import jitkernels.upstream.autopatch  # noqa: F401  (registers the post-import hook; imports no torch/kernels)
    except ImportError:  # jitkernels not installed in this interpreter
        pass
