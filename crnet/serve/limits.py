"""Bounds on what one `crnet serve` request may ask for, checked before any work (numpy only).

A request is checked on its tensors' shapes, dtypes and byte counts alone: nothing is
decoded, allocated, resized or looked up before it passes. A request over a bound gets a
RequestLimitError (an InputError: the client's fault) whose one-line message names the
bound, the value sent and the flag that raises it; a support id is never echoed back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
HEADER_ALLOWANCE_BYTES = 1 << 20
"""What a request may carry besides its tensors (the JSON header of Triton's binary HTTP
form, protobuf fields): the front ends read at most max_request_mb plus this."""
REQUEST_SIZE_MESSAGE = ("request of {mib:.1f} MiB is larger than the {limit:g} MiB this server "
                        "accepts (--max-request-mb); send smaller images")
MAX_MESSAGE_CHARS = 1000
"""The longest message a refusal carries to the client (cut, with "...")."""
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

    @property
    def max_body_bytes(self) -> int:
        """The largest HTTP body or gRPC message the front ends read: max_request_bytes
        and HEADER_ALLOWANCE_BYTES for the rest of the request."""
        return self.max_request_bytes + HEADER_ALLOWANCE_BYTES


def loggable_id(raw: object) -> str:
    """A support id as the server log shows it: its first 64 characters and its length."""
    if isinstance(raw, bytes | np.bytes_):
        text = bytes(raw[:LOGGED_ID_CHARS]).decode("ascii", "backslashreplace")
        length = len(raw)
    else:
        text, length = str(raw)[:LOGGED_ID_CHARS], len(str(raw))
    more = "..." if length > LOGGED_ID_CHARS else ""
    return f"{text!r}{more} ({length} chars)"


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line (runs of whitespace, newlines included, made one space), cut to
    ``limit`` characters with "..." after: the form every refusal's message takes."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "..."


def check_request_size(request: Mapping[str, Any], limits: RequestLimits) -> None:
    """Refuse a request whose input tensors hold more than max_request_mb together."""
    _check_total(sum(int(getattr(value, "nbytes", 0)) for value in request.values()), limits)


def _check_total(total: int, limits: RequestLimits) -> None:
    if total > limits.max_request_bytes:
        raise RequestLimitError(REQUEST_SIZE_MESSAGE.format(mib=total / 2**20,
                                                            limit=limits.max_request_mb))


def _check_shots(shots: int, limits: RequestLimits) -> None:
    if shots < 1:
        raise InputError("images hold no support image (K=0): send at least one image "
                         "and its mask")
    if shots > limits.max_shots:
        raise RequestLimitError(f"{shots} support images (K) are more than the "
                                f"{limits.max_shots} this server accepts (--max-shots)")


def _check_id_length(length: int, limits: RequestLimits) -> None:
    if length > limits.max_id_chars:
        raise RequestLimitError(
            f"support_id of {length} bytes is longer than the {limits.max_id_chars} this "
            "server accepts (--max-id-chars); send the id crnet_support returned")


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
    _check_support_shapes(tuple(images.shape), tuple(masks.shape), limits)
    return images, masks


def _check_support_shapes(images: tuple[int, ...], masks: tuple[int, ...],
                          limits: RequestLimits) -> None:
    if len(images) != 4 or images[3] != 3 or len(masks) != 3:
        raise InputError(f"images must be [K,H,W,3] and masks [K,H,W], got shapes "
                         f"{list(images)[:8]} and {list(masks)[:8]}")
    _check_shots(images[0], limits)
    if masks != images[:3]:
        raise InputError(f"masks must be [K,H,W] matching images {list(images)}, "
                         f"got {list(masks)}")
    _check_pixels(images[1], images[2], "support image 0", limits)


def _check_query_shape(shape: tuple[int, ...], limits: RequestLimits) -> None:
    if len(shape) != 3 or shape[2] != 3:
        raise InputError(f"image must be [H,W,3], got shape {list(shape)[:8]}")
    _check_pixels(shape[0], shape[1], "query image", limits)


def check_segment_request(request: Mapping[str, Any], limits: RequestLimits
                          ) -> tuple[str, np.ndarray]:
    """(support id, image [H,W,3]) of a crnet_segment request, within the limits.

    The id is measured before it is decoded, and must be ASCII hex digits (what
    crnet_support gives); its text is never put in the message.
    """
    check_request_size(request, limits)
    key = support_key(request.get("support_id"), limits)
    image = _uint8(request.get("image"), "image", "[H,W,3]")
    _check_query_shape(tuple(image.shape), limits)
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
    _check_id_length(len(raw), limits)
    if not raw or not ID_DIGITS.issuperset(bytes(raw)):
        raise UnknownSupportError(
            "unknown support_id: not an id this server gives (ids are lower-case hex "
            "digits); register the support again with crnet_support and use the id it returns")
    return bytes(raw).decode("ascii")


# -- requests as they declare themselves, before their data is read ---------------------

SUPPORT_MODEL = "crnet_support"
SEGMENT_MODEL = "crnet_segment"


@dataclass(frozen=True)
class DeclaredTensor:
    """An input tensor as a request's header declares it, before its data is read: what
    the front ends check (crnet.serve.http_front, crnet.serve.grpc_front)."""

    datatype: str
    """Triton's name of the element type: "UINT8", "BYTES", ..."""
    shape: tuple[int, ...]
    item_bytes: tuple[int, ...] | None = None
    """BYTES: the length of each element, where the request tells it."""

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


