"""Bounds on what one `crnet serve` request may ask for, checked before any work (numpy only).

A request is checked on its tensors' shapes, dtypes and byte counts alone: nothing is
decoded, allocated, resized or looked up before it passes. A request over a bound gets a
RequestLimitError (an InputError: the client's fault) whose one-line message names the
bound, the value sent and the flag that raises it; a support id is never echoed back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from crnet.runtime.preprocess import MIN_SIDE, InputError
from crnet.runtime.remote import RequestLimitError, UnknownSupportError

DEFAULT_MAX_ID_CHARS = 64
"""Ids this server gives are 32 hex digits; longer ones are refused unread."""
DEFAULT_MAX_PIXELS = 4096 * 4096
"""Per image, query or support (16.8 MP)."""
DEFAULT_MAX_SHOTS = 8
DEFAULT_MAX_REQUEST_MB = 64.0
"""All input tensors of one request together, in MiB."""
REQUEST_SIZE_MESSAGE = ("request of {mib:.1f} MiB is larger than the {limit:g} MiB this server "
                        "accepts (--max-request-mb); send smaller images")
ID_DIGITS = frozenset(b"0123456789abcdef")
LOGGED_ID_CHARS = 64


@dataclass(frozen=True)
class RequestLimits:
    """The server's bounds on one request (flags of `crnet serve` in brackets)."""

    max_id_chars: int = DEFAULT_MAX_ID_CHARS
    """Bytes of a support_id (--max-id-chars)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Height x width of any one image or mask (--max-pixels)."""
    max_shots: int = DEFAULT_MAX_SHOTS
    """K, support images in one crnet_support request (--max-shots)."""
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB
    """MiB of all input tensors of one request (--max-request-mb)."""

    def __post_init__(self) -> None:
        for name in ("max_id_chars", "max_pixels", "max_shots"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.max_request_mb > 0:
            raise ValueError(f"max_request_mb must be > 0, got {self.max_request_mb!r}")

    @property
    def max_request_bytes(self) -> int:
        """max_request_mb in bytes."""
        return int(self.max_request_mb * 2**20)


def loggable_id(raw: object) -> str:
    """A support id as the server log shows it: its first 64 characters and its length."""
    if isinstance(raw, bytes | np.bytes_):
        text = bytes(raw[:LOGGED_ID_CHARS]).decode("ascii", "backslashreplace")
        length = len(raw)
    else:
        text, length = str(raw)[:LOGGED_ID_CHARS], len(str(raw))
    more = "..." if length > LOGGED_ID_CHARS else ""
    return f"{text!r}{more} ({length} chars)"


def check_request_size(request: Mapping[str, Any], limits: RequestLimits) -> None:
    """Refuse a request whose input tensors hold more than max_request_mb together."""
    total = sum(int(getattr(value, "nbytes", 0)) for value in request.values())
    if total > limits.max_request_bytes:
        raise RequestLimitError(REQUEST_SIZE_MESSAGE.format(mib=total / 2**20,
                                                            limit=limits.max_request_mb))


def _check_pixels(height: int, width: int, what: str, limits: RequestLimits) -> None:
    if height * width > limits.max_pixels:
        raise RequestLimitError(
            f"{what} is {height}x{width} ({height * width / 1e6:.1f} MP), more than the "
            f"{limits.max_pixels / 1e6:.1f} MP this server accepts (--max-pixels); "
            "downscale it first")
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{what} is {height}x{width}; each side must be at least {MIN_SIDE}")


def _uint8(array: Any, name: str, layout: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise InputError(f"{name} must be UINT8 {layout}, got {kind}")
    return array


def check_support_request(request: Mapping[str, Any], limits: RequestLimits
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(images [K,H,W,3], masks [K,H,W]) of a crnet_support request, within the limits."""
    check_request_size(request, limits)
    images = _uint8(request.get("images"), "images", "[K,H,W,3]")
    masks = _uint8(request.get("masks"), "masks", "[K,H,W]")
    if images.ndim != 4 or images.shape[3] != 3 or masks.ndim != 3:
        raise InputError(f"images must be [K,H,W,3] and masks [K,H,W], got shapes "
                         f"{list(images.shape)} and {list(masks.shape)}")
    shots = images.shape[0]
    if shots < 1:
        raise InputError("images hold no support image (K=0): send at least one image "
                         "and its mask")
    if shots > limits.max_shots:
        raise RequestLimitError(f"{shots} support images (K) are more than the "
                                f"{limits.max_shots} this server accepts (--max-shots)")
    if masks.shape != images.shape[:3]:
        raise InputError(f"masks must be [K,H,W] matching images {list(images.shape)}, "
                         f"got {list(masks.shape)}")
    _check_pixels(images.shape[1], images.shape[2], "support image 0", limits)
    return images, masks


def check_segment_request(request: Mapping[str, Any], limits: RequestLimits
                          ) -> tuple[str, np.ndarray]:
    """(support id, image [H,W,3]) of a crnet_segment request, within the limits.

    The id is measured before it is decoded, and must be ASCII hex digits (what
    crnet_support gives); its text is never put in the message.
    """
    check_request_size(request, limits)
    key = support_key(request.get("support_id"), limits)
    image = _uint8(request.get("image"), "image", "[H,W,3]")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be [H,W,3], got shape {list(image.shape)}")
    _check_pixels(image.shape[0], image.shape[1], "query image", limits)
    return key, image


def support_key(value: Any, limits: RequestLimits) -> str:
    """The support id of a BYTES [1] tensor, checked: one item of at most max_id_chars
    bytes, all lower-case hex digits."""
    if value is None:
        raise InputError("support_id is missing: send the id crnet_support returned")
    flat = np.asarray(value, dtype=object).reshape(-1)
    if flat.size != 1:
        raise InputError(f"support_id must hold one id, got {flat.size} values")
    raw = flat[0]
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, bytes | np.bytes_):
        raise InputError(f"support_id must be BYTES, got {type(raw).__name__}")
    if len(raw) > limits.max_id_chars:
        raise RequestLimitError(
            f"support_id of {len(raw)} bytes is longer than the {limits.max_id_chars} this "
            "server accepts (--max-id-chars); send the id crnet_support returned")
    if not raw or not ID_DIGITS.issuperset(bytes(raw)):
        raise UnknownSupportError(
            "unknown support_id: not an id this server gives (ids are lower-case hex "
            "digits); register the support again with crnet_support and use the id it returns")
    return bytes(raw).decode("ascii")
