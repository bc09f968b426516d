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


def _retire(handler: _FallbackHandler) -> None:
    global _HANDLER
    logger.removeHandler(handler)
    if handler.set_level and level_from_env() is None:
        logger.setLevel(logging.NOTSET)
    if _HANDLER is handler:
        _HANDLER = None


def setup() -> None:
    """Make what JitKernels logs visible without overriding the application (see the module docstring).

    Cheap and idempotent: called before progress lines and once-only messages.
    """
    global _HANDLER
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
    logger.addHandler(handler)
    _HANDLER = handler


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
