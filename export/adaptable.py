"""The manifest's ``adaptable`` record: which refine-graph initializers an adapter may
replace (runtime.adapter), found in the exported fp32 refine graph.

The dynamo exporter names a parameter's initializer after its path from the export
wrapper, ``model.<torch name>`` (export.graphs.RefineGraph holds the CRNet as ``model``).
Every parameter of the parts after the trunk (cross-reference, condition, refinement)
must appear under that name, unfolded and with its torch shape, or the export fails: an
adapter could not reach a weight the exporter folded into another constant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crnet.runtime.adapter import ADAPTABLE_PARTS, AdapterError
from crnet.runtime.files import sha256_file

EXPORT_PREFIX = "model."  # the RefineGraph wrapper's attribute holding the CRNet


def adaptable_record(model: Any, refine_path: Path) -> dict[str, Any]:
    """``{"graph": "refine", "refine_sha256", "tensors": {onnx name: {"torch_name",
    "shape", "part"}}}`` for ``model``'s parameters of ADAPTABLE_PARTS; AdapterError when
    one is not a named initializer of the refine graph."""
    import onnx

    graph = onnx.load(str(refine_path), load_external_data=False).graph
    initializers = {item.name: list(item.dims) for item in graph.initializer}
    tensors: dict[str, dict[str, Any]] = {}
    for torch_name, parameter in model.named_parameters():
        part = torch_name.split(".", 1)[0]
        if part not in ADAPTABLE_PARTS:
            continue
        onnx_name = EXPORT_PREFIX + torch_name
        shape = list(parameter.shape)
        if initializers.get(onnx_name) != shape:
            found = initializers.get(onnx_name)
            raise AdapterError(
                f"the refine graph has no initializer {onnx_name} of shape {shape} (found "
                f"{found}); the exporter folded or renamed it, so adapters could not "
                "replace it")
        tensors[onnx_name] = {"torch_name": torch_name, "shape": shape, "part": part}
    if not tensors:
        raise AdapterError(f"the model has no parameters in {ADAPTABLE_PARTS}; nothing to "
                          "record as adaptable")
    return {"graph": "refine", "refine_sha256": sha256_file(refine_path), "tensors": tensors}
