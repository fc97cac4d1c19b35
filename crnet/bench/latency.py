"""`crnet bench`: latency, throughput, memory and FLOP/s of runtime.Segmenter on a bundle.

    crnet bench BUNDLE --backend onnxruntime --precision fp32 --json bench.json
        [--iterations 100 --warmup 10 --threads 2 --shots 1 --soak [5000]]
        [--dataset synthetic-5i|pascal-5i|folder --data-root DIR --fold F]

Measured in one process, in this order: support encoding (``set_support``), per-query
latency of ``segment`` with the cached support (pre- and post-processing included) and
its throughput, the same split into stages (numpy preprocessing, inference,
post-processing; and the backbone and the query refine run apart), the streaming
throughput of ``segment_stream``, peak resident memory (VmHWM), optionally a soak of N
``segment`` calls (resident-memory growth, must stay below 50 MB), and last, where torch
imports, the PyTorch model's full forward on (support, query) at the same thread count,
alternated with ``segment`` in blocks of 10 calls so that both meet the same machine
load, for the speed-up ratio. FLOPs come from the manifest's ``"flops"`` entry
(models.summary.flops_entry, written by the export) when present, else from
models.summary when torch imports; a query costs one encode plus the query branch of the
refine (the whole refine where the backend runs both branches). The achieved GFLOP/s, of
``segment`` and of the torch forward, are set against a numpy float32 matmul peak
measured in a subprocess with the same thread count. The support and queries come from
the test episodes of ``--dataset`` (synthetic-5i, or pascal-5i/folder under
``--data-root``); where scikit-image, which synthetic-5i draws its textures from, is not
installed (the plain install), numpy-generated frames of the same size stand in for it
(bench.timing.bench_inputs), and the report's ``episodes`` says which were used. Nothing
but the torch comparison needs torch, so the plain install runs it with any backend
installed there. A benchmark prints numbers; nothing here asserts a time.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crnet.bench.timing import (
    bench_inputs,
    checkpoint_copy,
    interleaved_times,
    matmul_peak_gflops,
    memory_mb,
    model_flops,
    percentiles,
    time_calls,
    torch_forward,
)
from crnet.data.options import EpisodeSource
from crnet.runtime.errors import CrnetError, UsageError
from crnet.runtime.layout import PRECISIONS
from crnet.runtime.progress import track

SOAK_DEFAULT = 5000
SOAK_LIMIT_MB = 50.0
SPEEDUP_TARGET = 3.0



def stage_times(segmenter: Any, queries: list[np.ndarray], iterations: int, warmup: int
                ) -> dict[str, dict[str, float]]:
    """Per-stage durations of segment() with the cached support, through the Segmenter's
    own steps: ``preprocess`` (numpy), ``infer`` (``run_query`` and the softmax),
    ``postprocess`` (resize, threshold); then, for where the inference time goes, the
    backbone and the query refine run one after the other (``run_backbone`` +
    ``run_query_refine``: separate sessions, so their sum can exceed the fused inference)."""
    backend, support = segmenter.backend, segmenter.support
    names = ("preprocess", "inference", "postprocess", "backbone", "refine")
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + iterations):
        query = queries[index % len(queries)]
        marks = [time.perf_counter()]
        tensor, shape = segmenter.preprocess(query)
        marks.append(time.perf_counter())
        probability = segmenter.infer(tensor, support)
        marks.append(time.perf_counter())
        segmenter.postprocess(probability, shape)
        marks.append(time.perf_counter())
        feat = backend.run_backbone(tensor)
        marks.append(time.perf_counter())
        backend.run_query_refine(feat, support.feat, support.mask)
        marks.append(time.perf_counter())
        if index >= warmup:
            for name, start, stop in zip(names, marks, marks[1:], strict=False):
                times[name].append(stop - start)
    return {name: percentiles(values) for name, values in times.items()}


def runs_query_branch_only(backend_info: dict[str, Any]) -> bool:
    """Whether the backend that ``describe()``d itself as ``backend_info`` skips the
    support branch of the refine per query (its class answers: Backend.runs_query_branch_only;
    an unknown backend: no)."""
    from crnet.runtime.backends.base import BackendError, backend_class

    try:
        cls = backend_class(str(backend_info.get("backend")))
    except (BackendError, ImportError):
        return False
    return cls.runs_query_branch_only(backend_info)


def soak(segment: Callable[[np.ndarray], object], queries: list[np.ndarray], calls: int,
         progress: bool) -> dict[str, Any]:
    """``calls`` segment() calls; resident memory before, after, its growth and maximum."""
    gc.collect()
    start = memory_mb("VmRSS")
    highest = start
    began = time.perf_counter()
    for index in track(range(calls), progress, "soak"):
        segment(queries[index % len(queries)])
        if index % 100 == 0:
            highest = max(highest, memory_mb("VmRSS"))
    seconds = time.perf_counter() - began
    gc.collect()
    end = memory_mb("VmRSS")
    growth = end - start
    return {"calls": calls, "seconds": seconds, "rss_start_mb": start, "rss_end_mb": end,
            "rss_max_mb": max(highest, end), "growth_mb": growth, "limit_mb": SOAK_LIMIT_MB,
            "passed": bool(growth < SOAK_LIMIT_MB)}


def _measure(segmenter: Any, support_images: list[np.ndarray],
             support_masks: list[np.ndarray], queries: list[np.ndarray], iterations: int,
             warmup: int, progress: bool) -> dict[str, Any]:
    """Support encoding, per-query latency, throughput (plain and streamed), peak memory."""
    encode_times = time_calls(lambda _: segmenter.set_support(support_images, support_masks),
                              max(3, min(iterations, 10)), 1)
    segment_times = time_calls(lambda i: segmenter.segment(queries[i % len(queries)]),
                               iterations, warmup, progress, f"{segmenter.backend_name} segment")
    started = time.perf_counter()
    for _ in segmenter.segment_stream(queries[i % len(queries)] for i in range(iterations)):
        pass
    stream_seconds = time.perf_counter() - started
    return {
        "backend": segmenter.backend_name, "precision": segmenter.precision,
        "query_size": list(queries[0].shape[:2]), "iterations": iterations, "warmup": warmup,
        "backend_info": segmenter.describe(),
        "support_encode_ms": percentiles(encode_times),
        "latency_ms": percentiles(segment_times),
        "stages_ms": stage_times(segmenter, queries, iterations, warmup),
        "throughput_qps": iterations / float(np.sum(segment_times)),
        "stream_throughput_qps": iterations / stream_seconds,
        "peak_rss_mb": memory_mb("VmHWM"),
    }


@dataclass(frozen=True)
class BenchOptions:
    """What `crnet bench` measures and on which episodes."""

    backend: str = "auto"
    """A registered backend name, or auto (the runtime's choice for the precision)."""
    precision: str = "fp32"
    """The bundle variant timed: fp32, fp16 or int8."""
    iterations: int = 100
    """Timed segment() calls (and torch forwards)."""
    warmup: int = 10
    """Untimed calls before each timing."""
    threads: int | None = None
    """Intra-op threads of the backend, torch and the matmul peak; None: all cores."""
    shots: int = 1
    """Support images encoded."""
    compare_torch: bool | None = None
    """Time the PyTorch forward too; None: where torch imports."""
    soak_calls: int = 0
    """segment() calls of the memory soak (0: none)."""
    batch_sizes: tuple[int, ...] = ()
    """Batch sizes N whose segment_batch throughput is measured (empty: none)."""
    data: EpisodeSource = field(default_factory=lambda: EpisodeSource(fold=0))
    """Whose test episodes give the support and queries."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name, value, low in (("iterations", self.iterations, 1),
                                 ("warmup", self.warmup, 0), ("shots", self.shots, 1),
                                 ("soak_calls", self.soak_calls, 0),
                                 ("threads", self.threads, 1),
                                 *(("batch size", size, 1) for size in self.batch_sizes)):
            if value is not None and value < low:
                raise UsageError(f"bench {name} must be at least {low}, got {value}")


def run_bench(bundle: str | Path, options: BenchOptions | None = None) -> dict[str, Any]:
    """Run the benchmark and return its JSON-ready report (see the module docstring)."""
    from crnet.runtime.bundle import Bundle
    from crnet.runtime.segmenter import choose_backend

    options = options or BenchOptions()
    torch_present = importlib.util.find_spec("torch") is not None
    has_checkpoint = checkpoint_copy(Path(bundle)).exists()
    compare_torch = (torch_present and has_checkpoint if options.compare_torch is None
                     else options.compare_torch)
    if compare_torch and not torch_present:
        raise CrnetError("--compare-torch needs torch, which is not installed; install the "
                         "export extra: pip install 'crnet-deploy[export]'")
    if compare_torch and not has_checkpoint:
        raise CrnetError(f"--compare-torch needs the bundle's checkpoint copy, which {bundle} "
                         "does not hold (a slimmed bundle; `crnet bundle slim "
                         "--keep-checkpoint` keeps it)")
    threads = options.threads or os.cpu_count() or 1
    bundle = Path(bundle)
    name = choose_backend(options.backend, Bundle.load(bundle, verify=False),
                          options.precision)
    report, manifest = _bench_segmenter(bundle, name, threads, compare_torch, options)
    _add_flops(report, manifest, threads)
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "python": platform.python_version(), "numpy": np.__version__}
    return report


def _bench_segmenter(bundle: Path, name: str, threads: int, compare_torch: bool,
                     options: BenchOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Time one Segmenter (module docstring); the report and the bundle's manifest."""
    from crnet.runtime import Segmenter
    from crnet.runtime.backends.base import backend_class

    data, progress = options.data, options.progress
    extra = {"threads": threads} if backend_class(name).takes_threads else {}
    support_images, support_masks, queries, inputs = bench_inputs(
        options.shots, 8, data.fold_or(0), data.seed, data.dataset, data.data_root)
    with Segmenter(bundle, backend=name, precision=options.precision, **extra) as segmenter:
        report = _measure(segmenter, support_images, support_masks, queries,
                          options.iterations, options.warmup, progress)
        report.update({"bundle": str(bundle), "threads": threads, "shots": options.shots,
                       "episodes": {**inputs, "data_root": data.resolved_root}})
        if options.soak_calls:
            report["soak"] = soak(segmenter.segment, queries, options.soak_calls, progress)
        if options.batch_sizes:
            report["batches"] = batch_throughput(segmenter, queries, options.batch_sizes,
                                                 options.iterations, options.warmup)
        if compare_torch:
            forward = torch_forward(bundle, support_images, support_masks, queries[0],
                                    threads)
            times = interleaved_times(
                {"segment": lambda _: segmenter.segment(queries[0]), "torch": forward},
                options.iterations, options.warmup, progress)
            report["torch_forward_ms"] = percentiles(times["torch"])
            report["segment_interleaved_ms"] = percentiles(times["segment"])
            report["speedup_vs_torch"] = (report["torch_forward_ms"]["p50"]
                                          / report["segment_interleaved_ms"]["p50"])
            report["speedup_target"] = SPEEDUP_TARGET
        manifest = segmenter.bundle.manifest if segmenter.bundle is not None else {}
    return report, manifest


def _add_flops(report: dict[str, Any], manifest: dict[str, Any], threads: int) -> None:
    """The matmul peak, and where the manifest has FLOPs, the achieved GFLOP/s."""
    latency = report["latency_ms"]
    flops = model_flops(manifest)
    peak_gflops = matmul_peak_gflops(threads)
    report["matmul_peak_gflops"] = peak_gflops
    if flops is not None:
        query_only = flops["refine_query"] is not None and runs_query_branch_only(
            report["backend_info"])
        per_query = flops["encode"] + (flops["refine_query"] if query_only else flops["refine"])
        achieved = per_query / (latency["p50"] / 1e3) / 1e9
        report["flops"] = {**flops, "per_query": per_query,
                           "note": "per query: one image encoded + the query branch of a "
                                   "1-shot refine (conv/linear, 2 x MACs)" if query_only else
                                   "per query: one image encoded + a whole 1-shot refine "
                                   "(this backend runs both branches)"}
        report["achieved_gflops"] = achieved
        report["fraction_of_matmul_peak"] = achieved / peak_gflops
        if "torch_forward_ms" in report:
            report["torch_achieved_gflops"] = (
                flops["forward"] / (report["torch_forward_ms"]["p50"] / 1e3) / 1e9)


def _format_stages(stages: dict[str, dict[str, float]]) -> str:
    p50 = {name: values["p50"] for name, values in stages.items()}
    return (f"  stages p50       preprocess {p50['preprocess']:.2f} ms, inference "
            f"{p50['inference']:.2f} ms, postprocess {p50['postprocess']:.2f} ms\n"
            f"                   (run apart: backbone {p50['backbone']:.2f} ms + refine "
            f"{p50['refine']:.2f} ms)")


def describe_inputs(episodes: dict[str, Any]) -> str:
    """Which images were timed, in words (the report's ``episodes``)."""
    if "note" in episodes:
        return str(episodes["note"])
    return (f"{episodes.get('dataset')} test episodes, fold {episodes.get('fold')}, "
            f"seed {episodes.get('seed')}")


def batch_throughput(segmenter: Any, queries: list[np.ndarray], sizes: tuple[int, ...],
                     iterations: int, warmup: int) -> list[dict[str, Any]]:
    """Queries/s of ``segment_batch`` for each batch size N (the queries cycled to N), with
    the p50 of one call; ``iterations`` queries are timed per size (at least one call)."""
    rows = []
    for size in sizes:
        batch = [queries[index % len(queries)] for index in range(size)]
        for _ in range(max(1, warmup // size)):
            segmenter.segment_batch(batch)
        calls = max(1, iterations // size)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            segmenter.segment_batch(batch)
            times.append(time.perf_counter() - started)
        rows.append({"batch": size, "calls": calls, "call_ms": percentiles(times),
                     "queries_per_s": size * calls / sum(times)})
    return rows


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines for the terminal."""
    latency = report["latency_ms"]
    lines = [
        f"{report['backend']} {report['precision']}, {report['threads']} thread(s), "
        f"{report['shots']}-shot cached support, query {report['query_size'][0]}x"
        f"{report['query_size'][1]}",
        f"  segment latency  p50 {latency['p50']:.2f} ms  p90 {latency['p90']:.2f} ms  "
        f"p99 {latency['p99']:.2f} ms",
        f"  throughput       {report['throughput_qps']:.1f} queries/s "
        f"(segment_stream {report['stream_throughput_qps']:.1f}/s)",
        _format_stages(report["stages_ms"]),
        f"  support encode   p50 {report['support_encode_ms']['p50']:.2f} ms",
        f"  inputs           {describe_inputs(report.get('episodes', {}))}",
        f"  peak resident    {report['peak_rss_mb']:.0f} MB",
    ]
    if "achieved_gflops" in report:
        lines.append(
            f"  compute          {report['flops']['per_query'] / 1e9:.2f} GFLOP/query -> "
            f"{report['achieved_gflops']:.1f} GFLOP/s = "
            f"{100 * report['fraction_of_matmul_peak']:.0f}% of the numpy matmul peak "
            f"{report['matmul_peak_gflops']:.1f} GFLOP/s")
    else:
        lines.append(f"  matmul peak      {report['matmul_peak_gflops']:.1f} GFLOP/s "
                     "(model FLOPs unknown: no manifest 'flops' and no torch)")
    if "speedup_vs_torch" in report:
        ratio = report["speedup_vs_torch"]
        lines.append(
            f"  vs torch         CRNet.forward p50 {report['torch_forward_ms']['p50']:.2f} ms, "
            f"segment p50 {report['segment_interleaved_ms']['p50']:.2f} ms (interleaved) -> "
            f"{ratio:.2f}x faster per query (target {SPEEDUP_TARGET:.0f}x: "
            f"{'met' if ratio >= SPEEDUP_TARGET else 'NOT met'})")
        if "torch_achieved_gflops" in report:
            lines.append(
                f"                   torch: {report['flops']['forward'] / 1e9:.2f} GFLOP/forward "
                f"-> {report['torch_achieved_gflops']:.1f} GFLOP/s")
    for row in report.get("batches", []):
        lines.append(f"  batch {row['batch']:<3}        {row['queries_per_s']:.1f} queries/s "
                     f"(segment_batch p50 {row['call_ms']['p50']:.2f} ms per call)")
    if "soak" in report:
        soak_report = report["soak"]
        lines.append(
            f"  soak             {soak_report['calls']} calls in {soak_report['seconds']:.0f} s: "
            f"resident {soak_report['rss_start_mb']:.0f} -> {soak_report['rss_end_mb']:.0f} MB, "
            f"growth {soak_report['growth_mb']:+.1f} MB (limit {SOAK_LIMIT_MB:.0f} MB: "
            f"{'PASS' if soak_report['passed'] else 'FAIL'})")
    return "\n".join(lines)
