"""``jitkernels test NAME [pytest args]``: a kernel's own ``tests/`` against its JIT build.

What a kernel author runs after an edit. NAME is a kernel source tree (a
folder with ``build.toml``) or a name ``LOCAL_KERNELS`` maps to one. In this
process, before pytest collects anything:

1. the kernel is built (or found in the cache) and loaded through
   ``jitkernels.load`` under its repository id, served from the folder by
   ``LOCAL_KERNELS`` (set for this process if it was not); a local tree keeps
   its build workspace, so after an edit only the changed units recompile;
2. it is made importable by its own package name (:func:`jitkernels.importer.alias`:
   ``from flash_attn2.flash_attn_interface import ...`` is the loaded module,
   never a second execution of its files);
3. upstream ``kernels`` (if installed) is patched, so suites written as
   ``kernels.get_kernel("kernels-community/relu", version=1)`` get the same module;
   unless the suite's own ``tests/kernels/`` package takes that name (paged-attention):
   then, as in the kernel's own CI, ``import kernels`` is that folder.

Then pytest runs the folder's ``tests/`` with the remaining arguments (``-k``,
``-x``, a file...). ``--time-box SECONDS`` stops starting new tests once that
much time has passed (the run reports the cut). pytest's cache goes to the
JitKernels cache folder and no bytecode is written, so the source tree is left
as it was.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidKernelNameError


@dataclass
class Suite:
    folder: Path
    repo_id: str
    tests: Path


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    return tomllib.loads(path.read_text())


def find_suite(name: str) -> Suite:
    """The kernel folder and repository id NAME stands for, and its ``tests/`` folder."""
    from .. import config
    from ..identity import parse_local_kernels

    folder, repo_id = None, None
    candidate = Path(name).expanduser()
    if (candidate / "build.toml").is_file():
        folder = candidate.resolve()
    else:
        mapping = parse_local_kernels(config.local_kernels_spec()) if config.local_kernels_spec() else {}
        for mapped_id, path in mapping.items():
            if name in (mapped_id, mapped_id.rsplit("/", 1)[-1]):
                folder, repo_id = path.resolve(), mapped_id
                break
        if folder is None:
            from ..suggest import close_names

            hint = close_names(name, list(mapping))
            raise InvalidKernelNameError(
                f"jitkernels test {name}: not a kernel source tree (no {candidate / 'build.toml'}) and not a "
                f"name LOCAL_KERNELS maps to a folder. It runs a kernel's tests/ from its source tree: give the "
                f"folder, or set LOCAL_KERNELS=\"org/{name}=/path/to/{name}\".{hint}"
            )
    build = _read_toml(folder / "build.toml") if (folder / "build.toml").is_file() else {}
    general = build.get("general", {})
    if repo_id is None:
        repo_id = general.get("hub", {}).get("repo-id") or f"{config.hf_default_org()}/{general.get('name', folder.name)}"
    tests = folder / "tests"
    if not tests.is_dir():
        raise InvalidKernelNameError(f"jitkernels test {name}: {folder} has no tests/ folder to run.")
    return Suite(folder, repo_id, tests)


def _top_level_packages(tests: Path) -> dict[str, Path]:
    """The top-level packages pytest's default import mode makes of the suite's folders, by name: a folder holding
    an ``__init__.py`` whose parent holds none (``tests/kernels/``, ``tests/unit/kernels/``, or ``tests/`` itself)."""
    return {init.parent.name: init.parent for init in [tests / "__init__.py", *tests.rglob("*/__init__.py")]
            if init.exists() and not (init.parent.parent / "__init__.py").exists()}


def _names_tests(arg: str, folder: Path) -> bool:
    """Whether a pytest argument picks tests by path (``tests/test_x.py``, ``tests/test_x.py::test_y``, ``tests/``):
    then it replaces the whole ``tests/`` folder. A bare word (an option's value, ``-k tests``) does not."""
    path = arg.split("::", 1)[0]
    if arg.startswith("-") or not ("/" in path or path.endswith(".py")):
        return False
    return (folder / path).exists() or Path(path).exists()


class TimeBox:
    """A pytest plugin: once ``seconds`` have passed, no further test is started; it counts outcomes,
    and declares the markers kernels-community suites use without declaring them (``kernels_ci``)."""

    MARKERS = ("kernels_ci: the kernels-community CI smoke subset",)

    def pytest_configure(self, config) -> None:
        for line in self.MARKERS:
            config.addinivalue_line("markers", line)

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.monotonic()
        self.cut_after: int | None = None
        self.outcomes: dict[str, int] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.outcome != "passed":
            key = report.outcome if report.when == "call" or report.outcome == "skipped" else "error"
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        if self.seconds is not None and time.monotonic() - self.start > self.seconds and self.cut_after is None:
            self.cut_after = sum(self.outcomes.values())
            self._session.shouldstop = f"jitkernels test: time box of {self.seconds:g}s reached"

    def pytest_sessionstart(self, session) -> None:
        self._session = session


def run(name: str, pytest_args: list[str], *, backend: str | None = None, time_box: float | None = None,
        say=print) -> tuple[int, dict]:
    """Load the kernel as described above and run its tests; (pytest's exit code, a summary)."""
    try:
        import pytest
    except ModuleNotFoundError:
        raise InvalidKernelNameError("jitkernels test needs pytest: pip install pytest") from None
    import jitkernels

    from .. import config

    suite = find_suite(name)
    spec = config.local_kernels_spec()
    entry = f"{suite.repo_id}={suite.folder}"
    local_kernels = os.environ.get("LOCAL_KERNELS")  # put back when the run ends (an in-process caller's)
    if entry not in spec.split(":"):
        os.environ["LOCAL_KERNELS"] = entry + (":" + spec if spec else "")
    sys.dont_write_bytecode = True  # leave the source tree as it was
    start = time.monotonic()
    module = jitkernels.load("hf", suite.repo_id, backend=backend, alias=True)
    package = Path(module.__file__).parent.name
    say(f"jitkernels test: {suite.repo_id} from {suite.folder} is {module.__name__} "
        f"(ready in {time.monotonic() - start:.1f}s), importable as {package}")
    patch = None
    hidden: dict = {}
    shadowing = _top_level_packages(suite.tests).get("kernels")
    shadowed = shadowing is not None
    if shadowed:
        # paged-attention's tests/kernels/ is imported as `kernels` (pytest's default import mode, tests/ not a
        # package): in the kernel's own CI nothing imported upstream `kernels` first, so the suite's folder wins.
        hidden = {n: m for n, m in sys.modules.items() if n == "kernels" or n.startswith("kernels.")}
        for n in hidden:
            del sys.modules[n]
        say(f"jitkernels test: the suite's {shadowing.relative_to(suite.folder).as_posix()}/ package is imported as `kernels`, as in the "
            f"kernel's own CI, so upstream kernels is not patched for this run")
    else:
        try:
            import kernels  # noqa: F401  (patch it now, so a suite's `import kernels` finds it patched)

            patch = jitkernels.patch()  # undone at the end only if this call patched (not an autopatch)
            say(f"jitkernels test: kernels.get_kernel({suite.repo_id!r}, ...) gives the same module (patched)")
        except ImportError:
            say("jitkernels test: upstream kernels is not installed; suites that use kernels.get_kernel cannot run")
    box = TimeBox(time_box)
    cache = config.cache_dir() / "pytest" / package
    chosen = [a for a in pytest_args if _names_tests(a, suite.folder)]
    args = [*([] if chosen else [str(suite.tests)]), "--rootdir", str(suite.folder), "-o", f"cache_dir={cache}",
            "-W", "ignore::pytest.PytestAssertRewriteWarning", *pytest_args]  # plugins imported before pytest
    cwd, path = os.getcwd(), list(sys.path)
    os.chdir(suite.folder)  # conftest plugins such as `tests.fixtures.fixtures` import from the kernel folder
    try:
        code = int(pytest.main(args, plugins=[box]))
    finally:
        os.chdir(cwd)
        sys.path[:] = path  # pytest put the suite's folders first
        if patch is not None:
            patch.__exit__(None, None, None)
        if shadowed:
            for n in [n for n in sys.modules if n == "kernels" or n.startswith("kernels.")]:
                del sys.modules[n]  # the suite's folder, imported under that name
            sys.modules.update(hidden)
            from ..upstream import patching

            patching.rearm_import_hook()
        if local_kernels is None:
            os.environ.pop("LOCAL_KERNELS", None)
        else:
            os.environ["LOCAL_KERNELS"] = local_kernels
    summary = {"kernel": suite.repo_id, "folder": str(suite.folder), "module": module.__name__,
               "package": package, "exit_code": code, "outcomes": box.outcomes,
               "time_box": time_box, "cut_after": box.cut_after}
    if box.cut_after is not None and code == int(pytest.ExitCode.INTERRUPTED) and not (
            box.outcomes.get("failed") or box.outcomes.get("error")):
        code = summary["exit_code"] = 0  # the time-boxed subset passed: pytest calls the stop an interruption
    if box.cut_after is not None:
        say(f"jitkernels test: cut by the {time_box:g}s time box after {box.cut_after} tests")
    return code, summary
