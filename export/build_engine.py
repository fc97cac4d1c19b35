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
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.backends.tensorrt_backend import ENGINES_DIR, engine_paths
from runtime.bundle import GRAPHS, PRECISIONS, Bundle, BundleError, update_manifest

EXIT_OK, EXIT_FAILED, EXIT_NO_TENSORRT = 0, 1, 3
DEFAULT_TIMING_CACHE = "timing.cache"  # inside BUNDLE/engines/ in bundle mode
MEMORY_POOLS = ("workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM", "tacticSharedMem")
HARDWARE_LEVELS = ("none", "ampere+", "sameComputeCapability")
UNIT_BYTES = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SHAPE_EXAMPLE = "image:1x3x193x193,other:2x16"
POOL_EXAMPLE = "workspace:1024M,tacticSharedMem:0.5M"

Shapes = dict[str, tuple[int, ...]]
Log = Callable[[str], None]


class SpecError(ValueError):
    """A trtexec-style command-line value (shapes, memory pools) with bad syntax."""


class EngineBuildError(RuntimeError):
    """A build that cannot start or that TensorRT rejects."""


# ---------------------------------------------------------------- trtexec-style values


def parse_shapes(spec: str, flag: str = "--shapes") -> Shapes:
    """Parse trtexec's ``name:1x3x193x193,other:...`` into ``{name: (1, 3, 193, 193)}``.

    Names may be wrapped in single quotes (``'input:0':1x3``); ``name:scalar`` or ``name:``
    is a 0-D shape. Raises SpecError saying which entry is wrong and what was expected.
    """
    expected = f"expected NAME:DIMxDIMx... separated by commas, e.g. {SHAPE_EXAMPLE}"
    if not spec or not spec.strip():
        raise SpecError(f"{flag} is empty; {expected}")
    shapes: Shapes = {}
    for entry in _split_outside_quotes(spec.strip(), flag):
        name, separator, dims_text = entry.rpartition(":")
        if not separator:
            raise SpecError(f"{flag}: {entry!r} has no ':' between name and dimensions; "
                            f"{expected}")
        name = name.strip()
        if len(name) >= 2 and name[0] == name[-1] == "'":
            name = name[1:-1]
        if not name:
            raise SpecError(f"{flag}: {entry!r} has no tensor name before ':'; {expected}")
        if name in shapes:
            raise SpecError(f"{flag}: tensor {name!r} is given twice; expected each input "
                            f"once, e.g. {SHAPE_EXAMPLE}")
        dims_text = dims_text.strip()
        if dims_text in ("", "scalar"):
            shapes[name] = ()
            continue
        dims = []
        for dim in dims_text.split("x"):
            if not re.fullmatch(r"\d+", dim.strip()):
                raise SpecError(
                    f"{flag}: {name!r} has dimension {dim!r} in {dims_text!r}, which is not a "
                    f"non-negative integer; {expected} (dimensions joined by 'x')")
            dims.append(int(dim))
        shapes[name] = tuple(dims)
    return shapes


def _split_outside_quotes(spec: str, flag: str) -> list[str]:
    entries, current, quoted = [], [], False
    for char in spec:
        if char == "'":
            quoted = not quoted
        if char == "," and not quoted:
            entries.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise SpecError(f"{flag}: unbalanced single quote in {spec!r}; expected a quoted "
                        "name to close its quote, e.g. 'input:0':1x3x193x193")
    entries.append("".join(current))
    if any(not entry.strip() for entry in entries):
        raise SpecError(f"{flag}: empty entry in {spec!r} (a stray comma?); "
                        f"expected e.g. {SHAPE_EXAMPLE}")
    return entries


def format_shapes(shapes: Shapes) -> str:
    """The trtexec spelling of a shapes mapping (inverse of parse_shapes)."""
    return ",".join(f"{name}:{'x'.join(map(str, dims)) if dims else 'scalar'}"
                    for name, dims in shapes.items())


def parse_mem_pool(spec: str) -> dict[str, int]:
    """Parse trtexec's ``workspace:1024M,dlaSRAM:0.5M`` into bytes per pool.

    Base-2 suffixes B, K, M, G; no suffix means MiB; decimals are rounded down to bytes.
    """
    expected = (f"expected POOL:SIZE[B|K|M|G] separated by commas (no suffix = MiB), "
                f"e.g. {POOL_EXAMPLE}; pools: {', '.join(MEMORY_POOLS)}")
    if not spec or not spec.strip():
        raise SpecError(f"--memPoolSize is empty; {expected}")
    pools: dict[str, int] = {}
    for entry in spec.split(","):
        pool, separator, size_text = entry.strip().partition(":")
        if not separator:
            raise SpecError(f"--memPoolSize: {entry!r} has no ':' between pool and size; "
                            f"{expected}")
        if pool not in MEMORY_POOLS:
            raise SpecError(f"--memPoolSize: unknown pool {pool!r}; {expected}")
        match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([BKMG]?)", size_text.strip())
        if not match:
            raise SpecError(f"--memPoolSize: size {size_text!r} of {pool} is not a number with "
                            f"an optional B/K/M/G suffix; {expected}")
        number, unit = match.groups()
        pools[pool] = int(float(number) * UNIT_BYTES[unit or "M"])
    return pools


