"""`crnet quantize`: add an FP16 or INT8 variant of both graphs to a bundle.

    crnet quantize BUNDLE --precision fp16
    crnet quantize BUNDLE --precision int8 [--calibration-method entropy|percentile|minmax]
                   [--calibration-episodes 64] [--recalibrate] [--target-delta 0.5]

Precision lives in the ONNX (TensorRT 11 has no precision flags):

* fp16: onnxconverter-common's float16 converter, fp32 graph inputs and outputs
  (keep_io_types), the ops of ``FP16_KEEP_FP32_OPS`` kept in fp32.
* int8: explicit QuantizeLinear/DequantizeLinear by ``onnxruntime.quantization``'s
  ``quantize_static`` with TensorRT's rules (symmetric int8, zero-points 0, per-channel
  weights on the output-channel axis, float bias). Calibrated on *base-class* train-split
  episodes of the checkpoint's fold only (``--dataset synthetic-5i|pascal-5i|folder``,
  ``--data-root DIR``; calibration.reader), never the test split; the activation ranges
  are saved in the bundle (``calibration/ranges.int8.json``) with which dataset, split,
  fold and classes produced them, and reused by later runs unless ``--recalibrate``.
  A per-layer sensitivity analysis (calibration.sensitivity) keeps the most harmful layers
  in fp32 until the int8 graphs meet ``--target-delta`` on held-out base-class episodes.
  Layers are ranked end to end when there are few (crnet-lite), else by each layer's own
  output error, the top few confirmed end to end (``--sensitivity-rank``).

New files are written atomically; the variant is first removed from the manifest, then the
files are written, then the manifest gets the variant with its files' sha256 and a ``how``
record (tool versions, settings, kept-fp32 ops/layers, calibration, sensitivity). A
variant that fails the ONNX checker or the TensorRT lint is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from crnet.calibration.reader import DEFAULT_DATASET, describe_data
from crnet.calibration.sensitivity import RANK_METHODS
from crnet.data.evaluation import DATASETS
from crnet.models.provenance import training_fold
from crnet.runtime.bundle import GRAPHS, Bundle, BundleError, graph_file, update_manifest
from crnet.runtime.errors import CrnetError
from crnet.runtime.files import scratch_directory, write_bytes_atomic
from crnet.runtime.layout import RANGES_FILE, trt_calibration_cache

# fp16: ops kept in fp32. Measured by casting one op type at a time on crnet-lite fold 0
# (64 base-class episodes): casting any single one of them to fp16 moved the mean |query
# probability| error by < 1e-6; Sigmoid alone raised the max error from 1.1e-3 to 1.6e-3.
# ReduceSum/ReduceMean/Div are kept for range and accumulation: masked average pooling
# sums mask*feat over h*w pixels (past fp16's 65504 on larger presets) and divides by the
# mask area + 5e-4; Softmax is the probability the refinement feeds back to itself.
# Resize measured harmless and runs in fp16. (ORT's CPU EP computes some fp16 ops in fp32
# behind inserted casts, so CPU figures mostly bound the storage rounding; TensorRT
# computes in fp16.)
FP16_KEEP_FP32_OPS: tuple[str, ...] = ("ReduceMean", "ReduceSum", "Div", "Softmax", "Sigmoid")
INT8_OP_TYPES: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_CONFIRM_LAYERS = 4  # local ranking: top layers re-measured end to end
LOCAL_MAX_FP32_LAYERS = 4  # local ranking: default cap on layers kept in fp32 (each step
# of the fp32 fallback is one int8 build and one scoring run: minutes on crnet-r50)
CALIBRATION_METHODS: tuple[str, ...] = ("entropy", "percentile", "minmax")
DEFAULT_CALIBRATION_METHOD = "entropy"  # lowest logit error of the three on crnet-lite
DEFAULT_CALIBRATION_EPISODES = 64
DEFAULT_CALIBRATION_SHOTS = 1
DEFAULT_CALIBRATION_SEED = 0
PERCENTILE = 99.999
RANGES_FORMAT = "crnet-deploy/int8-ranges"
# quantize_static settings that yield a graph TensorRT accepts (the settings NVIDIA ModelOpt uses).
TRT_EXTRA_OPTIONS: dict[str, Any] = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": False,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
}


class QuantizeError(CrnetError, RuntimeError):
    """A variant that cannot be produced or fails a check; nothing is installed."""


# ------------------------------------------------------------------------------- helpers

def tool_versions() -> dict[str, str]:
    """Versions of the tools that shape a variant."""
    import onnx
    import onnxruntime

    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    for package in ("onnxconverter-common", "crnet-deploy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ORT quantization's logging/print chatter and converter warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def default_fold(bundle: Bundle) -> int:
    """The fold the bundle's checkpoint was trained on (its base classes), else 0.

    Read through models.provenance from the checkpoint JSON copied into the bundle (what
    `crnet train` wrote), falling back to the manifest's copy of the training record.
    """
    meta_name = bundle.manifest.get("checkpoint", {}).get("metadata")
    training = bundle.manifest.get("source_checkpoint", {}).get("training")
    if meta_name and (bundle.root / meta_name).is_file():
        try:
            training = json.loads((bundle.root / meta_name).read_text()).get("training")
        except (OSError, ValueError, AttributeError) as error:
            raise QuantizeError(f"cannot read the checkpoint record {meta_name} of "
                                f"{bundle.root}: {error}") from error
    fold = training_fold(training)
    return 0 if fold is None else fold


def load_fp32_bundle(bundle_dir: str | Path) -> Bundle:
    """The bundle, with the fp32 graphs (the only files quantization reads) verified.

    Other files (earlier variants, a hand-edited ranges file) are rewritten or re-hashed
    by the quantization itself.
    """
    bundle = Bundle.load(bundle_dir, verify=False)
    bundle.verify_files([graph_file(graph, "fp32") for graph in GRAPHS])
    return bundle


def _fp32_sha256(bundle: Bundle) -> dict[str, str]:
    files = bundle.manifest.get("files", {})
    return {graph: files.get(graph_file(graph, "fp32"), "") for graph in GRAPHS}


def check_graph(model: Any, label: str) -> None:
    """ONNX checker (full) and the TensorRT lint; raise QuantizeError on any error."""
    import onnx

    from crnet.export.lint import format_table, lint_model

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # onnx raises several error types
        raise QuantizeError(f"{label} fails the ONNX checker: {error}") from error
    errors = [f for f in lint_model(model, label) if f.severity == "error"]
    if errors:
        raise QuantizeError(f"{label} fails the TensorRT lint:\n{format_table(errors)}")


def install_variant(bundle_dir: str | Path, precision: str, models: dict[str, Any],
                    how: dict[str, Any], extra_files: dict[str, bytes] | None = None,
                    existing_files: Sequence[str] = ()) -> dict[str, Any]:
    """Write both graphs of a variant (and ``extra_files``: name -> bytes) atomically and
    record them, with the (re)hashed ``existing_files``, in the manifest.

    The variant and the files are removed from the manifest first, so a crash in between
    leaves a bundle without that variant, never one whose manifest names half-written or
    unhashed files.
    """
    extra_files = extra_files or {}
    root = Path(bundle_dir)
    names = {graph: graph_file(graph, precision) for graph in GRAPHS}

    def drop(manifest: dict[str, Any]) -> None:
        manifest.get("variants", {}).pop(precision, None)
        for name in [*names.values(), *extra_files, *existing_files]:
            manifest.get("files", {}).pop(name, None)

    update_manifest(root, drop)
    for graph, model in models.items():
        write_bytes_atomic(root / names[graph], model.SerializeToString())
    for name, data in extra_files.items():
        write_bytes_atomic(root / name, data)

    def add(manifest: dict[str, Any]) -> None:
        manifest.setdefault("variants", {})[precision] = {**names, "how": how}

    return update_manifest(root, add,
                           added_files=[*names.values(), *extra_files, *existing_files])


# ---------------------------------------------------------------------------------- fp16

def convert_fp16(fp32_model: Any, keep_fp32_ops: Sequence[str]) -> Any:
    """fp32 ModelProto -> fp16 graph with fp32 inputs/outputs, ``keep_fp32_ops`` in fp32."""
    from onnxconverter_common import float16

    with _quiet():
        return float16.convert_float_to_float16(
            fp32_model, keep_io_types=True, op_block_list=list(keep_fp32_ops),
            disable_shape_infer=False)


def quantize_fp16(bundle_dir: str | Path, keep_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS,
                  check_episodes: int = 32, fold: int | None = None,
                  progress: bool = True, dataset: str = DEFAULT_DATASET,
                  data_root: Path | None = None) -> dict[str, Any]:
    """Add ``backbone.fp16.onnx``/``refine.fp16.onnx`` to a bundle; returns the manifest.

    ``check_episodes`` base-class (train split) episodes of ``dataset`` measure the fp16
    graphs against fp32 (recorded in ``how`` with the data; 0 skips the measurement).
    """
    import onnx

    from crnet.calibration import sensitivity

    started = time.perf_counter()
    bundle = load_fp32_bundle(bundle_dir)
    fold = default_fold(bundle) if fold is None else fold
    models = {}
    for graph in GRAPHS:
        model = convert_fp16(onnx.load(str(bundle.graph_path(graph, "fp32"))), keep_fp32_ops)
        check_graph(model, graph_file(graph, "fp16"))
        models[graph] = model
    how: dict[str, Any] = {
        "tool": "onnxconverter_common.float16.convert_float_to_float16",
        "versions": tool_versions(),
        "settings": {"keep_io_types": True, "op_block_list": list(keep_fp32_ops)},
        "kept_fp32_ops": list(keep_fp32_ops),
        "io_dtype": "float32",
    }
    if check_episodes > 0:
        check = sensitivity.SensitivitySet.build(bundle.root, fold, check_episodes,
                                                 progress=progress, dataset=dataset,
                                                 data_root=data_root)
        score = check.score({g: m.SerializeToString() for g, m in models.items()})
        how["check"] = {"data": describe_data(check.data), **check.data,
                        "episodes": check_episodes, **score.to_dict()}
    how["seconds"] = round(time.perf_counter() - started, 2)
    return install_variant(bundle.root, "fp16", models, how)


# ---------------------------------------------------------------------------------- int8

def preprocess_for_quantization(fp32_path: Path, out_path: Path) -> Path:
    """ORT's quant_pre_process (symbolic + ONNX shape inference, basic optimisation)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return out_path


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
             "minmax": CalibrationMethod.MinMax}
    if name not in table:
        raise QuantizeError(f"unknown calibration method {name!r}; choose from "
                            f"{CALIBRATION_METHODS}")
    return table[name]


