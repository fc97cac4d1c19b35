"""The import-layer contract of shared/DESIGN.md, checked over the source's AST.

Every import counts, at module level or inside a function: runtime is a leaf, each package
imports only the layers below it, and neither packages nor modules import each other in a
cycle. The checker is tested on a small tree with known violations, so it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the packages it may import (the layers below it)
ALLOWED: dict[str, set[str]] = {
    "runtime": set(),
    "data": {"runtime"},
    "models": {"runtime", "data"},
    "export": {"runtime", "data", "models"},
    "calibration": {"runtime", "data", "models", "export"},
    "crnet": {"runtime", "data", "models", "export", "calibration"},
}


def module_name(root: Path, path: Path) -> str:
    """Dotted module name of a file under ``root`` (a package's __init__ is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: set[str]) -> dict[str, Path]:
    """Every module of the given top-level packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(root, path)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its body (absolute or relative)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a.b import c`: the submodule a.b.c where c is one, else a.b itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` imports a.b.c's module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path, packages: set[str]) -> dict[str, set[str]]:
    """Module -> project modules it imports."""
    modules = project_modules(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Top-level package -> the other top-level packages its modules import."""
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        top = source.split(".")[0]
        packages.setdefault(top, set()).update(
            t.split(".")[0] for t in targets if t.split(".")[0] != top)
    return packages


def layer_violations(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    """``source -> target`` for every import that points up or sideways across layers."""
    bad = []
    for source, targets in sorted(graph.items()):
        top = source.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != top and other not in allowed[top]:
                bad.append(f"{source} -> {target}")
    return bad


def test_imports_point_down_the_layers() -> None:
    graph = import_graph(ROOT, set(ALLOWED))
    assert "runtime.segmenter" in graph and "models.torch_backend" in graph
    assert layer_violations(graph, ALLOWED) == []
    assert package_graph(graph)["runtime"] == set()  # the runtime is a leaf


def test_no_package_cycles() -> None:
    assert find_cycle(package_graph(import_graph(ROOT, set(ALLOWED)))) is None


def test_no_module_cycles() -> None:
    assert find_cycle(import_graph(ROOT, set(ALLOWED))) is None


def test_the_checker_finds_violations_and_cycles(tmp_path: Path) -> None:
    for package, files in {
        "runtime": {"__init__.py": "", "a.py": "def f():\n    from models import m\n"},
        "models": {"__init__.py": "", "m.py": "from . import n\n",
                   "n.py": "import models.m\n"},
    }.items():
        (tmp_path / package).mkdir()
        for name, text in files.items():
            (tmp_path / package / name).write_text(text)
    allowed = {"runtime": set(), "models": {"runtime"}}
    graph = import_graph(tmp_path, set(allowed))
    assert graph["models.m"] == {"models.n"} and graph["models.n"] == {"models.m"}
    assert layer_violations(graph, allowed) == ["runtime.a -> models.m"]
    assert find_cycle(graph) == ["models.m", "models.n", "models.m"]
    assert find_cycle(package_graph(graph)) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_package_is_checked(package: str) -> None:
    assert (ROOT / package / "__init__.py").exists()
