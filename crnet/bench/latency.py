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
``--data-root``). A benchmark prints numbers; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crnet.bench.timing import (
    interleaved_times,
    load_queries,
    matmul_peak_gflops,
    memory_mb,
    model_flops,
    percentiles,
    time_calls,
    torch_forward,
)
from crnet.data.evaluation import DATASETS
from crnet.evaluate import BACKENDS
from crnet.runtime.errors import UsageError
from crnet.runtime.files import check_writable_file, write_json_atomic
from crnet.runtime.layout import PRECISIONS

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
    """Whether the backend's segment() skips the support branch of the refine: the torch
    backend always does (``refine_query``), onnxruntime when it could cut the graph
    (``describe()["query_refine"]``), openvino when it fused the query graph
    (``describe()["query_graph"]``), tensorrt never (its refine engine is the full graph)."""
    if backend_info.get("backend") == "torch":
        return True
    if backend_info.get("backend") == "openvino":
        return bool(backend_info.get("query_graph", {}).get("fused", False))
    return bool(backend_info.get("query_refine", {}).get("pruned", False))


def soak(segment: Callable[[np.ndarray], object], queries: list[np.ndarray], calls: int,
         progress: bool) -> dict[str, Any]:
    """``calls`` segment() calls; resident memory before, after, its growth and maximum."""
    from tqdm import tqdm

    gc.collect()
    start = memory_mb("VmRSS")
    highest = start
    began = time.perf_counter()
    for index in tqdm(range(calls), desc="soak", disable=not progress, leave=False):
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


def run_bench(bundle: str | Path, backend: str = "auto", precision: str = "fp32", *,
              iterations: int = 100, warmup: int = 10, threads: int | None = None,
              shots: int = 1, compare_torch: bool | None = None, soak_calls: int = 0,
              fold: int = 0, seed: int = 0, progress: bool = True,
              dataset: str = "synthetic-5i", data_root: Path | None = None
              ) -> dict[str, Any]:
    """Run the benchmark and return its JSON-ready report (see the module docstring)."""
    from crnet.runtime import Segmenter
    from crnet.runtime.bundle import Bundle
    from crnet.runtime.segmenter import choose_backend

    if iterations < 1 or warmup < 0:
        raise ValueError(f"iterations must be >= 1 and warmup >= 0, got {iterations}, {warmup}")
    torch_present = importlib.util.find_spec("torch") is not None
    if compare_torch is None:
        compare_torch = torch_present
    if compare_torch and not torch_present:
        raise ValueError("--compare-torch needs torch (pip install torch==2.13.0)")
    threads = threads or os.cpu_count() or 1
    bundle = Path(bundle)
    name = choose_backend(backend, Bundle.load(bundle, verify=False), precision)
    options = {"threads": threads} if name in ("onnxruntime", "openvino", "torch") else {}
    support_images, support_masks, queries = load_queries(shots, 8, fold, seed, dataset,
                                                          data_root)
    with Segmenter(bundle, backend=name, precision=precision, **options) as segmenter:
        report = _measure(segmenter, support_images, support_masks, queries, iterations,
                          warmup, progress)
        report.update({"bundle": str(bundle), "threads": threads, "shots": shots,
                       "episodes": {"dataset": dataset, "split": "test", "fold": fold,
                                    "seed": seed, "data_root": None if data_root is None
                                    else str(Path(data_root).resolve())}})
        if soak_calls:
            report["soak"] = soak(segmenter.segment, queries, soak_calls, progress)
        if compare_torch:
            forward = torch_forward(bundle, support_images, support_masks, queries[0],
                                    threads)
            times = interleaved_times(
                {"segment": lambda _: segmenter.segment(queries[0]), "torch": forward},
                iterations, warmup, progress)
            report["torch_forward_ms"] = percentiles(times["torch"])
            report["segment_interleaved_ms"] = percentiles(times["segment"])
            report["speedup_vs_torch"] = (report["torch_forward_ms"]["p50"]
                                          / report["segment_interleaved_ms"]["p50"])
            report["speedup_target"] = SPEEDUP_TARGET
        manifest = segmenter.bundle.manifest if segmenter.bundle is not None else {}

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
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "python": platform.python_version(), "numpy": np.__version__}
    return report


