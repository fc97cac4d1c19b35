"""Triton Python-backend model of `crnet triton-repo`: crnet_support or crnet_segment.

Copied as ``model.py`` into both models of the repository; the ``role`` parameter of
config.pbtxt says which. Pre/post-processing and checks are runtime.Segmenter's
(crnet.serve.bls); the backbone and the query refine run as the repository's own ONNX or
TensorRT models, called through BLS. Support sets live in a DirectorySupportStore (files
under ``store_dir``, /dev/shm by default) because every Python-backend instance is its own
process. Needs the plain `crnet-deploy` install (numpy, onnxruntime, onnx) in the
Python backend's environment; it is not imported anywhere else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend


class TritonPythonModel:
    """crnet_support: images, masks -> support_id; crnet_segment: support_id, image ->
    mask, probability. Errors carry ``[crnet:<ErrorClass>] message`` as `crnet serve`'s."""

    def initialize(self, args: dict[str, Any]) -> None:
        from crnet.runtime.bundle import read_manifest
        from crnet.serve.bls import call_segmenter
        from crnet.serve.support_store import DirectorySupportStore, support_id

        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"]
                      for key, value in config.get("parameters", {}).items()}
        self.role = parameters["role"]
        # the bundle schema checks the manifest before anything reads a field of it
        manifest = read_manifest(Path(args["model_repository"]) / args["model_version"])
        self.segmenter = call_segmenter(manifest, _bls_call)
        self.store = DirectorySupportStore(
            parameters["store_dir"], int(parameters["store_max_entries"]),
            int(float(parameters["store_max_mb"]) * 2**20))
        self.support_id = support_id
        self.salt = f"{manifest['model']['name']}|{parameters['precision']}"

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                tensors = self._support(request) if self.role == "support" else \
                    self._segment(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as error:  # every failure goes back as a clean Triton error
                message = f"[crnet:{type(error).__name__}] {error}"
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(message)))
        return responses

    def _support(self, request: Any) -> list[Any]:
        images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
        masks = pb_utils.get_input_tensor_by_name(request, "masks").as_numpy()
        key = self.support_id(images, masks, self.salt)
        support = self.segmenter.encode_support(list(images), list(masks))
        self.store.put(key, support.feat, support.mask)
        return [pb_utils.Tensor("support_id", np.array([key.encode()], dtype=np.object_))]

    def _segment(self, request: Any) -> list[Any]:
        from crnet.runtime.segmenter import SupportSet

        raw = pb_utils.get_input_tensor_by_name(request, "support_id").as_numpy().reshape(-1)
        key = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        feat, mask = self.store.get(key)
        image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
        result, probability = self.segmenter.segment(image, return_prob=True,
                                                     support=SupportSet(feat, mask))
        return [pb_utils.Tensor("mask", result.astype(np.bool_)),
                pb_utils.Tensor("probability", probability.astype(np.float32))]


def _bls_call(model: str, inputs: dict[str, np.ndarray], outputs: list[str]
              ) -> dict[str, np.ndarray]:
    """Run another model of the repository (BLS) and return the requested outputs."""
    request = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=outputs,
        inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value))
                for name, value in inputs.items()])
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy()
            for name in outputs}