def format_bytes(size: int) -> str:
    """The largest exact trtexec unit: 1073741824 -> '1G', 1536 -> '1536B'."""
    for unit in ("G", "M", "K"):
        if size and size % UNIT_BYTES[unit] == 0:
            return f"{size // UNIT_BYTES[unit]}{unit}"
    return f"{size}B"


# ---------------------------------------------------------------- one build's settings


@dataclass(frozen=True)
class BuildSettings:
    """What one engine build needs: trtexec's build options, by their meaning."""

    onnx: Path
    engine: Path
    min_shapes: Shapes = field(default_factory=dict)
    opt_shapes: Shapes = field(default_factory=dict)
    max_shapes: Shapes = field(default_factory=dict)
    timing_cache: Path | None = None
    mem_pool: dict[str, int] = field(default_factory=dict)
    builder_optimization_level: int | None = None
    version_compatible: bool = False
    hardware_compatibility_level: str = "none"
    refit: bool = False
    strip_weights: bool = False
    verbose: bool = False

    @property
    def precision(self) -> str | None:
        """The ONNX variant's precision from its name (``refine.fp16.onnx`` -> fp16)."""
        return onnx_precision(self.onnx)

    def profile(self) -> dict[str, dict[str, list[int]]]:
        """``{tensor: {"min", "opt", "max"}}`` with trtexec's rules (opt alone fills all)."""
        check_profile(self.min_shapes, self.opt_shapes, self.max_shapes)
        opt = self.opt_shapes
        low = self.min_shapes or opt
        high = self.max_shapes or opt
        return {name: {"min": list(low[name]), "opt": list(opt[name]), "max": list(high[name])}
                for name in opt}


def onnx_precision(path: Path) -> str | None:
    """``fp16`` for ``*.fp16.onnx`` (this project's naming), else None."""
    suffixes = Path(path).suffixes
    return suffixes[-2].lstrip(".") if len(suffixes) >= 2 and \
        suffixes[-2].lstrip(".") in PRECISIONS else None


def check_profile(min_shapes: Shapes, opt_shapes: Shapes, max_shapes: Shapes) -> None:
    """Raise SpecError unless min <= opt <= max per tensor, as trtexec requires."""
    if (min_shapes or max_shapes) and not opt_shapes:
        raise SpecError("--minShapes/--maxShapes need --optShapes as well (trtexec: give all "
                        "three, or --optShapes alone to use it for min and max)")
    if bool(min_shapes) != bool(max_shapes):
        raise SpecError("give both --minShapes and --maxShapes (or neither: --optShapes alone "
                        "is used for min and max)")
    for flag, shapes in (("--minShapes", min_shapes), ("--maxShapes", max_shapes)):
        if shapes and set(shapes) != set(opt_shapes):
            raise SpecError(f"{flag} names {sorted(shapes)} but --optShapes names "
                            f"{sorted(opt_shapes)}; every tensor needs all three shapes")
    for name, opt in opt_shapes.items():
        low, high = min_shapes.get(name, opt), max_shapes.get(name, opt)
        if not len(low) == len(opt) == len(high):
            raise SpecError(f"{name}: min {low}, opt {opt}, max {high} differ in rank")
        if any(not (lo <= op <= hi) for lo, op, hi in zip(low, opt, high, strict=True)):
            raise SpecError(f"{name}: need min <= opt <= max in every dimension, got min "
                            f"{'x'.join(map(str, low))}, opt {'x'.join(map(str, opt))}, max "
                            f"{'x'.join(map(str, high))}")


