"""The docs are true: every example in docs/ runs against the local Hub, every error message in the
troubleshooting page is produced and matched, every environment variable the code reads is in the table,
and every ``jitkernels`` command line in the README and the docs parses."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import jitkernels
from jitkernels.cli.main import build_parser

from conftest import EXAMPLES, ROOT, child_env, tree

DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\S*)([^\n]*)\n(.*?)^```\s*$", re.M | re.S)


def _blocks(path: Path) -> list[tuple[str, str, str]]:
    """``(language, info after it, body)`` of every fenced block."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(path.read_text())]


def _runnable(language: str) -> list:
    out = []
    for page in sorted(DOCS.glob("*.md")):
        for index, (lang, info, body) in enumerate(_blocks(page)):
            if lang == language and "runnable" in info.split():
                out.append(pytest.param(body, id=f"{page.stem}-{index}"))
    return out


def _env(hub, tmp_path, **extra) -> dict:
    env = child_env(HF_ENDPOINT=hub.endpoint, HF_HOME=tmp_path / "hf", HF_HUB_CACHE=tmp_path / "hf" / "hub",
                    JITKERNELS_CACHE=tmp_path / "jk", HF_HUB_DISABLE_TELEMETRY=1, **extra)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # this venv's `jitkernels`
    return env


def test_every_code_example_is_marked_runnable():
    for page in sorted(DOCS.glob("*.md")):
        for lang, info, _body in _blocks(page):
            if lang in ("python", "py", "console", "bash", "sh", "shell"):
                assert "runnable" in info.split(), f"{page.name}: a ```{lang} block that no test runs"


@pytest.mark.parametrize("code", _runnable("python"))
def test_python_examples_run(hub, tmp_path, code):
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=_env(hub, tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]


def _line_pattern(text: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in text.strip().split("...")))


