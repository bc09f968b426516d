"""Prepare many kernels ahead of use: read what to warm up, run it with a bounded pool, one combined progress.

What to warm up comes from names on the command line or from a file
(``jitkernels warmup --from FILE``), which may be

* upstream's ``kernels.lock`` (a JSON list of ``{"dependency": {"repo-id", "version"|"revision"},
  "lock": {"commit"}}``): each kernel at its locked commit;
* a ``jitkernels lock`` file (the same, plus a ``"jitkernels"`` record whose
  ``backend`` is used unless ``--backend`` is given);
* a plain list: one kernel per line, ``name`` or ``name@revision`` (a branch,
  tag, commit or ``vN``), ``#`` comments and blank lines ignored.

Kernels are loaded by worker threads (at most ``jobs`` at once; native builds
run in their own ninja processes). One progress display counts kernels done
and shows the current step of the ones in flight (see
:func:`jitkernels.progress.combined`). A failure does not stop the others;
every outcome is returned. ``jitkernels warmup`` and :func:`jitkernels.warmup`
both run :func:`run`.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import JitKernelsError, LockfileError, error_record


@dataclass(frozen=True)
class Target:
    """One kernel to warm up."""

    name: str
    revision: str | None = None
    version: int | None = None
    backend: str | None = None

    def label(self) -> str:
        pin = self.revision[:12] if self.revision else (f"v{self.version}" if self.version is not None else "")
        return f"{self.name}@{pin}" if pin else self.name


@dataclass
class Outcome:
    target: Target
    ok: bool
    seconds: float
    module: str | None = None
    error: dict | None = field(default=None)
    exception: BaseException | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        t = self.target
        return {"name": t.name, "revision": t.revision, "version": t.version, "backend": t.backend,
                "ok": self.ok, "seconds": round(self.seconds, 3), "module": self.module, "error": self.error}


def read_targets(path: Path, backend: str | None = None) -> list[Target]:
    """The kernels a ``--from`` file names (see the module docstring); ``backend`` overrides a lock's."""
    from .upstream.lockfiles import read_capped

    path = Path(path)
    if path.is_dir():  # a project folder, as `kernels download <project>` takes it
        from .upstream.lockfiles import project_kernels

        kernels, _where = project_kernels(path)
        return [Target(k.repo_id, revision=k.commit, version=k.version, backend=backend or k.backend)
                for k in kernels]
    try:
        text = read_capped(path, "warmup --from file").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LockfileError(f"warmup --from {path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            f"give a kernels.lock, a jitkernels lock or a list of names.") from exc
    stripped = text.lstrip()
    if stripped[:1] in ("[", "{"):  # JSON: a lock file (an object is refused by the lock schema)
        return _from_lock(path, text, backend)
    targets = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if " " in line or "\t" in line:
            raise LockfileError(f"{path}:{number}: {raw.strip()!r} is not a kernel name; write one `name` or "
                                f"`name@revision` per line.")
        name, _, pin = line.partition("@")
        if not name or (_ and not pin):
            raise LockfileError(f"{path}:{number}: {raw.strip()!r}: expected `name` or `name@revision`.")
        targets.append(Target(name, revision=pin or None, backend=backend))
    return targets


def _from_lock(path: Path, text: str, backend: str | None) -> list[Target]:
    from .upstream.lockfiles import parse_lock

    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise LockfileError(f"warmup --from {path}: not valid JSON ({exc}).") from exc
    return [Target(repo_id, revision=locked.commit, backend=backend or locked.backend)
            for repo_id, locked in parse_lock(data, str(path)).items()]


def default_jobs(count: int) -> int:
    """Workers when ``--jobs`` is not given: up to 4, never more than kernels to warm up."""
    return max(1, min(4, count))


def run(provider, targets: list[Target], jobs: int | None = None) -> list[Outcome]:
    """Load every target (fetch, build, index) with at most ``jobs`` at once; outcomes in target order."""
    from . import progress
    from .pipeline import load_kernel

    if not targets:
        return []
    jobs = max(1, jobs or default_jobs(len(targets)))

    def one(target: Target, shown) -> Outcome:
        start = time.monotonic()
        try:
            with progress.combined(shown, target.label()):
                module = load_kernel(provider, target.name, revision=target.revision, version=target.version,
                                     backend=target.backend)
        except JitKernelsError as exc:
            outcome = Outcome(target, False, time.monotonic() - start, error=error_record(exc), exception=exc)
        else:
            outcome = Outcome(target, True, time.monotonic() - start, module=module.__name__)
        shown.advance(1, detail=f"{target.label()}: {'ready' if outcome.ok else 'FAILED'}")
        return outcome

    with progress.task("jitkernels: warmup", total=len(targets), unit="kernel") as shown:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="jitkernels-warmup") as pool:
            outcomes = list(pool.map(lambda t: one(t, shown), targets))
        failed = sum(not o.ok for o in outcomes)
        if failed:
            shown.finish(ok=False, summary=f"{failed} failed")
    return outcomes
