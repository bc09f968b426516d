"""Never block a model on a cold build: build in the background, serve with the original code, then switch.

Opt-in (the default, ``block``, is what a load always did: wait for the build,
with progress)::

    jitkernels.patch(cold_start="background")        # kernelize & co. of the upstream `kernels` package
    JITKERNELS_COLD_START=background                 # the same for patch() without the argument, and autopatch
    silu = jitkernels.function("hf", "activation", "silu", fallback=torch.nn.functional.silu,
                               version=1, cold_start="background")   # JitKernels' own API

How it works:

* The caller loads the kernel inside :func:`jitkernels.cache.entries.deferring`. A kernel
  that is prepared here, or in the remote cache (fetched now), or a Python/Triton kernel
  (prepared now: nothing to compile) loads as usual. A native build that is in neither
  cache raises :class:`~jitkernels.cache.entries.BuildDeferred`, which the pipeline
  annotates with the load to repeat (provider, name, resolved commit, backend, trust;
  or a local folder). Resolution, the source fetch and the warm lookups happen in the
  calling process first; downloads of build inputs (CUTLASS) and the compile do not.
* :func:`start` runs ``python -m jitkernels.coldstart`` (one builder per build and
  cache per process) to *prepare* exactly that load: the same pipeline, entry locks
  and cache entry as any other builder, so a second process or machine that needs the
  entry waits for it (or finds it) instead of building it again. The builder runs in
  its own session at ``nice 10`` with its output in ``logs/background/`` (a crash of
  the compiler, the GIL or an OOM never touch the serving process; it finishes and
  publishes even if the serving process exits). It holds the cache lock
  ``background:<entry>`` while it runs: ``jitkernels cache list`` and ``doctor``
  list running and failed background builds from ``background/<entry>.json``.
* A watcher thread in the serving process forwards the builder's progress lines
  (``jitkernels.progress`` at INFO, one every ``JITKERNELS_PROGRESS_INTERVAL`` at most) and,
  when the builder exits, runs the callbacks registered with :meth:`Build.when_done`
  (they import the published entry, never build: :mod:`jitkernels.upstream.switching`
  swaps each kernelized layer's ``forward``; :class:`SwitchingFunction` swaps its
  target), then says once per kernel how many users switched. A failed build is said
  once, with the builder's log; its users stay on their fallback and no second
  builder is started by this process. A builder that finds the same build failed in
  another process after it was started gives up too (no retry storm).

Messages (logger ``jitkernels``): one WARNING per kernel when it is deferred (what runs
meanwhile, the builder's pid and log), one WARNING when it is ready (how many layers or
functions switch) or failed (the error's first line and the logs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import config
from .cache import layout
from .cache.entries import BuildDeferred, deferring
from .errors import ColdStartError, JitKernelsError
from .log import logger

__all__ = ["BACKGROUND", "BLOCK", "mode", "check_mode", "Build", "start", "builds", "load_or_defer",
           "SwitchingFunction", "main"]

BACKGROUND = "background"
BLOCK = "block"
_OFF_WORDS = ("", BLOCK, "off", "none", "0", "false", "no", "wait")
#: Exit status of a builder that found the same build failed in another process meanwhile.
EXIT_FAILED_ELSEWHERE = 3


def check_mode(value) -> str | None:
    """An argument's value: ``"background"``, ``"block"`` or None (the environment decides); else ColdStartError."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in (BACKGROUND, BLOCK):
        return value.strip().lower()
    raise ColdStartError(f"cold_start={value!r}: use 'background' (build in another process, serve meanwhile) "
                     f"or 'block' (wait for the build); None reads JITKERNELS_COLD_START.")


