"""A Segmenter whose two graph calls go to other models: Triton's business-logic scripting.

The Python-backend models of `crnet triton-repo` build one with ``call_segmenter``: all
pre/post-processing, checks and messages are Segmenter's, and ``call(model, inputs,
outputs)`` sends the backbone and the query refine to the repository's ONNX or TensorRT
models (pb_utils.InferenceRequest there; any callable in tests). numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from crnet.runtime.backends.base import Backend, BackendError, ModelSpec
from crnet.runtime.preprocess import THRESHOLD

GraphCall = Callable[[str, dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]
BACKBONE_MODEL = "crnet_backbone"
QUERY_REFINE_MODEL = "crnet_query_refine"


class CallBackend(Backend):
    """Runs the backbone and the query refine through ``call``; names from the manifest."""

    name: ClassVar[str] = "call"
    thread_safe: ClassVar[bool] = True

    def __init__(self, manifest: dict[str, Any], call: GraphCall,
                 backbone_model: str = BACKBONE_MODEL,
                 query_refine_model: str = QUERY_REFINE_MODEL) -> None:
        super().__init__(None, "fp32")
        graphs = manifest["graphs"]
        self.call = call
        self.backbone_model, self.query_refine_model = backbone_model, query_refine_model
        self.backbone_in = graphs["backbone"]["inputs"][0]["name"]
        self.backbone_out = graphs["backbone"]["outputs"][0]["name"]
        self.refine_in = [spec["name"] for spec in graphs["refine"]["inputs"]]
        self.query_out = graphs["refine"]["outputs"][0]["name"]

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, "calls other models"

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _output(self, model: str, inputs: dict[str, np.ndarray], name: str) -> np.ndarray:
        outputs = self.call(model, inputs, [name])
        if name not in outputs:
            raise BackendError(f"{model} returned {sorted(outputs)}, not {name!r}")
        return np.asarray(outputs[name], dtype=np.float32)

    def run_backbone(self, images: np.ndarray) -> np.ndarray:
        return self._output(self.backbone_model, {self.backbone_in: images}, self.backbone_out)

    def run_query_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                         support_mask: np.ndarray) -> np.ndarray:
        inputs = dict(zip(self.refine_in, (query_feat, support_feat, support_mask),
                          strict=True))
        return self._output(self.query_refine_model, inputs, self.query_out)


def call_segmenter(manifest: dict[str, Any], call: GraphCall, threshold: float = THRESHOLD,
                   **names: str) -> Any:
    """A runtime.Segmenter over CallBackend(manifest, call, **names)."""
    from crnet.runtime.segmenter import Segmenter

    return Segmenter.from_backend(CallBackend(manifest, call, **names),
                                  ModelSpec.from_manifest(manifest), threshold)
