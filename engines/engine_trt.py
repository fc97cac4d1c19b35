"""The TensorRT side of `crnet build`: parse, build, inspect, write plan + engine JSON.

Works on TensorRT 10 (JetPack; weakly typed builds and precision flags still exist) and 11
(networks always strongly typed, no precision flags). tensorrt is imported only inside
functions, so this module imports anywhere; the layer-precision summary is plain Python.

Engine JSON (beside the plan, read by runtime/backends/tensorrt_backend.py): at least
``tensorrt_version``, ``compute_capability`` ("8.9"), ``gpu_name``, ``profiles`` (list of
``{tensor: {min, opt, max}}``), ``onnx_sha256``; also ``version_compatible``,
``hardware_compatibility_level``, ``precision``, ``build_seconds``, ``builder`` (settings),
``layer_precisions`` (layer counts per precision) and the trtexec equivalent.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import time
from typing import Any

from crnet.engines.build_settings import (
    BuildSettings,
    EngineBuildError,
    Log,
    format_trtexec,
)
from crnet.runtime.files import atomic_path, sha256_file, write_json_atomic
from crnet.runtime.layout import engine_json_path, engine_layers_path

INSTALL_HINT = (
    "TensorRT is not installed (`import tensorrt` failed: {reason}). Building engines needs "
    "NVIDIA's full builder libraries and an NVIDIA GPU: `pip install tensorrt-cu12 "
    "cuda-python` (or tensorrt-cu13) on a machine that can reach NVIDIA's package index "
    "(pypi.nvidia.com), or on Jetson the JetPack packages `python3-libnvinfer` and "
    "`python3-libnvinfer-dev` (TensorRT 10). The lean-runtime wheel (tensorrt-lean) can only "
    "run version-compatible plans; it cannot build."
)
# layer precision from the inspector's "Format/Datatype" strings, narrowest first
_DATATYPE_WORDS = (("fp8", ("FP8", "E4M3")), ("int4", ("INT4",)), ("int8", ("INT8",)),
                   ("bf16", ("BF16", "BFLOAT16")), ("fp16", ("FP16", "HALF")),
                   ("fp32", ("FP32", "FLOAT")))
DATATYPE_FIELDS = ("Format/Datatype", "Datatype", "Format")
FLOAT_PRECISIONS = ("fp8", "int4", "int8", "bf16", "fp16", "fp32")
SILENT_FP32_FRACTION = 0.95  # a fp16/int8 variant with this share of fp32 layers is suspect
_POOLS = {"workspace": "WORKSPACE", "dlaSRAM": "DLA_MANAGED_SRAM",
          "dlaLocalDRAM": "DLA_LOCAL_DRAM", "dlaGlobalDRAM": "DLA_GLOBAL_DRAM",
          "tacticSharedMem": "TACTIC_SHARED_MEMORY"}
_HARDWARE_LEVELS = {"none": "NONE", "ampere+": "AMPERE_PLUS",
                    "sameComputeCapability": "SAME_COMPUTE_CAPABILITY"}


class TensorRTUnavailable(EngineBuildError):
    """TensorRT's Python package (with its builder) is not installed here."""


def require_tensorrt() -> Any:
    """The tensorrt module, or TensorRTUnavailable saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as error:
        raise TensorRTUnavailable(INSTALL_HINT.format(reason=error)) from error
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable(INSTALL_HINT.format(
            reason=f"tensorrt {getattr(trt, '__version__', '?')} has no Builder (lean or "
                   "dispatch runtime only)"))
    return trt


# ---------------------------------------------------------------- layer precisions


def layer_precision(layer: dict[str, Any]) -> str:
    """The narrowest float/quantised type among a layer's inputs and outputs, else 'other'.

    ``layer`` is one entry of the inspector's JSON ``Layers`` (ProfilingVerbosity.DETAILED):
    its ``Inputs``/``Outputs`` carry ``Format/Datatype`` strings such as "Row major linear
    FP32", "Half" or "Channel major INT8 format where channel % 32 == 0" (TensorRT 10), or
    separate ``Format`` and ``Datatype`` fields (TensorRT 11).
    """
    found = set()
    for tensor in [*layer.get("Inputs", []), *layer.get("Outputs", [])]:
        if not isinstance(tensor, dict):
            continue
        # TensorRT 10: one "Format/Datatype" field; TensorRT 11: "Format" and "Datatype"
        text = " ".join(str(tensor.get(key, "")) for key in DATATYPE_FIELDS).upper()
        for precision, words in _DATATYPE_WORDS:
            if any(word in text for word in words):
                found.add(precision)
                break
    for precision in FLOAT_PRECISIONS:
        if precision in found:
            return precision
    return "other"


def summarize_layers(engine_information: dict[str, Any]) -> dict[str, int]:
    """Layer counts per precision from the inspector's engine information (JSON, parsed)."""
    counts: dict[str, int] = {}
    for layer in engine_information.get("Layers", []):
        precision = layer_precision(layer) if isinstance(layer, dict) else "unknown"
        counts[precision] = counts.get(precision, 0) + 1
    return dict(sorted(counts.items()))


