"""trtexec-style build settings shared by the TensorRT and ONNX Runtime engine builders.

Parsing and formatting of trtexec's values (shapes, memory pools), the settings of one
build (BuildSettings), the equivalent trtexec command line, and the build errors. No
TensorRT import: crnet.engines.build_engine (the command) and crnet.engines.engine_trt /
crnet.engines.engine_ort (the builders) all import from here, never from each other.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crnet.runtime.bundle import PRECISIONS, Bundle
from crnet.runtime.errors import CrnetError

MEMORY_POOLS = ("workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM", "tacticSharedMem")
HARDWARE_LEVELS = ("none", "ampere+", "sameComputeCapability")
UNIT_BYTES = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SHAPE_EXAMPLE = "image:1x3x193x193,other:2x16"
POOL_EXAMPLE = "workspace:1024M,tacticSharedMem:0.5M"

Shapes = dict[str, tuple[int, ...]]
Log = Callable[[str], None]


class SpecError(CrnetError, ValueError):
    """A trtexec-style command-line value (shapes, memory pools) with bad syntax."""


class EngineBuildError(CrnetError, RuntimeError):
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
    refit_weights: tuple[str, ...] | None = None
    """Weights (ONNX initializer names) built refittable one by one (REFIT_INDIVIDUAL),
    for adapters; None: those adaptable_weights() finds for the ONNX."""

    def refittable_weights(self) -> tuple[str, ...]:
        """``refit_weights``, or the adaptable weights of a bundle's refine graph."""
        if self.refit_weights is not None:
            return self.refit_weights
        return adaptable_weights(self.onnx)

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


def adaptable_weights(onnx: Path) -> tuple[str, ...]:
    """The initializers of a bundle's refine graph (any precision) that an adapter
    replaces (runtime.adapter: the weights, their fp16 casts, duplicated int8 biases and
    int8 weight scales), sorted; () for any other ONNX or a bundle without the record."""
    from crnet.runtime.adapter import AdapterError, adaptable_tensors, graph_overrides
    from crnet.runtime.bundle import is_bundle

    root = Path(onnx).parent
    if not Path(onnx).name.startswith("refine.") or not is_bundle(root):
        return ()
    try:
        tensors = adaptable_tensors(Bundle.load(root, verify=False))
    except AdapterError:
        return ()
    import numpy as np
    import onnx as onnx_module

    graph = onnx_module.load(str(onnx), load_external_data=False).graph
    shipped = {name: np.zeros(entry["shape"], np.float32) for name, entry in tensors.items()}
    return tuple(sorted(graph_overrides(graph, shipped, required=False)))


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


def select_precisions(bundle: Bundle, precision: str) -> list[str]:
    """``all`` -> every variant the bundle has; else that one (BundleError if absent)."""
    if precision == "all":
        return bundle.precisions
    bundle.graph_path("backbone", precision)  # raises with a hint when the variant is absent
    return [precision]
