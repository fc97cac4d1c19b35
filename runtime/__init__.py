"""The embeddable runtime: ``from crnet.runtime import Segmenter``.

Light on import: numpy only. Segmenter (and onnxruntime, torch or tensorrt behind it) is
imported on first use of the name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crnet.runtime.preprocess import InputError
    from crnet.runtime.remote import RemoteSegmenter
    from crnet.runtime.segmenter import Segmenter

__all__ = ["InputError", "RemoteSegmenter", "Segmenter"]


def __getattr__(name: str) -> Any:
    if name == "Segmenter":
        from crnet.runtime.segmenter import Segmenter

        return Segmenter
    if name == "RemoteSegmenter":
        from crnet.runtime.remote import RemoteSegmenter

        return RemoteSegmenter
    if name == "InputError":
        from crnet.runtime.preprocess import InputError

        return InputError
    raise AttributeError(f"module 'crnet.runtime' has no attribute {name!r}")
