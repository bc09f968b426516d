"""Cache locks that say who holds them, and waiters that give up on a holder that stopped.

:func:`hold` takes the OS file lock of a key (filelock: released by the
kernel when the holder dies, in any container or on any host that shares the
lock's filesystem), then writes a small record next to it: pid, host, boot
id, what it is doing, its log. While it holds the lock a daemon thread
refreshes the record every :data:`HEARTBEAT` seconds, so a holder that is
stopped (SIGSTOP) or hung (a dead NFS server) shows no sign of life.

A waiter says who it waits for at once and every :data:`REPORT_EVERY` seconds,
and raises :class:`LockTimeoutError` once the holder showed no progress (no
heartbeat, and its build log did not grow) for ``JITKERNELS_LOCK_TIMEOUT``
seconds (default :data:`jitkernels.config.DEFAULT_LOCK_TIMEOUT`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from . import cache, config
from .errors import LockTimeoutError
from .log import logger

HEARTBEAT = 2.0
REPORT_EVERY = 30.0


def _record_path(lock_file: Path) -> Path:
    return Path(str(lock_file) + ".holder.json")


def _describe(record: dict | None) -> str:
    if not record:
        return "another process (it has not said who it is yet)"
    return f"pid {record.get('pid')} on host {record.get('host')} ({record.get('what')})"


def _signs_of_life(record_path: Path, log: str | None) -> tuple:
    """What changes while the holder makes progress: its heartbeat and its log's size."""
    marks = []
    for path in (record_path, log):
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        marks.append((stat.st_mtime_ns, stat.st_size) if stat else None)
    return tuple(marks)


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(name="jitkernels-lock-heartbeat", daemon=True)
        self.path = path
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT):
            with contextlib.suppress(OSError):
                os.utime(self.path)


def _acquire(lock, key: str, lock_file: Path, what: str) -> None:
    import filelock

    try:
        lock.acquire(timeout=0)
        return
    except filelock.Timeout:
        pass
    record_path = _record_path(lock_file)
    timeout = config.lock_timeout()
    holder = cache.read_json(record_path)
    logger.warning("jitkernels: waiting for %s to finish %s ...", _describe(holder), what)
    seen = _signs_of_life(record_path, (holder or {}).get("log"))
    started = last_progress = last_report = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=min(1.0, timeout))
            return
        except filelock.Timeout:
            pass
        now = time.monotonic()
        holder = cache.read_json(record_path) or holder
        marks = _signs_of_life(record_path, (holder or {}).get("log"))
        if marks != seen:
            seen, last_progress = marks, now
        if now - last_progress >= timeout:
            raise LockTimeoutError(
                f"Gave up waiting for {_describe(holder)} to finish {what}: it showed no progress for "
                f"{timeout:.0f}s (JITKERNELS_LOCK_TIMEOUT). It may be stopped or hung; if it is gone for good, "
                f"stop it and retry (its lock is released when it exits). Lock: {lock_file}."
            )
        if now - last_report >= REPORT_EVERY:
            last_report = now
            logger.warning("jitkernels: still waiting for %s to finish %s (%.0fs so far; last progress %.0fs ago)",
                           _describe(holder), what, now - started, now - last_progress)


@contextlib.contextmanager
def hold(key: str, what: str, log: Path | None = None):
    """Hold the cache lock of ``key`` for the block, waiting for (or giving up on) another holder.

    ``what`` says what the holder does, for waiters' messages; ``log`` is a file that grows while
    it makes progress (a build log). Filesystem failures are :class:`CacheError`\\ s.
    """
    import filelock

    lock_file = cache.lock_path(key)
    cache.ensure_dir(lock_file.parent)
    lock = filelock.FileLock(str(lock_file), is_singleton=False)
    with cache.guard(lock_file):
        _acquire(lock, key, lock_file, what)
    record_path = _record_path(lock_file)
    heartbeat = None
    try:
        with contextlib.suppress(OSError):
            cache.write_atomic(record_path, cache.json_bytes({
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
