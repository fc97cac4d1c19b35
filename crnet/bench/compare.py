"""`crnet bench BUNDLE --compare`: every CPU engine side by side, in one process.

    crnet bench BUNDLE --compare [--threads 1] [--iterations 200] [--json compare.json]

Rows: PyTorch's full forward (encode support and query, refine; what an application
without this runtime would run per query), then each CPU path of runtime.Segmenter that
is installed and whose variant the bundle has: ONNX Runtime fp32, fp16 and int8, OpenVINO
fp32 with the f32 hint, fp32 with the bf16 hint (only where the CPU lists BF16), fp16 (f32
hint), int8 (f32 hint between the int8 layers) and int8 with the bf16 hint. Each path is
timed twice: ``raw``, the engine alone on the fused
query graph (``backend.run_query`` on a preprocessed image with the support encoded once),
and ``segment``, the whole ``Segmenter.segment`` call (numpy pre- and post-processing
included). All calls alternate in blocks of 10 (crnet.bench.latency.interleaved_times) at the
same thread count, so every row meets the same machine load. Achieved GFLOP/s count one
encode plus the query branch of a 1-shot refine per query (the torch forward: two encodes
and the whole refine), against a float32 numpy matmul peak measured at the same thread
count before and after the rows (the better of the two: on a shared machine one run can
meet another process). int8 and bf16 rows can pass 100% of that fp32 peak: their kernels
do more multiply-adds per cycle. A benchmark prints numbers; nothing here asserts a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crnet.bench.timing import (
    interleaved_times,
    load_queries,
    matmul_peak_gflops,
    model_flops,
    percentiles,
    torch_forward,
)

COMPARED_PRECISIONS = ("fp32", "fp16", "int8")
TORCH_FORWARD = "torch full forward"  # the row of the PyTorch model's whole forward


@dataclass(frozen=True)
class CpuPath:
    """One CPU path: a backend, a bundle precision and backend options."""

    label: str
    backend: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)


def cpu_paths(bundle_precisions: list[str]) -> list[CpuPath]:
    """The paths --compare times: each installed CPU backend of the registry but the
    reference (timed as the torch forward), for each variant the bundle has, and for a
    backend with an inference precision hint, each hint this CPU can run (fp16 variants:
    the first hint only)."""
    from crnet.runtime.backends.base import REFERENCE_BACKEND, backend_class, backends_where

    paths: list[CpuPath] = []
    for name in backends_where("runs_on_cpu", installed=True):
        if name == REFERENCE_BACKEND:
            continue
        hints = backend_class(name).usable_inference_precisions()
        for precision in COMPARED_PRECISIONS:
            if precision not in bundle_precisions:
                continue
            if not hints:
                paths.append(CpuPath(f"{name} {precision}", name, precision))
                continue
            paths += [CpuPath(f"{name} {precision} ({hint})", name, precision,
                              {"inference_precision": hint})
                      for hint in (hints if precision != "fp16" else hints[:1])]
    return paths


def run_compare(bundle: str | Path, *, threads: int | None = None, iterations: int = 200,
                warmup: int = 10, shots: int = 1, fold: int = 0, seed: int = 0,
                torch: bool = True, progress: bool = True) -> dict[str, Any]:
    """Time every CPU path (module docstring); return the JSON-ready report."""
    from crnet.runtime import Segmenter
    from crnet.runtime.bundle import Bundle

    threads = threads or os.cpu_count() or 1
    bundle = Path(bundle)
    peaks = [matmul_peak_gflops(threads)]
    loaded = Bundle.load(bundle, verify=False)
    support_images, support_masks, queries = load_queries(shots, 8, fold, seed)
    query = queries[0]
    segmenters: dict[str, Any] = {}
    calls: dict[str, Callable[[int], object]] = {}
    try:
        for path in cpu_paths(loaded.precisions):
            segmenter = Segmenter(bundle, backend=path.backend, precision=path.precision,
                                  threads=threads, **path.options)
            segmenters[path.label] = segmenter
            segmenter.set_support(support_images, support_masks)
            tensor, _shape = segmenter.preprocess(query)
            support = segmenter.support
            calls[f"{path.label} | raw"] = _raw_call(segmenter.backend, tensor, support)
            calls[f"{path.label} | segment"] = _segment_call(segmenter, query)
        if torch:
            calls[f"{TORCH_FORWARD} | raw"] = torch_forward(
                bundle, support_images, support_masks, query, threads)
        times = interleaved_times(calls, iterations, warmup, progress)
        described = {label: segmenter.describe() for label, segmenter in segmenters.items()}
    finally:
        for segmenter in segmenters.values():
            segmenter.close()

    flops = model_flops(loaded.manifest)
    peaks.append(matmul_peak_gflops(threads))
    peak = max(peaks)  # best of before and after: other processes only ever lower it
    rows = []
    for name, values in times.items():
        label, kind = name.split(" | ")
        latency = percentiles(values)
        row: dict[str, Any] = {"path": label, "timed": kind, "latency_ms": latency,
                               "queries_per_s": 1e3 / latency["p50"]}
        if flops is not None:
            per_query = (flops["forward"] if label == TORCH_FORWARD else
                         flops["encode"] + (flops["refine_query"] or flops["refine"]))
            row["gflops"] = per_query / (latency["p50"] / 1e3) / 1e9
            row["fraction_of_peak"] = row["gflops"] / peak
        rows.append(row)
    report = {"bundle": str(bundle), "threads": threads, "shots": shots,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "iterations": iterations, "matmul_peak_gflops": peak,
              "matmul_peak_runs_gflops": peaks, "flops": flops,
              "rows": rows, "backends": described, "cpu_flags": cpu_flags()}
    report["summary"] = summarize(rows)
    return report


def _raw_call(backend: Any, tensor: np.ndarray, support: Any) -> Callable[[int], object]:
    def call(_: int) -> object:
        return backend.run_query(tensor, support.feat, support.mask)

    return call


def _segment_call(segmenter: Any, query: np.ndarray) -> Callable[[int], object]:
    def call(_: int) -> object:
        return segmenter.segment(query)

    return call


def cpu_flags(names: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                        "avx512_bf16", "amx_bf16", "amx_int8")
              ) -> dict[str, bool]:
    """Which of the CPU flags that decide int8/bf16 kernels /proc/cpuinfo lists."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {name: name in flags for name in names}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios the issue's targets are stated in: each segment path against the torch
    forward, and each path's segment call against its raw engine call."""
    by_key = {(row["path"], row["timed"]): row["latency_ms"]["p50"] for row in rows}
    torch_ms = by_key.get((TORCH_FORWARD, "raw"))
    summary: dict[str, Any] = {}
    for (path, timed), ms in by_key.items():
        if timed != "segment":
            continue
        entry = {"segment_ms": ms, "raw_ms": by_key.get((path, "raw"))}
        if entry["raw_ms"]:
            entry["segment_over_raw"] = ms / entry["raw_ms"]
        if torch_ms:
            entry["speedup_vs_torch"] = torch_ms / ms
        summary[path] = entry
    return summary


