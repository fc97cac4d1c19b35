"""fp16 and int8 variants of a tiny bundle: graph rules, lint, manifest, range reuse, gates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from crnet.calibration import ranges as ranges_module
from crnet.calibration.int8 import quantize_int8
from crnet.calibration.options import (
    FP16_KEEP_FP32_OPS,
    Fp16Options,
    Int8Options,
    SensitivityOptions,
)
from crnet.calibration.precision import quantize_bundle
from crnet.calibration.ranges import load_ranges, save_ranges
from crnet.calibration.sensitivity import SensitivitySet
from crnet.calibration.variants import QuantizeError
from crnet.cli import main as crnet_main
from crnet.data.evaluation import evaluate, gate_record, segmenter_predictor
from crnet.data.options import EpisodeSource
from crnet.evaluate import load_gates
from crnet.export.lint import lint_bundle
from crnet.runtime.bundle import Bundle
from crnet.runtime.layout import RANGES_FILE, trt_calibration_cache
from tests.calibration.conftest import CALIBRATION_EPISODES, copy_bundle

GRAPHS = ("backbone", "refine")


def without_sensitivity(**options: object) -> Int8Options:
    """int8 options that quantize every layer, without progress bars."""
    return Int8Options(sensitivity=SensitivityOptions(enabled=False), progress=False,
                       **options)


def load(bundle: Path, graph: str, precision: str) -> onnx.ModelProto:
    return onnx.load(str(Bundle.load(bundle).graph_path(graph, precision)))


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every initializer and every typed value (after shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        types[value.name] = value.type.tensor_type.elem_type
    return types


@pytest.mark.parametrize("graph", GRAPHS)
def test_int8_qdq_pairs_are_symmetric_int8(quantized_bundle: Path, graph: str) -> None:
    model = load(quantized_bundle, graph, "int8")
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    types = elem_types(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) >= 4
    for node in qdq:
        assert len(node.input) == 3 and node.input[2] in initializers, node.name
        zero_point = initializers[node.input[2]]
        assert zero_point.dtype == np.int8, node.name
        assert not zero_point.any(), node.name
        if node.op_type == "DequantizeLinear":
            assert types.get(node.input[0]) == TensorProto.INT8, node.name
            assert types.get(node.input[0]) != TensorProto.INT32  # no int32 bias DQ


def test_int8_conv_weights_are_per_channel_and_biases_float(quantized_bundle: Path) -> None:
    model = load(quantized_bundle, "backbone", "int8")
    produced_by = {out: node for node in model.graph.node for out in node.output}
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        weight_dq = produced_by[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        scale = initializers[weight_dq.input[1]]
        assert scale.ndim == 1 and scale.size > 1  # per output channel (axis 0)
        axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
        assert axis == 0
        if len(conv.input) > 2 and conv.input[2]:
            assert conv.input[2] in initializers  # the float bias itself, not a DQ output


def test_fp16_keeps_fp32_io_and_has_fp16_initializers(quantized_bundle: Path) -> None:
    for graph in GRAPHS:
        model = load(quantized_bundle, graph, "fp16")
        fp32 = load(quantized_bundle, graph, "fp32")
        for value in [*model.graph.input, *model.graph.output]:
            assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
        assert [v.name for v in model.graph.input] == [v.name for v in fp32.graph.input]
        assert [v.name for v in model.graph.output] == [v.name for v in fp32.graph.output]
        kinds = {t.data_type for t in model.graph.initializer if t.dims}
        assert TensorProto.FLOAT16 in kinds
        conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
        weights = [t for t in model.graph.initializer if t.name in conv_weights]
        assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
        onnx.checker.check_model(model, full_check=True)


def test_kept_fp32_ops_compute_in_fp32(quantized_bundle: Path) -> None:
    model = load(quantized_bundle, "refine", "fp16")
    types = elem_types(model)
    kept = [n for n in model.graph.node if n.op_type in FP16_KEEP_FP32_OPS]
    assert kept
    for node in kept:
        assert types[node.output[0]] == TensorProto.FLOAT, node.name


def test_variants_pass_the_lint_and_the_manifest_lists_them(quantized_bundle: Path) -> None:
    report = lint_bundle(quantized_bundle)
    assert not report.errors, report.errors
    assert len(report.graphs) == 6
    bundle = Bundle.load(quantized_bundle)  # verifies every sha256
    assert bundle.precisions == ["fp32", "fp16", "int8"]
    files = bundle.manifest["files"]
    for name in ("backbone.fp16.onnx", "refine.fp16.onnx", "backbone.int8.onnx",
                 "refine.int8.onnx", RANGES_FILE, trt_calibration_cache("backbone"),
                 trt_calibration_cache("refine")):
        assert name in files
    int8 = bundle.manifest["variants"]["int8"]
    assert int8["backbone"] == "backbone.int8.onnx"
    how = int8["how"]
    assert how["calibration"]["method"] == "minmax"
    assert how["calibration"]["episodes"] == CALIBRATION_EPISODES
    assert "train split" in how["calibration"]["data"]
    assert how["settings"]["extra_options"]["ActivationSymmetric"] is True
    assert how["sensitivity"]["ranking"] and how["sensitivity"]["steps"]
    assert "onnxruntime" in how["versions"]
    fp16 = bundle.manifest["variants"]["fp16"]["how"]
    assert fp16["kept_fp32_ops"] == list(FP16_KEEP_FP32_OPS)
    assert fp16["versions"]["onnxconverter-common"] != "not installed"


@pytest.mark.parametrize("graph", GRAPHS)
def test_trt10_cache_has_header_and_hex_scales(quantized_bundle: Path, graph: str) -> None:
    path = quantized_bundle / trt_calibration_cache(graph)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("TRT-10") and lines[0].endswith("EntropyCalibration2")
    ranges, _ = load_ranges(quantized_bundle / RANGES_FILE)
    assert len(lines) == len(ranges[graph]) + 1
    for line in lines[1:]:
        name, hex_scale = line.split(": ")
        lo, hi = ranges[graph][name]
        scale = np.frombuffer(bytes.fromhex(hex_scale), ">f4")[0]
        assert scale == pytest.approx(max(abs(lo), abs(hi)) / 127, rel=1e-6)


def test_saved_ranges_are_reused(quantized_bundle: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = copy_bundle(quantized_bundle, tmp_path / "bundle")
    saved = (bundle / RANGES_FILE).read_bytes()

    def no_calibration(*args: object, **kwargs: object) -> None:
        raise AssertionError("ranges were recalibrated although the bundle has them")

    monkeypatch.setattr(ranges_module, "calibrate_ranges", no_calibration)
    manifest = quantize_int8(bundle, without_sensitivity())
    assert manifest["variants"]["int8"]["how"]["calibration"]["reused"] is True
    assert (bundle / RANGES_FILE).read_bytes() == saved
    Bundle.load(bundle)
    with pytest.raises(QuantizeError, match="--recalibrate"):
        quantize_int8(bundle, without_sensitivity(calibration_method="entropy"))


def test_recalibrate_replaces_the_ranges(quantized_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(quantized_bundle, tmp_path / "bundle")
    manifest = quantize_int8(bundle, without_sensitivity(
        calibration_method="percentile", calibration_episodes=2, recalibrate=True))
    calibration = manifest["variants"]["int8"]["how"]["calibration"]
    assert calibration["reused"] is False and calibration["method"] == "percentile"
    assert json.loads((bundle / RANGES_FILE).read_text())["episodes"] == 2
    Bundle.load(bundle)


def plant_bad_ranges(bundle: Path, graph: str) -> None:
    """Absurdly small ranges (+-1e-6) for every activation of one graph."""
    ranges, provenance = load_ranges(bundle / RANGES_FILE)
    ranges[graph] = {name: (-1e-6, 1e-6) for name in ranges[graph]}
    save_ranges(bundle / RANGES_FILE, ranges, provenance)


def test_gate_fails_with_planted_bad_ranges(quantized_bundle: Path, tmp_path: Path) -> None:
    from crnet.data.synthetic import Synthetic5i
    from crnet.runtime import Segmenter

    bundle = copy_bundle(quantized_bundle, tmp_path / "bundle")
    gate = load_gates()["int8"]
    source = Synthetic5i(0, split="test", seed=0)
    episodes = 12

    def run(precision: str):
        segmenter = Segmenter(bundle, backend="onnxruntime", precision=precision)
        return evaluate(segmenter_predictor(segmenter), source.episodes(episodes),
                        total=episodes, progress=False)

    reference = run("fp32")
    assert 2.0 < reference.miou < 95.0  # the balanced tiny model's masks are not trivial
    good = gate_record(run("int8"), reference, gate)
    plant_bad_ranges(bundle, "refine")
    quantize_int8(bundle, without_sensitivity())
    bad = gate_record(run("int8"), reference, gate)
    assert abs(bad["delta_miou"]) > gate and bad["passed"] is False
    assert abs(bad["delta_miou"]) > abs(good["delta_miou"])
    check = SensitivitySet.build(bundle, EpisodeSource(fold=0), 6, progress=False)
    planted = {graph: Bundle.load(bundle).graph_path(graph, "int8") for graph in GRAPHS}
    assert abs(check.score(planted).delta_miou) > gate


def test_sensitivity_keeps_a_broken_layer_in_fp32(quantized_bundle: Path,
                                                  tmp_path: Path) -> None:
    bundle = copy_bundle(quantized_bundle, tmp_path / "bundle")
    ranges, provenance = load_ranges(bundle / RANGES_FILE)
    model = onnx.load(str(bundle / "refine.fp32.onnx"))
    classifiers = [n for n in model.graph.node if n.op_type == "Conv"
                   and n.input[1] == "model.refinement.classifier.weight"]
    # One per unrolled refinement step (2 in the tiny config) and branch (query, support).
    assert len(classifiers) == 4
    for classifier in classifiers:
        ranges["refine"][classifier.input[0]] = (-1e-6, 1e-6)
    save_ranges(bundle / RANGES_FILE, ranges, provenance)
    manifest = quantize_int8(bundle, Int8Options(
        sensitivity=SensitivityOptions(episodes=6, target_delta=0.5), progress=False))
    how = manifest["variants"]["int8"]["how"]
    worst = "refine:model.refinement.classifier.weight"
    assert how["sensitivity"]["ranking"][0]["layer"] == worst
    assert worst in how["kept_fp32_layers"]
    assert abs(how["sensitivity"]["steps"][-1]["delta_miou"]) <= 0.5


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_variants_run_as_one_cut_query_session(quantized_bundle: Path, precision: str) -> None:
    from crnet.runtime.backends import backend_class
    from crnet.runtime.bundle import Bundle

    bundle = Bundle.load(quantized_bundle)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, *bundle.manifest["input_size"]), dtype=np.float32)
    mask = np.zeros((1, 1, *bundle.manifest["feature_size"]), np.float32)
    mask[..., 2:6, 2:6] = 1.0
    with backend_class("onnxruntime")(bundle, precision, threads=1) as backend:
        info = backend.describe()["query_refine"]
        assert info["pruned"] and info["chained"] == "yes", info
        feat = backend.run_backbone(image)
        expected, _ = backend.run_refine(feat[:1], feat[1:], mask)
        np.testing.assert_allclose(backend.run_query(image[:1], feat[1:], mask), expected,
                                   rtol=1e-4, atol=1e-4)


def test_unknown_precision_and_layer_are_errors(quantized_bundle: Path) -> None:
    with pytest.raises(QuantizeError, match="fp16 or int8"):
        quantize_bundle(quantized_bundle, "int4")
    with pytest.raises(QuantizeError, match="takes Int8Options"):
        quantize_bundle(quantized_bundle, "int8", Fp16Options())
    with pytest.raises(QuantizeError, match="unknown layers"):
        quantize_int8(quantized_bundle, without_sensitivity(exclude_layers=("refine:nope",)))


def test_main_reports_errors_without_raising(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert crnet_main(["quantize", str(tmp_path / "missing"), "--precision", "fp16"]) == 1
    error = capsys.readouterr().err
    assert "crnet quantize: error: bundle directory not found" in error
    assert "Traceback" not in error
