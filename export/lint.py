"""`crnet lint BUNDLE`: check ONNX graphs against what TensorRT's ONNX parser accepts.

No TensorRT needed: the rules are data (``crnet.export.trt_ops``, transcribed from the
onnx-tensorrt operator matrix) plus this project's contract (no Loop/If/Scan, static
spatial sizes) and TensorRT's Q/DQ rules (symmetric int8, per-channel weight scales on
the output-channel axis, no int32 bias). Every ``*.onnx`` a bundle's manifest lists
(fp32, fp16, int8 variants) is checked; findings come back as data and as a table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from crnet.export import trt_ops
from crnet.runtime.errors import CrnetError

ERROR, WARNING, INFO = "error", "warning", "info"
_SHAPE_SOURCES = frozenset({"Shape", "Size"})
_SHAPE_ARITHMETIC = frozenset({"Div", "Mod", "Floor", "Ceil"})
_SHAPE_PASS_THROUGH = frozenset({
    "Gather", "Slice", "Concat", "Cast", "Unsqueeze", "Squeeze", "Add", "Sub", "Mul",
    "Div", "Mod", "Floor", "Ceil", "Identity", "Max", "Min", "Reshape", "Neg",
})


class LintInputError(CrnetError, ValueError):
    """A path that is neither a bundle nor a readable ONNX file."""


@dataclass(frozen=True)
class Finding:
    """One problem (or note) about one node of one graph."""

    severity: str  # "error" | "warning" | "info"
    graph: str
    node: str
    op: str
    message: str


@dataclass
class LintReport:
    """Findings over a set of graphs, with the rule source."""

    graphs: list[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        """Findings that would stop TensorRT (or break the project's contract)."""
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        """Findings worth a look that need not stop a build."""
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def passed(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for the manifest."""
        return {
            "passed": self.passed,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "graphs": self.graphs,
            "rules": trt_ops.SOURCE,
            "findings": [asdict(f) for f in self.findings],
        }


def format_table(findings: Iterable[Finding]) -> str:
    """A readable fixed-width table of findings."""
    rows = [("severity", "graph", "node", "op", "message")]
    rows += [(f.severity, f.graph, f.node or "-", f.op or "-", f.message) for f in findings]
    if len(rows) == 1:
        return "no findings"
    widths = [min(max(len(row[i]) for row in rows), 40) for i in range(4)]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[i][:40].ljust(widths[i]) for i in range(4)]
        lines.append("  ".join([*cells, row[4]]))
        if index == 0:
            lines.append("  ".join(["-" * w for w in widths] + ["-" * 7]))
    return "\n".join(lines)


class _GraphIndex:
    """Constants, producers, consumers and inferred types of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # lint must still report on graphs that fail inference
            inferred = model
        graph = inferred.graph
        self.graph = graph
        self.constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer
        }
        self.constant_types: dict[str, int] = {init.name: init.data_type
                                               for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for index, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, index))
            if node.op_type == "Constant" and node.output:
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attribute.t)
                        self.constant_types[node.output[0]] = attribute.t.data_type
        self.value_info: dict[str, onnx.ValueInfoProto] = {
            v.name: v for v in [*graph.input, *graph.output, *graph.value_info]
        }

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def elem_type(self, name: str) -> int | None:
        if name in self.constant_types:
            return self.constant_types[name]
        info = self.value_info.get(name)
        return info.type.tensor_type.elem_type if info is not None else None

    def dims(self, name: str) -> list[int | str] | None:
        info = self.value_info.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in info.type.tensor_type.shape.dim]


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _type_name(elem_type: int | None) -> str:
    return onnx.TensorProto.DataType.Name(elem_type) if elem_type else "unknown"


def _shape_derived(index: _GraphIndex) -> dict[str, bool]:
    """Tensors computed from Shape/Size at run time -> whether Div/Mod/Floor/Ceil was used."""
    derived: dict[str, bool] = {}
    for node in index.graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if node.op_type in _SHAPE_SOURCES:
            for name in node.output:
                derived[name] = False
        elif node.op_type in _SHAPE_PASS_THROUGH:
            sources = [derived[name] for name in node.input if name in derived]
            if sources:
                arithmetic = any(sources) or node.op_type in _SHAPE_ARITHMETIC
                for name in node.output:
                    derived[name] = arithmetic
    return derived