def format_compare(report: dict[str, Any]) -> str:
    """The side-by-side table for the terminal (markdown)."""
    flags = ", ".join(name for name, present in report["cpu_flags"].items() if present)
    lines = [f"{report['threads']} thread(s), {report['shots']}-shot cached support, "
             f"{report['iterations']} calls per row, interleaved in blocks of 10; "
             f"CPU flags: {flags or 'unknown'}; numpy sgemm peak "
             f"{report['matmul_peak_gflops']:.1f} GFLOP/s", "",
             "| path | timed | p50 ms | p90 ms | queries/s | GFLOP/s | % of sgemm peak | "
             "vs torch |", "|---|---|---|---|---|---|---|---|"]
    torch_ms = next((row["latency_ms"]["p50"] for row in report["rows"]
                     if row["path"] == TORCH_FORWARD), None)
    for row in report["rows"]:
        latency = row["latency_ms"]
        gflops = f"{row['gflops']:.1f}" if "gflops" in row else "-"
        fraction = f"{100 * row['fraction_of_peak']:.0f}%" if "gflops" in row else "-"
        versus = f"{torch_ms / latency['p50']:.2f}x" if torch_ms else "-"
        lines.append(f"| {row['path']} | {row['timed']} | {latency['p50']:.2f} | "
                     f"{latency['p90']:.2f} | {row['queries_per_s']:.0f} | {gflops} | "
                     f"{fraction} | {versus} |")
    if torch_ms and report["threads"] > 1 and report.get("omp_wait_policy") != "ACTIVE":
        lines += ["", f"torch ran with OMP_WAIT_POLICY={report.get('omp_wait_policy')} (crnet "
                  "sets PASSIVE so that torch's idle OpenMP threads leave the cores to the "
                  "other engines); that slows its multi-threaded forward, so the 'vs torch' "
                  "column flatters the others: compare at --threads 1, or run with "
                  "OMP_WAIT_POLICY=ACTIVE"]
    lines.append("")
    lines.append("segment (Segmenter.segment, pre/post included) over raw (the engine alone):")
    for path, entry in report["summary"].items():
        if "segment_over_raw" in entry:
            lines.append(f"  {path}: {entry['segment_over_raw']:.2f}x the raw engine call")
    return "\n".join(lines)