def calibrate_graph(model_path: Path, feeds: Sequence[dict[str, np.ndarray]], method: str,
                    op_types: Sequence[str] = INT8_OP_TYPES, chunk: int = 8,
                    progress: bool = True, description: str = "calibrate"
                    ) -> dict[str, tuple[float, float]]:
    """Activation ranges {tensor: (min, max)} of one graph over ``feeds``."""
    from onnxruntime.quantization.calibrate import create_calibrator
    from tqdm import tqdm

    from crnet.calibration.reader import FeedReader

    options: dict[str, Any] = {"symmetric": True}
    if method == "percentile":
        options["percentile"] = PERCENTILE
    with scratch_directory("crnet-calibrate-") as scratch, _quiet():
        calibrator = create_calibrator(
            model_path, list(op_types),
            augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=_calibration_method(method), extra_options=options)
        starts = range(0, len(feeds), chunk)
        for start in tqdm(starts, desc=description, disable=not progress, leave=False):
            calibrator.collect_data(FeedReader(feeds[start:start + chunk]))
        tensors = calibrator.compute_data()
    return {name: (float(np.asarray(data.range_value[0]).min()),
                   float(np.asarray(data.range_value[1]).max()))
            for name, data in tensors.items()}


def ranges_json(ranges: dict[str, dict[str, tuple[float, float]]],
                provenance: dict[str, Any]) -> bytes:
    """The ranges file's content: provenance and {graph: {tensor: [min, max]}}."""
    payload = {
        "format": RANGES_FORMAT, "format_version": 1, **provenance,
        "graphs": {graph: {name: [lo, hi] for name, (lo, hi) in sorted(tensors.items())}
                   for graph, tensors in ranges.items()},
    }
    return (json.dumps(payload, indent=2) + "\n").encode()


