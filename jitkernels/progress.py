"""Progress of long work (Hub fetches, native builds, archive downloads) where the user actually looks.

One small API for every kind of long work::

    from jitkernels import progress

    with progress.task("jitkernels: building _relu_cpu_1a2b", total=12, unit="unit", eta_after=3) as t:
        t.set(3, detail="CXX relu.cpp")      # absolute count ...
        t.advance(1)                         # ... or a step
    with progress.task("jitkernels: downloading CUTLASS 3.8.0", total=size, unit="B") as t:
        t.advance(len(chunk))

How it is shown depends on where the process runs (decided per task):

* a terminal (stderr is a TTY): a tqdm bar on stderr, its elapsed time ticking;
* a Jupyter notebook: a tqdm notebook widget (``tqdm.notebook``, if ipywidgets is
  installed, else a tqdm bar in the cell's stderr);
* anything else (CI, ``docker logs``, a service): plain lines, the first when
  the work starts, then at most one every ``JITKERNELS_PROGRESS_INTERVAL``
  seconds (default 5), and a last one when it ends. They go through the
  ``jitkernels.progress`` logger at INFO where the application's logging prints
  that, else straight to stderr (:func:`jitkernels.log.show`): seen once, whatever
  logging the application or a library (upstream ``kernelize``) configured.

Counts show ``N/M``, the elapsed time and, once ``eta_after`` steps are done, an
estimate of the time left (tqdm's formatting). A task opened with ``delay``
shows nothing unless it is still running after that many seconds (fetches of a
few small files stay quiet).

:func:`say` is for one-off lines of the same kind (``jitkernels: compiling ...``,
``jitkernels: built ... in 12.3s``): shown as progress is, only logged when it is silenced.

Silenced by ``JITKERNELS_PROGRESS=0``, by huggingface_hub's
``HF_HUB_DISABLE_PROGRESS_BARS=1`` (or its ``disable_progress_bars()``), or by
:func:`set_enabled`; ``JITKERNELS_PROGRESS=1`` shows progress even then.
Failures are never silenced: they are errors, raised to the caller.

``combined(parent, label)`` makes the tasks a thread opens report to a parent
task (its line shows the latest child status) instead of drawing their own: what
``jitkernels warmup`` uses to keep parallel work in one display.

tqdm is imported only when a task is shown (it comes with huggingface_hub).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from . import config

__all__ = ["task", "say", "Task", "combined", "enabled", "set_enabled", "interval", "display_mode", "hub_tqdm_class"]

#: Logger of the plain progress lines (a child of ``jitkernels``).
logger = logging.getLogger("jitkernels.progress")

_FORCED: bool | None = None
_LOCAL = threading.local()


def set_enabled(value: bool | None) -> None:
    """Show (True) or hide (False) progress in this process; ``None`` goes back to the environment."""
    global _FORCED
    _FORCED = value


def enabled() -> bool:
    """False when silenced: :func:`set_enabled`, ``JITKERNELS_PROGRESS``, then huggingface_hub's switches."""
    if _FORCED is not None:
        return _FORCED
    ours = config.progress()
    if ours is not None:
        return ours
    if config.hf_progress_bars_disabled():
        return False
    hub = sys.modules.get("huggingface_hub.utils.tqdm")  # only if already imported: never import it here
    check = getattr(hub, "are_progress_bars_disabled", None)
    if check is not None:
        try:
            return not check()
        except Exception:  # pragma: no cover - an older or newer signature
            return True
    return True


def interval() -> float:
    """Seconds between two plain progress lines (``JITKERNELS_PROGRESS_INTERVAL``, default 5, at least 0.1)."""
    return config.progress_interval()


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def display_mode() -> str:
    """``off``, ``notebook``, ``tty`` or ``log``: how a task started now is shown."""
    if not enabled():
        return "off"
    if _in_notebook():
        return "notebook"
    stream = sys.stderr
    try:
        if stream is not None and stream.isatty():
            return "tty"
    except (AttributeError, ValueError):  # closed or replaced stderr
        pass
    return "log"


