"""Triton Python-backend model running one ONNX graph with ONNX Runtime on CPU.

`crnet triton-repo --backend python` writes this as ``model.py`` beside ``model.onnx`` for
crnet_backbone and crnet_query_refine: for a Triton build that has the Python backend but
not the onnxruntime one (PyTriton's bundled tritonserver), and for checking the BLS models
on a CPU machine. A GPU server uses ``--backend onnxruntime`` or ``tensorrt`` instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend


class TritonPythonModel:
    """Inputs and outputs as config.pbtxt names them; one ORT session per instance."""

    def initialize(self, args: dict[str, Any]) -> None:
        import onnxruntime

        config = json.loads(args["model_config"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(
            config.get("parameters", {}).get("threads", {}).get("string_value", "1"))
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                     for name in self.inputs}
            try:
                values = self.session.run(self.outputs, feeds)
            except Exception as error:  # noqa: BLE001 - returned to the caller
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(error))))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, value) for name, value in zip(self.outputs, values,
                                                                    strict=True)]))
        return responses
