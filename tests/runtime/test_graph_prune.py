from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from crnet.runtime.bundle import Bundle
from crnet.runtime.graph_prune import chain_backbone, prune_to_outputs


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _refine_feeds(bundle: Bundle, shots: int = 2) -> dict[str, np.ndarray]:
    channels = bundle.manifest["feature_channels"]
    height, width = bundle.manifest["feature_size"]
    rng = np.random.default_rng(0)
    mask = np.zeros((shots, 1, height, width), np.float32)
    mask[:, :, 2:6, 3:7] = 1.0
    return {"query_feat": rng.random((1, channels, height, width), dtype=np.float32),
            "support_feat": rng.random((shots, channels, height, width), dtype=np.float32),
            "support_mask": mask}


def _count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)


def test_pruned_refine_drops_the_support_branch(runtime_bundle: Path) -> None:
    bundle = Bundle.load(runtime_bundle)
    refine = onnx.load(str(bundle.graph_path("refine", "fp32")))
    pruned = prune_to_outputs(refine, ["query_logits"])
    onnx.checker.check_model(pruned)
    assert [o.name for o in pruned.graph.output] == ["query_logits"]
    assert [i.name for i in pruned.graph.input] == [i.name for i in refine.graph.input]
    # Condition + T refinement steps run once per branch in the full graph; the pruned
    # graph keeps the query's only.
    assert _count(pruned, "Conv") > 0 and 2 * _count(pruned, "Conv") == _count(refine, "Conv")
    kept = {t.name for t in pruned.graph.initializer}
    assert kept <= {t.name for t in refine.graph.initializer}
    assert kept <= {name for node in pruned.graph.node for name in node.input}  # all read
    feeds = _refine_feeds(bundle)
    (expected, _) = _session(refine).run(["query_logits", "support_logits"], feeds)
    (ours,) = _session(pruned).run(["query_logits"], feeds)
    np.testing.assert_array_equal(ours, expected)


def test_chained_backbone_segments_in_one_run(runtime_bundle: Path) -> None:
    bundle = Bundle.load(runtime_bundle)
    backbone = onnx.load(str(bundle.graph_path("backbone", "fp32")))
    refine = onnx.load(str(bundle.graph_path("refine", "fp32")))
    chained = chain_backbone(backbone, prune_to_outputs(refine, ["query_logits"]))
    assert {i.name for i in chained.graph.input} == {"image", "support_feat", "support_mask"}
    assert [o.name for o in chained.graph.output] == ["query_logits"]
    feeds = _refine_feeds(bundle)
    image = np.random.default_rng(1).standard_normal(
        (1, 3, *bundle.manifest["input_size"]), dtype=np.float32)
    (feat,) = _session(backbone).run(["feat"], {"image": image})
    (expected, _) = _session(refine).run(None, {**feeds, "query_feat": feat})
    (ours,) = _session(chained).run(None, {"image": image, "support_feat": feeds["support_feat"],
                                           "support_mask": feeds["support_mask"]})
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_prune_refuses_unknown_outputs_and_subgraphs() -> None:
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    result = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    flat = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "flat", [value], [result]))
    with pytest.raises(ValueError, match=r"no output\(s\) \['z'\]; it has \['y'\]"):
        prune_to_outputs(flat, ["z"])
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "branch", [],
                               [result])
    condition = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    nested = helper.make_model(helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        "nested", [condition, value], [result]))
    with pytest.raises(ValueError, match="subgraphs"):
        prune_to_outputs(nested, ["y"])


def test_prune_drops_initializers_listed_as_inputs() -> None:
    """Before IR 4 initializers were graph inputs too; an unread one must not stay an input."""
    from onnx import numpy_helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    kept, dropped = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])
                     for name in ("a", "b"))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2]) for name in "yz"]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "a"], ["y"]), helper.make_node("Mul", ["x", "b"], ["z"])],
        "old", [value, kept, dropped], outputs,
        initializer=[numpy_helper.from_array(np.ones(2, np.float32), name) for name in "ab"],
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, ir_version=3, opset_imports=[helper.make_opsetid("", 9)])
    pruned = prune_to_outputs(model, ["y"])
    assert [i.name for i in pruned.graph.input] == ["x", "a"]
    assert [t.name for t in pruned.graph.initializer] == ["a"]
    assert [n.op_type for n in pruned.graph.node] == ["Add"]
    assert list(pruned.graph.value_info) == []  # an output's value_info is not kept
