"""The int8 variant: explicit QuantizeLinear/DequantizeLinear by ``onnxruntime.quantization``'s
``quantize_static`` with TensorRT's rules (symmetric int8, zero-points 0, per-channel
weights on the output-channel axis, float bias), from ranges calibrated on base-class
train-split episodes (calibration.ranges). A per-layer sensitivity analysis
(calibration.sensitivity) keeps the most harmful layers in fp32 until the int8 graphs meet
the target |delta mIoU| on held-out base-class episodes; layers are ranked end to end when
there are few, else by each layer's own output error with the top few confirmed end to end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crnet.calibration import sensitivity as sens
from crnet.calibration.options import INT8_OP_TYPES, LOCAL_MAX_FP32_LAYERS, Int8Options
from crnet.calibration.ranges import (
    Ranges,
    obtain_ranges,
    ranges_json,
    trt10_calibration_cache,
)
from crnet.calibration.reader import describe_data
from crnet.calibration.variants import (
    QuantizeError,
    check_graph,
    default_fold,
    install_variant,
    load_fp32_bundle,
    quiet,
    tool_versions,
)
from crnet.runtime.bundle import GRAPHS, Bundle, graph_file
from crnet.runtime.files import scratch_directory
from crnet.runtime.layout import RANGES_FILE, trt_calibration_cache

# quantize_static settings that yield a graph TensorRT accepts (the settings NVIDIA ModelOpt uses).
TRT_EXTRA_OPTIONS: dict[str, Any] = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": False,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
}
Models = dict[str, Any]


def preprocess_for_quantization(fp32_path: Path, out_path: Path) -> Path:
    """ORT's quant_pre_process (symbolic + ONNX shape inference, basic optimisation)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with quiet():
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return out_path


def quantize_graph(model_path: Path, ranges: dict[str, tuple[float, float]],
                   nodes_to_exclude: Sequence[str] = (),
                   nodes_to_quantize: Sequence[str] = (),
                   op_types: Sequence[str] = INT8_OP_TYPES) -> Any:
    """Q/DQ graph of a pre-processed fp32 model from saved ranges (no calibration run)."""
    import inspect

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise QuantizeError(
            f"onnxruntime {onnxruntime.__version__} cannot quantize from saved ranges "
            "(quantize_static has no calibration_cache_path, new in 1.27); install onnxruntime "
            ">= 1.27 (Python 3.11 or newer)")
    tensors = TensorsData(CalibrationMethod.MinMax, {
        name: (np.array(lo, np.float32), np.array(hi, np.float32))
        for name, (lo, hi) in ranges.items()})
    with scratch_directory("crnet-quantize-") as scratch, quiet():
        cache = Path(scratch) / "ranges.json"
        out = Path(scratch) / "quantized.onnx"
        save_tensors_data(tensors, cache)
        quantize_static(
            str(model_path), str(out), calibration_data_reader=None,
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
            per_channel=True, reduce_range=False,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=list(nodes_to_quantize) or None,
            nodes_to_exclude=list(nodes_to_exclude) or None,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=dict(TRT_EXTRA_OPTIONS), calibration_cache_path=str(cache))
        return onnx.load(str(out))


@dataclass(frozen=True)
class Int8Work:
    """One int8 run's inputs: the pre-processed fp32 graphs, their ranges and layers."""

    root: Path
    """The bundle directory."""
    fold: int
    """The fold whose base classes calibrate and score."""
    preprocessed: dict[str, Path]
    """graph -> the quant_pre_process'ed fp32 ONNX file."""
    ranges: Ranges
    """graph -> {tensor: (min, max)}."""
    layers: dict[str, sens.Layer]
    """``graph:weight`` -> the layer's nodes."""
    op_types: tuple[str, ...]
    """ONNX op types quantized."""

    def build(self, excluded: Sequence[str]) -> Models:
        """Both int8 graphs with the ``excluded`` layers kept in fp32."""
        return {graph: quantize_graph(
                    self.preprocessed[graph], self.ranges[graph], op_types=self.op_types,
                    nodes_to_exclude=[node for name in excluded
                                      if self.layers[name].graph == graph
                                      for node in self.layers[name].nodes])
                for graph in GRAPHS}

    def quantize_alone(self, layer: sens.Layer) -> Any:
        """The graph of ``layer`` with only that layer quantized."""
        return quantize_graph(self.preprocessed[layer.graph], self.ranges[layer.graph],
                              nodes_to_quantize=layer.nodes, op_types=self.op_types)


