"""The shape of the package (``../shared/DESIGN.md``, second edition), checked on its source with ``ast``:
no import cycle, an engine (``core/``) that imports nothing above it, one optimiser loop, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dd_medical"
#: What ``core/`` must never import: the layers above it and the doors.
ABOVE_CORE = ("api", "presets", "pipeline", "io", "batch", "codec", "cli", "transforms", "monai_writer", "demo",
              "report", "simulation", "node")
#: Files whose functions stay short (lines per function, docstring included).
SHORT_FUNCTIONS = ("core", "pipeline.py", "presets.py", "api.py")
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its code (inside functions too, not under TYPE_CHECKING):
    ``from a import b`` is an edge to ``a.b`` where that is a module, else to ``a``."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dd_medical")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "dd_medical":
                for alias in node.names:
                    found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_import_graph_has_no_cycle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_core_imports_nothing_above_it(graph):
    for module, imported in graph.items():
        if module == "dd_medical.core" or module.startswith("dd_medical.core."):
            above = sorted(m for m in imported if m.split(".")[1] in ABOVE_CORE)
            assert not above, f"{module} imports {above}"


def test_the_codec_file_format_needs_no_torch():
    tree = ast.parse((PACKAGE / "codec" / "format.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(n.split(".")[0] == "torch" for n in names)


def test_one_place_steps_an_optimiser():
    """Only ``core/fit.py`` builds a ``torch.optim`` optimiser and calls ``.step()`` on it."""
    sites = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "optim":
                sites.append((path.relative_to(PACKAGE).as_posix(), "torch.optim"))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "step"
                    and isinstance(node.func.value, ast.Name) and "optim" in node.func.value.id):
                sites.append((path.relative_to(PACKAGE).as_posix(), "step()"))
    assert sorted(sites) == [("core/fit.py", "step()"), ("core/fit.py", "torch.optim")]


def test_functions_of_the_engine_and_its_front_are_short():
    long = []
    for entry in SHORT_FUNCTIONS:
        paths = (PACKAGE / entry).rglob("*.py") if (PACKAGE / entry).is_dir() else [PACKAGE / entry]
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({lines} lines)")
    assert not long, long


def test_the_graph_sees_lazy_imports(graph):
    """The walker finds imports inside functions (a lazy import cannot hide a cycle): the CLI's lazy ones."""
    assert "dd_medical.batch" in graph["dd_medical.cli"] and "dd_medical.demo" in graph["dd_medical.cli"]
