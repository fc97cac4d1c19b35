"""`crnet build`: trtexec-style TensorRT engine builds, and a bundle mode over them.

The builds are crnet.engines' (build_engine, build_bundle, the ORT CPU build). Exit codes:
0 built (or printed), 1 a failed build, 2 a bad command line, 3 (EXIT_NO_TENSORRT) a
TensorRT build asked for where TensorRT cannot build.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crnet.cli.arguments import add_bundle, add_precision
from crnet.cli.exit_codes import EXIT_OK, EXIT_UNAVAILABLE
from crnet.runtime.errors import UsageError

EXIT_NO_TENSORRT = EXIT_UNAVAILABLE  # --target tensorrt where TensorRT cannot build


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """trtexec's flags (one ONNX) or a bundle (both graphs per variant)."""
    from crnet.engines.build_settings import HARDWARE_LEVELS, POOL_EXAMPLE, SHAPE_EXAMPLE
    from crnet.runtime.layout import PRECISIONS, TIMING_CACHE

    parser.description = (
        "Build TensorRT engines with trtexec's flags (one ONNX), or both graphs of a bundle's "
        "variants (--bundle). Precision comes from the ONNX variant; there is no precision "
        "flag. Without TensorRT, bundle mode builds the CPU target instead (ONNX Runtime "
        "graph-optimised models).")
    parser.add_argument("bundle_positional", nargs="?", type=Path, metavar="BUNDLE",
                        help="same as --bundle")
    add_bundle(parser, positional=False, help="bundle directory (from `crnet export`)")
    add_precision(parser, choices=[*PRECISIONS, "all"],
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


def build_options(args: argparse.Namespace) -> dict[str, Any]:
    """The BuildSettings fields the flags set (besides the ONNX, the plan and the shapes)."""
    from crnet.engines.build_settings import parse_mem_pool

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


def single_settings(args: argparse.Namespace) -> Any:
    """The BuildSettings of the one-ONNX mode."""
    from crnet.engines.build_settings import BuildSettings, check_profile, parse_shapes

    shapes = {key: parse_shapes(value, flag) if value else {} for key, value, flag in (
        ("min", args.minShapes, "--minShapes"), ("opt", args.optShapes, "--optShapes"),
        ("max", args.maxShapes, "--maxShapes"))}
    check_profile(shapes["min"], shapes["opt"], shapes["max"])
    engine = args.saveEngine or args.onnx.with_suffix(".plan")
    return BuildSettings(onnx=args.onnx, engine=engine, min_shapes=shapes["min"],
                         opt_shapes=shapes["opt"], max_shapes=shapes["max"],
                         **build_options(args))


def bundle_commands(bundle_dir: Path, precision: str, options: dict[str, Any]
                    ) -> Iterable[Any]:
    """The BuildSettings of both graphs of each chosen variant of a bundle (``all``: every
    variant it lists); BundleError for a variant whose graphs are not all there."""
    from crnet.engines.build_engine import bundle_settings
    from crnet.runtime.bundle import GRAPHS, Bundle

    bundle = Bundle.load(bundle_dir, verify=False)
    chosen_precisions = bundle.precisions if precision == "all" else [precision]
    require_graph_files(bundle, chosen_precisions)
    for chosen in chosen_precisions:
        for graph in GRAPHS:
            yield bundle_settings(bundle, graph, chosen, **options)


def _graph_files(bundle: Any, precision: str) -> dict[str, Path | None]:
    """Each graph's path for ``precision`` where the manifest names one inside the bundle."""
    from crnet.runtime.bundle import GRAPHS, BundleError

    paths: dict[str, Path | None] = {}
    for graph in GRAPHS:
        try:
            paths[graph] = bundle.graph_path(graph, precision)
        except BundleError:
            paths[graph] = None
    return paths


def require_graph_files(bundle: Any, precisions: list[str]) -> None:
    """BundleError unless both graphs of each of ``precisions`` are files in the bundle (a
    variant the manifest lacks, or lists but whose graph was deleted); the error names the
    precisions whose graphs are all there."""
    from crnet.runtime.bundle import BundleError

    def missing(precision: str) -> list[str]:
        return [str(path) if path is not None else f"its {graph} graph"
                for graph, path in _graph_files(bundle, precision).items()
                if path is None or not path.is_file()]

    present = ", ".join(p for p in bundle.precisions if not missing(p)) or "none"
    for precision in precisions:
        if precision not in bundle.precisions:
            slim = bundle.manifest.get("slim")
            hint = (f"it was slimmed by `crnet bundle slim`; slim the full bundle for "
                    f"{precision}" if isinstance(slim, dict) else
                    f"`crnet quantize {bundle.root} --precision {precision}` adds it")
            raise BundleError(f"bundle {bundle.root} has no {precision} variant; precisions "
                              f"with both graphs present: {present} ({hint})")
        absent = missing(precision)
        if absent:
            raise BundleError(f"bundle {bundle.root} lists a {precision} variant but lacks "
                              f"{', '.join(absent)}; precisions with both graphs present: "
                              f"{present} (`crnet quantize {bundle.root} --precision "
                              f"{precision}` makes it again)")


def run(args: argparse.Namespace) -> int:
    """Print trtexec lines, build one engine, or build a bundle's graphs."""
    from crnet.engines.build_settings import SpecError, format_trtexec
    from crnet.runtime.layout import ENGINES_DIR

    if args.ort_threads is not None and args.ort_threads < 1:
        raise UsageError(f"--ort-threads must be at least 1, got {args.ort_threads} (leave it "
                         "out for ONNX Runtime's default)")
    bundle_dir = args.bundle or args.bundle_positional
    if args.bundle and args.bundle_positional:
        raise UsageError("give the bundle once (--bundle DIR or DIR)")
    if (bundle_dir is None) == (args.onnx is None):
        raise UsageError("give either --onnx MODEL (one engine) or --bundle DIR (both graphs)")
    if bundle_dir is not None and (args.saveEngine or args.minShapes or args.optShapes
                                   or args.maxShapes):
        raise UsageError("bundle mode takes shapes from the manifest and writes plans to "
                         f"{ENGINES_DIR}/; drop --saveEngine/--minShapes/--optShapes/"
                         "--maxShapes")
    try:
        if args.print_trtexec:
            if bundle_dir is not None:
                for settings in bundle_commands(bundle_dir, args.precision, build_options(args)):
                    print(format_trtexec(settings))
            else:
                print(format_trtexec(single_settings(args)))
            return EXIT_OK
        if bundle_dir is None:
            return run_single(single_settings(args))
        return run_bundle(bundle_dir, args)
    except SpecError as error:
        raise UsageError(str(error)) from None


def run_single(settings: Any) -> int:
    """Build one engine; EXIT_NO_TENSORRT without TensorRT."""
    from crnet.engines.engine_trt import TensorRTUnavailable, build_engine

    try:
        info = build_engine(settings)
    except TensorRTUnavailable as error:
        print(f"crnet build: {error}", file=sys.stderr)
        return EXIT_NO_TENSORRT
    print(f"wrote {settings.engine} ({info['plan_bytes']} bytes) in "
          f"{info['build_seconds']:.1f} s on {info['gpu_name']} (sm "
          f"{info['compute_capability']}), TensorRT {info['tensorrt_version']}; layers per "
          f"precision: {info.get('layer_precisions')}")
    return EXIT_OK


def run_bundle(bundle_dir: Path, args: argparse.Namespace) -> int:
    """Build a bundle's graphs with TensorRT, or the ONNX Runtime CPU target without it."""
    from crnet.engines.build_engine import build_bundle, require_gpu
    from crnet.engines.engine_ort import build_ort_bundle
    from crnet.engines.engine_trt import TensorRTUnavailable, require_tensorrt
    from crnet.runtime.layout import ORT_BUILD_DIR

    target = args.target
    if target in ("auto", "tensorrt"):
        try:
            require_tensorrt()
            if target == "auto":  # TensorRT imports without a GPU: ask for one as well
                require_gpu()
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
        engines = build_bundle(bundle_dir, args.precision, **build_options(args))
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