def quantize_int8(bundle_dir: str | Path, options: Int8Options | None = None
                  ) -> dict[str, Any]:
    """Add ``backbone.int8.onnx``/``refine.int8.onnx`` (explicit Q/DQ) to a bundle.

    Ranges come from ``calibration/ranges.int8.json`` when it fits the bundle (same fp32
    graphs, no conflicting settings) unless ``options.recalibrate``; otherwise from
    ``options.calibration_episodes`` base-class train-split episodes of ``options.data``.
    With ``options.sensitivity.enabled``, the layers whose quantization damages the output
    most are kept in fp32 until the target is met (``SensitivityOptions``);
    ``options.exclude_layers`` are always kept in fp32. Returns the manifest.
    """
    options = options or Int8Options()
    started = time.perf_counter()
    bundle = load_fp32_bundle(bundle_dir)
    fold = default_fold(bundle) if options.data.fold is None else options.data.fold
    with scratch_directory("crnet-int8-") as scratch:
        work, calibration = _prepare(bundle, fold, options, Path(scratch))
        models, excluded, report = _choose_layers(work, options)
    for graph, model in models.items():
        check_graph(model, graph_file(graph, "int8"))
    how = _int8_how(options, calibration, models)
    how.update({"kept_fp32_layers": excluded,
                "kept_fp32_nodes": [node for layer in excluded
                                    for node in work.layers[layer].nodes],
                "sensitivity": report})
    how["seconds"] = round(time.perf_counter() - started, 2)
    return install_variant(bundle.root, "int8", models, how,
                           _int8_files(work.ranges, calibration, options.trt10_cache),
                           existing_files=[RANGES_FILE] if calibration["reused"] else [])


def _prepare(bundle: Bundle, fold: int, options: Int8Options, scratch: Path
             ) -> tuple[Int8Work, dict[str, Any]]:
    """Pre-process both fp32 graphs into ``scratch``, obtain their ranges, find the layers
    (and refuse unknown ``exclude_layers``)."""
    preprocessed = {graph: preprocess_for_quantization(
        bundle.graph_path(graph, "fp32"), scratch / f"{graph}.pre.onnx") for graph in GRAPHS}
    ranges, calibration = obtain_ranges(bundle, preprocessed, options, fold)
    layers = sens.quantizable_layers(preprocessed, options.op_types)
    unknown = sorted(set(options.exclude_layers) - set(layers))
    if unknown:
        raise QuantizeError(f"unknown layers {unknown}; layers are {sorted(layers)}")
    work = Int8Work(bundle.root, fold, preprocessed, ranges, layers, options.op_types)
    return work, calibration


def _choose_layers(work: Int8Work, options: Int8Options
                   ) -> tuple[Models, list[str], dict[str, Any]]:
    """The final int8 graphs, the layers kept in fp32 and the sensitivity record."""
    report: dict[str, Any] = {"enabled": options.sensitivity.enabled}
    if not options.sensitivity.enabled:
        return work.build(options.exclude_layers), list(options.exclude_layers), report
    report.update(run_sensitivity(work, options))
    return report.pop("models"), list(report["kept_fp32_layers"]), report


def _int8_files(ranges: Ranges, calibration: dict[str, Any], trt10_cache: bool
                ) -> dict[str, bytes]:
    """The files installed beside the graphs: new ranges, TensorRT-10 caches."""
    extra_files: dict[str, bytes] = {}
    if not calibration["reused"]:
        provenance = {k: v for k, v in calibration.items() if k != "reused"}
        extra_files[RANGES_FILE] = ranges_json(ranges, provenance)
    if trt10_cache:
        extra_files.update({trt_calibration_cache(graph):
                            trt10_calibration_cache(ranges[graph]).encode()
                            for graph in GRAPHS})
    return extra_files


def _int8_how(options: Int8Options, calibration: dict[str, Any],
              models: Models) -> dict[str, Any]:
    """The tool, settings and calibration part of the int8 variant's ``how`` record."""
    op_types = list(options.op_types)
    cache_files = {graph: trt_calibration_cache(graph) for graph in GRAPHS}
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "versions": tool_versions(),
        "settings": {"quant_format": "QDQ", "activation_type": "QInt8",
                     "weight_type": "QInt8", "per_channel": True, "reduce_range": False,
                     "op_types_to_quantize": op_types,
                     "extra_options": TRT_EXTRA_OPTIONS, "pre_process": "quant_pre_process"},
        "calibration": {**calibration, "ranges_file": RANGES_FILE},
        "kept_fp32_ops": sorted({node.op_type for model in models.values()
                                 for node in model.graph.node} - set(op_types)
                                - {"QuantizeLinear", "DequantizeLinear"}),
        "trt10_calibration_cache": cache_files if options.trt10_cache else None,
    }