def lint_model(model: onnx.ModelProto, graph: str = "model") -> list[Finding]:
    """Check one ONNX model against TensorRT's parser rules; return the findings."""
    index = _GraphIndex(model)
    findings: list[Finding] = []

    def add(severity: str, node: onnx.NodeProto | None, message: str) -> None:
        findings.append(Finding(severity, graph, node.name if node is not None else "",
                                node.op_type if node is not None else "", message))

    _check_opset(model, add)
    _check_io(index, add)
    derived = _shape_derived(index)
    for node in index.graph.node:
        _check_operator(node, index, add)
        if node.op_type == "Resize":
            _check_resize(node, index, derived, add)
        elif node.op_type in ("AveragePool", "MaxPool", "LpPool"):
            _check_pool(node, add)
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq(node, index, add)
        _check_shape_arithmetic(node, derived, add)
    return findings


def _check_opset(model: onnx.ModelProto, add: Any) -> None:
    versions = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    opset = versions.get("ai.onnx")
    if opset is None:
        add(ERROR, None, "model imports no default-domain opset")
        return
    low10, high10 = trt_ops.OPSET_RANGE["tensorrt-10"]
    low11, high11 = trt_ops.OPSET_RANGE["tensorrt-11"]
    if opset < low10 or opset > high11:
        add(ERROR, None, f"opset {opset} is outside TensorRT's documented range "
                         f"{low10}..{high11}")
    elif opset > high10:
        add(WARNING, None, f"opset {opset} is newer than TensorRT 10.0/10.1 documents "
                           f"({low10}..{high10}); fine for TensorRT 11 (up to {high11})")


def _check_io(index: _GraphIndex, add: Any) -> None:
    for value in [*index.graph.input, *index.graph.output]:
        if value.name in index.constants:
            continue
        dims = index.dims(value.name) or []
        dynamic = [axis for axis, dim in enumerate(dims) if axis > 0 and not isinstance(dim, int)]
        dynamic += [axis for axis, dim in enumerate(dims) if axis > 0 and dim == 0]
        if dynamic:
            add(WARNING, None, f"graph input/output {value.name!r} has dynamic non-batch "
                               f"axes {sorted(set(dynamic))} {dims}; TensorRT then needs an "
                               "optimisation profile over them and fuses less")


def _check_operator(node: onnx.NodeProto, index: _GraphIndex, add: Any) -> None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        add(ERROR, node, f"operator of custom domain {node.domain!r}: TensorRT's parser "
                         "needs a plugin for it")
        return
    if op in trt_ops.CONTROL_FLOW:
        add(ERROR, node, f"{op} (control flow): the bundle contract requires unrolled graphs "
                         "(TensorRT accepts it with restrictions, but it blocks fusion)")
    elif op in trt_ops.UNSUPPORTED:
        add(ERROR, node, f"{op} is marked unsupported in TensorRT's ONNX operator matrix")
    elif op in trt_ops.ADDED_TRT11:
        add(WARNING, node, f"{op} is supported from TensorRT 11 only (not on JetPack's 10.x)")
    elif op not in trt_ops.SUPPORTED_TRT10:
        add(ERROR, node, f"{op} is not in TensorRT's documented ONNX operator list")
    rule = trt_ops.CONSTANT_INPUTS.get(op)
    if rule is not None:
        position, what = rule
        if len(node.input) > position and node.input[position] \
                and not index.is_constant(node.input[position]):
            add(ERROR, node, f"{op}'s `{what}` input must be an initializer for TensorRT")
    if op == "Dropout" and len(node.input) > 2 and index.is_constant(node.input[2]) \
            and bool(np.asarray(index.constants[node.input[2]]).any()):
        add(ERROR, node, "Dropout in training mode; export the model in eval mode")