def trtexec_command(settings: BuildSettings) -> list[str]:
    """The trtexec command line that builds the same engine (for users with trtexec)."""
    command = ["trtexec", f"--onnx={settings.onnx}", f"--saveEngine={settings.engine}",
               "--stronglyTyped", "--skipInference", "--profilingVerbosity=detailed"]
    if settings.opt_shapes:
        profile = settings.profile()
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"),
                          ("max", "--maxShapes")):
            shapes = {name: tuple(ranges[key]) for name, ranges in profile.items()}
            command.append(f"{flag}={format_shapes(shapes)}")
    if settings.timing_cache is not None:
        command.append(f"--timingCacheFile={settings.timing_cache}")
    if settings.mem_pool:
        command.append("--memPoolSize=" + ",".join(
            f"{pool}:{format_bytes(size)}" for pool, size in settings.mem_pool.items()))
    if settings.builder_optimization_level is not None:
        command.append(f"--builderOptimizationLevel={settings.builder_optimization_level}")
    if settings.version_compatible:
        command.append("--versionCompatible")
    if settings.hardware_compatibility_level != "none":
        command.append(f"--hardwareCompatibilityLevel={settings.hardware_compatibility_level}")
    if settings.refit:
        command.append("--refit")
    if settings.strip_weights:
        command.append("--stripWeights")
    if settings.verbose:
        command.append("--verbose")
    return command


def format_trtexec(settings: BuildSettings) -> str:
    """trtexec_command as one shell-quoted line."""
    return shlex.join(trtexec_command(settings))


# ---------------------------------------------------------------- bundle mode


def publishable(path: Path) -> None:
    """Give a file written through a private temporary file ordinary permissions (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


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


def select_precisions(bundle: Bundle, precision: str) -> list[str]:
    """``all`` -> every variant the bundle has; else that one (BundleError if absent)."""
    if precision == "all":
        return bundle.precisions
    bundle.graph_path("backbone", precision)  # raises with a hint when the variant is absent
    return [precision]


def bundle_settings(bundle: Bundle, graph: str, precision: str, **options: Any
                    ) -> BuildSettings:
    """BuildSettings of one graph of a bundle: shapes from the manifest, plan in engines/."""
    low, opt, high = bundle_profile(bundle.manifest, graph)
    plan, _ = engine_paths(bundle.root, graph, precision)
    options.setdefault("timing_cache", bundle.root / ENGINES_DIR / DEFAULT_TIMING_CACHE)
    return BuildSettings(onnx=bundle.graph_path(graph, precision), engine=plan,
                         min_shapes=low, opt_shapes=opt, max_shapes=high, **options)


def build_bundle(bundle_dir: str | Path, precision: str = "fp32", *, log: Log = print,
                 **options: Any) -> dict[str, Any]:
    """Build TensorRT engines of both graphs of the chosen variant(s) into ``engines/``.

    ``options`` are BuildSettings fields (timing_cache, mem_pool, ...). Records the builds
    in the manifest's ``engines`` section and hashes plans and JSONs into ``files``.
    Returns that section. Raises TensorRTUnavailable without TensorRT.
    """
    from export.engine_trt import build_engine, require_tensorrt

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
            layers = plan.with_suffix(".layers.json")
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
                             f"BUNDLE/{ENGINES_DIR}/{DEFAULT_TIMING_CACHE})")
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
    except (EngineBuildError, BundleError, OSError) as error:
        print(f"crnet build: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED  # not reached: parser.error exits


def _main_single(settings: BuildSettings) -> int:
    from export.engine_trt import TensorRTUnavailable, build_engine

    try:
        info = build_engine(settings)
    except TensorRTUnavailable as error:
        print(f"crnet build: {error}", file=sys.stderr)
        return EXIT_NO_TENSORRT
    _print_summary(settings.engine, info)
    return EXIT_OK


def _main_bundle(bundle_dir: Path, args: argparse.Namespace) -> int:
    from export.engine_ort import build_ort_bundle
    from export.engine_trt import TensorRTUnavailable, require_tensorrt

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
                  f"models in {bundle_dir}/{ENGINES_DIR}/ort/ (use --target tensorrt to fail "
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
    from export.engine_trt import TensorRTUnavailable
    from runtime.backends.tensorrt_backend import TensorRTBackend

    available, reason = TensorRTBackend.is_available()
    if not available:
        raise TensorRTUnavailable(f"TensorRT imports but cannot build here: {reason}")


def _print_summary(plan: Path, info: dict[str, Any]) -> None:
    print(f"wrote {plan} ({info['plan_bytes']} bytes) in {info['build_seconds']:.1f} s on "
          f"{info['gpu_name']} (sm {info['compute_capability']}), TensorRT "
          f"{info['tensorrt_version']}; layers per precision: {info.get('layer_precisions')}")


if __name__ == "__main__":
    # run as a script this module is __main__; use the package's copy so that its errors
    # are the ones export.engine_trt raises
    from export.build_engine import main as package_main

    sys.exit(package_main())