def _declared(tensors: Mapping[str, DeclaredTensor], name: str, datatype: str,
              layout: str) -> DeclaredTensor:
    tensor = tensors.get(name)
    if tensor is None:
        raise InputError(f"{name} is missing: send {datatype} {layout}")
    if tensor.datatype != datatype:
        raise InputError(f"{name} must be {datatype} {layout}, got {tensor.datatype[:20]}")
    if any(side < 0 for side in tensor.shape):
        raise InputError(f"{name} has shape {list(tensor.shape)[:8]}: sides cannot be "
                         "negative")
    return tensor


def check_declared(model: str, tensors: Mapping[str, DeclaredTensor],
                   limits: RequestLimits) -> None:
    """Refuse a crnet_support or crnet_segment request from its declared inputs alone
    (shapes, types, BYTES lengths), with the messages the models give for the same input;
    other models pass (Triton answers for them)."""
    if model not in (SUPPORT_MODEL, SEGMENT_MODEL):
        return
    _check_total(sum(tensor.elements for tensor in tensors.values()
                     if tensor.datatype == "UINT8" and all(side >= 0 for side in tensor.shape)),
                 limits)
    if model == SUPPORT_MODEL:
        images = _declared(tensors, "images", "UINT8", "[K,H,W,3]")
        masks = _declared(tensors, "masks", "UINT8", "[K,H,W]")
        _check_support_shapes(images.shape, masks.shape, limits)
        return
    key = _declared(tensors, "support_id", "BYTES", "[1]")
    if key.elements != 1:
        raise InputError(f"support_id must hold one id, got {key.elements} values")
    if key.item_bytes:
        _check_id_length(max(key.item_bytes), limits)
    image = _declared(tensors, "image", "UINT8", "[H,W,3]")
    _check_query_shape(image.shape, limits)


def bytes_items(buffer: bytes | memoryview, count: int) -> tuple[int, ...] | None:
    """The element lengths of ``count`` BYTES elements serialized as Triton sends them
    (each a 4-byte little-endian length, then its bytes); None if ``buffer`` is not that."""
    view = memoryview(buffer)
    if count < 0 or count > len(view) // 4:  # each element takes 4 bytes at least
        return None
    lengths, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(view):
            return None
        length = int.from_bytes(view[offset:offset + 4], "little")
        lengths.append(length)
        offset += 4 + length
    return tuple(lengths) if offset == len(view) else None


def flattened(values: Sequence[Any] | Any) -> list[Any]:
    """The elements of a nested JSON list, in order."""
    if not isinstance(values, list):
        return [values]
    items: list[Any] = []
    for value in values:
        items.extend(flattened(value))
    return items
