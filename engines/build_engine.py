"""`crnet build`: trtexec-style TensorRT engine builds, and a bundle mode over them.

    python export/build_engine.py --onnx refine.fp16.onnx --saveEngine refine.fp16.plan \\
        --minShapes support_feat:1x16x9x9,support_mask:1x1x9x9 \\
        --optShapes support_feat:1x16x9x9,support_mask:1x1x9x9 \\
        --maxShapes support_feat:8x16x9x9,support_mask:8x1x9x9 \\
        --memPoolSize workspace:1024M --timingCacheFile timing.cache
    python export/build_engine.py --bundle bundle/ --precision all   # both graphs, per variant
    python export/build_engine.py --bundle bundle/ --print-trtexec   # the trtexec equivalents

The flags are trtexec's. There is no precision flag: precision lives in the ONNX (an fp16
variant is a cast graph, an int8 variant carries Q/DQ nodes), so networks are created
strongly typed (always so on TensorRT 11; ``STRONGLY_TYPED`` on TensorRT 10). Beside each
plan goes ``<plan>.json`` (TensorRT version, GPU, compute capability, profiles, the ONNX's
sha256, builder settings, and how many layers ended up in each precision, read back with
the engine inspector) and ``<plan>.layers.json`` (the inspector's full report).

Without TensorRT, ``--print-trtexec`` still works, a plain build says what to install and
exits with EXIT_NO_TENSORRT, and bundle mode falls back to the CPU target: ONNX Runtime
graph-optimised models in ``engines/ort/`` (see export/engine_ort.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crnet.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE
from crnet.engines.build_settings import (
    HARDWARE_LEVELS,
    POOL_EXAMPLE,
    SHAPE_EXAMPLE,
    BuildSettings,
    Log,
    Shapes,
    SpecError,
    check_profile,
    format_trtexec,
    parse_mem_pool,
    parse_shapes,
    select_precisions,
)
from crnet.runtime.bundle import GRAPHS, PRECISIONS, Bundle, BundleError, update_manifest
from crnet.runtime.layout import (
    ENGINES_DIR,
    ORT_BUILD_DIR,
    TIMING_CACHE,
    engine_layers_path,
    engine_paths,
)

EXIT_NO_TENSORRT = EXIT_UNAVAILABLE  # --target tensorrt where TensorRT cannot build


# ---------------------------------------------------------------- bundle mode


def bundle_profile(manifest: dict[str, Any], graph: str) -> tuple[Shapes, Shapes, Shapes]:
    """(min, opt, max) shapes of a graph from a manifest: batch/shots 1..max_shots, opt 1."""
    height, width = manifest["input_size"]
    feat_h, feat_w = manifest["feature_size"]
    channels = int(manifest["feature_channels"])
    low = int(manifest.get("shots", {}).get("min", 1))
    high = int(manifest.get("shots", {}).get("max", 8))
    if graph == "backbone":
        def shapes(n: int) -> Shapes:
            return {"image": (n, 3, height, width)}
    elif graph == "refine":
        def shapes(n: int) -> Shapes:
            return {"query_feat": (1, channels, feat_h, feat_w),
                    "support_feat": (n, channels, feat_h, feat_w),
                    "support_mask": (n, 1, feat_h, feat_w)}
    else:
        raise BundleError(f"unknown graph {graph!r}; expected one of {GRAPHS}")
    return shapes(low), shapes(low), shapes(high)


def bundle_settings(bundle: Bundle, graph: str, precision: str, **options: Any
                    ) -> BuildSettings:
    """BuildSettings of one graph of a bundle: shapes from the manifest, plan in engines/."""
    low, opt, high = bundle_profile(bundle.manifest, graph)
    plan, _ = engine_paths(bundle.root, graph, precision)
    options.setdefault("timing_cache", bundle.root / TIMING_CACHE)
    return BuildSettings(onnx=bundle.graph_path(graph, precision), engine=plan,
                         min_shapes=low, opt_shapes=opt, max_shapes=high, **options)


def build_bundle(bundle_dir: str | Path, precision: str = "fp32", *, log: Log = print,
                 **options: Any) -> dict[str, Any]:
    """Build TensorRT engines of both graphs of the chosen variant(s) into ``engines/``.

    ``options`` are BuildSettings fields (timing_cache, mem_pool, ...). Records the builds
    in the manifest's ``engines`` section and hashes plans and JSONs into ``files``.
    Returns that section. Raises TensorRTUnavailable without TensorRT.
    """
    from crnet.engines.engine_trt import build_engine, require_tensorrt

    require_tensorrt()
    bundle = Bundle.load(bundle_dir, verify=True)
    built: dict[str, dict[str, Any]] = {}
    added: list[str] = []
    for chosen in select_precisions(bundle, precision):
        for graph in GRAPHS:
            settings = bundle_settings(bundle, graph, chosen, **options)
            log(f"[{graph} {chosen}] {settings.onnx.name} -> "
                f"{settings.engine.relative_to(bundle.root)}")
            info = build_engine(settings, log=log)
            plan, meta = engine_paths(bundle.root, graph, chosen)
            layers = engine_layers_path(plan)
            names = [str(path.relative_to(bundle.root)) for path in (plan, meta, layers)
                     if path.exists()]
            added += names
            built.setdefault(chosen, {})[graph] = {
                "plan": names[0], "json": names[1],
                "tensorrt_version": info["tensorrt_version"],
                "compute_capability": info["compute_capability"],
                "gpu_name": info["gpu_name"],
                "layer_precisions": info.get("layer_precisions"),
                "build_seconds": info["build_seconds"],
            }

    def record(manifest: dict[str, Any]) -> None:
        engines = manifest.setdefault("engines", {})
        for chosen, graphs in built.items():
            engines.setdefault(chosen, {}).update(graphs)

    manifest = update_manifest(bundle.root, record, added_files=added)
    return manifest["engines"]


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crnet build",
        description="Build TensorRT engines with trtexec's flags (one ONNX), or both graphs "
                    "of a bundle's variants (--bundle). Precision comes from the ONNX variant; "
                    "there is no precision flag. Without TensorRT, bundle mode builds the CPU "
                    "target instead (ONNX Runtime graph-optimised models).")
    parser.add_argument("bundle_positional", nargs="?", type=Path, metavar="BUNDLE",
                        help="same as --bundle")
    parser.add_argument("--bundle", type=Path, help="bundle directory (from `crnet export`)")
    parser.add_argument("--precision", default="fp32", choices=[*PRECISIONS, "all"],
                        help="bundle mode: which ONNX variant(s) to build (default fp32)")
    parser.add_argument("--target", default="auto", choices=["auto", "tensorrt", "ort"],
                        help="bundle mode: tensorrt, ort (ONNX Runtime CPU build), or auto: "
                             "tensorrt where it imports and a CUDA device answers, else ort "
                             "(default)")
    parser.add_argument("--ort-level", default="extended", choices=["basic", "extended", "all"],
                        help="ONNX Runtime optimisation level of the CPU target (default "
                             "extended: portable across CPUs; all adds layouts for this CPU)")
    parser.add_argument("--ort-threads", type=int, default=None,
                        help="intra-op threads of the ONNX Runtime build session")
    parser.add_argument("--onnx", type=Path, help="ONNX model to build")
    parser.add_argument("--saveEngine", type=Path, help="where to write the plan")
    parser.add_argument("--minShapes", help=f"min profile shapes, e.g. {SHAPE_EXAMPLE}")
    parser.add_argument("--optShapes", help="opt profile shapes (alone: also min and max)")
    parser.add_argument("--maxShapes", help="max profile shapes")
    parser.add_argument("--timingCacheFile", type=Path,
                        help="timing cache to read and update (bundle mode default: "
                             f"BUNDLE/{TIMING_CACHE})")
    parser.add_argument("--memPoolSize", help=f"memory pool limits, e.g. {POOL_EXAMPLE} "
                                              "(suffixes B/K/M/G, default MiB)")
    parser.add_argument("--builderOptimizationLevel", type=int, choices=range(0, 6),
                        metavar="0..5", help="builder optimisation level (TensorRT default 3)")
    parser.add_argument("--versionCompatible", "--vc", action="store_true",
                        help="plan loads on newer TensorRT of the same major version")
    parser.add_argument("--hardwareCompatibilityLevel", default="none", choices=HARDWARE_LEVELS)
    parser.add_argument("--refit", action="store_true", help="refittable engine")
    parser.add_argument("--stripWeights", action="store_true",
                        help="weight-stripped plan (refit identical weights, or --refit)")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    parser.add_argument("--print-trtexec", action="store_true",
                        help="print the equivalent trtexec command line(s) and exit "
                             "(needs no TensorRT)")
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "mem_pool": parse_mem_pool(args.memPoolSize) if args.memPoolSize else {},
        "builder_optimization_level": args.builderOptimizationLevel,
        "version_compatible": args.versionCompatible,
        "hardware_compatibility_level": args.hardwareCompatibilityLevel,
        "refit": args.refit, "strip_weights": args.stripWeights, "verbose": args.verbose,
    }
    if args.timingCacheFile is not None:
        options["timing_cache"] = args.timingCacheFile
    return options


def _single_settings(args: argparse.Namespace) -> BuildSettings:
    shapes = {key: parse_shapes(value, flag) if value else {} for key, value, flag in (
        ("min", args.minShapes, "--minShapes"), ("opt", args.optShapes, "--optShapes"),
        ("max", args.maxShapes, "--maxShapes"))}
    check_profile(shapes["min"], shapes["opt"], shapes["max"])
    engine = args.saveEngine or args.onnx.with_suffix(".plan")
    return BuildSettings(onnx=args.onnx, engine=engine, min_shapes=shapes["min"],
                         opt_shapes=shapes["opt"], max_shapes=shapes["max"], **_options(args))


def _bundle_commands(bundle_dir: Path, precision: str, options: dict[str, Any]
                     ) -> Iterable[BuildSettings]:
    bundle = Bundle.load(bundle_dir, verify=False)
    for chosen in select_precisions(bundle, precision):
        for graph in GRAPHS:
            yield bundle_settings(bundle, graph, chosen, **options)


def main(argv: list[str] | None = None) -> int:
    """CLI over build_engine / build_bundle / the ORT CPU build; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.ort_threads is not None and args.ort_threads < 1:
        parser.error(f"--ort-threads must be at least 1, got {args.ort_threads} (leave it out "
                     "for ONNX Runtime's default)")
    bundle_dir = args.bundle or args.bundle_positional
    if args.bundle and args.bundle_positional:
        parser.error("give the bundle once (--bundle DIR or DIR)")
    if (bundle_dir is None) == (args.onnx is None):
        parser.error("give either --onnx MODEL (one engine) or --bundle DIR (both graphs)")
    if bundle_dir is not None and (args.saveEngine or args.minShapes or args.optShapes
                                   or args.maxShapes):
        parser.error("bundle mode takes shapes from the manifest and writes plans to "
                     f"{ENGINES_DIR}/; drop --saveEngine/--minShapes/--optShapes/--maxShapes")
    try:
        if args.print_trtexec:
            if bundle_dir is not None:
                for settings in _bundle_commands(bundle_dir, args.precision, _options(args)):
                    print(format_trtexec(settings))
            else:
                print(format_trtexec(_single_settings(args)))
            return EXIT_OK
        if bundle_dir is None:
            return _main_single(_single_settings(args))
        return _main_bundle(bundle_dir, args)
    except SpecError as error:
        parser.error(str(error))
    return EXIT_FAILED  # not reached: parser.error exits