@pytest.mark.parametrize("block", _runnable("console"))
def test_console_examples_run_and_print_what_they_show(hub, tmp_path, block):
    """``$ command`` lines run in a shell (``# exit N`` gives the expected status); the lines shown after a
    command must appear in its output in that order (``...`` stands for anything)."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip() and line.strip() != "...":
            steps[-1][1].append(line)
    assert steps
    for command, shown in steps:
        match = re.search(r"#\s*exit\s+(\d+)\s*$", command)
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                             env=_env(hub, tmp_path))
        assert out.returncode == (int(match.group(1)) if match else 0), (command, out.stdout, out.stderr[-3000:])
        lines = (out.stdout + out.stderr).splitlines()
        position = 0
        for expected in shown:
            pattern = _line_pattern(expected)
            while position < len(lines) and not pattern.fullmatch(lines[position].strip()):
                position += 1
            assert position < len(lines), f"{command}: {expected.strip()!r} not in its output:\n" + "\n".join(lines)
            position += 1


# -- troubleshooting: every documented message is produced and matches ---------------------------------

def _troubles() -> dict[str, str]:
    text = (DOCS / "troubleshooting.md").read_text()
    found = re.findall(r"<!-- check: ([\w-]+) -->\s*```text\n(.*?)\n```", text, re.S)
    return {key: message.strip() for key, message in found}


def _message_pattern(message: str) -> re.Pattern:
    parts = re.split(r"(<[^<>]+>|\.\.\.)", message)
    return re.compile("".join(".+?" if re.fullmatch(r"<[^<>]+>|\.\.\.", p) else re.escape(p) for p in parts))


def _raise(call):
    try:
        call()
    except jitkernels.JitKernelsError as exc:
        return exc
    raise AssertionError("no error")


def _trigger(key: str, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    load = jitkernels.load
    if key == "not-found":
        return _raise(lambda: load("hf", "kernels-community/no-such-kernel", version=1))
    if key == "no-revision":
        return _raise(lambda: load("hf", "kernels-community/triton-layer-norm", version=9))
    if key == "missing-source":
        return _raise(lambda: load("hf", "kernels-test/binary-only", version=1, backend="cpu"))
    if key == "unsupported-dependency":
        files = tree(EXAMPLES / "scaled-add")
        files["build.toml"] = files["build.toml"].replace(b'depends = ["torch"]\ncuda', b'depends = ["torch", "sycl_tla"]\ncuda')
        hub.add_repo("kernels-test/needs-sycl", {"main": files})
        return _raise(lambda: load("hf", "kernels-test/needs-sycl", revision="main", backend="cuda"))
    if key == "untrusted":
        return _raise(lambda: load("hf", "some-user/rms-norm", revision="main"))
    if key == "network":
        hub.down = True
        return _raise(lambda: load("hf", "jitkernels-examples/rms-norm", revision="main"))
    if key == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        return _raise(lambda: load("hf", "jitkernels-examples/rms-norm", revision="main"))
    if key == "no-nvcc":
        monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda-here"))
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
        return _raise(lambda: load("hf", "jitkernels-examples/scaled-add", revision="main", backend="cuda"))
    if key == "python-depends":
        files = tree(EXAMPLES / "rms-norm")
        files["build.toml"] = files["build.toml"].replace(b"[general.hub]", b'python-depends = ["helion"]\n\n[general.hub]')
        hub.add_repo("kernels-test/needs-a-package", {"main": files})
        return _raise(lambda: load("hf", "kernels-test/needs-a-package", revision="main", backend="cpu"))
    if key == "build-disabled":
        monkeypatch.setenv("JITKERNELS_DISABLE_BUILD", "1")
        return _raise(lambda: load("hf", "jitkernels-examples/scaled-add", revision="main", backend="cpu"))
    if key == "cache":
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        monkeypatch.setenv("JITKERNELS_CACHE", str(blocker))
        return _raise(lambda: load("hf", "jitkernels-examples/rms-norm", revision="main"))
    if key == "compile-error":
        import shutil

        copy = tmp_path / "scaled-add"
        shutil.copytree(EXAMPLES / "scaled-add", copy)
        source = copy / "scaled_add_cpu" / "scaled_add_cpu.cpp"
        source.write_text(source.read_text() + "\nthis is not C++;\n")
        return _raise(lambda: jitkernels.load_local(copy, backend="cpu"))
    raise KeyError(key)


SLOW_TROUBLES = {"compile-error"}  # compiles


def test_troubleshooting_lists_at_least_ten_checked_errors():
    assert len(_troubles()) >= 10


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW_TROUBLES else k
                                 for k in _troubles()])
def test_troubleshooting_messages_are_exact(online, tmp_path, monkeypatch, key):
    exc = _trigger(key, online, tmp_path, monkeypatch)
    first_line = str(exc).strip().splitlines()[0]  # a compile error's compiler output follows its first line
    seen = f"{type(exc).__name__}: {first_line}"
    documented = _troubles()[key]
    assert _message_pattern(documented).fullmatch(seen), f"\ndocumented: {documented}\nactual:     {seen}"


# -- environment variables -------------------------------------------------------------------------------

def _env_names_in_code() -> set[str]:
    """Names the package reads from os.environ: direct keys, module constants, and tuples looped over."""
    names: set[str] = set()
    for path in (ROOT / "jitkernels").rglob("*.py"):
        if "testing" in path.parts:
            continue
        module = ast.parse(path.read_text())
        constants = {t.id: n.value.value for n in ast.walk(module) if isinstance(n, ast.Assign)
                     for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)
                     and isinstance(n.value.value, str)}

        def key_of(node):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return node.value
            if isinstance(node, ast.Name):
                return constants.get(node.id)
            return None

        loops = {}
        for node in ast.walk(module):
            if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name) \
                    and isinstance(node.iter, ast.Tuple):
                loops.setdefault(node.target.id, []).extend(key_of(e) for e in node.iter.elts)
        for node in ast.walk(module):
            key = None
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                text = ast.unparse(func)
                if text.endswith(("environ.get", "environ.pop", "os.getenv")) or text in ("_flag", "_seconds", "switch"):
                    key = node.args[0]
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("environ"):
                key = node.slice
            if key is None:
                continue
            if isinstance(key, ast.Name) and key.id in loops:
                names.update(k for k in loops[key.id] if k)
            elif key_of(key):
                names.add(key_of(key))
    return {n for n in names if re.fullmatch(r"[A-Z][A-Z0-9_]+", n)}


def test_every_environment_variable_is_in_the_table():
    table = (DOCS / "environment.md").read_text()
    documented = set(re.findall(r"^\| (.*?) \|", table, re.M))
    documented = {name for cell in documented for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    read = _env_names_in_code()
    assert {"JITKERNELS_CACHE", "JITKERNELS_LOG_LEVEL", "JITKERNELS_FALLBACK", "CUDA_PATH"} <= read  # the scan works
    assert read - documented == set(), "read by the code but missing from docs/environment.md"
    assert documented - read - {"HF_HUB_DISABLE_PROGRESS_BARS"} <= {"HF_ENDPOINT"}, documented - read


# -- command lines ----------------------------------------------------------------------------------------

def _command_lines() -> list:
    out = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for lang, _info, body in _blocks(page):
            for line in body.splitlines():
                if lang == "console":  # output lines are not commands
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                line = line.strip()
                if line.startswith("jitkernels ") or line == "jitkernels":
                    out.append(pytest.param(line, id=f"{page.name}:{line[:40]}"))
    return out


@pytest.mark.parametrize("line", _command_lines())
def test_every_documented_command_line_parses(line):
    words = shlex.split(line.split(" #", 1)[0])[1:]
    words = ["x" if re.fullmatch(r"<[^>]+>", w) else w for w in words]
    if words == ["--version"]:
        return
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"{line!r} does not parse (exit {exc.code})")


def test_the_cache_layout_page_is_the_one_the_code_owns():
    from jitkernels.cache.layout import LAYOUT

    blocks = [body for lang, _info, body in _blocks(DOCS / "cache.md") if lang == "text"]
    assert LAYOUT.strip("\n") in [b.strip("\n") for b in blocks]


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        assert f"docs/{page.name}" in readme, page.name
    assert os.path.exists(DOCS / "README.md")
