"""Every TensorRT / cuda-python attribute the project's code uses, found by an AST scan.

Two kinds of access are collected:

* chains rooted at the module names ``trt``, ``cudart`` and ``cudadrv`` (the driver API):
  ``trt.BuilderFlag.FP16``, ``cudart.cudaStreamCreate`` (every prefix of the chain is
  checked);
* methods and properties of TensorRT objects, recognised by the receiver's name
  (``config.set_timing_cache``, ``self.context.execute_async_v3``; see RECEIVERS).

An access counts as *guarded* when the enclosing function (or module) also calls
``hasattr(<the same object>, "<the same name>")``: it is then allowed to be missing in some
versions. The check against a real module runs elsewhere (a subprocess with the real
bindings); this module is plain Python.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("engines/engine_trt.py", "runtime/backends/tensorrt_backend.py",
           "tests/engines/test_tensorrt_suite.py", "tools/gpu_check.py")
MODULES = ("trt", "cudart", "cudadrv")
# receiver name (a local, or an attribute of self) -> TensorRT class
RECEIVERS = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
    "config": "IBuilderConfig", "runtime": "Runtime", "engine": "ICudaEngine",
    "context": "IExecutionContext", "inspector": "EngineInspector",
    "profile": "IOptimizationProfile", "timing_cache": "ITimingCache", "refitter": "Refitter",
    "parser_refitter": "OnnxParserRefitter",
}


@dataclass(frozen=True)
class Access:
    """One attribute access: ``root`` is "trt", "cudart" or "trt.<Class>"; ``path`` the
    attribute names after it."""

    file: str
    line: int
    root: str
    path: tuple[str, ...]
    guarded: bool

    def as_json(self) -> dict[str, object]:
        """A JSON-able dict (for the subprocess that checks it)."""
        return {**asdict(self), "path": list(self.path)}


def _chain(node: ast.AST) -> tuple[str, list[str]] | None:
    """(base name, attribute names) of ``a.b.c``; None for anything else."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, names[::-1]
    return None


def _guards(scope: ast.AST) -> set[str]:
    """``"<object expr>.<name>"`` for every hasattr(<object>, "<name>") in the scope."""
    found = set()
    for node in ast.walk(scope):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "hasattr" and len(node.args) == 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)):
            found.add(f"{ast.unparse(node.args[0])}.{node.args[1].value}")
    return found


def _scopes(tree: ast.Module) -> list[tuple[ast.AST, set[str]]]:
    functions = [node for node in ast.walk(tree)
                 if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
    return [(function, _guards(function)) for function in functions]


def scan_file(relative: str, root: Path = ROOT) -> list[Access]:
    """Every TensorRT / cudart access in one file (outermost chains only)."""
    tree = ast.parse((root / relative).read_text(), filename=relative)
    module_guards = _guards(tree)
    owner: dict[int, set[str]] = {}
    for function, guards in _scopes(tree):
        for node in ast.walk(function):
            owner.setdefault(id(node), set()).update(guards)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    accesses = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        chain = _chain(node)
        if chain is None:
            # self.engine.x / self.context.x: receiver is an attribute of self
            value = node.value
            if (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
                    and value.value.id == "self" and value.attr in RECEIVERS):
                root_name, names = f"trt.{RECEIVERS[value.attr]}", [node.attr]
            elif (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
                    and value.value.id == "self" and value.attr in MODULES):
                root_name, names = value.attr, [node.attr]
            else:
                continue
        else:
            base, names = chain
            if base == "self" and len(names) >= 2 and names[0] in MODULES:
                root_name, names = names[0], names[1:]
            elif base == "self" and len(names) >= 2 and names[0] in RECEIVERS:
                root_name, names = f"trt.{RECEIVERS[names[0]]}", names[1:2]
            elif base in MODULES:
                root_name = base
            elif base in RECEIVERS:
                root_name, names = f"trt.{RECEIVERS[base]}", names[:1]
            else:
                continue
        guards = module_guards | owner.get(id(node), set())
        guarded = _is_guarded(node, guards)
        accesses.append(Access(relative, node.lineno, root_name, tuple(names), guarded))
    return accesses


def _is_guarded(node: ast.Attribute, guards: set[str]) -> bool:
    text = ast.unparse(node)
    return any(text == guard or text.startswith(guard + ".") for guard in guards)


def scan(files: tuple[str, ...] = SCANNED, root: Path = ROOT) -> list[Access]:
    """scan_file over every file; the list the real-bindings check walks."""
    return [access for relative in files for access in scan_file(relative, root)]


# Run in the subprocess with the real modules: resolve each access, report the missing ones.
CHECK_CODE = r"""
import json, sys
import tensorrt as trt
try:
    from cuda.bindings import driver as cudadrv, runtime as cudart
except ImportError:
    try:
        from cuda import cuda as cudadrv, cudart
    except ImportError:
        cudadrv = cudart = None
accesses = json.loads(open(sys.argv[1]).read())
missing = []
for access in accesses:
    root = access["root"]
    if root in ("cudart", "cudadrv"):
        if cudart is None:
            continue
        obj = cudart if root == "cudart" else cudadrv
    elif root == "trt":
        obj = trt
    else:
        obj = getattr(trt, root.split(".", 1)[1], None)
        if obj is None:
            missing.append({**access, "missing": root})
            continue
    for name in access["path"]:
        if not hasattr(obj, name):
            missing.append({**access, "missing": name})
            break
        obj = getattr(obj, name)
print(json.dumps({"version": trt.__version__, "checked": len(accesses), "missing": missing}))
"""
