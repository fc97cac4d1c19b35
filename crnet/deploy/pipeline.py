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

import argparse
import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crnet.data.evaluation import DATASETS
from crnet.data.pictures import (
    PREDICTION_COLOR,
    SUPPORT_COLOR,
    TRUTH_COLOR,
    grid,
    overlay,
    save_png,
)
from crnet.evaluate import load_gates
from crnet.runtime.errors import CrnetError
from crnet.runtime.files import sha256_file, write_bytes_atomic, write_json_atomic
from crnet.runtime.layout import GRAPHS, MANIFEST, PRECISIONS, graph_file

PICTURE_EPISODES = 6
# A model costing more than this per query (manifest "flops"."segment") gets the smaller
# episode budgets below: crnet-lite costs ~1 GFLOP per query, crnet-r50 ~78.
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


def _data_stamp(dataset: str, data_root: Path | None, fold: int) -> dict[str, Any]:
    return {"dataset": dataset, "fold": fold,
            "data_root": None if data_root is None else str(Path(data_root).resolve())}


def quantize_stage(bundle_dir: Path, precisions: list[str], log: Log,
                   progress: bool = True, *, fold: int | None = None,
                   dataset: str = "synthetic-5i", data_root: Path | None = None,
                   options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Add fp16/int8 variants unless present and made from the current fp32 graphs with
    the same data (calibrated and checked on ``dataset``'s base-class train episodes of
    ``fold``, default: the checkpoint's). ``options``: extra quantize_bundle options per
    precision."""
    from crnet.calibration.quantize import default_fold, quantize_bundle, ranges_fit
    from crnet.runtime.bundle import Bundle, update_manifest

    results: dict[str, Any] = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        bundle = Bundle.load(bundle_dir)
        manifest = bundle.manifest
        fold = default_fold(bundle) if fold is None else fold
        data = _data_stamp(dataset, data_root, fold)
        variant = manifest.get("variants", {}).get(precision)
        made_from = (variant or {}).get("how", {}).get("deploy_fp32_sha256")
        made_on = (variant or {}).get("how", {}).get(
            "deploy_data", _data_stamp("synthetic-5i", None, default_fold(bundle)))
        if variant and made_from == _fp32_hashes(manifest) and made_on == data:
            log(f"  reuse {precision} variant (made from the current fp32 graphs, "
                f"{dataset} fold {fold})")
            results[precision] = {"reused": True}
            continue
        started = time.perf_counter()
        extra = dict((options or {}).get(precision, {}))
        if precision == "int8" and not ranges_fit(
                bundle_dir, dataset=dataset, fold=fold, data_root=data_root,
                episodes=extra.get("calibration_episodes"),
                method=extra.get("calibration_method")):
            log("  saved int8 ranges came from other data or settings: recalibrating")
            extra["recalibrate"] = True
        stamp = _fp32_hashes(quantize_bundle(bundle_dir, precision, progress=progress,
                                             fold=fold, dataset=dataset, data_root=data_root,
                                             **extra))

        def record(manifest: dict[str, Any], precision: str = precision,
                   stamp: dict[str, str] = stamp, data: dict[str, Any] = data) -> None:
            manifest["variants"][precision]["how"]["deploy_fp32_sha256"] = stamp
            manifest["variants"][precision]["how"]["deploy_data"] = data

        update_manifest(bundle_dir, record)
        seconds = time.perf_counter() - started
        log(f"  {precision}: done in {seconds:.1f} s")
        results[precision] = {"reused": False, "seconds": seconds}
    return results


def build_stage(bundle_dir: Path, precisions: list[str], log: Log) -> dict[str, Any]:
    """TensorRT engines where TensorRT imports, else the ONNX Runtime CPU build."""
    from crnet.runtime.backends.base import backend_class

    available, reason = backend_class("tensorrt").is_available()
    if available:
        from crnet.engines.build_engine import build_bundle

        for precision in precisions:
            build_bundle(bundle_dir, precision, log=lambda line: log(f"  {line}"))
        return {"target": "tensorrt", "backend": "tensorrt"}
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
    return {"target": "onnxruntime-cpu", "backend": "onnxruntime", "tensorrt": reason}


def _episode_key(bundle_dir: Path, precision: str, backend: str, settings: dict[str, Any]
                 ) -> str:
    from crnet.runtime.bundle import Bundle

    manifest = Bundle.load(bundle_dir, verify=False).manifest
    variant = manifest["variants"][precision]
    hashes = [manifest["files"].get(variant[g], "") for g in ("backbone", "refine")]
    payload = json.dumps({"hashes": hashes, "backend": backend, "precision": precision,
                          **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def evaluate_stage(bundle_dir: Path, backend: str, precisions: list[str], *, fold: int,
                   shots: int, episodes: int, seed: int, cache_dir: Path, log: Log,
                   progress: bool, dataset: str = "synthetic-5i",
                   data_root: Path | None = None, extra_backends: Sequence[str] = ()
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One pass over the episodes scoring the reference and every variant (crnet eval's
    path: data.evaluation), on ``backend`` and on each of ``extra_backends`` (e.g.
    openvino where it is installed), gated as crnet eval gates them.

    Returns (records per variant, picture rows). Results are cached by the variant's
    graph hashes and the episode settings.
    """
    from crnet.data.evaluation import (
        EvalResult,
        episode_source,
        evaluate_many,
        gate_record,
        segmenter_predictor,
    )
    from crnet.runtime import Segmenter

    settings = {"fold": fold, "shots": shots, "episodes": episodes, "seed": seed,
                "dataset": dataset, "split": "test",
                "data_root": None if data_root is None else str(Path(data_root).resolve())}
    variants = {"reference": ("torch", "fp32"), **{p: (backend, p) for p in precisions},
                **{f"{extra} {p}": (extra, p) for extra in extra_backends for p in precisions}}
    cached: dict[str, dict[str, Any]] = {}
    predictors: dict[str, Any] = {}
    pending: dict[str, tuple[Path, str, str]] = {}
    segmenters: list[Any] = []
    for name, (variant_backend, precision) in variants.items():
        key = _episode_key(bundle_dir, precision, variant_backend, settings)
        path = cache_dir / f"eval-{key}.json"
        if path.exists():
            cached[name] = json.loads(path.read_text())
            log(f"  reuse evaluation of {variant_backend} {precision} ({path.name})")
        else:
            segmenter = Segmenter(bundle_dir, backend=variant_backend, precision=precision)
            segmenters.append(segmenter)
            predictors[name] = segmenter_predictor(segmenter)
            pending[name] = (path, segmenter.backend_name, precision)
    picture_rows: list[dict[str, Any]] = []

    def keep_picture(index: int, episode: Any, predictions: dict[str, np.ndarray]) -> None:
        if index < PICTURE_EPISODES:
            picture_rows.append({"episode": episode, "predictions": predictions})

    if predictors:
        source = episode_source(dataset, fold, seed, data_root, split="test")
        results = evaluate_many(predictors, source.episodes(episodes, shots=shots),
                                total=episodes, progress=progress, description="evaluate",
                                on_episode=keep_picture,
                                classes=getattr(source, "classes", None))
        for name, result in results.items():
            path, backend_name, precision = pending[name]
            cached[name] = {"backend": backend_name, "precision": precision,
                            **result.to_dict(), **settings}
            write_json_atomic(path, cached[name])
    for segmenter in segmenters:  # release sessions and compiled models now, not at GC
        segmenter.close()
    reference = EvalResult.from_dict(cached["reference"])
    gates = load_gates()
    records = [gate_record(EvalResult.from_dict(cached[name]), reference,
                           gates.get(variants[name][1]), backend=cached[name]["backend"],
                           precision=variants[name][1], **settings)
               for name in variants if name != "reference"]
    return records, picture_rows


def bench_stage(bundle_dir: Path, backend: str, precisions: list[str], iterations: int,
                threads: int | None, log: Log, progress: bool,
                extra_backends: Sequence[str] = (), *, fold: int = 0,
                dataset: str = "synthetic-5i", data_root: Path | None = None
                ) -> dict[str, Any]:
    """crnet bench per variant, on the fold's test episodes (keyed by precision;
    ``"<backend> <precision>"`` for the extra backends); the torch comparison once, on the
    main backend's fp32."""
    from crnet.bench.latency import run_bench

    results = {}
    runs = [(backend, p, p) for p in precisions]
    runs += [(extra, p, f"{extra} {p}") for extra in extra_backends for p in precisions]
    for run_backend, precision, key in runs:
        report = run_bench(bundle_dir, run_backend, precision, iterations=iterations,
                           warmup=max(3, iterations // 10), threads=threads, shots=1,
                           compare_torch=key == "fp32", soak_calls=0, fold=fold, seed=0,
                           progress=progress, dataset=dataset, data_root=data_root)
        results[key] = report
        latency = report.get("latency_ms", {}).get("p50", float("nan"))
        log(f"  {run_backend} {precision}: p50 {latency:.2f} ms per query")
    return results


def extra_cpu_backends(main_backend: str) -> list[str]:
    """CPU backends deploy also evaluates and benchmarks, where installed: openvino."""
    from crnet.runtime.backends.base import backend_class

    if main_backend == "openvino" or not backend_class("openvino").is_available()[0]:
        return []
    return ["openvino"]


def save_pictures(out_dir: Path, rows: list[dict[str, Any]], precisions: list[str]
                  ) -> list[str]:
    """One overlay grid per episode: support, truth, PyTorch, each variant."""
    names = []
    for index, row in enumerate(rows):
        episode, predictions = row["episode"], row["predictions"]
        tiles = [
            overlay(episode.support_images[0], episode.support_masks[0], SUPPORT_COLOR, 0.35),
            overlay(episode.query_image, episode.query_mask, TRUTH_COLOR),
            overlay(episode.query_image, predictions["reference"].astype(np.uint8),
                    PREDICTION_COLOR),
            *[overlay(episode.query_image, predictions[p].astype(np.uint8), PREDICTION_COLOR)
              for p in precisions],
        ]
        titles = ["support", "ground truth", "pytorch fp32", *precisions]
        name = f"pictures/episode-{index:02d}.png"
        save_png(out_dir / name, grid([tiles], titles=titles, tile=180))
        names.append(name)
    return names


def _stage_split(bench: dict[str, Any]) -> str:
    """The bench's per-stage p50s as "0.33 / 3.10 / 0.17", or "-"."""
    stages = bench.get("stages_ms")
    if not stages:
        return "-"
    return " / ".join(f"{stages[name]['p50']:.2f}" for name in
                      ("preprocess", "inference", "postprocess") if name in stages)


def render_report(report: dict[str, Any]) -> str:
    """report.md: what was built, how accurate and how fast each variant is."""
    lines = [
        "# crnet deploy report", "",
        f"Checkpoint sha256 `{report['checkpoint_sha256']}`; bundle `{report['bundle']}`; "
        f"target **{report['build']['target']}**; machine {report['machine']}.", "",
        f"## Accuracy ({report['settings'].get('dataset', 'synthetic-5i')} fold "
        f"{report['settings']['fold']} test episodes, "
        f"{report['settings']['shots']}-shot, {report['settings']['episodes']} episodes, "
        f"seed {report['settings']['seed']}; reference: PyTorch fp32)", "",
        "| variant | backend | mIoU | FB-IoU | delta mIoU | gate | result |",
        "|---|---|---|---|---|---|---|",
    ]
    reference = report["accuracy"][0]
    lines.append(f"| pytorch fp32 (reference) | torch | {reference['reference_miou']:.2f} | "
                 f"{reference['reference_fbiou']:.2f} | - | - | - |")
    for record in report["accuracy"]:
        verdict = {True: "pass", False: "**FAIL**", None: "-"}[record["passed"]]
        lines.append(
            f"| {record['precision']} | {record['backend']} | {record['miou']:.2f} | "
            f"{record['fbiou']:.2f} | {record['delta_miou']:+.2f} | "
            f"{record['max_abs_delta_miou']} | {verdict} |"
        )
    calibration = report.get("calibration", {})
    if calibration:
        lines += ["", "Data: gated on the test split (novel classes); reduced precision "
                      "calibrated and checked on the train split (base classes) only:", ""]
        names = {"int8_calibration": "int8 calibration", "int8_sensitivity":
                 "int8 sensitivity", "fp16_check": "fp16 check"}
        for key, record in calibration.items():
            lines.append(f"* {names.get(key, key)}: {record.get('episodes', '?')} episodes of "
                         f"{record.get('data', record.get('dataset'))}")
    lines += ["", "## Speed (runtime.Segmenter, cached 1-shot support)", "",
              "| variant | p50 ms | p90 ms | p99 ms | queries/s | support encode ms | "
              "p50 ms: preprocess / inference / postprocess |",
              "|---|---|---|---|---|---|---|"]
    for precision, bench in report["bench"].items():
        latency = bench.get("latency_ms", {})
        lines.append(
            f"| {precision} | {latency.get('p50', float('nan')):.2f} | "
            f"{latency.get('p90', float('nan')):.2f} | {latency.get('p99', float('nan')):.2f} | "
            f"{bench.get('throughput_qps', float('nan')):.1f} | "
            f"{bench.get('support_encode_ms', {}).get('p50', float('nan')):.2f} | "
            f"{_stage_split(bench)} |"
        )
    fp32_bench = report["bench"].get("fp32", {})
    if "speedup_vs_torch" in fp32_bench:
        lines += ["", f"PyTorch full forward on (support, query): "
                      f"{fp32_bench['torch_forward_ms']['p50']:.2f} ms p50; the fp32 "
                      f"Segmenter with a cached support is "
                      f"**{fp32_bench['speedup_vs_torch']:.2f}x** faster per query "
                      f"(target {fp32_bench.get('speedup_target')}x)."]
    lines += ["", "## Pictures", "",
              "Support (mask in yellow), ground truth (green), then each model's "
              "prediction (red).", ""]
    lines += [f"![episode {i}]({name})" for i, name in enumerate(report["pictures"])]
    lines += ["", "## Stages", "",
              "| stage | seconds | CPU seconds | peak resident MB (so far) | load (1 min) | "
              "reused |", "|---|---|---|---|---|---|"]
    for stage, info in report["stages"].items():
        lines.append(f"| {stage} | {info['seconds']:.1f} | {info.get('cpu_seconds', '-')} | "
                     f"{info.get('peak_rss_mb', '-')} | {info.get('load_1min', '-')} | "
                     f"{info.get('reused', '')} |")
    lines += ["", f"Total: {report['total_seconds']:.0f} s. Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)


def deploy(out_dir: Path, checkpoint: Path | None = None, *, episodes: int = 1000,
           fold: int | None = None, shots: int = 1, seed: int = 0,
           bench_iterations: int | None = None,
           precisions: list[str] | None = None, parity_episodes: int = 64,
           threads: int | None = None, progress: bool = True, log: Log = print,
           command: str = "crnet deploy", dataset: str = "synthetic-5i",
           data_root: Path | None = None,
           quantize_options: dict[str, dict[str, Any]] | None = None,
           calibration_episodes: int | None = None, sensitivity_episodes: int | None = None,
           check_episodes: int | None = None) -> dict[str, Any]:
    """Run every stage into ``out_dir``; return the report (also written to disk).

    ``fold`` (default: the checkpoint's training fold): the variants are calibrated on its
    base classes (``dataset``'s train split) and gated on its novel classes (test split).
    Episode counts and ``bench_iterations`` left None come from BUDGETS by the model's
    FLOPs per query. ``quantize_options``: extra calibration.quantize options per
    precision (they win over the budget).
    """
    precisions = precisions or list(PRECISIONS)
    from crnet.models.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint_info

    read_checkpoint_info(checkpoint or DEFAULT_CHECKPOINT)  # a bad checkpoint: nothing written
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_dir = out_dir / "bundle"
    started = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {}

    begin = _stage(log, 1, "export")
    exported = export_stage(bundle_dir, checkpoint, log, parity_episodes, progress)
    stages["export"] = {**_finish(begin), "reused": exported["reused"]}

    if fold is None:
        from crnet.calibration.quantize import default_fold
        from crnet.runtime.bundle import Bundle

        fold = default_fold(Bundle.load(bundle_dir, verify=False))
        log(f"  fold {fold} (the checkpoint's training fold)")

    budget = choose_budget(bundle_dir, {
        "calibration_episodes": calibration_episodes,
        "sensitivity_episodes": sensitivity_episodes, "check_episodes": check_episodes,
        "bench_iterations": bench_iterations})
    log(f"  budget ({budget['model']} model, {budget['gflops_per_query']} GFLOP per query): "
        f"{budget['calibration_episodes']} calibration, {budget['sensitivity_episodes']} "
        f"sensitivity, {budget['check_episodes']} fp16-check episodes, "
        f"{budget['bench_iterations']} bench iterations")
    options = {"fp16": {"check_episodes": budget["check_episodes"]},
               "int8": {"calibration_episodes": budget["calibration_episodes"],
                        "sensitivity_episodes": budget["sensitivity_episodes"]}}
    for precision, extra in (quantize_options or {}).items():
        options.setdefault(precision, {}).update(extra)

    begin = _stage(log, 2, "quantize (fp16, int8)")
    quantized = quantize_stage(bundle_dir, precisions, log, progress, fold=fold,
                               dataset=dataset, data_root=data_root, options=options)
    stages["quantize"] = {**_finish(begin),
                          "reused": all(q.get("reused") for q in quantized.values())}

    begin = _stage(log, 3, "build")
    built = build_stage(bundle_dir, precisions, log)
    stages["build"] = _finish(begin)

    begin = _stage(log, 4, f"evaluate against PyTorch ({episodes} {dataset} test episodes "
                           f"of fold {fold})")
    extras = extra_cpu_backends(built["backend"])
    accuracy, picture_rows = evaluate_stage(
        bundle_dir, built["backend"], precisions, fold=fold, shots=shots, episodes=episodes,
        seed=seed, cache_dir=out_dir / "cache", log=log, progress=progress,
        dataset=dataset, data_root=data_root, extra_backends=extras,
    )
    from crnet.runtime.bundle import record_gates

    # the runtime's backend="auto" takes only a backend whose run of the variant passed
    record_gates(bundle_dir, accuracy)
    stages["evaluate"] = _finish(begin)
    from crnet.data.evaluation import format_table

    log(format_table(accuracy))

    begin = _stage(log, 5, "benchmark")
    bench = bench_stage(bundle_dir, built["backend"], precisions, budget["bench_iterations"],
                        threads, log, progress, extra_backends=extras, fold=fold,
                        dataset=dataset, data_root=data_root)
    stages["bench"] = _finish(begin)

    begin = _stage(log, 6, "report")
    pictures = save_pictures(out_dir, picture_rows, precisions) if picture_rows else [
        str(p.relative_to(out_dir)) for p in sorted((out_dir / "pictures").glob("*.png"))
    ]
    report = {
        "checkpoint_sha256": exported["checkpoint_sha256"],
        "bundle": str(bundle_dir),
        "build": built, "quantize": quantized, "export": exported,
        "settings": {"fold": fold, "shots": shots, "episodes": episodes, "seed": seed,
                     "dataset": dataset, "split": "test",
                     "data_root": None if data_root is None else str(data_root.resolve())},
        "calibration": _calibration_records(bundle_dir),
        "budget": budget,
        "accuracy": accuracy, "bench": bench, "pictures": pictures,
        "machine": f"{platform.machine()}, {platform.python_version()}, "
                   f"{_cpu_count()} cores",
        "manifest_sha256": sha256_file(bundle_dir / MANIFEST),
        "command": command,
    }
    stages["report"] = _finish(begin)
    report["stages"] = stages
    report["total_seconds"] = time.perf_counter() - started
    report["passed"] = all(r["passed"] is not False for r in accuracy)
    write_json_atomic(out_dir / "report.json", report)
    write_bytes_atomic(out_dir / "report.md", render_report(report).encode())
    log(f"\nwrote {out_dir / 'report.md'}, {out_dir / 'report.json'} and "
        f"{len(pictures)} pictures in {report['total_seconds']:.0f} s")
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


def main(argv: list[str] | None = None) -> int:
    """`crnet deploy`: export, quantize, build, evaluate, benchmark, report."""
    parser = argparse.ArgumentParser(prog="crnet deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint (default: the bundled trained crnet-lite)")
    parser.add_argument("--out", type=Path, default=Path("deploy-out"),
                        help="output directory (default deploy-out/)")
    parser.add_argument("--episodes", type=int, default=1000,
                        help="test episodes for the accuracy check (default 1000)")
    parser.add_argument("--dataset", default="synthetic-5i", choices=DATASETS,
                        help="calibrate on its train split (base classes of --fold), gate and "
                             "bench on its test split (default synthetic-5i)")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="dataset directory (pascal-5i: the VOC2012 root; folder)")
    parser.add_argument("--fold", type=int, default=None, choices=range(4),
                        help="default: the checkpoint's training fold")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--bench-iterations", type=int, default=None,
                        help="default: 50, or 10 for a model over 10 GFLOP per query")
    parser.add_argument("--calibration-episodes", type=int, default=None,
                        help="int8 calibration episodes (default: 64, or 16 for a model over "
                             "10 GFLOP per query)")
    parser.add_argument("--sensitivity-episodes", type=int, default=None,
                        help="int8 sensitivity episodes (default: 64, or 16 likewise)")
    parser.add_argument("--check-episodes", type=int, default=None,
                        help="fp16 check episodes (default: 32, or 8 likewise)")
    parser.add_argument("--parity-episodes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or "fp32" not in precisions:
        parser.error(f"--precisions must list fp32 and any of {PRECISIONS}, got {precisions}")
    counts = (args.bench_iterations, args.calibration_episodes, args.sensitivity_episodes,
              args.check_episodes)
    if args.episodes < 1 or args.shots < 1 or any(c is not None and c < 1 for c in counts):
        parser.error("--episodes, --shots, --bench-iterations and the --*-episodes counts "
                     "must be >= 1")
    from crnet.data.evaluation import missing_data_root

    if (problem := missing_data_root(args.dataset, args.data_root)) is not None:
        parser.error(problem)
    command = "crnet deploy " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        report = deploy(args.out, args.checkpoint, episodes=args.episodes, fold=args.fold,
                        shots=args.shots, seed=args.seed, bench_iterations=args.bench_iterations,
                        precisions=precisions, parity_episodes=args.parity_episodes,
                        threads=args.threads, progress=not args.no_progress,
                        command=command.strip(), dataset=args.dataset,
                        data_root=args.data_root,
                        calibration_episodes=args.calibration_episodes,
                        sensitivity_episodes=args.sensitivity_episodes,
                        check_episodes=args.check_episodes)
    except CrnetError:
        raise
    except (ValueError, RuntimeError) as error:  # a library's rejection, reported in one line
        raise DeployError(str(error)) from error
    if not report["passed"]:
        from crnet.evaluate import print_gate_hints

        print_gate_hints(report["accuracy"], report["bundle"])
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    from crnet.cli.exit_codes import run_command

    sys.exit(run_command("crnet deploy", main))
