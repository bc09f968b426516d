"""The package's layers (docs/architecture.md draws them): no import circle, no import that runs up.

Every ``import`` of a ``jitkernels`` module by another, at module level or inside
a function, is an edge. An edge may only point to the same layer or a lower
one, and the graph of edges has no cycle. The foundation imports nothing but
the standard library at module level, and ``errors.py`` imports nothing of ours.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jitkernels"

#: Bottom to top. A name ending in ".*" covers a package's modules; a bare package name is its __init__.
LAYERS = [
    ("foundation", ["errors", "config", "log", "progress", "identity", "trust", "importer", "suggest",
                    "cache.layout", "cache.files", "machine", "upstream.lockfiles",
                    "cache", "plan", "build", "build.native", "upstream", "testing"]),
    ("cache", ["cache.manifest", "cache.locks", "cache.workspaces", "cache.index", "cache.remote",
               "cache.entries", "cache.admin"]),
    ("warm path", ["warm"]),
    ("providers", ["providers", "providers.base", "providers.local", "providers.git", "providers.hf"]),
    ("plan", ["plan.buildconfig", "plan.metadata", "inputs", "inputs.*", "plan.strategy", "plan.inspection",
              "plan.planner"]),
    ("build", ["build.toolchain", "build.python", "build.native.*"]),
    ("pipeline", ["pipeline", "batch", "coldstart"]),
    ("entry points", ["hub", "hub._pins", "upstream.errors", "upstream.seam", "upstream.patching",
                      "upstream.switching", "upstream.autopatch",
                      "upstream.export", "cli", "cli.*", "testing.*", "__init__", "__main__"]),
]
#: Packages whose __init__ only documents the package (importing one of its modules runs it).
DOC_ONLY_PACKAGES = ("cache", "plan", "build", "build.native", "upstream", "testing")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "examples":
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1] or ["__init__"]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer_of(module: str) -> int:
    for index, (_name, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return index
    raise AssertionError(f"jitkernels/{module}: not placed in any layer of tests/test_layers.py")


def _resolve(module: str, path: Path, level: int, name: str | None) -> str:
    """The jitkernels module an import statement names ("" for the package itself)."""
    package = module.split(".") if path.name == "__init__.py" and module != "__init__" else module.split(".")[:-1]
    if module == "__init__":
        package = []
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, *(name.split(".") if name else [])])


def _edges(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every import of ours in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name[len("jitkernels."):] if a.name.startswith("jitkernels.") else "__init__"
                       for a in node.names if a.name == "jitkernels" or a.name.startswith("jitkernels.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not node.module or not (node.module == "jitkernels" or node.module.startswith("jitkernels.")):
                    continue
                base = node.module[len("jitkernels."):] if "." in node.module else ""
            else:
                base = _resolve(module, path, node.level, node.module)
            for alias in node.names:  # `from X import a`: the module X.a if there is one, else X itself
                submodule = f"{base}.{alias.name}" if base else alias.name
                targets.append(submodule if submodule in MODULES else base)
        elif isinstance(node, ast.Call):
            targets = _string_import(module, path, node)
        for target in targets:
            target = target or "__init__"
            if target in MODULES:
                out.append((target, node.lineno, id(node) in top_level or _guarded_top(tree, node)))
    return out


def _string_import(module: str, path: Path, call: ast.Call) -> list[str]:
    """``importlib.import_module("jitkernels.x")``, ``import_module(".x", __name__)`` and the provider
    registry's ``_lazy(".x", ...)``: imports by name are edges too."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "_lazy") or not call.args:
        return []
    first = call.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return []  # a computed name (the import hook's kernels) is not a package module
    name = first.value
    if name == "jitkernels" or name.startswith("jitkernels."):
        return [name[len("jitkernels."):] if "." in name else ""]
    if name.startswith("."):
        level = len(name) - len(name.lstrip("."))
        return [_resolve(module, path, level, name.lstrip(".") or None)]
    return []