def mode(value=None) -> str:
    """``background`` or ``block``: ``value`` (an argument, checked) if given, else ``JITKERNELS_COLD_START``."""
    checked = check_mode(value)
    if checked is not None:
        return checked
    raw = config.cold_start()
    if raw == BACKGROUND:
        return BACKGROUND
    if raw not in _OFF_WORDS:
        from .log import warning_once

        warning_once(f"JITKERNELS_COLD_START={raw!r} is not understood (use 'background' or 'block'); "
                     f"cold builds block.")
    return BLOCK


# -- one background build, as the serving process sees it -----------------------------------------

@dataclass
class Build:
    """A build handed to a background builder: its state, and what to do when it ends."""

    entry: str  # the cache entry that was missing
    load: dict  # what the builder prepares (jitkernels.pipeline's description of the load)
    kernel: str  # for messages: "org/name@commit12" or the local folder
    log: Path
    busy: bool  # another process was building it when it was deferred
    state: str = "building"  # building | ready | failed
    pid: int | None = None
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None
    error: str | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _callbacks: list = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the builder ended and every callback ran (True), or ``timeout`` passed (False)."""
        return self._done.wait(timeout)

    def when_done(self, callback: Callable[["Build"], str | None]) -> None:
        """Call ``callback(build)`` when the build ended (now, in this thread, if it already has).

        On success it runs in the watcher thread before the "ready" message and may return
        a short description of what switched (``"2 layers (RMSNorm)"``) for that message.
        """
        with self._lock:
            if self.state == "building":
                self._callbacks.append(callback)
                return
        callback(self)


_BUILDS: dict[tuple[str, str], Build] = {}
_BUILDS_LOCK = threading.Lock()


def builds() -> list[Build]:
    """Every build this process handed to a background builder (any cache, any state)."""
    with _BUILDS_LOCK:
        return list(_BUILDS.values())


def _label(load: dict) -> str:
    if "path" in load:
        return str(load["path"])
    revision = load.get("revision")
    return f"{load['name']}@{revision[:12]}" if revision else str(load["name"])


def _owner() -> str:
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in os.uname().nodename)[:40] or "host"
    return f"{host}.{os.getpid()}"


def start(deferred: BuildDeferred) -> Build:
    """The background build of a deferred entry: started now, or the one this process started before.

    A build that failed stays failed for this process (its users keep their fallback): no retry.
    """
    if deferred.load is None:
        raise RuntimeError(f"{deferred}: no load to repeat in the background (deferred outside the pipeline)")
    key = (str(layout.root()), deferred.name)
    with _BUILDS_LOCK:
        build = _BUILDS.get(key)
        if build is not None:
            return build
        build = Build(entry=deferred.name, load=dict(deferred.load), kernel=_label(deferred.load),
                      log=layout.background_log(deferred.name, _owner()), busy=deferred.busy)
        _BUILDS[key] = build
    _spawn(build)
    return build


def _spawn(build: Build) -> None:
    from .cache.files import ensure_dir

    request = {"entry": build.entry, "load": build.load, "kernel": build.kernel, "log": str(build.log),
               "requested_by": _owner()}
    env = dict(os.environ)
    env.pop("JITKERNELS_COLD_START", None)  # the builder builds; it never defers
    package_parent = str(Path(__file__).resolve().parent.parent)  # the same jitkernels as this process
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        ensure_dir(build.log.parent)
        with open(build.log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "jitkernels.coldstart", json.dumps(request)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
    except (OSError, JitKernelsError) as exc:
        _finish(build, 1, f"could not start the background builder: {exc}")
        return
    build.pid = proc.pid
    who = ("another process is building it; a background builder waits for it" if build.busy
           else "it is being built in the background")
    logger.warning(
        "jitkernels: %s (%s) is not built for this machine%s; %s (pid %d, log: %s). Meanwhile the layers and "
        "functions that use it run their original code; they switch to the kernel on their first call after "
        "it is published.", build.kernel, build.load.get("backend"),
        " nor in the remote cache" if config.remote_cache_url() else "", who, proc.pid, build.log)
    threading.Thread(target=_watch, args=(build, proc), name=f"jitkernels-coldstart-{proc.pid}",
                     daemon=True).start()


def _watch(build: Build, proc: subprocess.Popen) -> None:
    """Forward the builder's progress lines until it exits, then finish the build."""
    from . import progress

    position, partial = 0, b""
    while not _exited(proc, progress.interval()):
        position, partial = _forward(build, position, partial)
    _stop_group(proc.pid)
    code = proc.wait()
    _forward(build, position, partial)
    _finish(build, code, None)


