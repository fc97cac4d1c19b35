"""TensorRT lint: planted problems in tiny hand-built graphs, and a clean exported bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from crnet.cli import main as crnet_main
from crnet.export.lint import ERROR, Finding, format_table, lint_bundle, lint_model


def make_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
               outputs: list[onnx.ValueInfoProto],
               initializers: list[onnx.TensorProto] | None = None,
               opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "planted", inputs, outputs, initializer=initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == ERROR]


def image(name: str, shape: list[int | str] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape or [1, 4, 8, 8])


def conv_with_quantized_weight(weight_axis: int, zero_point: np.ndarray,
                               bias: onnx.TensorProto | None = None) -> onnx.ModelProto:
    """x -> Q/DQ (activation) -> Conv(DQ(weight) [, DQ(bias)]) -> y."""
    weight = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.int8), "w_q")
    weight_scale = numpy_helper.from_array(np.full((4,), 0.1, np.float32), "w_scale")
    weight_zero = numpy_helper.from_array(np.zeros((4,), np.int8), "w_zero")
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "x_scale")
    zero = numpy_helper.from_array(zero_point, "x_zero")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w",
                         axis=weight_axis),
    ]
    initializers = [weight, weight_scale, weight_zero, scale, zero]
    conv_inputs = ["x_dq", "w"]
    if bias is not None:
        initializers += [bias, numpy_helper.from_array(np.full((4,), 0.005, np.float32), "b_s")]
        nodes.append(helper.make_node("DequantizeLinear", [bias.name, "b_s"], ["b"], name="dq_b",
                                      axis=0))
        conv_inputs.append("b")
    nodes.append(helper.make_node("Conv", conv_inputs, ["y"], name="conv", pads=[1, 1, 1, 1]))
    return make_model(nodes, [image("x")], [image("y")], initializers)


def test_planted_loop_is_an_error() -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         image("v_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), image("v_out")],
    )
    trip = numpy_helper.from_array(np.array(3, np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    loop = helper.make_node("Loop", ["trip", "cond", "x"], ["y"], name="refine_loop", body=body)
    found = errors(lint_model(make_model([loop], [image("x")], [image("y")], [trip, cond]),
                              "planted"))
    assert [(f.node, f.op) for f in found] == [("refine_loop", "Loop")]
    assert "unrolled" in found[0].message


def test_asymmetric_uint8_qdq_is_an_error() -> None:
    model = conv_with_quantized_weight(0, np.array(128, np.uint8))
    messages = [f"{f.node}: {f.message}" for f in errors(lint_model(model, "int8"))]
    assert any("q_x" in m and "non-zero zero-point" in m for m in messages)
    assert any("q_x" in m and "UINT8" in m for m in messages)
    assert any("dq_x" in m for m in messages)
    assert not any(m.startswith("dq_w") or m.startswith("conv") for m in messages)


def test_symmetric_int8_per_channel_qdq_is_clean() -> None:
    assert errors(lint_model(conv_with_quantized_weight(0, np.array(0, np.int8)), "int8")) == []


def test_per_channel_scale_on_the_wrong_axis_is_an_error() -> None:
    found = errors(lint_model(conv_with_quantized_weight(1, np.array(0, np.int8)), "int8"))
    assert [f.node for f in found] == ["dq_w"]
    assert "output-channel axis 0" in found[0].message


def test_int32_bias_quantization_is_an_error() -> None:
    bias = numpy_helper.from_array(np.zeros((4,), np.int32), "b_q")
    found = errors(lint_model(conv_with_quantized_weight(0, np.array(0, np.int8), bias), "int8"))
    assert [f.node for f in found] == ["dq_b"]
    assert "int32 bias" in found[0].message and "Conv" in found[0].message


def test_unsupported_resize_modes_and_ops() -> None:
    sizes = numpy_helper.from_array(np.array([1, 4, 16, 16], np.int64), "sizes")
    nodes = [
        helper.make_node("Resize", ["x", "", "", "sizes"], ["a"], name="cubic", mode="cubic"),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["b"], name="crop", mode="linear",
                         coordinate_transformation_mode="tf_crop_and_resize"),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["c"], name="ok", mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Unique", ["x"], ["u"], name="unique"),
        helper.make_node("FusedConv", ["x"], ["f"], name="custom", domain="com.microsoft"),
    ]
    outputs = [image(n, [1, 4, 16, 16]) for n in "abc"] + [image("u", ["n"]), image("f")]
    model = make_model(nodes, [image("x")], outputs, [sizes])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert sorted(f.node for f in errors(lint_model(model))) == ["crop", "cubic", "custom",
                                                                 "unique"]


def test_resize_to_a_dynamic_spatial_size_is_an_error() -> None:
    scales = numpy_helper.from_array(np.array([2], np.int64), "two")
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Mul", ["shape", "two"], ["sizes"], name="double"),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="upsample",
                         mode="linear"),
    ]
    dynamic = image("x", [1, 4, "height", "width"])
    found = lint_model(make_model(nodes, [dynamic], [image("y", [1, 4, "h2", "w2"])], [scales]))
    assert "upsample" in [f.node for f in errors(found)]
    assert "dynamic non-batch axes" in format_table(found)


def test_exported_bundle_lints_clean(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    report = lint_bundle(tiny_bundle)
    assert report.passed and report.graphs == ["backbone.fp32.onnx", "refine.fp32.onnx"]
    assert crnet_main(["lint", str(tiny_bundle)]) == 0
    assert "0 error(s)" in capsys.readouterr().out


def test_cli_exits_non_zero_on_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(conv_with_quantized_weight(0, np.array(3, np.int8)), str(path))
    assert crnet_main(["lint", str(path), "--json", str(tmp_path / "lint.json")]) == 1
    out = capsys.readouterr().out
    assert "severity" in out and "non-zero zero-point" in out and "FAIL" in out
    assert (tmp_path / "lint.json").exists()
    assert crnet_main(["lint", str(tmp_path / "missing")]) == 1
    assert "no such bundle or ONNX file" in capsys.readouterr().err
    assert crnet_main(["lint", str(path), "--json", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