def silent_fp32_warning(precision: str | None, counts: dict[str, int]) -> str | None:
    """A warning when a fp16/int8 variant built with (almost) every layer in fp32."""
    if precision not in ("fp16", "int8"):
        return None
    floating = sum(counts.get(p, 0) for p in FLOAT_PRECISIONS)
    fp32 = counts.get("fp32", 0)
    if floating and fp32 / floating >= SILENT_FP32_FRACTION:
        return (f"the {precision} variant built with {fp32} of {floating} layers in fp32: the "
                f"ONNX's {precision} casts/Q-DQ nodes did not take (check the variant with "
                "`crnet lint`, and that the network was strongly typed)")
    return None


# ---------------------------------------------------------------- machine


def device_info(device: int = 0) -> dict[str, str]:
    """GPU name and compute capability ("8.9"): cuda-python, else nvidia-smi."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        error, properties = cudart.cudaGetDeviceProperties(device)
        if int(error) == 0:
            name = properties.name
            name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
            return {"gpu_name": name,
                    "compute_capability": f"{properties.major}.{properties.minor}"}
    except (ImportError, RuntimeError):  # cuda-python 12.0-12.6.0 raise without a driver
        pass
    try:
        output = subprocess.run(
            ["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap",
             "--format=csv,noheader"], capture_output=True, text=True, check=True, timeout=30)
        name, capability = (part.strip() for part in output.stdout.strip().rsplit(",", 1))
        return {"gpu_name": name, "compute_capability": capability}
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        raise EngineBuildError(
            "cannot read the GPU's compute capability (needed in the engine JSON): install "
            f"cuda-python (`pip install cuda-python`) or make nvidia-smi work ({error})"
        ) from error


# ---------------------------------------------------------------- build


def _network_flags(trt: Any) -> tuple[int, bool, list[str]]:
    """(creation flags, strongly typed?, notes) for this TensorRT."""
    if not hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 11+: always strongly typed
        return 0, True, ["TensorRT >= 11: networks are always strongly typed"]
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED), True, []
    return 0, False, ["no STRONGLY_TYPED flag (TensorRT < 9.1): weakly typed build with "
                      "precision flags from the ONNX variant"]


def _weak_precision_flags(trt: Any, precision: str | None) -> list[str]:
    """Builder flags for a weakly typed build of a precision variant (old TensorRT only)."""
    wanted = {"fp16": ["FP16"], "int8": ["INT8", "FP16"]}.get(precision or "", [])
    return [name for name in wanted if hasattr(trt.BuilderFlag, name)]


def _parse(trt: Any, builder: Any, settings: BuildSettings, logger: Any,
           flags: int) -> tuple[Any, Any]:
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(settings.onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {settings.onnx}:\n  "
                               + "\n  ".join(errors or ["(no error reported)"]))
    return network, parser


def _configure(trt: Any, builder: Any, network: Any, settings: BuildSettings,
               precision_flags: list[str]) -> Any:
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for name in precision_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for pool, size in settings.mem_pool.items():
        config.set_memory_pool_limit(getattr(trt.MemoryPoolType, _POOLS[pool]), size)
    if settings.builder_optimization_level is not None:
        config.builder_optimization_level = settings.builder_optimization_level
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.hardware_compatibility_level != "none":
        level = _HARDWARE_LEVELS[settings.hardware_compatibility_level]
        if not hasattr(trt.HardwareCompatibilityLevel, level):
            raise EngineBuildError(f"TensorRT {trt.__version__} has no hardware compatibility "
                                   f"level {settings.hardware_compatibility_level}")
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
    if settings.refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    else:
        _mark_refittable(trt, network, config, settings)
    if settings.strip_weights:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        if not settings.refit:  # trtexec: --stripWeights alone refits identical weights
            config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [tensor.name for tensor in inputs if any(d < 0 for d in tensor.shape)]
    profile_shapes = settings.profile() if settings.opt_shapes else {}
    missing = sorted(set(dynamic) - set(profile_shapes))
    if missing:
        raise EngineBuildError(f"{settings.onnx.name} has dynamic inputs {missing} without "
                               "shapes; give --minShapes/--optShapes/--maxShapes for them")
    unknown = sorted(set(profile_shapes) - {tensor.name for tensor in inputs})
    if unknown:
        raise EngineBuildError(f"shapes given for {unknown}, which are not inputs of "
                               f"{settings.onnx.name} (inputs: {[t.name for t in inputs]})")
    if profile_shapes:
        profile = builder.create_optimization_profile()
        for name, ranges in profile_shapes.items():
            profile.set_shape(name, ranges["min"], ranges["opt"], ranges["max"])
        config.add_optimization_profile(profile)
    return config


def _mark_refittable(trt: Any, network: Any, config: Any, settings: BuildSettings) -> None:
    """Build the adaptable weights (settings.refittable_weights) refittable one by one, so
    an adapter refits them in place (runtime/backends/tensorrt_backend.py) while every
    other weight stays constant for the optimiser."""
    names = settings.refittable_weights()
    if not names:
        return
    if not hasattr(trt.BuilderFlag, "REFIT_INDIVIDUAL"):
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot mark single weights "
                               "refittable (needs 10.0 or newer); adapters need it")
    config.set_flag(trt.BuilderFlag.REFIT_INDIVIDUAL)
    unmarked = [name for name in names if not network.mark_weights_refittable(name)]
    if unmarked:
        raise EngineBuildError(
            f"TensorRT could not mark {len(unmarked)} adaptable weights of "
            f"{settings.onnx.name} refittable (e.g. {unmarked[:3]}); the parser did not keep "
            "them as named weights")


def _load_timing_cache(config: Any, settings: BuildSettings, log: Log) -> str:
    data = b""
    state = "new"
    if settings.timing_cache is not None and settings.timing_cache.exists():
        data = settings.timing_cache.read_bytes()
        state = f"read {len(data)} bytes"
    timing_cache = config.create_timing_cache(data)
    if timing_cache is None and data:
        log(f"warning: timing cache {settings.timing_cache} is unusable; starting a new one")
        timing_cache, state = config.create_timing_cache(b""), "unusable, replaced"
    # as trtexec: accept a cache from another device (its entries are then re-timed), and
    # check the answer: a cache TensorRT refuses is replaced by an empty one
    if not config.set_timing_cache(timing_cache, ignore_mismatch=True):
        log(f"warning: TensorRT rejected the timing cache {settings.timing_cache}; starting "
            "a new one")
        timing_cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(timing_cache, ignore_mismatch=True):
            raise EngineBuildError("TensorRT refused even an empty timing cache; rerun "
                                   "without --timingCacheFile")
        state = f"rejected ({len(data)} bytes), replaced"
    return state


def _save_timing_cache(config: Any, settings: BuildSettings, log: Log) -> bool:
    """Write the config's timing cache to ``settings.timing_cache`` atomically; False (with a
    warning) when the config has none to give."""
    if settings.timing_cache is None:
        return False
    timing_cache = config.get_timing_cache()
    if timing_cache is None:
        log(f"warning: TensorRT returned no timing cache; {settings.timing_cache} left as it was")
        return False
    with atomic_path(settings.timing_cache) as temporary:
        temporary.write_bytes(bytes(timing_cache.serialize()))
    return True


def _write_plan(serialized: Any, settings: BuildSettings) -> None:
    with atomic_path(settings.engine) as temporary, open(temporary, "wb") as handle:
        handle.write(serialized)


def _inspect(trt: Any, logger: Any, serialized: Any, settings: BuildSettings, log: Log
             ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(inspector engine information, io tensors) of a freshly built plan."""
    runtime = trt.Runtime(logger)
    if settings.version_compatible:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        log("warning: could not deserialize the new plan to inspect its layers")
        return None, []
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        tensors.append({"name": name, "mode": engine.get_tensor_mode(name).name.lower(),
                        "dtype": str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1].lower(),
                        "shape": list(engine.get_tensor_shape(name))})
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        return json.loads(text), tensors
    except json.JSONDecodeError:
        log("warning: the engine inspector's report is not JSON; layer precisions unknown")
        return None, tensors


