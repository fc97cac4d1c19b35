"""`crnet deploy`: the whole path from a checkpoint to a checked, benchmarked bundle.

Stages, each reusing its artifacts when their inputs are unchanged (by sha256):

1. export    the checkpoint -> bundle/ (backbone + refine fp32 ONNX, parity checked)
2. quantize  fp16 and int8 variants (calibrated and checked on base-class train-split
             episodes of the fold, never its test split)
3. build     TensorRT engines where TensorRT is installed, else the ONNX Runtime CPU build
4. evaluate  every variant against the PyTorch fp32 model on the same test episodes of
             the fold's novel classes (one pass; one predictor per variant), with the
             accuracy gates
5. bench     latency / throughput of each variant through runtime.Segmenter
6. report    report.md, report.json and overlay pictures in the output directory
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from crnet.calibration.options import Fp16Options, Int8Options
from crnet.data.options import EpisodeSource
from crnet.deploy.options import DeployOptions
from crnet.deploy.report import render_report, save_pictures
from crnet.evaluate import load_gates
from crnet.runtime.errors import CrnetError
from crnet.runtime.files import sha256_file, write_bytes_atomic, write_json_atomic
from crnet.runtime.layout import GRAPHS, MANIFEST, graph_file

PICTURE_EPISODES = 6
# A model costing more than this per query (manifest "flops"."segment") gets the smaller
# episode budgets below (crnet-r50 does; crnet-lite stays well under it).
LARGE_MODEL_FLOPS = 10e9
BUDGETS: dict[str, dict[str, int]] = {
    "small": {"check_episodes": 32, "calibration_episodes": 64, "sensitivity_episodes": 64,
              "bench_iterations": 50},
    "large": {"check_episodes": 8, "calibration_episodes": 16, "sensitivity_episodes": 16,
              "bench_iterations": 10},
}
Log = Callable[[str], None]


class DeployError(CrnetError, RuntimeError):
    """A deploy stage that a library rejected (the message is the library's)."""


def _stage(log: Log, number: int, name: str) -> dict[str, float]:
    log(f"\n[{number}/6] {name}")
    return {"wall": time.perf_counter(), "cpu": _cpu_seconds()}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _finish(begin: dict[str, float]) -> dict[str, float]:
    """A stage's wall and CPU seconds, the process's peak resident memory so far (a stage
    that raised it set it), and the machine's 1-minute load average at its end."""
    import os

    from crnet.bench.timing import memory_mb

    return {"seconds": time.perf_counter() - begin["wall"],
            "cpu_seconds": round(_cpu_seconds() - begin["cpu"], 2),
            "peak_rss_mb": round(memory_mb("VmHWM"), 1),
            "load_1min": round(os.getloadavg()[0], 2)}


def export_stage(bundle_dir: Path, checkpoint: Path | None, log: Log,
                 parity_episodes: int, progress: bool = True) -> dict[str, Any]:
    """Export unless the bundle is intact and was made from the same checkpoint."""
    from crnet.models.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint_info
    from crnet.runtime.bundle import Bundle, BundleError

    info = read_checkpoint_info(checkpoint or DEFAULT_CHECKPOINT)
    try:
        bundle = Bundle.load(bundle_dir)
        if bundle.manifest.get("source_checkpoint", {}).get("sha256") == info.sha256:
            log(f"  reuse {bundle_dir} (same checkpoint {info.sha256[:12]}, hashes verified)")
            return {"reused": True, "checkpoint_sha256": info.sha256}
        log("  checkpoint changed: re-exporting")
    except BundleError as error:
        if bundle_dir.exists():
            log(f"  existing bundle unusable ({error}): re-exporting")
    from crnet.export.to_onnx import export_bundle

    manifest = export_bundle(bundle_dir, info.weights_path, force=True,
                             parity_episodes=parity_episodes, progress=progress)
    parity = manifest.get("parity", {})
    log(f"  exported {bundle_dir}; parity: {_parity_line(parity)}")
    return {"reused": False, "checkpoint_sha256": info.sha256, "parity": parity}


def _parity_line(parity: dict[str, Any]) -> str:
    keys = ("passed", "pixel_agreement", "delta_miou", "max_abs_diff")
    return ", ".join(f"{k}={parity[k]}" for k in keys if k in parity) or "recorded in manifest"


def _fp32_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    files = manifest.get("files", {})
    return {name: files.get(name, "") for name in (graph_file(g, "fp32") for g in GRAPHS)}


def quantize_options(options: DeployOptions, fold: int, budget: dict[str, Any]
                     ) -> dict[str, Fp16Options | Int8Options]:
    """The fp16 and int8 options of this run: ``options.fp16``/``options.int8`` with the
    run's data (the fold's train split, the calibration seed), progress and the budget's
    episode counts."""
    from crnet.calibration.options import DEFAULT_CALIBRATION_SEED

    data = options.data.with_fold(fold).with_seed(DEFAULT_CALIBRATION_SEED)
    int8 = options.int8
    return {
        "fp16": replace(options.fp16, data=data, progress=options.progress,
                        check_episodes=budget["check_episodes"]),
        "int8": replace(int8, data=data, progress=options.progress,
                        calibration_episodes=budget["calibration_episodes"],
                        sensitivity=replace(int8.sensitivity,
                                            episodes=budget["sensitivity_episodes"])),
    }


def quantize_stage(bundle_dir: Path, precisions: Sequence[str],
                   variants: dict[str, Fp16Options | Int8Options], log: Log
                   ) -> dict[str, Any]:
    """Add the fp16/int8 variants of ``precisions`` (with ``variants[precision]``) unless
    present and made from the current fp32 graphs with the same data."""
    return {precision: _quantize_variant(bundle_dir, precision, variants[precision], log)
            for precision in precisions if precision != "fp32"}


def _quantize_variant(bundle_dir: Path, precision: str, options: Fp16Options | Int8Options,
                      log: Log) -> dict[str, Any]:
    """One variant: reused when made from the current fp32 graphs on ``options.data``
    (its dataset's train split, base classes of its fold), else (re)made."""
    from crnet.calibration.options import Int8Options
    from crnet.calibration.precision import quantize_bundle
    from crnet.calibration.ranges import ranges_fit
    from crnet.calibration.variants import default_fold
    from crnet.runtime.bundle import Bundle, update_manifest

    bundle = Bundle.load(bundle_dir)
    manifest = bundle.manifest
    data = options.data.stamp()
    variant = manifest.get("variants", {}).get(precision)
    how = (variant or {}).get("how", {})
    made_on = how.get("deploy_data", EpisodeSource(fold=default_fold(bundle)).stamp())
    if variant and how.get("deploy_fp32_sha256") == _fp32_hashes(manifest) and made_on == data:
        log(f"  reuse {precision} variant (made from the current fp32 graphs, "
            f"{options.data.dataset} fold {options.data.fold})")
        return {"reused": True}
    started = time.perf_counter()
    if isinstance(options, Int8Options) and not ranges_fit(bundle_dir, options):
        log("  saved int8 ranges came from other data or settings: recalibrating")
        options = replace(options, recalibrate=True)
    stamp = _fp32_hashes(quantize_bundle(bundle_dir, precision, options))

    def record(manifest: dict[str, Any]) -> None:
        manifest["variants"][precision]["how"]["deploy_fp32_sha256"] = stamp
        manifest["variants"][precision]["how"]["deploy_data"] = data

    update_manifest(bundle_dir, record)
    seconds = time.perf_counter() - started
    log(f"  {precision}: done in {seconds:.1f} s")
    return {"reused": False, "seconds": seconds}


def build_stage(bundle_dir: Path, precisions: Sequence[str], log: Log) -> dict[str, Any]:
    """Engines of the registry's engine backend (TensorRT) where it imports, else the
    build of its CPU build backend (ONNX Runtime)."""
    from crnet.runtime.backends.base import CPU_BUILD_BACKEND, ENGINE_BACKEND, backend_class

    available, reason = backend_class(ENGINE_BACKEND).is_available()
    if available:
        from crnet.engines.build_engine import build_bundle

        for precision in precisions:
            build_bundle(bundle_dir, precision, log=lambda line: log(f"  {line}"))
        return {"target": ENGINE_BACKEND, "backend": ENGINE_BACKEND}
    log(f"  TensorRT not available ({reason}); building the ONNX Runtime CPU target")
    from crnet.engines.engine_ort import build_ort_bundle
    from crnet.runtime.bundle import Bundle
    from crnet.runtime.ort_build import ort_build_path

    bundle = Bundle.load(bundle_dir)
    for precision in precisions:
        if all(ort_build_path(bundle, graph, precision) for graph in ("backbone", "refine")):
            log(f"  reuse ONNX Runtime build of {precision}")
            continue
        build_ort_bundle(bundle_dir, precision, log=lambda line: log(f"  {line}"))
    return {"target": f"{CPU_BUILD_BACKEND}-cpu", "backend": CPU_BUILD_BACKEND,
            ENGINE_BACKEND: reason}


def _episode_key(bundle_dir: Path, precision: str, backend: str, settings: dict[str, Any]
                 ) -> str:
    from crnet.runtime.bundle import Bundle

    manifest = Bundle.load(bundle_dir, verify=False).manifest
    variant = manifest["variants"][precision]
    hashes = [manifest["files"].get(variant[g], "") for g in ("backbone", "refine")]
    payload = json.dumps({"hashes": hashes, "backend": backend, "precision": precision,
                          **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def gate_settings(options: DeployOptions, fold: int) -> dict[str, Any]:
    """The test episodes deploy gates on, as the eval records and the cache key name them."""
    data = options.data
    return {"fold": fold, "shots": options.shots, "episodes": options.episodes,
            "seed": data.seed, "dataset": data.dataset, "split": "test",
            "data_root": data.resolved_root}


def evaluate_stage(bundle_dir: Path, backends: Sequence[str], options: DeployOptions,
                   fold: int, cache_dir: Path, log: Log
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One pass over the fold's test episodes scoring the reference and every variant
    (crnet eval's path: data.evaluation) on the main backend (``backends[0]``) and on each
    extra one (e.g. an optional CPU engine where installed), gated as crnet eval gates them.

    Returns (records per variant, picture rows). Results are cached by the variant's
    graph hashes and the episode settings.
    """
    from crnet.data.evaluation import EvalResult, gate_record
    from crnet.runtime.backends.base import REFERENCE_BACKEND

    settings = gate_settings(options, fold)
    main, *extras = backends
    variants = {"reference": (REFERENCE_BACKEND, "fp32"),
                **{p: (main, p) for p in options.precisions},
                **{f"{extra} {p}": (extra, p) for extra in extras for p in options.precisions}}
    cached = {name: _cached_result(_cache_path(cache_dir, bundle_dir, precision, backend,
                                               settings), log, backend, precision)
              for name, (backend, precision) in variants.items()}
    missing = {name: variants[name] for name, result in cached.items() if result is None}
    picture_rows: list[dict[str, Any]] = []
    if missing:
        cached.update(_evaluate_missing(bundle_dir, missing, options, fold, settings,
                                        cache_dir, picture_rows))
    reference = EvalResult.from_dict(cached["reference"])
    gates = load_gates()
    records = [gate_record(EvalResult.from_dict(cached[name]), reference,
                           gates.get(variants[name][1]), backend=cached[name]["backend"],
                           precision=variants[name][1], **settings)
               for name in variants if name != "reference"]
    return records, picture_rows


def _cache_path(cache_dir: Path, bundle_dir: Path, precision: str, backend: str,
                settings: dict[str, Any]) -> Path:
    """Where the evaluation of one variant on ``settings``' episodes is cached."""
    return cache_dir / f"eval-{_episode_key(bundle_dir, precision, backend, settings)}.json"


def _cached_result(path: Path, log: Log, backend: str, precision: str
                   ) -> dict[str, Any] | None:
    """A cached evaluation of one variant, or None."""
    if not path.exists():
        return None
    log(f"  reuse evaluation of {backend} {precision} ({path.name})")
    return json.loads(path.read_text())


def _evaluate_missing(bundle_dir: Path, missing: dict[str, tuple[str, str]],
                      options: DeployOptions, fold: int, settings: dict[str, Any],
                      cache_dir: Path, picture_rows: list[dict[str, Any]]
                      ) -> dict[str, dict[str, Any]]:
    """Score the variants without a cached result in one pass (keeping the first episodes'
    predictions in ``picture_rows``); write and return their results."""
    from crnet.data.evaluation import evaluate_many, segmenter_predictor
    from crnet.runtime import Segmenter

    def keep_picture(index: int, episode: Any, predictions: dict[str, np.ndarray]) -> None:
        if index < PICTURE_EPISODES:
            picture_rows.append({"episode": episode, "predictions": predictions})

    segmenters = {name: Segmenter(bundle_dir, backend=backend, precision=precision)
                  for name, (backend, precision) in missing.items()}
    try:
        source = options.data.with_fold(fold).open("test")
        results = evaluate_many({name: segmenter_predictor(segmenter)
                                 for name, segmenter in segmenters.items()},
                                source.episodes(options.episodes, shots=options.shots),
                                total=options.episodes, progress=options.progress,
                                description="evaluate", on_episode=keep_picture,
                                classes=getattr(source, "classes", None))
    finally:
        for segmenter in segmenters.values():  # release sessions now, not at GC
            segmenter.close()
    written = {}
    for name, result in results.items():
        backend, precision = missing[name]
        written[name] = {"backend": segmenters[name].backend_name, "precision": precision,
                         **result.to_dict(), **settings}
        write_json_atomic(_cache_path(cache_dir, bundle_dir, precision, backend, settings),
                          written[name])
    return written


def bench_stage(bundle_dir: Path, backends: Sequence[str], options: DeployOptions, fold: int,
                iterations: int, log: Log) -> dict[str, Any]:
    """crnet bench per variant, on the fold's test episodes (keyed by precision on the main
    backend, ``backends[0]``; ``"<backend> <precision>"`` on the extra ones); the torch
    comparison once, on the main backend's fp32."""
    from crnet.bench.latency import BenchOptions, run_bench

    main, *extras = backends
    runs = [(main, p, p) for p in options.precisions]
    runs += [(extra, p, f"{extra} {p}") for extra in extras for p in options.precisions]
    data = options.data.with_fold(fold).with_seed(0)
    results = {}
    for backend, precision, key in runs:
        report = run_bench(bundle_dir, BenchOptions(
            backend=backend, precision=precision, iterations=iterations,
            warmup=max(3, iterations // 10), threads=options.threads, shots=1,
            compare_torch=key == "fp32", soak_calls=0, data=data, progress=options.progress))
        results[key] = report
        latency = report.get("latency_ms", {}).get("p50", float("nan"))
        log(f"  {backend} {precision}: p50 {latency:.2f} ms per query")
    return results


def extra_cpu_backends(main_backend: str) -> list[str]:
    """The optional CPU engines deploy also evaluates and benchmarks, where installed
    (the registry's ``optional_cpu_engine`` backends other than the main one)."""
    from crnet.runtime.backends.base import backends_where

    return [name for name in backends_where("optional_cpu_engine", installed=True)
            if name != main_backend]


def deploy(out_dir: Path, options: DeployOptions | None = None, log: Log = print
           ) -> dict[str, Any]:
    """Run every stage into ``out_dir``; return the report (also written to disk).

    The variants are calibrated on the base classes of ``options.data``'s fold (its train
    split) and gated on its novel classes (test split).
    """
    from crnet.models.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint_info

    options = options or DeployOptions()
    read_checkpoint_info(options.checkpoint or DEFAULT_CHECKPOINT)  # a bad one: no files
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_dir = out_dir / "bundle"
    started = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {}

    begin = _stage(log, 1, "export")
    exported = export_stage(bundle_dir, options.checkpoint, log, options.parity_episodes,
                            options.progress)
    stages["export"] = {**_finish(begin), "reused": exported["reused"]}
    fold = _choose_fold(bundle_dir, options, log)
    budget = choose_budget(bundle_dir, options.budget_overrides())
    _log_budget(budget, log)

    begin = _stage(log, 2, "quantize (fp16, int8)")
    quantized = quantize_stage(bundle_dir, options.precisions,
                               quantize_options(options, fold, budget), log)
    stages["quantize"] = {**_finish(begin),
                          "reused": all(q.get("reused") for q in quantized.values())}

    begin = _stage(log, 3, "build")
    built = build_stage(bundle_dir, options.precisions, log)
    stages["build"] = _finish(begin)
    backends = [built["backend"], *extra_cpu_backends(built["backend"])]

    begin = _stage(log, 4, f"evaluate against PyTorch ({options.episodes} "
                           f"{options.data.dataset} test episodes of fold {fold})")
    accuracy, picture_rows = _evaluate_and_record(bundle_dir, backends, options, fold,
                                                  out_dir / "cache", log)
    stages["evaluate"] = _finish(begin)

    begin = _stage(log, 5, "benchmark")
    bench = bench_stage(bundle_dir, backends, options, fold, budget["bench_iterations"], log)
    stages["bench"] = _finish(begin)

    begin = _stage(log, 6, "report")
    report = {
        "checkpoint_sha256": exported["checkpoint_sha256"], "bundle": str(bundle_dir),
        "build": built, "quantize": quantized, "export": exported,
        "settings": gate_settings(options, fold),
        "calibration": _calibration_records(bundle_dir), "budget": budget,
        "accuracy": accuracy, "bench": bench,
        "pictures": _pictures(out_dir, picture_rows, options.precisions),
        "machine": f"{platform.machine()}, {platform.python_version()}, "
                   f"{_cpu_count()} cores",
        "manifest_sha256": sha256_file(bundle_dir / MANIFEST), "command": options.command,
    }
    stages["report"] = _finish(begin)
    return _write_report(out_dir, report, stages, started, log)


def _choose_fold(bundle_dir: Path, options: DeployOptions, log: Log) -> int:
    """``options.data.fold``, else the fold the checkpoint was trained on."""
    if options.data.fold is not None:
        return options.data.fold
    from crnet.calibration.variants import default_fold
    from crnet.runtime.bundle import Bundle

    fold = default_fold(Bundle.load(bundle_dir, verify=False))
    log(f"  fold {fold} (the checkpoint's training fold)")
    return fold


def _log_budget(budget: dict[str, Any], log: Log) -> None:
    log(f"  budget ({budget['model']} model, {budget['gflops_per_query']} GFLOP per query): "
        f"{budget['calibration_episodes']} calibration, {budget['sensitivity_episodes']} "
        f"sensitivity, {budget['check_episodes']} fp16-check episodes, "
        f"{budget['bench_iterations']} bench iterations")


def _evaluate_and_record(bundle_dir: Path, backends: Sequence[str], options: DeployOptions,
                         fold: int, cache_dir: Path, log: Log
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """evaluate_stage, then the gates recorded in the bundle and the table logged."""
    from crnet.data.evaluation import format_table
    from crnet.runtime.bundle import record_gates

    accuracy, picture_rows = evaluate_stage(bundle_dir, backends, options, fold, cache_dir,
                                            log)
    # the runtime's backend="auto" takes only a backend whose run of the variant passed
    record_gates(bundle_dir, accuracy)
    log(format_table(accuracy))
    return accuracy, picture_rows


def _pictures(out_dir: Path, picture_rows: list[dict[str, Any]], precisions: Sequence[str]
              ) -> list[str]:
    """The overlay pictures of this run, or those of an earlier one when every evaluation
    came from the cache."""
    if picture_rows:
        return save_pictures(out_dir, picture_rows, list(precisions))
    return [str(p.relative_to(out_dir)) for p in sorted((out_dir / "pictures").glob("*.png"))]


def _write_report(out_dir: Path, report: dict[str, Any], stages: dict[str, Any],
                  started: float, log: Log) -> dict[str, Any]:
    """Add the stage timings and the verdict; write report.json and report.md."""
    report["stages"] = stages
    report["total_seconds"] = time.perf_counter() - started
    report["passed"] = all(r["passed"] is not False for r in report["accuracy"])
    write_json_atomic(out_dir / "report.json", report)
    write_bytes_atomic(out_dir / "report.md", render_report(report).encode())
    log(f"\nwrote {out_dir / 'report.md'}, {out_dir / 'report.json'} and "
        f"{len(report['pictures'])} pictures in {report['total_seconds']:.0f} s")
    return report


def _calibration_records(bundle_dir: Path) -> dict[str, Any]:
    """Which data calibrated (int8) and checked (fp16, int8 sensitivity) each variant."""
    from crnet.runtime.bundle import Bundle

    variants = Bundle.load(bundle_dir, verify=False).manifest.get("variants", {})
    records: dict[str, Any] = {}
    keys = ("data", "dataset", "split", "fold", "classes", "data_root", "episodes")
    if "fp16" in variants and "check" in variants["fp16"]["how"]:
        check = variants["fp16"]["how"]["check"]
        records["fp16_check"] = {k: check[k] for k in keys if k in check}
    if "int8" in variants:
        how = variants["int8"]["how"]
        records["int8_calibration"] = {k: how["calibration"][k] for k in keys
                                       if k in how["calibration"]}
        sensitivity = how.get("sensitivity", {})
        if sensitivity.get("enabled"):
            records["int8_sensitivity"] = {
                **{k: sensitivity[k] for k in keys if k in sensitivity},
                "rank_method": sensitivity.get("rank_method"),
                "kept_fp32_layers": how.get("kept_fp32_layers", []),
                "seconds": sensitivity.get("seconds")}
    return records


def choose_budget(bundle_dir: Path, overrides: dict[str, int | None]) -> dict[str, Any]:
    """Episode counts and bench iterations for this model: BUDGETS by its FLOPs per query,
    each replaced by an explicit (non-None) ``overrides`` value."""
    from crnet.runtime.bundle import Bundle

    flops = Bundle.load(bundle_dir, verify=False).manifest.get("flops") or {}
    per_query = float(flops.get("segment") or 0.0)
    size = "large" if per_query > LARGE_MODEL_FLOPS else "small"
    chosen = dict(BUDGETS[size])
    chosen.update({k: v for k, v in overrides.items() if v is not None})
    return {"model": size, "gflops_per_query": round(per_query / 1e9, 2), **chosen,
            "overridden": sorted(k for k, v in overrides.items() if v is not None)}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