def save_ranges(path: Path, ranges: dict[str, dict[str, tuple[float, float]]],
                provenance: dict[str, Any]) -> None:
    """Write a ranges file atomically (outside a quantize run: tests, hand edits)."""
    write_bytes_atomic(path, ranges_json(ranges, provenance))


def load_ranges(path: Path) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, Any]]:
    """Read a ranges file: ({graph: {tensor: (min, max)}}, provenance)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise QuantizeError(f"cannot read calibration ranges {path}: {error}") from error
    if payload.get("format") != RANGES_FORMAT:
        raise QuantizeError(f"{path} is not a {RANGES_FORMAT} file")
    ranges = {graph: {name: (float(lo), float(hi)) for name, (lo, hi) in tensors.items()}
              for graph, tensors in payload["graphs"].items()}
    provenance = {k: v for k, v in payload.items()
                  if k not in ("graphs", "format", "format_version")}
    return ranges, provenance


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
            "(quantize_static has no calibration_cache_path); install onnxruntime >= 1.32")
    tensors = TensorsData(CalibrationMethod.MinMax, {
        name: (np.array(lo, np.float32), np.array(hi, np.float32))
        for name, (lo, hi) in ranges.items()})
    with scratch_directory("crnet-quantize-") as scratch, _quiet():
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


def trt10_calibration_cache(ranges: dict[str, tuple[float, float]]) -> str:
    """A TensorRT-10 calibration cache of one graph (for the implicit INT8 path on
    JetPack): ``tensor: hex(big-endian float32 scale)``, scale = amax / 127."""
    import struct

    lines = ["TRT-100300-EntropyCalibration2"]
    for name, (lo, hi) in sorted(ranges.items()):
        scale = max(abs(lo), abs(hi), 1e-12) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def _saved_data(provenance: dict[str, Any]) -> dict[str, Any]:
    """Dataset and data root of saved ranges (files older than the dataset option were
    calibrated on synthetic-5i)."""
    return {"dataset": provenance.get("dataset", DEFAULT_DATASET),
            "data_root": provenance.get("data_root")}


def _wanted_root(data_root: Path | None) -> str | None:
    return None if data_root is None else str(Path(data_root).resolve())


def ranges_fit(bundle_dir: str | Path, *, dataset: str, fold: int,
               data_root: Path | None = None, episodes: int | None = None,
               method: str | None = None) -> bool:
    """Whether the bundle's saved int8 ranges (if any) came from this dataset, data root
    and fold (and ``episodes``/``method`` when given), so a run with these settings may
    reuse them."""
    path = Path(bundle_dir) / RANGES_FILE
    if not path.exists():
        return True
    _, provenance = load_ranges(path)
    saved = _saved_data(provenance)
    return (saved["dataset"] == dataset and provenance.get("fold") == fold
            and saved["data_root"] == _wanted_root(data_root)
            and episodes in (None, provenance.get("episodes"))
            and method in (None, provenance.get("method")))


def obtain_ranges(bundle: Bundle, preprocessed: dict[str, Path], *, method: str | None,
                  episodes: int | None, shots: int, seed: int, fold: int, recalibrate: bool,
                  op_types: Sequence[str], progress: bool, dataset: str = DEFAULT_DATASET,
                  data_root: Path | None = None
                  ) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, Any]]:
    """Reuse the bundle's saved ranges when they fit, else calibrate and save them."""
    path = bundle.root / RANGES_FILE
    if path.exists() and not recalibrate:
        ranges, provenance = load_ranges(path)
        saved = {**provenance, **_saved_data(provenance)}
        conflicts = [f"{key} {wanted!r} (saved: {saved.get(key)!r})"
                     for key, wanted in (("method", method), ("episodes", episodes),
                                         ("fold", fold), ("dataset", dataset),
                                         ("data_root", _wanted_root(data_root)))
                     if (wanted is not None or key == "data_root")
                     and saved.get(key) != wanted]
        stale = provenance.get("source_sha256") != _fp32_sha256(bundle)
        missing_ops = sorted(set(op_types) - set(provenance.get("op_types", [])))
        if conflicts:
            raise QuantizeError(
                f"{path} was calibrated with other settings: {', '.join(conflicts)}; pass "
                "--recalibrate to replace it, or drop the conflicting options to reuse it")
        if not stale and not missing_ops:
            return ranges, {**provenance, "reused": True}
    return calibrate_ranges(bundle, preprocessed, method=method or DEFAULT_CALIBRATION_METHOD,
                            episodes=episodes or DEFAULT_CALIBRATION_EPISODES, shots=shots,
                            seed=seed, fold=fold, op_types=op_types, progress=progress,
                            dataset=dataset, data_root=data_root)


