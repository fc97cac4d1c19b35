"""Move a Q/DQ graph's activations from int8 to uint8, exactly, for ONNX Runtime on x86.

The bundle's int8 graphs follow TensorRT's rules: symmetric int8 activations (zero point
0) and int8 weights, i.e. S8S8 convolutions. ONNX Runtime's x86 kernels (MLAS) are built
around unsigned activations times signed weights (U8S8: AVX2 ``vpmaddubsw``, AVX-512/AVX
VNNI ``vpdpbusd``); S8S8 takes a slower route. ``q_u8 = q_s8 + 128`` with the same scale
and zero point 128 represents exactly the same values (int8's [-128, 127] maps onto
uint8's [0, 255], rounding and saturation included), so rewriting each activation
QuantizeLinear / DequantizeLinear pair to uint8 changes no result and lets ONNX Runtime
fuse U8S8 QLinearConv / MatMulInteger. Weights are untouched. For the CPU execution
provider only: TensorRT accepts symmetric int8 alone. Needs the ``onnx`` package.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def activations_to_uint8(model: Any) -> tuple[Any, int]:
    """A copy of ``model`` (onnx.ModelProto) whose activation Q/DQ pairs are uint8 with
    zero point 128, and how many QuantizeLinear nodes were rewritten.

    An activation QuantizeLinear is one whose input is not an initializer; it is rewritten
    only when its zero point is an int8 initializer of zeros and every consumer of its
    output is a DequantizeLinear (those get the same new zero point). Anything else (a
    weight's Q/DQ, asymmetric or uint8 activations, an already fused QLinear op) is left
    as it is.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {output.name for output in graph.output}
    added = []
    rewritten = 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue
        zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
        if zero_point is None or zero_point.data_type != onnx.TensorProto.INT8:
            continue
        values = numpy_helper.to_array(zero_point)
        users = consumers[node.output[0]]
        if values.any() or node.output[0] in graph_outputs or not users or any(
                user.op_type != "DequantizeLinear" for user in users):
            continue
        name = f"{node.output[0]}/zero_point_uint8"
        added.append(numpy_helper.from_array(np.full(values.shape, 128, np.uint8), name))
        node.input[2] = name
        for user in users:
            while len(user.input) < 3:
                user.input.append("")
            user.input[2] = name
        rewritten += 1
    graph.initializer.extend(added)
    # value_info recorded int8 for the quantized tensors: drop those now uint8.
    changed = {node.output[0] for node in graph.node
               if node.op_type == "QuantizeLinear" and node.input[2].endswith("/zero_point_uint8")}
    kept = [info for info in graph.value_info if info.name not in changed]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return copy, rewritten
