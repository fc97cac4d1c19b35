"""The embeddable runtime: ``from runtime import Segmenter``.

Light on import: numpy only. Segmenter (and onnxruntime, torch or tensorrt behind it) is
imported on first use of the name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.preprocess import InputError
    from runtime.remote import RemoteSegmenter
    from runtime.segmenter import Segmenter

__all__ = ["InputError", "RemoteSegmenter", "Segmenter"]


def __getattr__(name: str) -> Any:
    if name == "Segmenter":
        from runtime.segmenter import Segmenter

        return Segmenter
    if name == "RemoteSegmenter":
        from runtime.remote import RemoteSegmenter

        return RemoteSegmenter
    if name == "InputError":
        from runtime.preprocess import InputError

        return InputError
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
