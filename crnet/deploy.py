"""`crnet deploy`: the whole path from a checkpoint to a checked, benchmarked bundle.

Stages, each reusing its artifacts when their inputs are unchanged (by sha256):

1. export    the checkpoint -> bundle/ (backbone + refine fp32 ONNX, parity checked)
2. quantize  fp16 and int8 variants (calibrated on base-class episodes)
3. build     TensorRT engines where TensorRT is installed, else the ONNX Runtime CPU build
4. evaluate  every variant against the PyTorch fp32 model on the same synthetic-5i
             test episodes (one pass; one predictor per variant), with the accuracy gates
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

from crnet.evaluate import load_gates
from data.pictures import (
    PREDICTION_COLOR,
    SUPPORT_COLOR,
    TRUTH_COLOR,
    grid,
    overlay,
    save_png,
)
from runtime.errors import CrnetError
from runtime.files import sha256_file, write_bytes_atomic, write_json_atomic
from runtime.layout import GRAPHS, PRECISIONS, graph_file

PICTURE_EPISODES = 6
Log = Callable[[str], None]


class DeployError(CrnetError, RuntimeError):
    """A deploy stage that a library rejected (the message is the library's)."""


def _stage(log: Log, number: int, name: str) -> float:
    log(f"\n[{number}/6] {name}")
    return time.perf_counter()


def export_stage(bundle_dir: Path, checkpoint: Path | None, log: Log,
                 parity_episodes: int, progress: bool = True) -> dict[str, Any]:
    """Export unless the bundle is intact and was made from the same checkpoint."""
    from models.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint_info
    from runtime.bundle import Bundle, BundleError

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
    from export.to_onnx import export_bundle

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


def quantize_stage(bundle_dir: Path, precisions: list[str], log: Log,
                   progress: bool = True) -> dict[str, Any]:
    """Add fp16/int8 variants unless present and made from the current fp32 graphs."""
    from calibration.quantize import quantize_bundle
    from runtime.bundle import Bundle, update_manifest

    results: dict[str, Any] = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        manifest = Bundle.load(bundle_dir).manifest
        variant = manifest.get("variants", {}).get(precision)
        made_from = (variant or {}).get("how", {}).get("deploy_fp32_sha256")
        if variant and made_from == _fp32_hashes(manifest):
            log(f"  reuse {precision} variant (made from the current fp32 graphs)")
            results[precision] = {"reused": True}
            continue
        started = time.perf_counter()
        stamp = _fp32_hashes(quantize_bundle(bundle_dir, precision, progress=progress))

        def record(manifest: dict[str, Any], precision: str = precision,
                   stamp: dict[str, str] = stamp) -> None:
            manifest["variants"][precision]["how"]["deploy_fp32_sha256"] = stamp

        update_manifest(bundle_dir, record)
        seconds = time.perf_counter() - started
        log(f"  {precision}: done in {seconds:.1f} s")
        results[precision] = {"reused": False, "seconds": seconds}
    return results


def build_stage(bundle_dir: Path, precisions: list[str], log: Log) -> dict[str, Any]:
    """TensorRT engines where TensorRT imports, else the ONNX Runtime CPU build."""
    from runtime.backends.base import backend_class

    available, reason = backend_class("tensorrt").is_available()
    if available:
        from export.build_engine import build_bundle

        for precision in precisions:
            build_bundle(bundle_dir, precision, log=lambda line: log(f"  {line}"))
        return {"target": "tensorrt", "backend": "tensorrt"}
    log(f"  TensorRT not available ({reason}); building the ONNX Runtime CPU target")
    from export.engine_ort import build_ort_bundle
    from runtime.bundle import Bundle
    from runtime.ort_build import ort_build_path

    bundle = Bundle.load(bundle_dir)
    for precision in precisions:
        if all(ort_build_path(bundle, graph, precision) for graph in ("backbone", "refine")):
            log(f"  reuse ONNX Runtime build of {precision}")
            continue
        build_ort_bundle(bundle_dir, precision, log=lambda line: log(f"  {line}"))
    return {"target": "onnxruntime-cpu", "backend": "onnxruntime", "tensorrt": reason}


def _episode_key(bundle_dir: Path, precision: str, backend: str, settings: dict[str, Any]
                 ) -> str:
    from runtime.bundle import Bundle

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
    from data.evaluation import (
        EvalResult,
        episode_source,
        evaluate_many,
        gate_record,
        segmenter_predictor,
    )
    from runtime import Segmenter

    settings = {"fold": fold, "shots": shots, "episodes": episodes, "seed": seed,
                "dataset": dataset}
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
        source = episode_source(dataset, fold, seed, data_root)
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
                extra_backends: Sequence[str] = ()) -> dict[str, Any]:
    """crnet bench per variant (keyed by precision; ``"<backend> <precision>"`` for the
    extra backends); the torch comparison once, on the main backend's fp32."""
    from crnet.bench import run_bench

    results = {}
    runs = [(backend, p, p) for p in precisions]
    runs += [(extra, p, f"{extra} {p}") for extra in extra_backends for p in precisions]
    for run_backend, precision, key in runs:
        report = run_bench(bundle_dir, run_backend, precision, iterations=iterations,
                           warmup=max(3, iterations // 10), threads=threads, shots=1,
                           compare_torch=key == "fp32", soak_calls=0, fold=0, seed=0,
                           progress=progress)
        results[key] = report
        latency = report.get("latency_ms", {}).get("p50", float("nan"))
        log(f"  {run_backend} {precision}: p50 {latency:.2f} ms per query")
    return results


def extra_cpu_backends(main_backend: str) -> list[str]:
    """CPU backends deploy also evaluates and benchmarks, where installed: openvino."""
    from runtime.backends.base import backend_class

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
        f"## Accuracy (synthetic-5i fold {report['settings']['fold']}, "
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
    lines += ["", "## Stages", "", "| stage | seconds | reused |", "|---|---|---|"]
    for stage, info in report["stages"].items():
        lines.append(f"| {stage} | {info['seconds']:.1f} | {info.get('reused', '')} |")
    lines += ["", f"Total: {report['total_seconds']:.0f} s. Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)


def deploy(out_dir: Path, checkpoint: Path | None = None, *, episodes: int = 1000,
           fold: int = 0, shots: int = 1, seed: int = 0, bench_iterations: int = 50,
           precisions: list[str] | None = None, parity_episodes: int = 64,
           threads: int | None = None, progress: bool = True, log: Log = print,
           command: str = "crnet deploy") -> dict[str, Any]:
    """Run every stage into ``out_dir``; return the report (also written to disk)."""
    precisions = precisions or list(PRECISIONS)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_dir = out_dir / "bundle"
    started = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {}

    begin = _stage(log, 1, "export")
    exported = export_stage(bundle_dir, checkpoint, log, parity_episodes, progress)
    stages["export"] = {"seconds": time.perf_counter() - begin, "reused": exported["reused"]}

    begin = _stage(log, 2, "quantize (fp16, int8)")
    quantized = quantize_stage(bundle_dir, precisions, log, progress)
    stages["quantize"] = {"seconds": time.perf_counter() - begin,
                          "reused": all(q.get("reused") for q in quantized.values())}

    begin = _stage(log, 3, "build")
    built = build_stage(bundle_dir, precisions, log)
    stages["build"] = {"seconds": time.perf_counter() - begin}

    begin = _stage(log, 4, f"evaluate against PyTorch ({episodes} episodes)")
    extras = extra_cpu_backends(built["backend"])
    accuracy, picture_rows = evaluate_stage(
        bundle_dir, built["backend"], precisions, fold=fold, shots=shots, episodes=episodes,
        seed=seed, cache_dir=out_dir / "cache", log=log, progress=progress,
        extra_backends=extras,
    )
    stages["evaluate"] = {"seconds": time.perf_counter() - begin}
    from data.evaluation import format_table

    log(format_table(accuracy))

    begin = _stage(log, 5, "benchmark")
    bench = bench_stage(bundle_dir, built["backend"], precisions, bench_iterations, threads,
                        log, progress, extra_backends=extras)
    stages["bench"] = {"seconds": time.perf_counter() - begin}

    begin = _stage(log, 6, "report")
    pictures = save_pictures(out_dir, picture_rows, precisions) if picture_rows else [
        str(p.relative_to(out_dir)) for p in sorted((out_dir / "pictures").glob("*.png"))
    ]
    report = {
        "checkpoint_sha256": exported["checkpoint_sha256"],
        "bundle": str(bundle_dir),
        "build": built, "quantize": quantized, "export": exported,
        "settings": {"fold": fold, "shots": shots, "episodes": episodes, "seed": seed,
                     "dataset": "synthetic-5i"},
        "accuracy": accuracy, "bench": bench, "pictures": pictures,
        "machine": f"{platform.machine()}, {platform.python_version()}, "
                   f"{_cpu_count()} cores",
        "manifest_sha256": sha256_file(bundle_dir / "manifest.json"),
        "command": command,
    }
    stages["report"] = {"seconds": time.perf_counter() - begin}
    report["stages"] = stages
    report["total_seconds"] = time.perf_counter() - started
    report["passed"] = all(r["passed"] is not False for r in accuracy)
    write_json_atomic(out_dir / "report.json", report)
    write_bytes_atomic(out_dir / "report.md", render_report(report).encode())
    log(f"\nwrote {out_dir / 'report.md'}, {out_dir / 'report.json'} and "
        f"{len(pictures)} pictures in {report['total_seconds']:.0f} s")
    return report


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
                        help="synthetic-5i test episodes for the accuracy check (default 1000)")
    parser.add_argument("--fold", type=int, default=0, choices=range(4))
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--bench-iterations", type=int, default=50)
    parser.add_argument("--parity-episodes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or "fp32" not in precisions:
        parser.error(f"--precisions must list fp32 and any of {PRECISIONS}, got {precisions}")
    if args.episodes < 1 or args.shots < 1 or args.bench_iterations < 1:
        parser.error("--episodes, --shots and --bench-iterations must be >= 1")
    command = "crnet deploy " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        report = deploy(args.out, args.checkpoint, episodes=args.episodes, fold=args.fold,
                        shots=args.shots, seed=args.seed, bench_iterations=args.bench_iterations,
                        precisions=precisions, parity_episodes=args.parity_episodes,
                        threads=args.threads, progress=not args.no_progress,
                        command=command.strip())
    except CrnetError:
        raise
    except (ValueError, RuntimeError) as error:  # a library's rejection, reported in one line
        raise DeployError(str(error)) from error
    if not report["passed"]:
        from crnet.evaluate import print_gate_hints

        print_gate_hints(report["accuracy"], report["bundle"])
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    from runtime.errors import run_command

    sys.exit(run_command("crnet deploy", main))