def _formats(unit: str | None, with_eta: bool, known_total: bool) -> str:
    if unit is None:  # work without a count: only the time it has taken
        return "{desc}: [{elapsed} elapsed]{postfix}"
    if unit == "B":
        count = "{n_fmt}B/{total_fmt}B" if known_total else "{n_fmt}B"
    else:
        count = "{n_fmt}/{total_fmt} {unit}s" if known_total else "{n_fmt} {unit}s"
    times = "{elapsed} elapsed, ETA {remaining}" if with_eta else "{elapsed} elapsed"
    return "{desc}: " + count + " [" + times + "]{postfix}"


def _tty_format(unit: str | None, with_eta: bool, known_total: bool) -> str:
    if not known_total or unit is None:
        return _formats(unit, False, False)
    count = "{n_fmt}B/{total_fmt}B" if unit == "B" else "{n_fmt}/{total_fmt} {unit}s"
    times = "{elapsed}<{remaining}" if with_eta else "{elapsed}"
    return "{desc}: {percentage:3.0f}%|{bar}| " + count + " [" + times + "]{postfix}"


class Task:
    """One piece of long work being shown; use :func:`task` to make one."""

    def __init__(self, description: str, total: int | None = None, unit: str | None = "item", *,
                 eta_after: int | None = 1, delay: float = 0.0, mode: str | None = None):
        self.description = description
        self.total = total
        self.unit = unit
        self.eta_after = None if eta_after is None else max(1, eta_after)
        self.delay = max(0.0, delay)
        self.n = 0
        self.detail = ""
        self.start = time.monotonic()
        self.outcome: str | None = None
        self._lock = threading.RLock()
        self._parent = getattr(_LOCAL, "parent", None)
        self._label = getattr(_LOCAL, "label", None) if self._parent is not None else None
        self.mode = "child" if self._parent is not None else (mode or display_mode())
        self._bar = None  # the tqdm instance (tty, notebook), made once the delay is over
        self._shown = False
        self._last_line = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.mode in ("tty", "notebook", "log"):
            self._ticker = threading.Thread(target=self._tick, name="jitkernels-progress", daemon=True)
            self._ticker.start()
        self._refresh(force=True)

    # -- what callers do ----------------------------------------------------------------
    def set(self, n: int, total: int | None = None, detail: str | None = None) -> None:
        """Set the count done (and the total, and a short detail such as the unit being compiled)."""
        with self._lock:
            self.n = n
            if total is not None:
                self.total = total
            if detail is not None:
                self.detail = detail
            self._refresh()

    def advance(self, step: int = 1, detail: str | None = None) -> None:
        with self._lock:
            self.set(self.n + step, detail=detail)

    def finish(self, ok: bool = True, summary: str | None = None) -> None:
        """End the task: a final line (or the bar left complete); idempotent."""
        with self._lock:
            if self.outcome is not None:
                return
            self.outcome = "ok" if ok else "failed"
            if summary is not None or ok:
                self.detail = summary or ""  # a finished task shows its result, not its last step
            self._stop.set()
            self._render_final(ok)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(ok=exc_type is None)

    # -- text ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def _with_eta(self) -> bool:
        return (self.eta_after is not None and self.total is not None and self.total > 0
                and self.eta_after <= self.n < self.total)

    def line(self, final: bool = False) -> str:
        """The plain one-line status, as the log lines show it."""
        from tqdm.std import tqdm

        known = self.total is not None
        text = tqdm.format_meter(
            self.n, self.total if known else None, self.elapsed(), prefix=self.description,
            unit=self.unit or "it", unit_scale=self.unit == "B",
            bar_format=_formats(self.unit, self._with_eta() and not final, known),
            postfix=self.detail or None,
        )
        return text

    # -- rendering ----------------------------------------------------------------------
    def _due(self) -> bool:
        return self.elapsed() >= self.delay

    def _refresh(self, force: bool = False) -> None:
        if self.outcome is not None or self.mode == "off" or not self._due():
            return
        if self.mode == "child":
            self._parent._child_status(self)
        elif self.mode == "log":
            now = time.monotonic()
            if force or not self._shown or now - self._last_line >= interval():
                self._emit(self.line())
                self._last_line = now
        else:
            bar = self._ensure_bar()
            if bar is not None:
                bar.total = self.total
                bar.bar_format = _tty_format(self.unit, self._with_eta(), self.total is not None)
                bar.n = self.n
                bar.set_postfix_str(self.detail[:60], refresh=False)
                bar.refresh()

    def _emit(self, text: str) -> None:
        from .log import show

        self._shown = True
        show(logger, text)

    def _ensure_bar(self):
        if self._bar is None:
            if self.mode == "notebook":
                try:
                    import importlib.util

                    if importlib.util.find_spec("ipywidgets") is None:
                        raise ImportError("ipywidgets")
                    from tqdm.notebook import tqdm as bar_class
                except ImportError:
                    from tqdm.std import tqdm as bar_class
            else:
                from tqdm.std import tqdm as bar_class
            self._bar = bar_class(
                total=self.total, desc=self.description, unit=self.unit or "it", unit_scale=self.unit == "B",
                file=sys.stderr, leave=True, dynamic_ncols=True, smoothing=0, initial=self.n,
                mininterval=0.2, bar_format=_tty_format(self.unit, False, self.total is not None),
            )
            self._bar.start_t -= self.elapsed()  # count from when the work began, not from the first draw
            self._shown = True
        return self._bar

    def _render_final(self, ok: bool) -> None:
        if self.mode == "off":
            return
        if self.mode == "child":
            self._parent._child_status(self)
            return
        if not self._shown and ok and not self._due():
            return  # quick work under its delay: nothing was shown, nothing to close
        if self.mode == "log":
            self._emit(self.line(final=True))
        else:
            bar = self._ensure_bar()
            bar.total = self.total
            bar.n = self.n
            bar.bar_format = _tty_format(self.unit, False, self.total is not None)
            bar.set_postfix_str(self.detail[:60], refresh=False)
            bar.close()

    def _tick(self) -> None:
        period = 1.0 if self.mode in ("tty", "notebook") else interval()
        if self.delay and not self._stop.wait(self.delay):  # show delayed work as soon as it is due
            with self._lock:
                if self.outcome is None:
                    self._refresh()
        while not self._stop.wait(period):
            with self._lock:
                if self.outcome is None:
                    self._refresh()

    # -- children (combined display) ----------------------------------------------------
    def _child_status(self, child: Task) -> None:
        if child.outcome is not None:
            state = "done" if child.outcome == "ok" else "failed"
        elif child.total:
            state = f"{child.n}/{child.total} {child.unit or 'step'}s"
        else:
            state = "running"
        with self._lock:
            self.detail = f"{child._label or child.description}: {child.description.removeprefix('jitkernels: ')} {state}"
            self._refresh()