def run_sensitivity(work: Int8Work, options: Int8Options) -> dict[str, Any]:
    """Rank the layers, then keep the most harmful in fp32 until the target is met; the
    manifest's ``sensitivity`` record (method, ranking, confirmation, steps, timings), with
    ``kept_fp32_layers`` and the final int8 graphs (``models``) for the caller to take."""
    chosen = options.sensitivity
    started = time.perf_counter()
    check = sens.SensitivitySet.build(work.root, options.data.with_fold(work.fold),
                                      chosen.episodes, progress=options.progress)
    method = chosen.rank
    if method == "auto":
        method = "full" if len(work.layers) <= sens.FULL_RANK_MAX_LAYERS else "local"
    record: dict[str, Any] = {
        "data": describe_data(check.data) + f", seed {sens.SENSITIVITY_SEED}, held out "
                "from calibration",
        **check.data,
        "episodes": chosen.episodes,
        "layers": len(work.layers),
        "rank_method": method,
        "target_abs_delta_miou": chosen.target_delta,
    }
    rank_started = time.perf_counter()
    ranking = _rank_layers(check, work, method, options, record)
    record["rank_seconds"] = round(time.perf_counter() - rank_started, 2)
    record["episodes_seconds"] = round(rank_started - started, 2)  # SensitivitySet.build
    record.update(_fall_back(check, work, ranking, method, options))
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def _rank_layers(check: sens.SensitivitySet, work: Int8Work, method: str,
                 options: Int8Options, record: dict[str, Any]) -> list[tuple[str, float]]:
    """Layers by damage, most harmful first (``method`` full or local); records how the
    damage was measured in ``record``."""
    chosen, progress = options.sensitivity, options.progress
    if method == "full":
        record["damage"] = ("mean |query foreground probability - fp32's| on the first "
                            f"{sens.RANK_EPISODES} episodes with only that layer quantized")
        return sens.rank_layers(check, work.layers, work.quantize_alone, progress=progress)
    started = time.perf_counter()
    ranking = sens.rank_layers_local(work.preprocessed, work.ranges, work.layers,
                                     check.feeds, progress=progress)
    record["damage"] = (
        "local: normalised MSE of the layer's own output (its input activation "
        "fake-quantized with the calibrated range, its weight per channel, symmetric "
        f"int8) against fp32, on the first {sens.LOCAL_RANK_EPISODES} episodes; the top "
        f"{chosen.confirm_layers} then measured end to end (mean |query foreground "
        f"probability - fp32's| on {sens.CONFIRM_EPISODES} episodes, that layer alone "
        "quantized) and tried first in that order")
    record["local_seconds"] = round(time.perf_counter() - started, 2)
    if chosen.confirm_layers > 0:
        ranking, record["confirmed"] = sens.confirm_top(
            check, work.layers, work.quantize_alone, ranking, chosen.confirm_layers,
            progress=progress)
    return ranking


def _fall_back(check: sens.SensitivitySet, work: Int8Work, ranking: list[tuple[str, float]],
               method: str, options: Int8Options) -> dict[str, Any]:
    """Keep layers in fp32, most harmful first, until the target is met or the cap is
    reached; the record's steps, the kept layers and the final graphs (``models``)."""
    chosen = options.sensitivity
    started = time.perf_counter()
    cap = chosen.max_fp32_layers
    if cap is None and method == "local":
        cap = LOCAL_MAX_FP32_LAYERS
    models: Models = {}
    excluded, steps = sens.choose_exclusions(check, work.build, ranking, chosen.target_delta,
                                             always=options.exclude_layers,
                                             progress=options.progress,
                                             max_exclusions=cap, last_models=models)
    return {
        "ranking": [{"layer": name, "damage": damage} for name, damage in ranking],
        "max_fp32_layers": cap,
        "steps": steps,
        "target_met": abs(steps[-1]["delta_miou"]) <= chosen.target_delta,
        "kept_fp32_layers": excluded,
        "fallback_seconds": round(time.perf_counter() - started, 2),
        "models": models,
    }