def calibrate_ranges(bundle: Bundle, preprocessed: dict[str, Path], *, method: str,
                     episodes: int, shots: int, seed: int, fold: int,
                     op_types: Sequence[str], progress: bool,
                     dataset: str = DEFAULT_DATASET, data_root: Path | None = None
                     ) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, Any]]:
    """Calibrate both graphs on base-class train-split episodes of ``dataset`` (the caller
    saves the ranges)."""
    from crnet.calibration.reader import (
        base_episodes,
        calibration_source,
        collect_feeds,
        describe_source,
    )

    _calibration_method(method)
    started = time.perf_counter()
    source = calibration_source(fold, seed, dataset, data_root)
    data = describe_source(source, dataset, fold, data_root)
    feeds = collect_feeds(bundle.root, base_episodes(fold, episodes, shots, seed,
                                                     source=source),
                          total=episodes, progress=progress)
    ranges = {graph: calibrate_graph(preprocessed[graph], getattr(feeds, graph), method,
                                     op_types, progress=progress,
                                     description=f"calibrate {graph} ({method})")
              for graph in GRAPHS}
    provenance = {
        "method": method, "episodes": episodes, "shots": shots, "seed": seed, **data,
        "data": describe_data(data),
        "percentile": PERCENTILE if method == "percentile" else None,
        "op_types": list(op_types), "source_sha256": _fp32_sha256(bundle),
        "calibration_seconds": round(time.perf_counter() - started, 2),
    }
    return ranges, {**provenance, "reused": False}


