"""Shape rules of the shipped code: short functions, backends named only by the registry.

* No function in the shipped packages is longer than ``MAX_FUNCTION_LINES`` lines: a longer
  one is split into named steps.
* The orchestration modules (deploy, eval, bench) never spell a backend's name to decide
  what to run: they ask the registry (crnet.runtime.backends.base: ``backends_where``,
  the ``Backend`` traits, the role constants such as ``REFERENCE_BACKEND``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from crnet.runtime.backends.base import BUILTIN_BACKENDS, REGISTRY

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("crnet", "runtime", "models", "data", "export", "calibration", "engines")
MAX_FUNCTION_LINES = 80
ORCHESTRATION = ("crnet/deploy", "crnet/bench", "crnet/evaluate.py")
BACKEND_NAMES = frozenset(REGISTRY) | frozenset(BUILTIN_BACKENDS)
NAME_TESTS = {"backend_class", "require_available", "startswith", "endswith"}


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of each function or method of ``source`` longer than ``limit`` lines
    (from its ``def`` line to its last line)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def _names_a_backend(node: ast.AST) -> bool:
    """A backend name literal, or a tuple/list/set literal holding one."""
    if isinstance(node, ast.Constant):
        return node.value in BACKEND_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_a_backend(element) for element in node.elts)
    return False


def backend_name_decisions(source: str) -> list[int]:
    """Line numbers where ``source`` spells a backend name to decide something: compared
    (==, !=, in), passed to backend_class/require_available/startswith, given as a
    ``backend=`` argument, or listed with another backend name in a literal."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            if any(_names_a_backend(part) for part in [node.left, *node.comparators]):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in NAME_TESTS and any(_names_a_backend(arg) for arg in node.args):
                lines.append(node.lineno)
            lines += [node.lineno for keyword in node.keywords
                      if keyword.arg == "backend" and _names_a_backend(keyword.value)]
        elif isinstance(node, ast.Tuple | ast.List | ast.Set) and sum(
                isinstance(e, ast.Constant) and e.value in BACKEND_NAMES
                for e in node.elts) >= 2:
            lines.append(node.lineno)
    return sorted(set(lines))


def _python_files(*roots: str) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        path = ROOT / root
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def test_the_length_check_catches_a_long_function() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    assert long_functions(f"def fits():\n{body}") == []  # 80 lines
    assert long_functions(f"def too_long():\n{body}    return 0\n") == [("too_long", 81)]
    indented = "".join("    " + line for line in body.splitlines(True))
    method = f"class C:\n    def m(self):\n{indented}        return 0\n        pass\n"
    assert long_functions(method) == [("m", 82)]


def test_no_shipped_function_is_longer_than_the_limit() -> None:
    too_long = [f"{path.relative_to(ROOT)}: {name} ({lines} lines)"
                for path in _python_files(*SHIPPED)
                for name, lines in long_functions(path.read_text())]
    assert not too_long, "split these into named steps:\n" + "\n".join(too_long)


@pytest.mark.parametrize("source", [
    'if backend == "openvino":\n    pass\n',
    'ok = name not in ("torch", "auto")\n',
    'cls = backend_class("tensorrt")\n',
    'Segmenter(path, backend="torch")\n',
    'BACKENDS = ("auto", "onnxruntime", "openvino")\n',
    'label.startswith("openvino")\n',
])
def test_the_backend_name_scan_catches_a_decision(source: str) -> None:
    assert backend_name_decisions(source) == [1]


def test_the_backend_name_scan_leaves_other_strings_alone() -> None:
    source = ('import importlib.util\nimportlib.util.find_spec("torch")\n'
              'times = {"torch": 1}\nlog("openvino fp32: done")\n')
    assert backend_name_decisions(source) == []


def test_orchestration_asks_the_registry_instead_of_naming_backends() -> None:
    spelled = [f"{path.relative_to(ROOT)}:{line}"
               for path in _python_files(*ORCHESTRATION)
               for line in backend_name_decisions(path.read_text())]
    assert not spelled, ("ask crnet.runtime.backends.base (backends_where, the Backend "
                         "traits, REFERENCE_BACKEND, ...) instead:\n" + "\n".join(spelled))
