"""The local (per-layer output error) sensitivity ranking and its end-to-end confirmation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from crnet.calibration.int8 import quantize_int8
from crnet.calibration.options import Int8Options, SensitivityOptions
from crnet.calibration.ranges import load_ranges, save_ranges
from crnet.calibration.sensitivity import _fake_quantize, _weight_amax
from crnet.runtime.layout import RANGES_FILE
from tests.calibration.conftest import copy_bundle

WORST = "refine:model.refinement.classifier.weight"


def plant_broken_classifier(bundle: Path) -> None:
    """Ranges of +-1e-6 on the input of every classifier node: quantizing it is ruinous."""
    ranges, provenance = load_ranges(bundle / RANGES_FILE)
    model = onnx.load(str(bundle / "refine.fp32.onnx"))
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] == WORST.split(":", 1)[1]:
            ranges["refine"][node.input[0]] = (-1e-6, 1e-6)
    save_ranges(bundle / RANGES_FILE, ranges, provenance)


def test_local_ranking_finds_and_keeps_a_broken_layer(quantized_bundle: Path,
                                                      tmp_path: Path) -> None:
    bundle = copy_bundle(quantized_bundle, tmp_path / "bundle")
    plant_broken_classifier(bundle)
    manifest = quantize_int8(bundle, Int8Options(sensitivity=SensitivityOptions(
        episodes=6, target_delta=0.5, rank="local", confirm_layers=2), progress=False))
    sensitivity = manifest["variants"]["int8"]["how"]["sensitivity"]
    assert sensitivity["rank_method"] == "local" and "normalised MSE" in sensitivity["damage"]
    ranking = sensitivity["ranking"]
    assert ranking[0]["layer"] == WORST
    assert ranking[0]["damage"] > 0.5 > ranking[-1]["damage"] >= 0  # nMSE of a ruined layer
    assert len(sensitivity["confirmed"]) == 2 and sensitivity["confirmed"][0]["layer"] == WORST
    assert sensitivity["layers"] == len(ranking)
    assert WORST in sensitivity["kept_fp32_layers"] and sensitivity["target_met"]
    assert abs(sensitivity["steps"][-1]["delta_miou"]) <= 0.5


def test_fp32_layer_cap_stops_the_fallback(quantized_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(quantized_bundle, tmp_path / "bundle")
    plant_broken_classifier(bundle)
    manifest = quantize_int8(bundle, Int8Options(sensitivity=SensitivityOptions(
        episodes=6, target_delta=0.5, rank="local", confirm_layers=0, max_fp32_layers=0),
        progress=False))
    sensitivity = manifest["variants"]["int8"]["how"]["sensitivity"]
    assert len(sensitivity["steps"]) == 1 and sensitivity["kept_fp32_layers"] == []
    assert sensitivity["target_met"] is False and "confirmed" not in sensitivity


def test_fake_quantize_is_symmetric_int8_per_channel() -> None:
    weight = np.array([[[[1.0, -0.5]]], [[[0.01, 0.02]]]], np.float32)  # 2 output channels
    amax = _weight_amax(weight, "Conv")
    assert amax.shape == (2, 1, 1, 1)
    np.testing.assert_allclose(amax.ravel(), [1.0, 0.02])
    quantized = _fake_quantize(weight, amax)
    assert np.all(np.abs(quantized - weight) <= 0.5 * amax / 127 + 1e-9)  # per-channel step
    assert len(np.unique(quantized[1])) == 2 and quantized[1].max() == np.float32(0.02)
    np.testing.assert_allclose(_fake_quantize(np.array([3.0], np.float32),
                                              np.array(1.0, np.float32)), [1.0])
