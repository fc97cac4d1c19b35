"""The import-layer contract (docs/architecture.md), checked over the source's AST.

Every import counts, at module level or inside a function: runtime is a leaf, each package
imports only the layers below it, and neither packages nor modules import each other in a
cycle. The checker is tested on a small tree with known violations, so it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The folder of each installed package (pyproject.toml's package-dir): the repository keeps
# runtime/, models/, ... at its top, and the wheel installs them as crnet.runtime, ...
FOLDERS: dict[str, str] = {
    "crnet": "crnet", "crnet.runtime": "runtime", "crnet.data": "data",
    "crnet.models": "models", "crnet.export": "export", "crnet.calibration": "calibration",
    "crnet.engines": "engines",
}
STAGES = {"runtime", "data", "models", "export", "calibration", "engines"}

# layer -> the layers it may import. A layer is a subpackage or module directly under
# crnet ("runtime", "cli", "evaluate", ...); "" is the root package itself.
ALLOWED: dict[str, set[str]] = {
    "runtime": set(),
    "data": {"runtime"},
    "models": {"runtime", "data"},
    "export": {"runtime", "data", "models"},
    "calibration": {"runtime", "data", "models", "export"},
    "engines": {"runtime", "data", "models", "export"},
    "info": {"runtime", "models"},
    "evaluate": STAGES,
    "serve": {"runtime"},
    "bench": STAGES | {"evaluate"},
    "deploy": STAGES | {"evaluate", "bench"},
    "cli": STAGES | {"evaluate", "info", "serve", "bench", "deploy"},
    "__main__": {"cli"},
    "": {"runtime"},
}


def layer_of(module: str) -> str:
    """The layer of a dotted module name: the part after ``crnet.`` ("" for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(folder: Path, package: str, path: Path) -> str:
    """Dotted module name of a file under the folder of ``package``."""
    parts = [package, *path.relative_to(folder).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, folders: dict[str, str]) -> dict[str, Path]:
    """Every module of the mapped packages (a mapped subfolder is skipped under its parent)."""
    mapped = {root / folder for folder in folders.values()}
    modules = {}
    for package, folder in folders.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            if any(parent in mapped and parent != base for parent in path.parents):
                continue
            modules[module_name(base, package, path)] = path
    return modules


def _is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: a script's entry, which may hand over to the CLI."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its body (absolute or relative)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [node for node in tree.body if not _is_main_block(node)]
    for node in ast.walk(tree):
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


def import_graph(root: Path, folders: dict[str, str]) -> dict[str, set[str]]:
    """Module -> project modules it imports."""
    modules = project_modules(root, folders)
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
    """Layer -> the other layers its modules import."""
    layers: dict[str, set[str]] = {}
    for source, targets in graph.items():
        top = layer_of(source)
        layers.setdefault(top, set()).update(
            layer_of(t) for t in targets if layer_of(t) != top)
    return layers


def layer_violations(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    """``source -> target`` for every import that points up or sideways across layers."""
    bad = []
    for source, targets in sorted(graph.items()):
        top = layer_of(source)
        for target in sorted(targets):
            other = layer_of(target)
            if other != top and other not in allowed[top]:
                bad.append(f"{source} -> {target}")
    return bad


def test_imports_point_down_the_layers() -> None:
    graph = import_graph(ROOT, FOLDERS)
    assert "crnet.runtime.segmenter" in graph and "crnet.models.torch_backend" in graph
    assert layer_violations(graph, ALLOWED) == []
    assert package_graph(graph)["runtime"] == set()  # the runtime is a leaf


def test_every_layer_is_known() -> None:
    assert {layer_of(name) for name in import_graph(ROOT, FOLDERS)} <= set(ALLOWED)


def test_no_package_cycles() -> None:
    assert find_cycle(package_graph(import_graph(ROOT, FOLDERS))) is None


def test_no_module_cycles() -> None:
    assert find_cycle(import_graph(ROOT, FOLDERS)) is None


def test_the_checker_finds_violations_and_cycles(tmp_path: Path) -> None:
    for folder, files in {
        "rt": {"__init__.py": "", "a.py": "def f():\n    from crnet.models import m\n"},
        "md": {"__init__.py": "", "m.py": "from . import n\n",
               "n.py": "import crnet.models.m\n",
               "main.py": "if __name__ == '__main__':\n    import crnet.cli\n"},
    }.items():
        (tmp_path / folder).mkdir()
        for name, text in files.items():
            (tmp_path / folder / name).write_text(text)
    folders = {"crnet.runtime": "rt", "crnet.models": "md"}
    allowed = {"runtime": set(), "models": {"runtime"}}
    graph = import_graph(tmp_path, folders)
    assert graph["crnet.models.m"] == {"crnet.models.n"}
    assert graph["crnet.models.n"] == {"crnet.models.m"}
    assert graph["crnet.models.main"] == set()  # a script's entry block is not a layer import
    assert layer_violations(graph, allowed) == ["crnet.runtime.a -> crnet.models.m"]
    assert find_cycle(graph) == ["crnet.models.m", "crnet.models.n", "crnet.models.m"]
    assert find_cycle(package_graph(graph)) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


@pytest.mark.parametrize("folder", sorted(set(FOLDERS.values())))
def test_every_package_is_checked(folder: str) -> None:
    assert (ROOT / folder / "__init__.py").exists()


def test_no_module_imports_a_folder_by_its_repository_name() -> None:
    """Inside the project a package is crnet.runtime, never the bare folder name ``runtime``:
    the bare name would import a second copy of the module from a source checkout."""
    bare = {folder for package, folder in FOLDERS.items() if package != "crnet"}
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom)
                     and not node.level else [])
            found += [f"{path.relative_to(ROOT)}: {name}" for name in names
                      if name.split(".")[0] in bare]
    assert found == []
