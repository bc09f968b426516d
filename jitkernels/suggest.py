"""Close names for a kernel name that found nothing: the ``LOCAL_KERNELS`` entries and the cached kernels.

A typo (``jitkernels inspect rleu``) otherwise only gets the Hub's "not found"
or a network error. Stdlib only; reads the cache's manifests, never the network.
"""

from __future__ import annotations

import difflib

from . import config


def known_kernels() -> dict[str, str]:
    """repo id -> where it is known from (``LOCAL_KERNELS`` or ``the cache``)."""
    from .cache import layout
    from .cache.files import read_json
    from .identity import parse_local_kernels

    known: dict[str, str] = {}
    try:
        for repo_id in parse_local_kernels(config.local_kernels_spec()):
            known.setdefault(repo_id, "LOCAL_KERNELS")
    except ValueError:  # a malformed LOCAL_KERNELS is reported where it is used
        pass
    entries = layout.entries_dir()
    try:
        folders = sorted(entries.iterdir()) if entries.is_dir() else []
    except OSError:
        folders = []
    for folder in folders[:2000]:
        manifest = read_json(folder / layout.MANIFEST) or {}
        inspection = manifest.get("inspection") if isinstance(manifest, dict) else None
        repo_id = inspection.get("repo_id") if isinstance(inspection, dict) else None
        if isinstance(repo_id, str) and "/" in repo_id and not repo_id.startswith("local/"):
            known.setdefault(repo_id, "the cache")
    return known


def close_names(name: str, candidates=None) -> str:
    """`` Did you mean ...?`` naming close known kernels (and where they are known from), or ``""``."""
    known = known_kernels() if candidates is None else {c: "LOCAL_KERNELS" for c in candidates}
    asked = name.rsplit("/", 1)[-1].lower()
    by_short: dict[str, list[str]] = {}
    for repo_id in known:
        by_short.setdefault(repo_id.rsplit("/", 1)[-1].lower(), []).append(repo_id)
    matches = [r for short in difflib.get_close_matches(asked, list(by_short), n=3, cutoff=0.6)
               for r in by_short[short] if r != name]
    if not matches:
        return ""
    return " Did you mean " + " or ".join(f"{r} ({known[r]})" for r in matches[:3]) + "?"