def quantize_int8(
    bundle_dir: str | Path,
    *,
    calibration_method: str | None = None,
    calibration_episodes: int | None = None,
    calibration_shots: int = DEFAULT_CALIBRATION_SHOTS,
    calibration_seed: int = DEFAULT_CALIBRATION_SEED,
    fold: int | None = None,
    recalibrate: bool = False,
    op_types: Sequence[str] = INT8_OP_TYPES,
    sensitivity: bool = True,
    sensitivity_episodes: int = 64,
    target_delta: float = 0.5,
    exclude_layers: Sequence[str] = (),
    trt10_cache: bool = True,
    progress: bool = True,
    dataset: str = DEFAULT_DATASET,
    data_root: Path | None = None,
    sensitivity_rank: str = "auto",
    confirm_layers: int = DEFAULT_CONFIRM_LAYERS,
    max_fp32_layers: int | None = None,
) -> dict[str, Any]:
    """Add ``backbone.int8.onnx``/``refine.int8.onnx`` (explicit Q/DQ) to a bundle.

    Ranges come from ``calibration/ranges.int8.json`` when it fits the bundle (same fp32
    graphs, no conflicting settings) unless ``recalibrate``; otherwise from
    ``calibration_episodes`` base-class train-split episodes of ``dataset``. With
    ``sensitivity``, the layers whose quantization damages the output most are kept in fp32
    until |delta mIoU| against the fp32 graphs on ``sensitivity_episodes`` held-out
    base-class episodes is at most ``target_delta`` (or ``max_fp32_layers`` are kept;
    None: no cap for the full ranking, LOCAL_MAX_FP32_LAYERS for the local one).
    ``sensitivity_rank``: "full" ranks every layer end to end, "local" by its own output
    error with the top ``confirm_layers`` confirmed end to end, "auto" picks "full" up to
    FULL_RANK_MAX_LAYERS layers. ``exclude_layers`` (``graph:weight`` names) are always
    kept in fp32. Returns the manifest.
    """
    from crnet.calibration import sensitivity as sens

    started = time.perf_counter()
    bundle = load_fp32_bundle(bundle_dir)
    fold = default_fold(bundle) if fold is None else fold
    if calibration_episodes is not None and calibration_episodes < 1:
        raise QuantizeError(f"--calibration-episodes must be >= 1, got {calibration_episodes}")
    if calibration_method is not None:
        _calibration_method(calibration_method)
    if sensitivity_rank not in sens.RANK_METHODS:
        raise QuantizeError(f"--sensitivity-rank must be one of {sens.RANK_METHODS}, got "
                            f"{sensitivity_rank!r}")
    with scratch_directory("crnet-int8-") as scratch:
        preprocessed = {graph: preprocess_for_quantization(
            bundle.graph_path(graph, "fp32"), Path(scratch) / f"{graph}.pre.onnx")
            for graph in GRAPHS}
        ranges, calibration = obtain_ranges(
            bundle, preprocessed, method=calibration_method, episodes=calibration_episodes,
            shots=calibration_shots, seed=calibration_seed, fold=fold,
            recalibrate=recalibrate, op_types=op_types, progress=progress, dataset=dataset,
            data_root=data_root)
        layers = sens.quantizable_layers(preprocessed, op_types)
        unknown = sorted(set(exclude_layers) - set(layers))
        if unknown:
            raise QuantizeError(f"unknown layers {unknown}; layers are {sorted(layers)}")

        def build(excluded: Sequence[str]) -> dict[str, Any]:
            return {graph: quantize_graph(
                        preprocessed[graph], ranges[graph], op_types=op_types,
                        nodes_to_exclude=[node for name in excluded
                                          if layers[name].graph == graph
                                          for node in layers[name].nodes])
                    for graph in GRAPHS}

        report: dict[str, Any] = {"enabled": sensitivity}
        excluded = list(exclude_layers)
        if sensitivity:
            report.update(run_sensitivity(
                bundle.root, fold, preprocessed, ranges, layers, build, op_types=op_types,
                episodes=sensitivity_episodes, target_delta=target_delta,
                exclude_layers=exclude_layers, rank=sensitivity_rank,
                confirm_layers=confirm_layers, max_fp32_layers=max_fp32_layers,
                dataset=dataset, data_root=data_root, progress=progress))
            excluded = list(report["kept_fp32_layers"])
            models = report.pop("models")
        else:
            models = build(excluded)
    for graph, model in models.items():
        check_graph(model, graph_file(graph, "int8"))
    extra_files: dict[str, bytes] = {}
    if not calibration["reused"]:
        provenance = {k: v for k, v in calibration.items() if k != "reused"}
        extra_files[RANGES_FILE] = ranges_json(ranges, provenance)
    cache_files = {graph: trt_calibration_cache(graph) for graph in GRAPHS}
    if trt10_cache:
        extra_files.update({cache_files[graph]: trt10_calibration_cache(ranges[graph]).encode()
                            for graph in GRAPHS})
    how: dict[str, Any] = {
        "tool": "onnxruntime.quantization.quantize_static",
        "versions": tool_versions(),
        "settings": {"quant_format": "QDQ", "activation_type": "QInt8",
                     "weight_type": "QInt8", "per_channel": True, "reduce_range": False,
                     "op_types_to_quantize": list(op_types),
                     "extra_options": TRT_EXTRA_OPTIONS, "pre_process": "quant_pre_process"},
        "calibration": {**calibration, "ranges_file": RANGES_FILE},
        "kept_fp32_layers": excluded,
        "kept_fp32_nodes": [n for layer in excluded for n in layers[layer].nodes],
        "kept_fp32_ops": sorted({node.op_type for model in models.values()
                                 for node in model.graph.node} - set(op_types)
                                - {"QuantizeLinear", "DequantizeLinear"}),
        "sensitivity": report,
        "trt10_calibration_cache": cache_files if trt10_cache else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return install_variant(bundle.root, "int8", models, how, extra_files,
                           existing_files=[RANGES_FILE] if calibration["reused"] else [])


def run_sensitivity(bundle_dir: Path, fold: int, preprocessed: dict[str, Path],
                    ranges: dict[str, dict[str, tuple[float, float]]],
                    layers: dict[str, Any], build: Any, *, op_types: Sequence[str],
                    episodes: int, target_delta: float, exclude_layers: Sequence[str],
                    rank: str, confirm_layers: int, max_fp32_layers: int | None,
                    dataset: str, data_root: Path | None, progress: bool) -> dict[str, Any]:
    """Rank the layers, then keep the most harmful in fp32 until the target is met; the
    manifest's ``sensitivity`` record (method, ranking, confirmation, steps, timings), with
    ``kept_fp32_layers`` and the final int8 graphs (``models``) for the caller to take."""
    from crnet.calibration import sensitivity as sens

    started = time.perf_counter()
    check = sens.SensitivitySet.build(bundle_dir, fold, episodes, progress=progress,
                                      dataset=dataset, data_root=data_root)

    def quantize_alone(layer: sens.Layer) -> Any:
        return quantize_graph(preprocessed[layer.graph], ranges[layer.graph],
                              nodes_to_quantize=layer.nodes, op_types=op_types)

    method = rank
    if method == "auto":
        method = "full" if len(layers) <= sens.FULL_RANK_MAX_LAYERS else "local"
    record: dict[str, Any] = {
        "data": describe_data(check.data) + f", seed {sens.SENSITIVITY_SEED}, held out "
                "from calibration",
        **check.data,
        "episodes": episodes,
        "layers": len(layers),
        "rank_method": method,
        "target_abs_delta_miou": target_delta,
    }
    rank_started = time.perf_counter()
    if method == "full":
        ranking = sens.rank_layers(check, layers, quantize_alone, progress=progress)
        record["damage"] = ("mean |query foreground probability - fp32's| on the first "
                            f"{sens.RANK_EPISODES} episodes with only that layer quantized")
    else:
        ranking = sens.rank_layers_local(preprocessed, ranges, layers, check.feeds,
                                         progress=progress)
        record["damage"] = (
            "local: normalised MSE of the layer's own output (its input activation "
            "fake-quantized with the calibrated range, its weight per channel, symmetric "
            f"int8) against fp32, on the first {sens.LOCAL_RANK_EPISODES} episodes; the top "
            f"{confirm_layers} then measured end to end (mean |query foreground probability "
            f"- fp32's| on {sens.CONFIRM_EPISODES} episodes, that layer alone quantized) and "
            "tried first in that order")
        record["local_seconds"] = round(time.perf_counter() - rank_started, 2)
        if confirm_layers > 0:
            ranking, record["confirmed"] = sens.confirm_top(
                check, layers, quantize_alone, ranking, confirm_layers, progress=progress)
    record["rank_seconds"] = round(time.perf_counter() - rank_started, 2)
    fallback_started = time.perf_counter()
    if max_fp32_layers is None and method == "local":
        max_fp32_layers = LOCAL_MAX_FP32_LAYERS
    models: dict[str, Any] = {}
    excluded, steps = sens.choose_exclusions(check, build, ranking, target_delta,
                                             always=exclude_layers, progress=progress,
                                             max_exclusions=max_fp32_layers,
                                             last_models=models)
    met = abs(steps[-1]["delta_miou"]) <= target_delta
    record.update({
        "ranking": [{"layer": name, "damage": damage} for name, damage in ranking],
        "max_fp32_layers": max_fp32_layers,
        "steps": steps,
        "target_met": met,
        "kept_fp32_layers": excluded,
        "fallback_seconds": round(time.perf_counter() - fallback_started, 2),
        "episodes_seconds": round(rank_started - started, 2),  # SensitivitySet.build
        "seconds": round(time.perf_counter() - started, 2),
        "models": models,
    })
    return record


def quantize_bundle(bundle_dir: str | Path, precision: str, **options: Any) -> dict[str, Any]:
    """Add one precision variant (fp16 or int8) to a bundle; returns the manifest."""
    if precision == "fp16":
        return quantize_fp16(bundle_dir, **options)
    if precision == "int8":
        return quantize_int8(bundle_dir, **options)
    raise QuantizeError(f"precision must be fp16 or int8, got {precision!r}")


def main(argv: list[str] | None = None) -> int:
    """CLI over quantize_bundle; exits non-zero with a clear message on failure."""
    parser = argparse.ArgumentParser(
        prog="crnet quantize",
        description="Add an FP16 or INT8 (explicit Q/DQ, TensorRT rules) variant of both "
                    "graphs to a bundle, calibrated on base-class episodes.")
    parser.add_argument("bundle", type=Path, metavar="BUNDLE")
    parser.add_argument("--precision", required=True, choices=["fp16", "int8"])
    parser.add_argument("--keep-fp32-ops", default=",".join(FP16_KEEP_FP32_OPS),
                        help="fp16: comma list of op types kept in fp32 "
                             f"(default {','.join(FP16_KEEP_FP32_OPS)})")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=None,
                        help=f"int8 (default: the saved ranges' method, else "
                             f"{DEFAULT_CALIBRATION_METHOD})")
    parser.add_argument("--calibration-episodes", type=int, default=None,
                        help=f"int8 (default: {DEFAULT_CALIBRATION_EPISODES})")
    parser.add_argument("--calibration-shots", type=int, default=DEFAULT_CALIBRATION_SHOTS)
    parser.add_argument("--fold", type=int, default=None, choices=range(4),
                        help="whose base classes calibrate (default: the checkpoint's fold)")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, choices=DATASETS,
                        help="episodes that calibrate and check the variant: its train split, "
                             f"base classes of --fold (default {DEFAULT_DATASET})")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="dataset directory (pascal-5i: the VOC2012 root; folder)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="int8: calibrate again even if the bundle has saved ranges")
    parser.add_argument("--no-sensitivity", action="store_true",
                        help="int8: quantize every layer, skip the sensitivity analysis")
    parser.add_argument("--sensitivity-episodes", type=int, default=64)
    parser.add_argument("--target-delta", type=float, default=0.5,
                        help="int8: |delta mIoU| to reach on held-out base-class episodes")
    parser.add_argument("--exclude-layer", action="append", default=[], metavar="GRAPH:WEIGHT",
                        help="int8: keep this layer in fp32 (repeatable)")
    parser.add_argument("--sensitivity-rank", default="auto", choices=RANK_METHODS,
                        help="int8: rank layers end to end (full), by each layer's own output "
                             "error with the top few confirmed end to end (local), or full up "
                             "to 40 layers, else local (auto, the default)")
    parser.add_argument("--sensitivity-confirm", type=int, default=DEFAULT_CONFIRM_LAYERS,
                        metavar="N", help="int8, local ranking: top layers re-measured end to "
                                          f"end (default {DEFAULT_CONFIRM_LAYERS})")
    parser.add_argument("--max-fp32-layers", type=int, default=None, metavar="N",
                        help="int8: keep at most N layers in fp32 (default: no cap with the "
                             f"full ranking, {LOCAL_MAX_FP32_LAYERS} with the local one)")
    parser.add_argument("--check-episodes", type=int, default=32,
                        help="fp16: base-class episodes to measure the variant on (0: skip)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    progress = not args.no_progress
    try:
        if args.precision == "fp16":
            keep = [op.strip() for op in args.keep_fp32_ops.split(",") if op.strip()]
            manifest = quantize_fp16(args.bundle, keep, check_episodes=args.check_episodes,
                                     fold=args.fold, progress=progress, dataset=args.dataset,
                                     data_root=args.data_root)
        else:
            manifest = quantize_int8(
                args.bundle, calibration_method=args.calibration_method,
                calibration_episodes=args.calibration_episodes,
                calibration_shots=args.calibration_shots, fold=args.fold,
                recalibrate=args.recalibrate, sensitivity=not args.no_sensitivity,
                sensitivity_episodes=args.sensitivity_episodes,
                target_delta=args.target_delta, exclude_layers=args.exclude_layer,
                progress=progress, dataset=args.dataset, data_root=args.data_root,
                sensitivity_rank=args.sensitivity_rank,
                confirm_layers=args.sensitivity_confirm,
                max_fp32_layers=args.max_fp32_layers)
    except BundleError:
        raise
    except ValueError as error:  # onnx / onnxruntime reject a graph with a ValueError
        raise QuantizeError(str(error)) from error
    how = manifest["variants"][args.precision]["how"]
    print(summary(args.bundle, args.precision, how))
    return 0


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values that would be accepted silently: unknown op types, negative counts,
    a dataset without its directory."""
    import onnx

    from crnet.data.evaluation import missing_data_root

    unknown = [op.strip() for op in args.keep_fp32_ops.split(",")
               if op.strip() and not onnx.defs.has(op.strip())]
    if unknown:
        parser.error(f"--keep-fp32-ops: {unknown} are not ONNX operator types (e.g. "
                     f"{','.join(FP16_KEEP_FP32_OPS)})")
    for flag, value, low in (("--check-episodes", args.check_episodes, 0),
                             ("--calibration-episodes", args.calibration_episodes, 1),
                             ("--calibration-shots", args.calibration_shots, 1),
                             ("--sensitivity-episodes", args.sensitivity_episodes, 1)):
        if value is not None and value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    if args.target_delta < 0:
        parser.error(f"--target-delta must be >= 0, got {args.target_delta}")
    if args.sensitivity_confirm < 0 or (args.max_fp32_layers is not None
                                        and args.max_fp32_layers < 0):
        parser.error("--sensitivity-confirm and --max-fp32-layers must be >= 0")
    if (problem := missing_data_root(args.dataset, args.data_root)) is not None:
        parser.error(problem)


def summary(bundle_dir: Path, precision: str, how: dict[str, Any]) -> str:
    """Human-readable lines about a freshly written variant."""
    lines = [f"wrote {graph_file('backbone', precision)}, {graph_file('refine', precision)} "
             f"into {bundle_dir} in {how.get('seconds', 0):.1f} s"]
    if precision == "fp16":
        lines.append(f"kept in fp32: {', '.join(how['kept_fp32_ops'])}")
        if "check" in how:
            check = how["check"]
            lines.append(f"on {check['episodes']} base-class episodes: delta mIoU "
                         f"{check['delta_miou']:+.3f}, mean |prob diff| "
                         f"{check['probability_mae']:.2e}")
    else:
        calibration = how["calibration"]
        verb = "reused" if calibration["reused"] else "calibrated"
        lines.append(f"ranges {verb}: {calibration['method']} on {calibration['episodes']} "
                     f"episodes of {calibration.get('data', 'synthetic-5i')} -> "
                     f"{calibration['ranges_file']}")
        if how["sensitivity"].get("rank_method"):
            lines.append(f"sensitivity: {how['sensitivity']['rank_method']} ranking of "
                         f"{how['sensitivity']['layers']} layers in "
                         f"{how['sensitivity']['seconds']:.1f} s")
        lines.append(f"kept in fp32: {', '.join(how['kept_fp32_layers']) or 'no layer'}")
        for step in how["sensitivity"].get("steps", []):
            lines.append(f"  excluded {len(step['excluded'])}: delta mIoU "
                         f"{step['delta_miou']:+.3f}, mean |prob diff| "
                         f"{step['probability_mae']:.2e}")
    return "\n".join(lines)


if __name__ == "__main__":
    from crnet.cli.exit_codes import run_command

    sys.exit(run_command("crnet quantize", main))
