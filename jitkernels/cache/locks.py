"""Cache locks that say who holds them, and waiters that give up on a holder that stopped.

:func:`hold` takes the OS file lock of a key (filelock: released by the
kernel when the holder dies, in any container or on any host that shares the
lock's filesystem), then writes a small record next to it: pid, host, boot
id, what it is doing, its log. While it holds the lock a daemon thread
refreshes the record every :data:`HEARTBEAT` seconds, so a holder that is
stopped (SIGSTOP) or hung (a dead NFS server) shows no sign of life.

A waiter says who it waits for at once and every :data:`REPORT_EVERY` seconds,
and raises :class:`LockTimeoutError` once the holder showed no progress (no
heartbeat, or, once its build log started, no change of that log) for
``JITKERNELS_LOCK_TIMEOUT`` seconds (default
:data:`jitkernels.config.DEFAULT_LOCK_TIMEOUT`). A holder that is alive but
hung outside a build (a stalled download) keeps its heartbeat: waiters wait
as long as its own timeouts (``JITKERNELS_TIMEOUT`` per Hub request) allow.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from .. import config
from ..errors import LockTimeoutError
from ..log import logger
from . import layout
from .files import ensure_dir, guard, json_bytes, read_json, write_atomic

HEARTBEAT = 2.0
REPORT_EVERY = 30.0


def _record_path(lock_file: Path) -> Path:
    return Path(str(lock_file) + ".holder.json")


def _describe(record: dict | None, what: str) -> str:
    if not record:
        return f"another process to finish {what}"
    return f"pid {record.get('pid')} on host {record.get('host')} to finish {record.get('what') or what}"


def _progress_mark(record_path: Path, record: dict | None):
    """What changes while the holder makes progress.

    A holder with a build log progresses when the log changes (a hung compiler or a deadlocked
    holder does not, though its heartbeat goes on); before its log starts, and for holders
    without one (downloads, Python payloads), the heartbeat shows it is alive.
    """
    log = (record or {}).get("log")
    try:
        st = os.stat(log) if log else None
    except OSError:
        st = None
    if st is not None and st.st_mtime >= (record or {}).get("since", 0):
        return ("log", st.st_size, st.st_mtime_ns)
    try:
        return ("heartbeat", os.stat(record_path).st_mtime_ns)
    except OSError:
        return ("heartbeat", None)


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(name="jitkernels-lock-heartbeat", daemon=True)
        self.path = path
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT):
            with contextlib.suppress(OSError):
                os.utime(self.path)


def _acquire(lock, lock_file: Path, what: str, wait: bool) -> None:
    import filelock

    try:
        lock.acquire(timeout=0)
        return
    except filelock.Timeout:
        if not wait:
            raise LockTimeoutError(f"Not waiting for {_describe(read_json(_record_path(lock_file)), what)} "
                                   f"(lock {lock_file}).") from None
    record_path = _record_path(lock_file)
    timeout = config.lock_timeout()
    holder = read_json(record_path)
    logger.warning("jitkernels: waiting for %s ...", _describe(holder, what))
    seen = _progress_mark(record_path, holder)
    started = last_progress = last_report = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=min(1.0, timeout))
            return
        except filelock.Timeout:
            pass
        now = time.monotonic()
        holder = read_json(record_path) or holder
        mark = _progress_mark(record_path, holder)
        if mark != seen:
            seen, last_progress = mark, now
        if now - last_progress >= timeout:
            raise LockTimeoutError(
                f"Gave up waiting for {_describe(holder, what)}: it showed no progress for {timeout:.0f}s "
                f"(JITKERNELS_LOCK_TIMEOUT). It may be stopped or hung; if it is gone for good, stop it and "
                f"retry (its lock is released when it exits). Lock: {lock_file}."
            )
        if now - last_report >= REPORT_EVERY:
            last_report = now
            logger.warning("jitkernels: still waiting for %s (%.0fs so far; last progress %.0fs ago)",
                           _describe(holder, what), now - started, now - last_progress)


@contextlib.contextmanager
def hold(key: str, what: str, log: Path | None = None, wait: bool = True):
    """Hold the cache lock of ``key`` for the block, waiting for (or giving up on) another holder.

    ``what`` says what the holder does, for waiters' messages; ``log`` is a file that grows while
    it makes progress (a build log). ``wait=False``: :class:`LockTimeoutError` at once if it is
    held. Filesystem failures are :class:`CacheError`\\ s.
    """
    import filelock

    lock_file = layout.lock_path(key)
    ensure_dir(lock_file.parent)
    lock = filelock.FileLock(str(lock_file), is_singleton=False)
    with guard(lock_file):
        _acquire(lock, lock_file, what, wait)
    record_path = _record_path(lock_file)
    heartbeat = None
    try:
        with contextlib.suppress(OSError):
            write_atomic(record_path, json_bytes({
                "pid": os.getpid(), "host": os.uname().nodename, "what": what,
                "log": str(log) if log else None, "since": time.time(),
            }))
            heartbeat = _Heartbeat(record_path)
            heartbeat.start()
        yield
    finally:
        if heartbeat is not None:
            heartbeat.stopped.set()
        with contextlib.suppress(OSError):
            os.unlink(record_path)
        lock.release()


def holder(key: str) -> dict | None:
    """Who holds the lock of ``key`` now (its record, ``{}`` if it has none), or None if nobody does.

    A probe that never waits: it tries the lock once and lets it go at once.
    """
    import filelock

    lock_file = layout.lock_path(key)
    if not lock_file.exists():
        return None
    lock = filelock.FileLock(str(lock_file), is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return read_json(_record_path(lock_file)) or {}
    except OSError:
        return None
    lock.release()
    return None