def build_engine(settings: BuildSettings, log: Log = print, device: int = 0) -> dict[str, Any]:
    """Build one plan from one ONNX with TensorRT; write plan, JSON and layers JSON atomically.

    Returns the engine JSON. Raises TensorRTUnavailable, EngineBuildError.
    """
    trt = require_tensorrt()
    if not settings.onnx.is_file():
        raise EngineBuildError(f"ONNX model not found: {settings.onnx}")
    machine = device_info(device)
    logger = trt.Logger(trt.Logger.VERBOSE if settings.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags, strongly_typed, notes = _network_flags(trt)
    precision_flags = [] if strongly_typed else _weak_precision_flags(trt, settings.precision)
    log(f"parsing {settings.onnx} (TensorRT {trt.__version__}, "
        f"{'strongly' if strongly_typed else 'weakly'} typed)")
    network, _parser = _parse(trt, builder, settings, logger, flags)
    config = _configure(trt, builder, network, settings, precision_flags)
    cache_state = _load_timing_cache(config, settings, log)
    log(f"building on {machine['gpu_name']} (sm {machine['compute_capability']}); this can "
        "take minutes...")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {settings.onnx.name}; rerun with "
                               "--verbose for the builder's log")
    log(f"built in {seconds:.1f} s; writing {settings.engine}")
    if not _save_timing_cache(config, settings, log) and settings.timing_cache is not None:
        cache_state += "; not saved (TensorRT returned none)"
    _write_plan(serialized, settings)
    information, tensors = _inspect(trt, logger, serialized, settings, log)
    layers_path = engine_layers_path(settings.engine)
    counts = summarize_layers(information) if information is not None else None
    if information is not None:
        write_json_atomic(layers_path, information)
    info: dict[str, Any] = {
        "tensorrt_version": trt.__version__,
        "compute_capability": machine["compute_capability"],
        "gpu_name": machine["gpu_name"],
        "profiles": [settings.profile()] if settings.opt_shapes else [],
        "onnx": settings.onnx.name,
        "onnx_sha256": sha256_file(settings.onnx),
        "precision": settings.precision,
        "plan_sha256": sha256_file(settings.engine),
        "plan_bytes": settings.engine.stat().st_size,
        "version_compatible": settings.version_compatible,
        "hardware_compatibility_level": _HARDWARE_LEVELS[
            settings.hardware_compatibility_level].lower(),
        "build_seconds": round(seconds, 2),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "system": platform.system()},
        "builder": {
            "strongly_typed": strongly_typed,
            "precision_flags": precision_flags,
            "deprecated_precision_flags_exist": hasattr(trt.BuilderFlag, "FP16"),
            "builder_optimization_level": settings.builder_optimization_level,
            "memory_pool_limits": dict(settings.mem_pool),
            "refit": settings.refit,
            "refittable_weights": [] if settings.refit else list(
                settings.refittable_weights()),
            "strip_weights": settings.strip_weights,
            "timing_cache": str(settings.timing_cache) if settings.timing_cache else None,
            "timing_cache_state": cache_state,
            "profiling_verbosity": "detailed",
            "notes": notes,
        },
        "io_tensors": tensors,
        "layer_precisions": counts,
        "layer_information": layers_path.name if information is not None else None,
        "trtexec": format_trtexec(settings),
    }
    warning = silent_fp32_warning(settings.precision, counts or {})
    if warning:
        info["warnings"] = [warning]
        log(f"WARNING: {warning}")
    write_json_atomic(engine_json_path(settings.engine), info)
    log(f"layers per precision: {counts}")
    return info
