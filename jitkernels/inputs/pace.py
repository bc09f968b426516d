"""The pace rule for build-input downloads (CUTLASS archives, CUDA compiler wheels).

A mirror that sends a byte every few seconds never trips the per-read timeout
(``JITKERNELS_TIMEOUT``), and every process waiting on the download's lock waits
with it, since the holder is alive. So a download is also given up when it runs
past ``JITKERNELS_DOWNLOAD_DEADLINE`` or, once it has run ``JITKERNELS_TIMEOUT``
seconds, averages under ``JITKERNELS_DOWNLOAD_MIN_RATE`` bytes per second.
"""

from __future__ import annotations

import time

from .. import config


class Pace:
    """Started when a download starts; :meth:`problem` after each chunk says why to give up, or None."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.grace, self.deadline, self.min_rate = (config.network_timeout(), config.download_deadline(),
                                                    config.download_min_rate())

    def problem(self, size: int) -> str | None:
        elapsed = time.monotonic() - self.start
        if elapsed > self.deadline:
            return f"it was not done after {self.deadline:.0f}s (JITKERNELS_DOWNLOAD_DEADLINE)"
        if elapsed > self.grace and size / elapsed < self.min_rate:
            return (f"it averaged {size / elapsed:.0f} bytes/s after {elapsed:.0f}s, under the minimum "
                    f"{self.min_rate:.0f} (JITKERNELS_DOWNLOAD_MIN_RATE)")
        return None
