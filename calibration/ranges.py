"""INT8 activation ranges: calibrating them, saving them in the bundle, reusing them.

Ranges come from ONNX Runtime's calibrators on base-class train-split episodes
(calibration.reader) and are saved in the bundle (``calibration/ranges.int8.json``) with
which dataset, split, fold and classes produced them; a later run reuses them when they
fit its settings and the current fp32 graphs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from crnet.calibration.options import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_EPISODES,
    DEFAULT_CALIBRATION_METHOD,
    INT8_OP_TYPES,
    Int8Options,
)
from crnet.calibration.reader import DEFAULT_DATASET, describe_data
from crnet.calibration.variants import QuantizeError, fp32_sha256, quiet
from crnet.runtime.bundle import GRAPHS, Bundle
from crnet.runtime.files import scratch_directory, write_bytes_atomic
from crnet.runtime.layout import RANGES_FILE
from crnet.runtime.progress import track

PERCENTILE = 99.999
RANGES_FORMAT = "crnet-deploy/int8-ranges"
Ranges = dict[str, dict[str, tuple[float, float]]]


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

    from crnet.calibration.reader import FeedReader

    options: dict[str, Any] = {"symmetric": True}
    if method == "percentile":
        options["percentile"] = PERCENTILE
    with scratch_directory("crnet-calibrate-") as scratch, quiet():
        calibrator = create_calibrator(
            model_path, list(op_types),
            augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=_calibration_method(method), extra_options=options)
        starts = range(0, len(feeds), chunk)
        for start in track(starts, progress, description):
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
    """Dataset and data root of saved ranges (a file without them was calibrated on
    synthetic-5i)."""
    return {"dataset": provenance.get("dataset", DEFAULT_DATASET),
            "data_root": provenance.get("data_root")}


def ranges_fit(bundle_dir: str | Path, options: Int8Options) -> bool:
    """Whether the bundle's saved int8 ranges (if any) came from ``options.data``'s
    dataset, data root and fold (and its calibration episodes and method when given), so
    a run with these options may reuse them."""
    path = Path(bundle_dir) / RANGES_FILE
    if not path.exists():
        return True
    _, provenance = load_ranges(path)
    saved = _saved_data(provenance)
    return (saved["dataset"] == options.data.dataset
            and provenance.get("fold") == options.data.fold
            and saved["data_root"] == options.data.resolved_root
            and options.calibration_episodes in (None, provenance.get("episodes"))
            and options.calibration_method in (None, provenance.get("method")))


def _conflicts(provenance: dict[str, Any], options: Int8Options, fold: int) -> list[str]:
    """The settings of ``options`` that differ from those that made saved ranges."""
    saved = {**provenance, **_saved_data(provenance)}
    wanted = (("method", options.calibration_method),
              ("episodes", options.calibration_episodes), ("fold", fold),
              ("dataset", options.data.dataset), ("data_root", options.data.resolved_root))
    return [f"{key} {value!r} (saved: {saved.get(key)!r})" for key, value in wanted
            if (value is not None or key == "data_root") and saved.get(key) != value]


def obtain_ranges(bundle: Bundle, preprocessed: dict[str, Path], options: Int8Options,
                  fold: int) -> tuple[Ranges, dict[str, Any]]:
    """Reuse the bundle's saved ranges when they fit, else calibrate (the caller saves)."""
    path = bundle.root / RANGES_FILE
    if path.exists() and not options.recalibrate:
        ranges, provenance = load_ranges(path)
        conflicts = _conflicts(provenance, options, fold)
        if conflicts:
            raise QuantizeError(
                f"{path} was calibrated with other settings: {', '.join(conflicts)}; pass "
                "--recalibrate to replace it, or drop the conflicting options to reuse it")
        stale = provenance.get("source_sha256") != fp32_sha256(bundle)
        missing_ops = sorted(set(options.op_types) - set(provenance.get("op_types", [])))
        if not stale and not missing_ops:
            return ranges, {**provenance, "reused": True}
    chosen = replace(options,
                     calibration_method=options.calibration_method or DEFAULT_CALIBRATION_METHOD,
                     calibration_episodes=(options.calibration_episodes
                                           or DEFAULT_CALIBRATION_EPISODES))
    return calibrate_ranges(bundle, preprocessed, chosen, fold)


def calibrate_ranges(bundle: Bundle, preprocessed: dict[str, Path], options: Int8Options,
                     fold: int) -> tuple[Ranges, dict[str, Any]]:
    """Calibrate both graphs on base-class train-split episodes of ``options.data`` (its
    seed draws them); the caller saves the ranges."""
    from crnet.calibration.reader import (
        base_episodes,
        calibration_source,
        collect_feeds,
        describe_source,
    )

    method = options.calibration_method or DEFAULT_CALIBRATION_METHOD
    episodes = options.calibration_episodes or DEFAULT_CALIBRATION_EPISODES
    shots, seed, data = options.calibration_shots, options.data.seed, options.data
    _calibration_method(method)
    started = time.perf_counter()
    source = calibration_source(fold, seed, data.dataset, data.data_root)
    described = describe_source(source, data.dataset, fold, data.data_root)
    feeds = collect_feeds(bundle.root, base_episodes(fold, episodes, shots, seed,
                                                     source=source),
                          total=episodes, progress=options.progress)
    ranges = {graph: calibrate_graph(preprocessed[graph], getattr(feeds, graph), method,
                                     options.op_types, progress=options.progress,
                                     description=f"calibrate {graph} ({method})")
              for graph in GRAPHS}
    provenance = {
        "method": method, "episodes": episodes, "shots": shots, "seed": seed, **described,
        "data": describe_data(described),
        "percentile": PERCENTILE if method == "percentile" else None,
        "op_types": list(options.op_types), "source_sha256": fp32_sha256(bundle),
        "calibration_seconds": round(time.perf_counter() - started, 2),
    }
    return ranges, {**provenance, "reused": False}
