"""Where every file of a bundle lives: the one module that decides bundle paths (stdlib only).

```
bundle/
  manifest.json                         the contract between the stages (runtime.bundle)
  manifest.lock                         lock file of manifest writers (runtime.bundle)
  backbone.<precision>.onnx             graphs, one per precision (fp32 / fp16 / int8)
  refine.<precision>.onnx
  <checkpoint>.safetensors + .json      the source checkpoint, copied by the export
  parity_report.json  lint_report.json  the export's checks
  calibration/ranges.int8.json          int8 activation ranges (reused unless recalibrated)
  calibration/<graph>.trt10.int8.calib  TensorRT-10 calibration caches (implicit INT8 path)
  engines/<graph>.<precision>.plan      TensorRT plans (`crnet build`)
  engines/<graph>.<precision>.json      each plan's description, beside (not inside) it
  engines/<graph>.<precision>.layers.json   per-layer precisions from the engine inspector
  engines/refine_query.<precision>.plan     a plan of the query-only refine, if built
  engines/timing.cache                  TensorRT timing cache
  engines/ort/<graph>.<precision>.onnx  ONNX Runtime's optimised graphs (CPU build)
  engines/ort-trt-cache/                ONNX Runtime TensorRT-EP engine cache
```

Paths are relative to the bundle root unless a function takes the root.
"""

from __future__ import annotations

from pathlib import Path

from crnet.runtime.errors import CrnetError

MANIFEST = "manifest.json"
MANIFEST_LOCK = "manifest.lock"  # held while a stage rewrites the manifest (update_manifest)
GRAPHS = ("backbone", "refine")
PRECISIONS = ("fp32", "fp16", "int8")

CHECKPOINT_STEM = "checkpoint"  # the export's copy: checkpoint.safetensors + checkpoint.json
CHECKPOINT_WEIGHTS = f"{CHECKPOINT_STEM}.safetensors"
PARITY_REPORT = "parity_report.json"
LINT_REPORT = "lint_report.json"

CALIBRATION_DIR = "calibration"
RANGES_FILE = f"{CALIBRATION_DIR}/ranges.int8.json"

ENGINES_DIR = "engines"
TIMING_CACHE = f"{ENGINES_DIR}/timing.cache"
ORT_BUILD_DIR = f"{ENGINES_DIR}/ort"
ORT_TRT_CACHE_DIR = f"{ENGINES_DIR}/ort-trt-cache"


class LayoutError(CrnetError, ValueError):
    """A graph or precision name that the bundle layout does not know."""


def _check(graph: str, precision: str) -> None:
    if graph not in GRAPHS:
        raise LayoutError(f"unknown graph {graph!r}; expected one of {GRAPHS}")
    if precision not in PRECISIONS:
        raise LayoutError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")


def graph_file(graph: str, precision: str) -> str:
    """The file name of one graph at one precision, e.g. ``refine.int8.onnx``."""
    _check(graph, precision)
    return f"{graph}.{precision}.onnx"


def trt_calibration_cache(graph: str) -> str:
    """TensorRT-10 calibration cache of one graph (tensor names overlap between graphs)."""
    _check(graph, "int8")
    return f"{CALIBRATION_DIR}/{graph}.trt10.int8.calib"


def engine_relpaths(graph: str, precision: str) -> tuple[str, str]:
    """(plan, json) of one graph's TensorRT engine at one precision."""
    _check(graph, precision)
    stem = f"{ENGINES_DIR}/{graph}.{precision}"
    return f"{stem}.plan", f"{stem}.json"


def engine_paths(bundle_root: str | Path, graph: str, precision: str) -> tuple[Path, Path]:
    """(plan, json) paths of one graph's engine at one precision inside ``bundle_root``."""
    plan, meta = engine_relpaths(graph, precision)
    return Path(bundle_root) / plan, Path(bundle_root) / meta


def query_refine_plan_path(bundle_root: str | Path, precision: str) -> Path:
    """A plan of the refine graph cut to ``query_logits`` (served by `crnet triton-repo`)."""
    _check("refine", precision)
    return Path(bundle_root) / ENGINES_DIR / f"refine_query.{precision}.plan"


def engine_layers_path(plan: Path) -> Path:
    """The per-layer report written beside a plan (``<plan stem>.layers.json``)."""
    return plan.with_suffix(".layers.json")


def engine_json_path(plan: Path) -> Path:
    """The description written beside a plan (``<plan stem>.json``)."""
    return plan.with_suffix(".json")


def ort_build_relpath(graph: str, precision: str) -> str:
    """Bundle-relative path of one graph's ONNX Runtime optimised model."""
    _check(graph, precision)
    return f"{ORT_BUILD_DIR}/{graph}.{precision}.onnx"