def _check_resize(node: onnx.NodeProto, index: _GraphIndex, derived: dict[str, bool],
                  add: Any) -> None:
    mode = _attribute(node, "mode", "nearest")
    coordinates = _attribute(node, "coordinate_transformation_mode", "half_pixel")
    if mode not in trt_ops.RESIZE_MODES:
        add(ERROR, node, f"Resize mode {mode!r}: TensorRT's matrix lists "
                         f"{sorted(trt_ops.RESIZE_MODES)}")
    if coordinates not in trt_ops.RESIZE_COORDINATE_MODES:
        add(ERROR, node, f"Resize coordinate_transformation_mode {coordinates!r}: TensorRT "
                         f"supports {sorted(trt_ops.RESIZE_COORDINATE_MODES)}")
    if mode == "nearest":
        nearest = _attribute(node, "nearest_mode", "round_prefer_floor")
        if nearest not in trt_ops.RESIZE_NEAREST_MODES:
            add(ERROR, node, f"Resize nearest_mode {nearest!r} is not supported by TensorRT")
    if _attribute(node, "antialias", 0):
        add(ERROR, node, "Resize antialias=1 is not supported by TensorRT")
    policy = _attribute(node, "keep_aspect_ratio_policy", "stretch")
    if policy not in trt_ops.RESIZE_ASPECT_POLICIES:
        add(ERROR, node, f"Resize keep_aspect_ratio_policy {policy!r}: TensorRT supports "
                         "'stretch' only")
    if _attribute(node, "exclude_outside", 0):
        add(WARNING, node, "Resize exclude_outside=1 is not documented for TensorRT")
    targets = [name for name in node.input[2:4] if name]
    runtime = [name for name in targets if not index.is_constant(name)]
    if not runtime:
        return
    dims = index.dims(node.output[0])
    spatial = dims[2:] if dims else None
    if spatial and all(isinstance(d, int) and d > 0 for d in spatial):
        add(INFO, node, f"Resize sizes/scales are computed at run time but the spatial output "
                        f"{spatial} is static (only the batch axis varies)")
    elif any(derived.get(name) is not None for name in runtime):
        add(ERROR, node, f"Resize sizes/scales come from run-time shapes and the output's "
                         f"spatial size {spatial or 'unknown'} is dynamic; fix the input size")
    else:
        add(WARNING, node, "Resize sizes/scales are neither constant nor shape-derived")


def _check_pool(node: onnx.NodeProto, add: Any) -> None:
    kernel = _attribute(node, "kernel_shape", [])
    dilations = _attribute(node, "dilations", [])
    if node.op_type != "LpPool" and len(kernel) not in (2, 3):
        add(ERROR, node, f"{node.op_type} with a {len(kernel)}D kernel: TensorRT pools 2D/3D")
    if dilations and any(d != 1 for d in dilations):
        add(ERROR, node, f"{node.op_type} dilations {list(dilations)}: TensorRT needs all ones")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        add(ERROR, node, "MaxPool Indices output is not supported by TensorRT")


def _check_shape_arithmetic(node: onnx.NodeProto, derived: dict[str, bool], add: Any) -> None:
    """Flag Shape->...->Div feeding sizes of data ops (what adaptive pooling exports to)."""
    watched = {"Slice": (1, 2, 3, 4), "Pad": (1,), "TopK": (1,), "Tile": (1,)}
    if node.op_type not in watched:
        return
    if node.op_type == "Slice" and node.input and node.input[0] in derived:
        return  # slicing a shape vector itself is shape bookkeeping, not data
    for position in watched[node.op_type]:
        if position < len(node.input) and derived.get(node.input[position]):
            add(WARNING, node, f"{node.op_type} input {position} is computed from run-time "
                               "shapes with Div/Mod/Floor/Ceil (the adaptive-pooling export "
                               "pattern); TensorRT needs it resolvable at build time")
            return


def _check_qdq(node: onnx.NodeProto, index: _GraphIndex, add: Any) -> None:
    quantize = node.op_type == "QuantizeLinear"
    zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if zero_point is None:
        output_dtype = _attribute(node, "output_dtype", 0)
        if quantize and output_dtype not in (onnx.TensorProto.INT8,):
            add(ERROR, node, "QuantizeLinear without a zero-point quantizes to uint8; "
                             "TensorRT needs int8 with zero-point 0")
    elif not index.is_constant(zero_point):
        add(ERROR, node, f"zero-point {zero_point!r} is not an initializer")
    else:
        values = np.asarray(index.constants[zero_point])
        type_name = _type_name(index.constant_types[zero_point])
        if type_name not in trt_ops.QUANTIZED_TYPES:
            add(ERROR, node, f"zero-point type {type_name}: TensorRT quantizes to int8 "
                             "(symmetric); uint8/asymmetric Q/DQ is rejected")
        if values.size and np.any(values.astype(np.int64) != 0):
            add(ERROR, node, f"non-zero zero-point {values.ravel()[:4].tolist()}: TensorRT "
                             "needs symmetric quantization (zero-points all 0)")
    if quantize:
        return
    data = node.input[0]
    data_type = _type_name(index.elem_type(data))
    if data_type == "INT32":
        what = "initializer" if index.is_constant(data) else "tensor"
        consumers = ", ".join(sorted({n.op_type for n, _ in index.consumers.get(node.output[0],
                                                                                   [])}))
        add(ERROR, node, f"DequantizeLinear of an int32 {what} (int32 bias quantization"
                         f"{', feeds ' + consumers if consumers else ''}); TensorRT does not "
                         "quantize bias: keep it float")
    elif data_type not in trt_ops.QUANTIZED_TYPES and data_type != "unknown":
        add(ERROR, node, f"DequantizeLinear input type {data_type}: TensorRT needs int8")
    scale = node.input[1] if len(node.input) > 1 else ""
    if not index.is_constant(scale) or np.asarray(index.constants[scale]).size <= 1:
        return
    rank = index.constants[data].ndim if index.is_constant(data) else len(index.dims(data) or [])
    axis = int(_attribute(node, "axis", 1))
    axis = axis + rank if axis < 0 and rank else axis
    for consumer, position in index.consumers.get(node.output[0], []):
        expected = _expected_weight_axis(consumer, position, rank)
        if expected is not None and axis != expected:
            add(ERROR, node, f"per-channel scale on axis {axis} of a {consumer.op_type} weight "
                             f"({consumer.name}); TensorRT needs the output-channel axis "
                             f"{expected}")


def _expected_weight_axis(consumer: onnx.NodeProto, position: int, rank: int) -> int | None:
    if position != 1:
        return None
    if consumer.op_type in trt_ops.WEIGHT_CHANNEL_AXIS:
        return trt_ops.WEIGHT_CHANNEL_AXIS[consumer.op_type]
    if consumer.op_type == "Gemm":
        return 0 if _attribute(consumer, "transB", 0) else 1
    if consumer.op_type == "MatMul" and rank:
        return rank - 1
    return None


def lint_files(paths: dict[str, Path]) -> LintReport:
    """Lint named ONNX files (label -> path), e.g. {"backbone.fp32.onnx": path}."""
    report = LintReport(graphs=sorted(paths))
    for label in sorted(paths):
        model = onnx.load(str(paths[label]), load_external_data=False)
        report.findings.extend(lint_model(model, label))
    return report


def bundle_graph_files(bundle_dir: str | Path) -> dict[str, Path]:
    """Every ONNX file a bundle's manifest lists under ``variants``, by file name."""
    from crnet.runtime.bundle import Bundle

    bundle = Bundle.load(bundle_dir, verify=False)
    files: dict[str, Path] = {}
    for variant in bundle.manifest.get("variants", {}).values():
        for value in variant.values():
            if isinstance(value, str) and value.endswith(".onnx"):
                files[value] = bundle.root / value
    return files


def lint_bundle(bundle_dir: str | Path) -> LintReport:
    """Lint every ONNX graph (all precisions) listed in a bundle's manifest."""
    files = bundle_graph_files(bundle_dir)
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        from crnet.runtime.bundle import BundleError

        raise BundleError(f"graphs listed in the manifest are missing: {missing}")
    return lint_files(files)


def lint_paths(paths: Iterable[Path]) -> LintReport:
    """One report over bundles (directories: every graph their manifest lists) and single
    ``.onnx`` files; LintInputError for a path that is neither or cannot be read."""
    findings: list[Finding] = []
    graphs: list[str] = []
    path = None
    try:
        for path in paths:
            report = (lint_bundle(path) if path.is_dir()
                      else lint_files({path.name: path}) if path.exists() else None)
            if report is None:
                raise LintInputError(f"no such bundle or ONNX file: {path}")
            findings.extend(report.findings)
            graphs.extend(report.graphs)
    except (ValueError, DecodeError) as error:
        raise LintInputError(f"cannot lint {path}: {error}") from error
    return LintReport(graphs=graphs, findings=findings)


if __name__ == "__main__":  # `python export/lint.py ...` is `crnet lint ...`
    import sys

    from crnet.cli import main

    sys.exit(main(["lint", *sys.argv[1:]]))
