"""Cut an ONNX graph down to the nodes some of its outputs need (for the runtime).

The refine graph predicts both the query and the support masks; `segment` needs only the
query's. The query branch of the exported graph reads the supports only through the
cross-reference weights and the pooled class vector (models/crnet.py, ``refine``), so
keeping the nodes ``query_logits`` depends on drops the support branch's condition and
refinement steps: about half the graph's work. Works on any precision variant and on
ONNX Runtime's optimised builds, since it only follows node inputs back to the graph
inputs. ``chain_backbone`` then puts the backbone in front, so that one ONNX Runtime run
segments one query. Needs the ``onnx`` package (not torch).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def prune_to_outputs(model: Any, outputs: Iterable[str]) -> Any:
    """A copy of ``model`` (onnx.ModelProto) that computes only ``outputs``.

    Keeps every graph input (so the pruned model is fed exactly like the original), the
    nodes the outputs depend on, in their original (topological) order, the initializers
    those nodes read, and the requested outputs in the graph's order. Raises ValueError
    for an output the graph lacks or a graph with subgraphs (Loop/If), which this does not
    follow.
    """
    import onnx

    graph = model.graph
    wanted = list(outputs)
    known = {output.name for output in graph.output}
    missing = [name for name in wanted if name not in known]
    if missing:
        raise ValueError(f"graph has no output(s) {missing}; it has {sorted(known)}")
    if any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for attribute in node.attribute):
        raise ValueError("graph holds subgraphs (Loop/If/Scan); pruning does not follow them")
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    needed_nodes: set[int] = set()
    pending = list(wanted)
    while pending:
        index = producer.get(pending.pop())
        if index is None or index in needed_nodes:
            continue  # a graph input, an initializer, or already visited
        needed_nodes.add(index)
        pending.extend(name for name in graph.node[index].input if name)
    nodes = [node for index, node in enumerate(graph.node) if index in needed_nodes]
    read = {name for node in nodes for name in node.input} | set(wanted)

    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    target = pruned.graph
    del target.node[:]
    target.node.extend(nodes)
    kept_initializers = [tensor for tensor in graph.initializer if tensor.name in read]
    del target.initializer[:]
    target.initializer.extend(kept_initializers)
    kept_outputs = [output for output in graph.output if output.name in set(wanted)]
    del target.output[:]
    target.output.extend(kept_outputs)
    # Before IR 4 initializers were listed as graph inputs too: drop those whose
    # initializer went, or they would become inputs the caller must feed.
    dropped = {tensor.name for tensor in graph.initializer} - read
    kept_inputs = [value for value in graph.input if value.name not in dropped]
    del target.input[:]
    target.input.extend(kept_inputs)
    produced = {name for node in nodes for name in node.output} - set(wanted)
    kept_info = [info for info in graph.value_info if info.name in produced]
    del target.value_info[:]
    target.value_info.extend(kept_info)
    return pruned


def chain_backbone(backbone: Any, refine_query: Any) -> Any:
    """One model (onnx.ModelProto) for a cached-support query: the backbone's ``feat``
    feeds the pruned refine graph's ``query_feat``; inputs ``image``, ``support_feat``,
    ``support_mask``, output ``query_logits``. Node and initializer names get the prefixes
    ``backbone/`` and ``refine/`` so the two graphs cannot clash."""
    from onnx import compose

    return compose.merge_models(
        compose.add_prefix(_without_io_value_info(backbone), "backbone/",
                           rename_inputs=False, rename_outputs=False),
        compose.add_prefix(_without_io_value_info(refine_query), "refine/",
                           rename_inputs=False, rename_outputs=False),
        io_map=[("feat", "query_feat")])


def _without_io_value_info(model: Any) -> Any:
    """A copy without value_info entries named like graph inputs or outputs: add_prefix
    renames value_info even where it keeps the input and output names, and the renamed
    entry (quantize_static writes one for ``feat``) would then hide ``feat`` from
    merge_models."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    io_names = {value.name for value in (*copy.graph.input, *copy.graph.output)}
    kept = [info for info in copy.graph.value_info if info.name not in io_names]
    del copy.graph.value_info[:]
    copy.graph.value_info.extend(kept)
    return copy
