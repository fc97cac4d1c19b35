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

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from crnet.calibration.options import Fp16Options, Int8Options
from crnet.data.options import EpisodeSource
from crnet.deploy.cache import CachedEvaluation
from crnet.deploy.options import DeployOptions
from crnet.deploy.report import render_report, save_pictures, speed_verdict
from crnet.evaluate import load_gates
from crnet.runtime.errors import CrnetError
from crnet.runtime.files import sha256_file, write_bytes_atomic, write_json_atomic
from crnet.runtime.layout import GRAPHS, MANIFEST, graph_file

PICTURE_EPISODES = 6
PICTURES_DIR = "pictures"
PICTURE_PATTERN = "episode-*.png"
REPORT_FILES = ("report.md", "report.json")
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
            _add_missing_golden(bundle, log)
            return {"reused": True, "checkpoint_sha256": info.sha256,
                    "parity": bundle.manifest.get("parity", {})}
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


def _add_missing_golden(bundle: Any, log: Log) -> None:
    """Record golden references into a reused bundle exported without them, so every
    deployed bundle can be checked by `crnet verify`."""
    from crnet.export.golden import add_golden
    from crnet.runtime.golden import has_golden

    if not has_golden(bundle):
        entry = add_golden(bundle.root)
        log(f"  recorded {entry['episodes']} golden episodes for crnet verify")


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

    Returns (records per variant, picture rows: the first PICTURE_EPISODES episodes with
    every variant's mask). Each variant's result and picture masks are cached under a key
    of everything they depend on (crnet.deploy.cache); only the variants without a usable
    entry are evaluated.
    """
    from crnet.data.evaluation import EvalResult, gate_record
    from crnet.runtime.backends.base import REFERENCE_BACKEND

    settings = gate_settings(options, fold)
    main, *extras = backends
    variants = {"reference": (REFERENCE_BACKEND, "fp32"),
                **{p: (main, p) for p in options.precisions},
                **{f"{extra} {p}": (extra, p) for extra in extras for p in options.precisions}}
    inputs = _evaluation_inputs(bundle_dir, variants, options, settings)
    pictures = min(PICTURE_EPISODES, options.episodes)
    found = {name: _cached(cache_dir, inputs[name], pictures, variants[name], log)
             for name in variants}
    missing = {name: variants[name] for name, entry in found.items() if entry is None}
    episodes: list[Any] = []
    if missing:
        found.update(_evaluate_missing(bundle_dir, missing, options, fold, settings,
                                       {name: inputs[name] for name in missing}, cache_dir,
                                       episodes))
    entries = {name: entry for name, entry in found.items() if entry is not None}
    if not episodes:  # every result came from the cache: draw the same episodes again
        source = options.data.with_fold(fold).open("test")
        episodes = list(source.episodes(pictures, shots=options.shots))
    rows = [{"episode": episode,
             "predictions": {name: entry.pictures[index] for name, entry in entries.items()}}
            for index, episode in enumerate(episodes[:pictures])]
    reference = EvalResult.from_dict(entries["reference"].result)
    gates = load_gates()
    records = [gate_record(EvalResult.from_dict(entries[name].result), reference,
                           gates.get(variants[name][1]),
                           backend=entries[name].result["backend"],
                           precision=variants[name][1], **settings)
               for name in variants if name != "reference"]
    return records, rows


def _evaluation_inputs(bundle_dir: Path, variants: dict[str, tuple[str, str]],
                       options: DeployOptions, settings: dict[str, Any]
                       ) -> dict[str, dict[str, Any]]:
    """The cache inputs of each variant (crnet.deploy.cache.evaluation_inputs)."""
    from crnet.deploy.cache import data_fingerprint, evaluation_inputs
    from crnet.runtime.backends.base import backend_class
    from crnet.runtime.bundle import Bundle

    manifest = Bundle.load(bundle_dir, verify=False).manifest
    versions = {backend: backend_class(backend).is_available()[1]
                for backend, _ in variants.values()}
    episodes = {**settings, "sampler": options.data.sampler,
                "data_files": data_fingerprint(options.data.resolved_root)}
    return {name: evaluation_inputs(manifest, backend, versions[backend], precision,
                                    episodes, min(PICTURE_EPISODES, options.episodes))
            for name, (backend, precision) in variants.items()}


def _cached(cache_dir: Path, inputs: dict[str, Any], pictures: int,
            variant: tuple[str, str], log: Log) -> CachedEvaluation | None:
    """The usable cache entry of one variant, or None."""
    from crnet.deploy.cache import entry_path, read_entry

    path = entry_path(cache_dir, inputs)
    entry, why = read_entry(path, inputs, pictures)
    backend, precision = variant
    if entry is not None:
        log(f"  reuse evaluation of {backend} {precision} ({path.name})")
    elif path.exists():
        log(f"  cached evaluation of {backend} {precision} {why}: evaluating again")
    return entry


def _evaluate_missing(bundle_dir: Path, missing: dict[str, tuple[str, str]],
                      options: DeployOptions, fold: int, settings: dict[str, Any],
                      inputs: dict[str, dict[str, Any]], cache_dir: Path,
                      episodes: list[Any]) -> dict[str, CachedEvaluation | None]:
    """Score the variants without a usable cache entry in one pass (appending the first
    picture episodes to ``episodes``); cache and return their entries."""
    from crnet.data.evaluation import evaluate_many, segmenter_predictor
    from crnet.deploy.cache import entry_path, write_entry
    from crnet.runtime import Segmenter

    pictures = min(PICTURE_EPISODES, options.episodes)
    masks: dict[str, list[np.ndarray]] = {name: [] for name in missing}

    def keep_picture(index: int, episode: Any, predictions: dict[str, np.ndarray]) -> None:
        if index < pictures:
            episodes.append(episode)
            for name, mask in predictions.items():
                masks[name].append(np.asarray(mask, dtype=bool))

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
    written: dict[str, CachedEvaluation | None] = {}
    for name, result in results.items():
        record = {"backend": segmenters[name].backend_name, "precision": missing[name][1],
                  **result.to_dict(), **settings}
        write_entry(entry_path(cache_dir, inputs[name]), inputs[name], record, masks[name])
        written[name] = CachedEvaluation(result=record, pictures=masks[name])
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
    remove_previous_report(out_dir, log)
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
    finetune = finetune_rows(bundle_dir, built["backend"], options, fold, log)

    begin = _stage(log, 5, "benchmark")
    bench = bench_stage(bundle_dir, backends, options, fold, budget["bench_iterations"], log)
    stages["bench"] = _finish(begin)

    begin = _stage(log, 6, "report")
    report = {
        "checkpoint_sha256": exported["checkpoint_sha256"], "bundle": str(bundle_dir),
        "build": built, "quantize": quantized, "export": exported,
        "settings": gate_settings(options, fold),
        "calibration": _calibration_records(bundle_dir), "budget": budget,
        "accuracy": accuracy, "bench": bench, "finetune": finetune,
        "pictures": _pictures(out_dir, picture_rows, options.precisions),
        "machine": f"{platform.machine()}, {platform.python_version()}, "
                   f"{_cpu_count()} cores",
        "manifest_sha256": sha256_file(bundle_dir / MANIFEST), "command": options.command,
        "speed_target_met": _speed_target_met(bench, log),
    }
    stages["report"] = _finish(begin)
    return _write_report(out_dir, report, stages, started, log)


def finetune_rows(bundle_dir: Path, backend: str, options: DeployOptions, fold: int,
                  log: Log) -> list[dict[str, Any]] | None:
    """5-shot fusion and finetuning side by side for every variant on ``backend``, each
    gated against the finetuned PyTorch reference (crnet.bench.finetune); None when
    ``options.finetune_episodes`` is 0."""
    if not options.finetune_episodes:
        return None
    from dataclasses import replace

    from crnet.bench.finetune import evaluate_finetune, format_finetune_table
    from crnet.evaluate import EvalOptions

    records = evaluate_finetune(EvalOptions(
        bundle=bundle_dir, backend=backend, precision=",".join(options.precisions),
        data=replace(options.data, fold=fold), shots=5, episodes=options.finetune_episodes,
        progress=options.progress))
    log(format_finetune_table(records))
    return records


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


def remove_previous_report(out_dir: Path, log: Log) -> None:
    """Remove the report and pictures of an earlier run before this one changes anything,
    so that ``out_dir`` never holds a report that does not describe its bundle: each run
    writes them again, from its own results, at its end."""
    old = [out_dir / name for name in REPORT_FILES if (out_dir / name).is_file()]
    pictures = out_dir / PICTURES_DIR
    if pictures.is_dir():
        old += sorted(pictures.glob(PICTURE_PATTERN))
    for path in old:
        path.unlink(missing_ok=True)
    if pictures.is_dir() and not any(pictures.iterdir()):
        pictures.rmdir()
    if old:
        log(f"  removed the previous report and pictures from {out_dir} (remade at the end)")


def _pictures(out_dir: Path, picture_rows: list[dict[str, Any]], precisions: Sequence[str]
              ) -> list[str]:
    """The overlay pictures of this run's results (cached or fresh), one per picture
    episode."""
    return save_pictures(out_dir, picture_rows, list(precisions))


def _speed_target_met(bench: dict[str, Any], log: Log) -> bool | None:
    """Whether the fp32 Segmenter met its speed-up target over the PyTorch forward (None:
    not compared); a miss is logged."""
    verdict = speed_verdict(bench.get("fp32", {}))
    if verdict is None:
        return None
    if not verdict[0]:
        log("  " + verdict[1].replace("**", ""))
    return verdict[0]


def _write_report(out_dir: Path, report: dict[str, Any], stages: dict[str, Any],
                  started: float, log: Log) -> dict[str, Any]:
    """Add the stage timings and the verdict; write report.json and report.md."""
    report["stages"] = stages
    report["total_seconds"] = time.perf_counter() - started
    report["passed"] = all(r["passed"] is not False
                           for r in [*report["accuracy"], *(report.get("finetune") or [])])
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
