"""The ``jitkernels`` logger, with ``warning_once``/``info_once`` so repeated loads say a thing once."""

from __future__ import annotations

import logging

logger = logging.getLogger("jitkernels")
_SAID: set[tuple[int, str]] = set()


def _once(level: int, message: str) -> None:
    key = (level, message)
    if key in _SAID:
        return
    _SAID.add(key)
    logger.log(level, message)


def warning_once(message: str) -> None:
    _once(logging.WARNING, message)


def info_once(message: str) -> None:
    _once(logging.INFO, message)
