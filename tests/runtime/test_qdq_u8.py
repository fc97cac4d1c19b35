"""runtime/qdq_u8.py: int8 activations moved to uint8 change no result; what is rewritten."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from crnet.runtime.backends import backend_class
from crnet.runtime.bundle import Bundle
from crnet.runtime.qdq_u8 import activations_to_uint8


def _qdq_conv(activation_zero_point: np.ndarray) -> onnx.ModelProto:
    """x -> Q/DQ (activation) -> Conv with a Q/DQ'd weight -> y."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(np.float32(0.05), "x_scale"),
        numpy_helper.from_array(activation_zero_point, "x_zero"),
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.full(4, 0.02, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zero"], ["w_q"], axis=0),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_symmetric_int8_activations_become_uint8_with_the_same_result() -> None:
    model = _qdq_conv(np.int8(0))
    rewritten, count = activations_to_uint8(model)
    assert count == 1  # the activation pair; the weight's pair is left alone
    quantize = {node.input[0]: node for node in rewritten.graph.node
                if node.op_type == "QuantizeLinear"}
    zero_points = {tensor.name: tensor for tensor in rewritten.graph.initializer}
    assert zero_points[quantize["x"].input[2]].data_type == TensorProto.UINT8
    assert quantize["w"].input[2] == "w_zero"
    onnx.checker.check_model(rewritten)
    # Values spanning past int8's range on both sides, so saturation is compared too.
    x = np.random.default_rng(1).uniform(-8, 8, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x), _run(model, x))
    assert count and model.graph.node[0].input[2] == "x_zero"  # the input is not modified


def test_asymmetric_activations_are_left_alone() -> None:
    _, count = activations_to_uint8(_qdq_conv(np.int8(3)))
    assert count == 0


def test_onnxruntime_int8_uses_uint8_activations_with_unchanged_logits(
        int8_bundle: Path) -> None:
    bundle = Bundle.load(int8_bundle)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, *bundle.manifest["input_size"]), dtype=np.float32)
    cls = backend_class("onnxruntime")
    outputs = {}
    for uint8 in (True, False):
        with cls(bundle, "int8", threads=1, uint8_activations=uint8) as backend:
            support = backend.run_backbone(image)
            mask = np.ones((1, 1, *bundle.manifest["feature_size"]), np.float32)
            outputs[uint8] = backend.run_query(image, support, mask)
            info = backend.describe()["int8_activations"]
            assert info["type"] == ("uint8" if uint8 else "int8")
            if uint8:
                assert sum(info["rewritten"].values()) > 0
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=0, atol=1e-4)


def test_fp32_sessions_are_not_rewritten(runtime_bundle: Path) -> None:
    with backend_class("onnxruntime")(Bundle.load(runtime_bundle), "fp32",
                                      threads=1) as backend:
        assert "int8_activations" not in backend.describe()


@pytest.mark.parametrize("providers", [["CUDAExecutionProvider", "CPUExecutionProvider"]])
def test_gpu_providers_keep_symmetric_int8(int8_bundle: Path, providers: list[str]) -> None:
    backend = backend_class("onnxruntime")(Bundle.load(int8_bundle), "int8")
    backend._activations_plan(providers)
    assert backend.activations["type"] == "int8"
    assert "CUDAExecutionProvider" in backend.activations["reason"]