def _format_stages(stages: dict[str, dict[str, float]]) -> str:
    p50 = {name: values["p50"] for name, values in stages.items()}
    return (f"  stages p50       preprocess {p50['preprocess']:.2f} ms, inference "
            f"{p50['inference']:.2f} ms, postprocess {p50['postprocess']:.2f} ms\n"
            f"                   (run apart: backbone {p50['backbone']:.2f} ms + refine "
            f"{p50['refine']:.2f} ms)")


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
    if "soak" in report:
        soak_report = report["soak"]
        lines.append(
            f"  soak             {soak_report['calls']} calls in {soak_report['seconds']:.0f} s: "
            f"resident {soak_report['rss_start_mb']:.0f} -> {soak_report['rss_end_mb']:.0f} MB, "
            f"growth {soak_report['growth_mb']:+.1f} MB (limit {SOAK_LIMIT_MB:.0f} MB: "
            f"{'PASS' if soak_report['passed'] else 'FAIL'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`crnet bench`: benchmark a bundle; exits 1 when the soak's memory growth is too large."""
    parser = argparse.ArgumentParser(prog="crnet bench", description=main.__doc__)
    parser.add_argument("bundle", type=Path, help="bundle directory (from crnet export)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for the backend, torch and the matmul peak "
                             "(default: all cores)")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--compare-torch", action=argparse.BooleanOptionalAction, default=None,
                        help="time CRNet.forward in torch too (default: when torch imports)")
    parser.add_argument("--soak", type=int, nargs="?", const=SOAK_DEFAULT, default=0,
                        metavar="N", help=f"N segment calls watching memory "
                                          f"(default N {SOAK_DEFAULT})")
    parser.add_argument("--fold", type=int, default=0, choices=range(4))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action="store_true",
                        help="time every installed CPU path side by side (torch, onnxruntime "
                             "fp32/int8, openvino f32/bf16/int8) in one process "
                             "(crnet/bench_compare.py); --backend/--precision are ignored")
    parser.add_argument("--under-load", action="store_true",
                        help="per-episode evaluation time quiet and beside a CPU hog on one "
                             "core, alternating (crnet/under_load.py)")
    parser.add_argument("--episodes-per-round", type=int, default=5,
                        help="--under-load: episodes per quiet or loaded block")
    parser.add_argument("--rounds", type=int, default=8, help="--under-load: rounds")
    parser.add_argument("--dataset", default="synthetic-5i", choices=DATASETS,
                        help="whose test episodes give the support and queries "
                             "(default synthetic-5i)")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="dataset directory (pascal-5i: the VOC2012 root; folder)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from crnet.data.evaluation import missing_data_root

    if (problem := missing_data_root(args.dataset, args.data_root)) is not None:
        parser.error(problem)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    if args.json is not None:
        check_writable_file(args.json, "--json")  # before the run, not after it
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.soak < 0:
        parser.error("--soak must be >= 0")

    from crnet.runtime.backends.base import BackendError
    from crnet.runtime.bundle import BundleError

    if args.compare:
        return _main_compare(args)
    if args.under_load:
        return _main_under_load(args)
    try:
        report = run_bench(args.bundle, args.backend, args.precision,
                           iterations=args.iterations, warmup=args.warmup,
                           threads=args.threads, shots=args.shots,
                           compare_torch=args.compare_torch, soak_calls=args.soak,
                           fold=args.fold, seed=args.seed, progress=not args.no_progress,
                           dataset=args.dataset, data_root=args.data_root)
    except (BundleError, BackendError):
        raise
    except ValueError as error:  # a bad option value found while setting the bench up
        raise UsageError(str(error)) from error
    print(format_report(report))
    if args.json is not None:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    if "soak" in report and not report["soak"]["passed"]:
        return 1
    return 0


def _main_under_load(args: argparse.Namespace) -> int:
    from crnet.bench.under_load import format_under_load, run_under_load
    from crnet.runtime.backends.base import BackendError
    from crnet.runtime.bundle import BundleError

    if args.episodes_per_round < 1 or args.rounds < 1:
        print("crnet bench: --episodes-per-round and --rounds must be >= 1", file=sys.stderr)
        return 2
    try:
        report = run_under_load(args.bundle, threads=args.threads,
                                episodes_per_round=args.episodes_per_round,
                                rounds=args.rounds, fold=args.fold, seed=args.seed,
                                progress=not args.no_progress)
    except (BundleError, BackendError, ValueError, OSError) as error:
        print(f"crnet bench: {error}", file=sys.stderr)
        return 1
    print(format_under_load(report))
    if args.json is not None:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _main_compare(args: argparse.Namespace) -> int:
    from crnet.bench.compare import format_compare, run_compare
    from crnet.runtime.backends.base import BackendError
    from crnet.runtime.bundle import BundleError

    try:
        report = run_compare(args.bundle, threads=args.threads, iterations=args.iterations,
                             warmup=args.warmup, shots=args.shots, fold=args.fold,
                             seed=args.seed, torch=args.compare_torch is not False,
                             progress=not args.no_progress)
    except (BundleError, BackendError, ValueError, OSError) as error:
        print(f"crnet bench: {error}", file=sys.stderr)
        return 1
    print(format_compare(report))
    if args.json is not None:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from crnet.cli.exit_codes import run_command

    sys.exit(run_command("crnet bench", main))
