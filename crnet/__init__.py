"""crnet-deploy: take a trained PyTorch CRNet to ONNX, FP16/INT8, TensorRT and an embeddable
runtime.

``from crnet import Segmenter`` is a lazy shortcut for ``crnet.runtime.Segmenter``; importing
``crnet`` itself loads no engine (no torch, onnxruntime, tensorrt or openvino).
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crnet.runtime.remote import RemoteSegmenter
    from crnet.runtime.segmenter import Segmenter

try:
    __version__: str = metadata.version("crnet-deploy")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["RemoteSegmenter", "Segmenter", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Segmenter", "RemoteSegmenter"):
        from crnet import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'crnet' has no attribute {name!r}")