def _exited(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether the builder exited within ``seconds``, leaving it unreaped: while its zombie holds the pid,
    its process group id cannot name anyone else's processes (see :func:`_stop_group`)."""
    if not hasattr(os, "waitid"):  # pragma: no cover - not Linux/macOS
        try:
            proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + seconds
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:
            return True  # reaped elsewhere
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _stop_group(pid: int) -> None:
    """Kill what the builder left running in its session (ninja, the compilers), if it was killed: orphans
    kept compiling, and a later build of the same workspace ran beside them. The builder leads its own
    session; ninja gives each command a process group of its own, so members are found by session id
    (in /proc; elsewhere only the builder's group is reached)."""
    import signal

    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == pid:  # fields after the name: state, ppid, pgrp, session
                members.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    members.discard(pid)
    for member in members:
        try:
            os.kill(member, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _forward(build: Build, position: int, partial: bytes) -> tuple[int, bytes]:
    """New ``jitkernels:`` lines of the builder's log, re-logged here (the builder's progress, its waits)."""
    from . import progress

    try:
        with open(build.log, "rb") as fh:
            fh.seek(position)
            data = fh.read()
    except OSError:
        return position, partial
    position += len(data)
    lines = (partial + data).split(b"\n")
    for raw in lines[:-1]:
        line = raw.decode("utf-8", "replace").strip()
        if line.startswith("jitkernels: "):
            progress.logger.info("jitkernels [background %s]: %s", build.pid, line[len("jitkernels: "):])
    return position, lines[-1]


def _finish(build: Build, code: int, problem: str | None) -> None:
    build.seconds = time.monotonic() - build.started
    if code == 0:
        outcome = "ready"
    else:
        outcome = "failed"
        build.error = problem or _failure(build, code)
    with build._lock:
        build.state = outcome
        callbacks, build._callbacks = build._callbacks, []
    switched = []
    for callback in callbacks:
        try:
            said = callback(build)
        except Exception as exc:  # noqa: BLE001 - one user's switch must not stop the others'
            logger.warning("jitkernels: switching a user of %s failed: %s: %s", build.kernel, type(exc).__name__, exc)
            continue
        if said:
            switched.append(said)
    if outcome == "ready":
        users = "; ".join(switched) if switched else "no layer or function was waiting for it"
        logger.warning("jitkernels: %s is ready (built in the background in %.0fs); switched to it: %s.",
                       build.kernel, build.seconds, users)
    else:
        logger.warning("jitkernels: the background build of %s FAILED: %s. The layers and functions that use it "
                       "stay on their original code in this process (no retry). Builder log: %s",
                       build.kernel, build.error, build.log)
    build._done.set()


def _failure(build: Build, code: int) -> str:
    """What the builder recorded about its failure, else the last line of its log."""
    from .cache.files import read_json

    record = read_json(layout.background_record(build.entry)) or {}
    if record.get("state") == "failed" and record.get("error"):
        build_log = f" (compiler output: {record['build_log']})" if record.get("build_log") else ""
        return str(record["error"]) + build_log
    try:
        tail = [line for line in build.log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        tail = []
    return (tail[-1] if tail else f"the builder exited with status {code}")[:500]


# -- loading with builds deferred ------------------------------------------------------------------

def load_or_defer(load: Callable[[], object]):
    """``(load(), None)``, or ``(None, build)`` when ``load`` needed a native build that now runs in the background."""
    with deferring():
        try:
            return load(), None
        except BuildDeferred as deferred:
            return None, start(deferred)


class SwitchingFunction:
    """Calls ``fallback`` until a kernel's background build is published, then the kernel's function.

    Each call reads the target once: a call in flight finishes on what it started with,
    the next one (from any thread) runs the kernel. :func:`jitkernels.function` makes these.
    """

    def __init__(self, label: str, fallback: Callable, build: Build, resolve: Callable[[], Callable]):
        self.label = label
        self.fallback = fallback
        self.build = build
        self._target: Callable | None = None
        self._resolve = resolve
        build.when_done(self._switch)

    def _switch(self, build: Build) -> str | None:
        if not build.ready:
            return None
        with deferring():  # the builder published it: an import, never a build here
            self._target = self._resolve()
        return f"function {self.label}"

    @property
    def switched(self) -> bool:
        return self._target is not None

    def __call__(self, *args, **kwargs):
        target = self._target
        return (self.fallback if target is None else target)(*args, **kwargs)

    def __repr__(self) -> str:
        state = "kernel" if self._target is not None else f"fallback, build {self.build.state}"
        return f"<jitkernels function {self.label} ({state})>"


# -- the builder process: python -m jitkernels.coldstart '<request json>' ------------------------------

def _write_record(entry: str, fields: dict) -> None:
    from .cache.files import ensure_dir, json_bytes, write_atomic

    path = layout.background_record(entry)
    ensure_dir(path.parent)
    write_atomic(path, json_bytes(fields))


def _prepare(load: dict) -> None:
    from . import pipeline

    if "path" in load:
        pipeline.prepare_local(load["path"], backend=load["backend"], name=load.get("name"))
    else:
        pipeline.prepare_kernel(load["provider"], load["name"], revision=load.get("revision"),
                                backend=load["backend"], trust_remote_code=load.get("trust_remote_code", False))


def main(argv: list[str] | None = None) -> int:
    """Prepare one deferred load (see the module docstring); 0 when its entry is published."""
    from .cache import locks
    from .cache.files import read_json
    from .log import setup

    request = json.loads((argv if argv is not None else sys.argv[1:])[0])
    entry, load, kernel, log = request["entry"], request["load"], request["kernel"], request["log"]
    try:
        os.nice(10)  # the serving process comes first
    except OSError:
        pass
    setup()
    started = time.time()
    with locks.hold(f"background:{entry}", f"building {kernel} in the background", Path(log)):
        earlier = read_json(layout.background_record(entry)) or {}
        if earlier.get("state") == "failed" and earlier.get("finished", 0) >= started:
            logger.error("jitkernels: the same build failed meanwhile in pid %s on %s (%s); not building it again. "
                         "Its log: %s", earlier.get("pid"), earlier.get("host"), earlier.get("error"),
                         earlier.get("log"))
            return EXIT_FAILED_ELSEWHERE
        record = {"state": "building", "entry": entry, "kernel": kernel, "load": load, "pid": os.getpid(),
                  "host": os.uname().nodename, "requested_by": request.get("requested_by"), "log": log,
                  "started": started}
        _write_record(entry, record)
        logger.info("jitkernels: building %s in the background for %s", kernel, request.get("requested_by"))
        try:
            _prepare(load)
        except JitKernelsError as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            error = f"{type(exc).__name__}: {lines[0] if lines else exc}"
            build_log = getattr(exc, "log_path", None)
            _write_record(entry, {**record, "state": "failed", "error": error, "finished": time.time(),
                                  "build_log": str(build_log) if build_log else None})
            logger.error("jitkernels: %s", str(exc))
            return 1
        except BaseException as exc:
            _write_record(entry, {**record, "state": "failed", "error": f"{type(exc).__name__}: {exc}",
                                  "finished": time.time()})
            raise
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(layout.background_record(entry))  # published: nothing left to report
        logger.info("jitkernels: %s is published (%.1fs)", kernel, time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
