"""The CPU target of `crnet build`: ONNX Runtime graph-optimised models saved in the bundle.

ONNX Runtime optimises a graph when a session is created; with
``SessionOptions.optimized_model_filepath`` it saves the result, so later sessions start
from it. Levels (onnxruntime docs, "Graph Optimizations"):

* ``basic``: semantics-preserving rewrites (constant folding, Conv+BN...), plain ONNX.
* ``extended`` (default here): adds fusions into ONNX Runtime's own ops (com.microsoft
  domain, e.g. FusedConv); the file needs ONNX Runtime but runs on any CPU.
* ``all``: adds layout optimisations (NCHWc blocks sized for this CPU's vector width), so
  the file is tied to CPUs like this one; recorded as ``cpu_specific``.

Files: ``engines/ort/<graph>.<precision>.onnx``; manifest:
``ort_builds[precision][graph] = {"path", "source", "source_sha256", "session_options":
{"graph_optimization_level", "intra_op_num_threads"}, "onnxruntime_version",
"execution_provider", "cpu_specific", "custom_domains", "build_seconds"}``.
runtime/ort_build.py reads it back.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from crnet.engines.build_settings import Log, select_precisions
from crnet.runtime.bundle import GRAPHS, Bundle, update_manifest
from crnet.runtime.files import atomic_path, sha256_file
from crnet.runtime.layout import ort_build_relpath

ORT_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
# what a session loading the saved model should use: a basic/extended build still gains from
# this CPU's layout optimisations at load (measured: backbone 16 -> 8 ms with them); an
# ``all`` build has them already.
LOAD_LEVELS = {"basic": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_ALL", "all": "ORT_DISABLE_ALL"}
_CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile",
                 "asimd", "asimddp", "sve")


def cpu_features() -> list[str]:
    """SIMD features of this CPU that ONNX Runtime's kernels and layouts depend on (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [feature for feature in _CPU_FEATURES if feature in flags]


def ort_build(onnx_path: str | Path, out_path: str | Path, level: str = "extended",
              threads: int | None = None) -> dict[str, Any]:
    """Optimise one ONNX model with ONNX Runtime's CPU EP and save it (atomically).

    Returns what was done: session options, ORT version, time, op domains of the result.
    """
    import onnx
    import onnxruntime as ort

    if level not in ORT_LEVELS:
        raise ValueError(f"unknown ONNX Runtime level {level!r}; expected one of "
                         f"{sorted(ORT_LEVELS)}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[level])
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    out_path = Path(out_path)
    started = time.perf_counter()
    with atomic_path(out_path) as temporary:
        options.optimized_model_filepath = str(temporary)
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(temporary), load_external_data=False)
    seconds = time.perf_counter() - started
    domains = sorted({node.domain for node in model.graph.node if node.domain not in ("",
                                                                                      "ai.onnx")})
    return {
        "session_options": {"graph_optimization_level": ORT_LEVELS[level],
                            "intra_op_num_threads": options.intra_op_num_threads},
        "execution_provider": "CPUExecutionProvider",
        "onnxruntime_version": ort.__version__,
        "cpu_specific": level == "all",
        "load_graph_optimization_level": LOAD_LEVELS[level],
        "cpu": {"machine": platform.machine(), "features": cpu_features()},
        "custom_domains": domains,
        "nodes": len(model.graph.node),
        "build_seconds": round(seconds, 3),
    }


def build_ort_bundle(bundle_dir: str | Path, precision: str = "fp32", *,
                     level: str = "extended", threads: int | None = None,
                     log: Log = print) -> dict[str, Any]:
    """ORT-optimise both graphs of the chosen variant(s) into ``engines/ort/``.

    Records them in the manifest's ``ort_builds`` (hashes in ``files``); returns that section.
    """
    bundle = Bundle.load(bundle_dir, verify=True)
    files = bundle.manifest.get("files", {})
    builds: dict[str, dict[str, Any]] = {}
    added: list[str] = []
    for chosen in select_precisions(bundle, precision):
        for graph in GRAPHS:
            source = bundle.graph_path(graph, chosen)
            relative = ort_build_relpath(graph, chosen)
            log(f"[{graph} {chosen}] ONNX Runtime {level} optimisation: {source.name} -> "
                f"{relative}")
            entry = ort_build(source, bundle.root / relative, level=level, threads=threads)
            entry.update(path=relative, source=source.name,
                         source_sha256=files.get(source.name) or sha256_file(source))
            builds.setdefault(chosen, {})[graph] = entry
            added.append(relative)

    def record(manifest: dict[str, Any]) -> None:
        section = manifest.setdefault("ort_builds", {})
        for chosen, graphs in builds.items():
            section.setdefault(chosen, {}).update(graphs)

    manifest = update_manifest(bundle.root, record, added_files=added)
    return manifest["ort_builds"]