def _guarded_top(tree: ast.Module, node: ast.AST) -> bool:
    """An import inside a module-level ``if``/``try`` (``if TYPE_CHECKING``) still counts as module level."""
    for stmt in tree.body:
        if isinstance(stmt, (ast.If, ast.Try)) and any(n is node for n in ast.walk(stmt)):
            return True
    return False


GRAPH = {m: _edges(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer_of(module)


def test_every_layer_entry_names_a_module():
    """A name left in the table after its module moved would hide where the new one belongs."""
    for layer, members in LAYERS:
        for member in members:
            if member.endswith(".*"):
                assert any(m.startswith(member[:-1]) for m in MODULES), f"{layer}: {member} matches no module"
            else:
                assert member in MODULES, f"{layer}: {member} is not a module of jitkernels/"


def test_the_architecture_picture_shows_these_layers():
    """docs/architecture.md's picture: the same layers, top to bottom, each module it names in its own layer."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    picture = text.split("```text", 1)[1].split("```", 1)[0]
    names = [name for name, _members in LAYERS]
    drawn, placed = [], []
    for line in picture.splitlines():
        if not line.strip() or line.strip().startswith("-"):
            continue
        head = line[:16].strip()
        if head:
            drawn.append(head)
        assert drawn, f"the picture starts without a layer name: {line!r}"
        for token in re.findall(r"(?<![\w.])([a-z_]+(?:/[a-z_]+)*(?:\.py|/))", line[16:]):
            module = token[:-3] if token.endswith(".py") else token[:-1]
            module = module.replace("/", ".")
            if module in MODULES and module not in DOC_ONLY_PACKAGES:  # upstream/: its modules sit in two layers
                placed.append((drawn[-1], module))
    assert drawn == names[::-1]
    wrong = [f"{module} drawn in {layer}, placed in {names[_layer_of(module)]}"
             for layer, module in placed if names[_layer_of(module)] != layer]
    assert wrong == []
    missing = [m for m in MODULES if "." not in m and m != "__main__" and m not in DOC_ONLY_PACKAGES
               and m not in {mod for _l, mod in placed}]
    assert missing == [], f"top-level modules the picture does not show: {missing}"


def upward_imports(graph) -> list[str]:
    upward = []
    for module, edges in graph.items():
        for target, line, _top in edges:
            if target != module and _layer_of(target) > _layer_of(module):
                upward.append(f"jitkernels/{module}:{line} imports {target} "
                              f"({LAYERS[_layer_of(module)][0]} -> {LAYERS[_layer_of(target)][0]})")
    return upward


def circles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges = {m: {t for t, _l, _top in e if t != m} for m, e in graph.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_runs_up():
    assert upward_imports(GRAPH) == []


def test_no_import_circle():
    assert circles(GRAPH) == []


def test_errors_imports_nothing_of_ours_and_the_foundation_only_the_standard_library():
    assert GRAPH["errors"] == []
    foundation = LAYERS[0][1]
    for module in foundation:
        tree = ast.parse(MODULES[module].read_text())
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("__future__", "jitkernels"), \
                    f"jitkernels/{module} imports {name} at module level: the foundation is stdlib-only"


@pytest.mark.parametrize("package", DOC_ONLY_PACKAGES)
def test_subpackages_only_document_themselves(package):
    assert GRAPH[package] == [], f"jitkernels/{package.replace('.', '/')}/__init__.py imports modules"


def test_the_checks_see_a_circle_and_an_upward_import():
    """What the two checks report for the smallest bad graph: the foundation importing the pipeline, which imports it."""
    bad = {"errors": [("pipeline", 3, False)], "pipeline": [("errors", 1, True)], "warm": []}
    assert upward_imports(bad) == ["jitkernels/errors:3 imports pipeline (foundation -> pipeline)"]
    assert circles(bad) == [["errors", "pipeline"]]


def test_imports_by_name_are_edges():
    """``importlib.import_module`` with a constant name and the registry's ``_lazy`` are seen as imports."""
    providers = {t for t, _line, _top in GRAPH["providers"]}
    assert "providers.hf" in providers
    assert "hub" in {t for t, _line, _top in GRAPH["__init__"]}