def _main_single(settings: BuildSettings) -> int:
    from crnet.engines.engine_trt import TensorRTUnavailable, build_engine

    try:
        info = build_engine(settings)
    except TensorRTUnavailable as error:
        print(f"crnet build: {error}", file=sys.stderr)
        return EXIT_NO_TENSORRT
    _print_summary(settings.engine, info)
    return EXIT_OK


def _main_bundle(bundle_dir: Path, args: argparse.Namespace) -> int:
    from crnet.engines.engine_ort import build_ort_bundle
    from crnet.engines.engine_trt import TensorRTUnavailable, require_tensorrt

    target = args.target
    if target in ("auto", "tensorrt"):
        try:
            require_tensorrt()
            if target == "auto":  # TensorRT imports without a GPU: ask for one as well
                _require_gpu()
            target = "tensorrt"
        except TensorRTUnavailable as error:
            print(f"crnet build: {error}", file=sys.stderr)
            if target == "tensorrt":
                return EXIT_NO_TENSORRT
            print("crnet build: falling back to the CPU target: ONNX Runtime graph-optimised "
                  f"models in {bundle_dir}/{ORT_BUILD_DIR}/ (use --target tensorrt to fail "
                  "instead)", file=sys.stderr)
            target = "ort"
    if target == "tensorrt":
        engines = build_bundle(bundle_dir, args.precision, **_options(args))
        for precision, graphs in engines.items():
            for graph, entry in graphs.items():
                print(f"{graph} {precision}: {entry['plan']} ({entry['build_seconds']:.1f} s, "
                      f"layers {entry.get('layer_precisions')})")
        return EXIT_OK
    builds = build_ort_bundle(bundle_dir, args.precision, level=args.ort_level,
                              threads=args.ort_threads)
    for precision, graphs in builds.items():
        for graph, entry in graphs.items():
            print(f"{graph} {precision}: {entry['path']} ({entry['build_seconds']:.2f} s, "
                  f"{entry['session_options']['graph_optimization_level']})")
    return EXIT_OK


def _require_gpu() -> None:
    """TensorRTUnavailable unless a CUDA device answers (the check `crnet deploy` makes)."""
    from crnet.engines.engine_trt import TensorRTUnavailable
    from crnet.runtime.backends.tensorrt_backend import TensorRTBackend

    available, reason = TensorRTBackend.is_available()
    if not available:
        raise TensorRTUnavailable(f"TensorRT imports but cannot build here: {reason}")


def _print_summary(plan: Path, info: dict[str, Any]) -> None:
    print(f"wrote {plan} ({info['plan_bytes']} bytes) in {info['build_seconds']:.1f} s on "
          f"{info['gpu_name']} (sm {info['compute_capability']}), TensorRT "
          f"{info['tensorrt_version']}; layers per precision: {info.get('layer_precisions')}")


if __name__ == "__main__":
    from crnet.cli.exit_codes import run_command

    sys.exit(run_command("crnet build", main))

