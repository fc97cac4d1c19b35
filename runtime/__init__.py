"""The embeddable runtime: ``from crnet.runtime import Segmenter``.

The public API of an application: ``Segmenter`` (in-process, any backend),
``RemoteSegmenter`` (the client of ``crnet serve``) and the errors an application catches:

* ``CrnetError``: the base of every error a caller can cause or fix;
* ``InputError``: an image, mask or support set that cannot be used (also a ValueError);
* ``UnknownSupportError``: a support id the server does not hold (an InputError);
* ``RequestLimitError``: a request over the server's limits (id length, pixels, K, request
  size; an InputError);
* ``SegmenterClosedError``: a call on a Segmenter after ``close()``;
* ``SupportReplacedError``: a thread's own support was replaced by another thread's
  ``set_support`` (an InputError: pass ``support=seg.encode_support(...)`` instead);
* ``BundleError``: a bundle directory that is missing, incomplete or does not verify;
* ``BackendError``: a backend that cannot run here or failed (also a RuntimeError);
* ``RemoteError``: the server failed a request for a reason other than the input (a
  BackendError);
* ``MissingExtraError``: a feature needs an extra that is not installed (an ImportError).

Light on import: every name is imported on first use, so ``import crnet.runtime`` loads
numpy at most, and never onnxruntime, torch, openvino or tensorrt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crnet.runtime.backends.base import BackendError
    from crnet.runtime.bundle import BundleError
    from crnet.runtime.errors import CrnetError, MissingExtraError
    from crnet.runtime.preprocess import InputError
    from crnet.runtime.remote import (
        RemoteError,
        RemoteSegmenter,
        RequestLimitError,
        UnknownSupportError,
    )
    from crnet.runtime.segmenter import Segmenter, SegmenterClosedError
    from crnet.runtime.support_slot import SupportReplacedError

# public name -> the module that defines it (imported on first use of the name)
_HOMES: dict[str, str] = {
    "Segmenter": "crnet.runtime.segmenter",
    "SegmenterClosedError": "crnet.runtime.segmenter",
    "SupportReplacedError": "crnet.runtime.support_slot",
    "RemoteSegmenter": "crnet.runtime.remote",
    "CrnetError": "crnet.runtime.errors",
    "MissingExtraError": "crnet.runtime.errors",
    "InputError": "crnet.runtime.preprocess",
    "BundleError": "crnet.runtime.bundle",
    "BackendError": "crnet.runtime.backends.base",
    "RemoteError": "crnet.runtime.remote",
    "UnknownSupportError": "crnet.runtime.remote",
    "RequestLimitError": "crnet.runtime.remote",
}

__all__ = [
    "BackendError",
    "BundleError",
    "CrnetError",
    "InputError",
    "MissingExtraError",
    "RemoteError",
    "RemoteSegmenter",
    "RequestLimitError",
    "Segmenter",
    "SegmenterClosedError",
    "SupportReplacedError",
    "UnknownSupportError",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (keeps this package light)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'crnet.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