def say(target: logging.Logger, text: str) -> None:
    """A one-off line about long work (compiling, built): shown like progress; when progress is
    silenced, only logged where the application's logging prints it."""
    from .log import show

    show(target, text, direct=enabled())


def task(description: str, total: int | None = None, unit: str | None = "item", *, eta_after: int | None = 1,
         delay: float = 0.0) -> Task:
    """Start showing one piece of long work (a context manager; see the module docstring).

    ``unit="B"`` counts bytes (shown as kB, MB...), ``unit=None`` counts nothing (only the
    time taken is shown); ``eta_after`` is the number
    of steps after which an estimate of the time left is shown (None: never); ``delay`` hides
    work that ends sooner than that many seconds.
    """
    return Task(description, total, unit, eta_after=eta_after, delay=delay)


@contextmanager
def combined(parent: Task, label: str) -> Iterator[None]:
    """Tasks opened by this thread inside the block report to ``parent`` under ``label``."""
    previous = getattr(_LOCAL, "parent", None)
    _LOCAL.parent = parent
    _LOCAL.label = label
    try:
        yield
    finally:
        _LOCAL.parent = previous


def hub_tqdm_class(owner: Task):
    """A tqdm class for huggingface_hub's ``snapshot_download(tqdm_class=...)`` feeding ``owner``.

    huggingface_hub opens one bar counting files and one or two counting bytes;
    the file bar drives ``owner`` (files fetched), the byte bars are silent.
    """
    from tqdm.std import tqdm

    class _HubFiles(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            self._counts_files = kwargs.get("unit", "it") != "B"
            kwargs.update(file=_Discard(), disable=False, mininterval=0, miniters=1, delay=0)
            super().__init__(*args, **kwargs)
            if self._counts_files and self.total:
                owner.set(owner.n, total=self.total)

        def display(self, msg=None, pos=None):  # called by tqdm whenever it would redraw
            if self._counts_files:
                owner.set(int(self.n))
            return True

    _HubFiles.monitor_interval = 0
    return _HubFiles


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass
