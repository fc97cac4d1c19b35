"""Polygraphy for a variant that misses its accuracy gate: commands to find the layer, and
its Comparator over runners (TensorRT on a GPU, ONNX Runtime anywhere).

``polygraphy_commands`` spells, for one graph of one bundle variant, the Polygraphy command
lines a user with TensorRT and a GPU runs to localise an fp16/int8 accuracy drop: fp32
reference outputs from ONNX Runtime (inputs saved once, reused by every step), TensorRT
against ONNX Runtime on the same variant, TensorRT against the fp32 reference, the same
layer by layer (every tensor marked as an output), and, on TensorRT 10, ``polygraphy debug
precision`` (layer precisions need a weakly typed network, which TensorRT 11 removed).
Polygraphy is imported lazily (``pip install polygraphy``); building the commands needs
neither it nor TensorRT.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crnet.engines.build_engine import bundle_settings
from crnet.runtime.bundle import GRAPHS, Bundle

# per-output absolute tolerance on logits when comparing a variant with fp32 / TensorRT with
# ONNX Runtime (the GPU suite's per-precision tolerances)
ATOL = {"fp32": 1e-2, "fp16": 5e-2, "int8": 2.5e-1}
RTOL = {"fp32": 1e-2, "fp16": 5e-2, "int8": 2.5e-1}
INSTALL = "pip install polygraphy (TensorRT steps need tensorrt and an NVIDIA GPU)"


@dataclass(frozen=True)
class PolygraphyCommand:
    """One command line and what it is for."""

    purpose: str
    argv: list[str]

    @property
    def line(self) -> str:
        """The shell-quoted command line."""
        return shlex.join(self.argv)


def _shapes(shapes: dict[str, Sequence[int]]) -> list[str]:
    return [f"{name}:[{','.join(str(int(d)) for d in dims)}]" for name, dims in shapes.items()]


def _tolerances(flag: str, value: float, outputs: Iterable[str]) -> list[str]:
    return [flag, *(f"{name}:{value:g}" for name in outputs)]


def polygraphy_commands(bundle_dir: str | Path, precision: str, graph: str = "refine", *,
                        work_dir: str | Path = "polygraphy", runner: str = "trt",
                        inputs: str | Path | None = None) -> list[PolygraphyCommand]:
    """Polygraphy commands that compare ``graph`` at ``precision`` with TensorRT
    (``runner="trt"``; ``"onnxrt"`` swaps TensorRT for ONNX Runtime, which runs anywhere).

    ``inputs``: a Polygraphy inputs JSON of real feeds (``save_feeds``); without it the first
    command draws seeded random inputs and saves them to ``work_dir``.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if runner not in ("trt", "onnxrt"):
        raise ValueError(f"runner must be 'trt' or 'onnxrt', got {runner!r}")
    bundle = Bundle.load(bundle_dir, verify=False)
    settings = bundle_settings(bundle, graph, precision)
    reference = bundle.graph_path(graph, "fp32")
    profile = settings.profile()
    opt = {name: ranges["opt"] for name, ranges in profile.items()}
    outputs = [spec["name"] for spec in bundle.io(graph)["outputs"]]
    work = Path(work_dir)
    inputs_path = Path(inputs) if inputs is not None else work / f"{graph}-inputs.json"
    golden = work / f"{graph}-fp32-outputs.json"
    if runner == "trt":
        shape_args = ["--trt-min-shapes", *_shapes({n: r["min"] for n, r in profile.items()}),
                      "--trt-opt-shapes", *_shapes(opt),
                      "--trt-max-shapes", *_shapes({n: r["max"] for n, r in profile.items()}),
                      "--strongly-typed"]
        run_args = ["--trt", *shape_args]
    else:
        shape_args, run_args = [], ["--onnxrt", "--providers", "cpu"]
    tolerance = [*_tolerances("--atol", ATOL[precision], outputs),
                 *_tolerances("--rtol", RTOL[precision], outputs)]
    variant = str(settings.onnx)
    first = ["polygraphy", "run", str(reference), "--onnxrt", "--providers", "cpu",
             "--input-shapes", *_shapes(opt), "--save-outputs", str(golden)]
    first += (["--load-inputs", str(inputs_path)] if inputs is not None
              else ["--seed", "0", "--save-inputs", str(inputs_path)])
    commands = [
        PolygraphyCommand("fp32 reference outputs from ONNX Runtime (and the inputs every "
                          "later step reuses)", first),
        PolygraphyCommand(f"{runner} against ONNX Runtime on the same {precision} graph",
                          ["polygraphy", "run", variant, *run_args, "--onnxrt", "--providers",
                           "cpu", "--load-inputs", str(inputs_path), *tolerance]),
        PolygraphyCommand(f"{runner} {precision} against the fp32 reference",
                          ["polygraphy", "run", variant, *run_args, "--load-inputs",
                           str(inputs_path), "--load-outputs", str(golden), *tolerance]),
        PolygraphyCommand("layer by layer: the first tensor where the runners part",
                          ["polygraphy", "run", variant, *run_args, "--onnxrt", "--providers",
                           "cpu", "--load-inputs", str(inputs_path), "--onnx-outputs", "mark",
                           "all", *(["--trt-outputs", "mark", "all"] if runner == "trt" else []),
                           "--fail-fast", *tolerance]),
    ]
    if runner == "trt" and precision in ("fp16", "int8"):
        flags = ["--fp16"] if precision == "fp16" else ["--int8", "--fp16"]
        commands.append(PolygraphyCommand(
            "TensorRT 10 only (weakly typed): which layers must stay fp32 (bisect)",
            ["polygraphy", "debug", "precision", variant, *flags, "--precision-constraints",
             "obey", "--mode", "bisect", "--precision", "float32", *shape_args[:-1],
             "--load-inputs", str(inputs_path), "--check", "polygraphy", "run",
             "polygraphy_debug.engine", "--trt", "--load-inputs", str(inputs_path),
             "--load-outputs", str(golden), *tolerance]))
    return commands


def gate_failure_hint(bundle_dir: str | Path, precision: str) -> str:
    """What `crnet eval`/`crnet deploy` print when a variant misses its gate: the Polygraphy
    commands for both graphs of that variant."""
    lines = [f"the {precision} variant missed its accuracy gate. To find the layer, on a "
             f"machine with TensorRT and a GPU ({INSTALL}), run from the bundle's parent:"]
    for graph in GRAPHS:
        lines.append(f"# {graph}.{precision}")
        for command in polygraphy_commands(bundle_dir, precision, graph,
                                           work_dir=f"polygraphy-{precision}"):
            lines.append(f"#   {command.purpose}")
            lines.append(f"    {command.line}")
    return "\n".join(lines)


# ---------------------------------------------------------------- Python API (Comparator)


def save_feeds(path: str | Path, feeds: Sequence[dict[str, np.ndarray]]) -> Path:
    """Write feeds (one dict of input arrays per iteration) as a Polygraphy inputs JSON, for
    ``--load-inputs``."""
    from polygraphy.json import save_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json([{name: np.ascontiguousarray(array) for name, array in feed.items()}
               for feed in feeds], str(path), description="crnet input feeds")
    return path


def onnxrt_runner(onnx_path: str | Path, name: str | None = None) -> Any:
    """A Polygraphy ONNX Runtime runner (CPU) over one ONNX file."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"]),
                        name=name)


def trt_runner(plan_path: str | Path, name: str | None = None) -> Any:
    """A Polygraphy TensorRT runner over a serialized plan (needs tensorrt and a GPU)."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path))), name=name)


@dataclass(frozen=True)
class Comparison:
    """Polygraphy's verdict and the largest absolute difference per output."""

    passed: bool
    max_abs_diff: dict[str, float]


def compare_runners(runners: Sequence[Any], feeds: Sequence[dict[str, np.ndarray]],
                    atol: dict[str, float], rtol: dict[str, float]) -> Comparison:
    """Run ``runners`` on ``feeds`` with Polygraphy's Comparator; compare each runner with
    the next, with per-output tolerances (``{output: tolerance}``)."""
    from polygraphy import comparator

    results = comparator.Comparator.run(list(runners), data_loader=list(feeds))
    if hasattr(comparator, "SimpleCompareFunc"):  # newer Polygraphy; simple() is deprecated
        compare = comparator.SimpleCompareFunc(atol=dict(atol), rtol=dict(rtol))
    else:
        compare = comparator.CompareFunc.simple(atol=dict(atol), rtol=dict(rtol))
    accuracy = comparator.Comparator.compare_accuracy(results, compare_func=compare)
    worst: dict[str, float] = {}
    for first, second in zip(results, list(results)[1:], strict=False):
        for left, right in zip(first[1], second[1], strict=True):
            for output in left:
                difference = np.abs(np.asarray(left[output], dtype=np.float64)
                                    - np.asarray(right[output], dtype=np.float64))
                worst[output] = max(worst.get(output, 0.0), float(difference.max(initial=0.0)))
    return Comparison(bool(accuracy), worst)
