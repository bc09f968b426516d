"""The ``jitkernels`` logger: ``warning_once``/``info_once``, and output that is seen without configuring logging.

Library etiquette: JitKernels never configures the application's logging. But
a build that takes two minutes in a container whose application configured
no logging must not be silent (Python would drop its INFO lines). So
:func:`setup`, called when JitKernels is about to say something, gives the
``jitkernels`` logger a stderr handler *only if no handler would receive its
records* (none on ``jitkernels`` or its ancestors, the root included). That
handler retires by itself (and hands the level back) as soon as the
application configures a handler of its own.

``JITKERNELS_LOG_LEVEL`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or a
number) sets the ``jitkernels`` logger's level in every case; unset, it is
INFO while JitKernels' own handler is in use (``DEBUG`` with
``JITKERNELS_VERBOSE=1``), and the application's choice otherwise.

Build progress and the compiling/built lines are different: they are what a
progress bar would show, so :func:`show` makes them reach the user whatever
logging the application configured. Through the application's logging when
that prints them (once, in its format); otherwise straight to stderr (once).
This matters because upstream ``kernels.kernelize`` calls the root
``logging.info()``, which runs ``logging.basicConfig()``: from then on a
root handler exists, at the root's WARNING, and INFO lines sent through
logging would vanish. ``JITKERNELS_LOG_LEVEL`` above INFO, or a level the
application set on the ``jitkernels`` loggers, still silences them.
"""

from __future__ import annotations

import logging
import sys

from . import config

logger = logging.getLogger("jitkernels")
_SAID: set[tuple[int, str]] = set()
LEVEL_ENV = "JITKERNELS_LOG_LEVEL"


def level_from_env() -> int | None:
    """The level ``JITKERNELS_LOG_LEVEL`` asks for (None if unset or unreadable; unreadable is said once)."""
    raw = config.log_level()
    if not raw:
        return None
    if raw.isdigit():
        return int(raw)
    level = logging.getLevelName(raw.upper())
    if isinstance(level, int):
        return level
    _once(logging.WARNING, f"{LEVEL_ENV}={raw!r} is not a logging level (DEBUG, INFO, WARNING, ERROR); ignored.")
    return None


def _verbose() -> bool:
    return config.verbose()


def _others_listen(record_logger: logging.Logger, ours: logging.Handler | None) -> bool:
    """True if a handler other than ``ours`` receives records of ``record_logger`` (propagation included)."""
    current: logging.Logger | None = record_logger
    while current is not None:
        if any(h is not ours for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent  # type: ignore[assignment]
    return False


class _FallbackHandler(logging.Handler):
    """Writes ``message`` lines to the current ``sys.stderr`` while nobody else listens; then retires."""

    def __init__(self, set_level: bool):
        super().__init__()
        self.set_level = set_level  # True: we raised the logger's level, and hand it back on retiring
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if _others_listen(logging.getLogger(record.name), self):
            _retire(self)
            return
        try:
            stream = sys.stderr
            if stream is not None:
                stream.write(self.format(record) + "\n")
                stream.flush()
        except Exception:  # pragma: no cover - stderr closed
            self.handleError(record)


_HANDLER: _FallbackHandler | None = None
#: The level setup() put on the ``jitkernels`` logger while its handler is in use (None: it set none).
_OUR_LEVEL: int | None = None


def _retire(handler: _FallbackHandler) -> None:
    global _HANDLER, _OUR_LEVEL
    logger.removeHandler(handler)
    # hand the level back only if it is still ours: an application (the demo) may have set its own since
    if handler.set_level and level_from_env() is None and logger.level == _OUR_LEVEL:
        logger.setLevel(logging.NOTSET)
    if _HANDLER is handler:
        _HANDLER = None
        _OUR_LEVEL = None


def setup() -> None:
    """Make what JitKernels logs visible without overriding the application (see the module docstring).

    Cheap and idempotent: called before progress lines and once-only messages.
    """
    global _HANDLER, _OUR_LEVEL
    level = level_from_env()
    if level is not None and logger.level != level:
        logger.setLevel(level)
    if _HANDLER is not None and _others_listen(logger, _HANDLER):
        _retire(_HANDLER)  # the application configured logging since: it decides from now on
    if _HANDLER is not None or _others_listen(logger, None):
        return
    default = logging.DEBUG if _verbose() else logging.INFO
    handler = _FallbackHandler(set_level=level is None)
    if level is None:
        logger.setLevel(default)
        _OUR_LEVEL = default
    logger.addHandler(handler)
    _HANDLER = handler


def _level_set_by_others(target: logging.Logger) -> int | None:
    """The first level set on ``target`` or an ancestor that is not the one setup() put on ``jitkernels``."""
    current: logging.Logger | None = target
    while current is not None:
        ours = current is logger and _HANDLER is not None and current.level == _OUR_LEVEL
        if current.level != logging.NOTSET and not ours:
            return current.level
        current = current.parent  # type: ignore[assignment]
    return None


def _application_prints(target: logging.Logger, level: int) -> bool:
    """Would the application's own logging print a ``level`` record of ``target`` (ours left out)?"""
    effective = _level_set_by_others(target)
    if effective is not None and level < effective:
        return False
    current: logging.Logger | None = target
    while current is not None:
        if any(h is not _HANDLER and level >= h.level for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent  # type: ignore[assignment]
    return False


def _jitkernels_threshold(target: logging.Logger) -> int | None:
    """``JITKERNELS_LOG_LEVEL``, else a level set on ``target`` up to the ``jitkernels`` logger by someone else."""
    level = level_from_env()
    if level is not None:
        return level
    current: logging.Logger | None = target
    while current is not None and (current is logger or current.name.startswith("jitkernels.")):
        ours = current is logger and _HANDLER is not None and current.level == _OUR_LEVEL
        if current.level != logging.NOTSET and not ours:
            return current.level
        current = current.parent  # type: ignore[assignment]
    return None


def show(target: logging.Logger, text: str, level: int = logging.INFO, direct: bool = True) -> None:
    """A line the user must see (build progress, compiling/built), once, whatever logging is configured.

    Sent through logging when the application's configuration prints it (its format, its
    destination); otherwise written to stderr (``direct=False``: then not at all, for lines
    that are shown only where the application asked for logs). ``JITKERNELS_LOG_LEVEL``
    above ``level``, or such a level set on the ``jitkernels`` loggers by the application,
    silences it.
    """
    setup()
    threshold = _jitkernels_threshold(target)
    if threshold is not None and level < threshold:
        return
    if _application_prints(target, level):
        target.log(level, text)  # our own handler, if still there, retires on it: printed once
    elif direct:
        stream = sys.stderr
        if stream is not None:
            try:
                stream.write(text + "\n")
                stream.flush()
            except (OSError, ValueError):  # pragma: no cover - stderr closed
                pass


def _once(level: int, message: str) -> None:
    key = (level, message)
    if key in _SAID:
        return
    _SAID.add(key)
    setup()
    logger.log(level, message)


def warning_once(message: str) -> None:
    _once(logging.WARNING, message)


def info_once(message: str) -> None:
    _once(logging.INFO, message)
