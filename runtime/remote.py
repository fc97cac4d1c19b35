"""crnet.runtime.RemoteSegmenter: the Segmenter API over a `crnet serve` Triton server.

    seg = RemoteSegmenter("localhost:8000")            # HTTP; "grpc://localhost:8001" for gRPC
    seg.set_support([support_rgb], [support_mask])      # registered once, kept server-side
    mask = seg.segment(frame_rgb)
    mask, probability = seg.segment(frame_rgb, return_prob=True)
    for mask in seg.segment_stream(frames): ...         # requests pipelined, results in order
    mask = seg.segment(opencv_frame, channels="bgr")    # or RemoteSegmenter(..., channels="bgr")

The client keeps the support it registered: when the server restarts, or evicts the
support from its bounded store, the next request re-registers it and retries, and while
the server is unreachable requests are retried until ``retry_timeout_s``. Threads share
the support as they share a Segmenter's (crnet.runtime.support_slot): one whose own
support another thread replaced gets SupportReplacedError. tritonclient is
imported on first use (the ``remote`` extra); torch never is.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

from crnet.runtime.backends.base import BackendError
from crnet.runtime.errors import MissingExtraError
from crnet.runtime.preprocess import (
    InputError,
    as_rgb_uint8,
    channel_order,
    check_marked,
    checked_mask,
    resize_bilinear,
)
from crnet.runtime.support_slot import SupportSlot

SUPPORT_MODEL = "crnet_support"
SEGMENT_MODEL = "crnet_segment"
MAX_REREGISTRATIONS = 3  # per call: a store evicting every new support must not loop
_TAG = re.compile(r"\[crnet:(\w+)\] (.*?)(?:\n|\\n|$)", re.S)
_TRANSIENT = ("unavailable", "connection", "not ready", "unknown model", "is not found",
              "failed to connect", "socket closed", "broken pipe", "reset by peer",
              "deadline exceeded", "stub process is not healthy",
              "concurrent rpc limit exceeded")
_TRANSIENT_KINDS = ("ServerBusy", "ServerUnavailable")
"""Errors of the server's front end that pass: too many connections, Triton restarting."""
_TOO_LARGE = re.compile(r"received message larger than max \((\d+) vs\. (\d+)\)", re.I)


class UnknownSupportError(InputError):
    """A support id the store does not hold (never registered, evicted, expired, restart)."""


class RequestLimitError(InputError):
    """A request over one of the server's bounds (id length, image pixels, K, request size)."""


@dataclass
class _Registered:
    """A support registered with the server: what was sent, and the id it gave (updated
    when the server lost the support and it was registered again)."""

    images: np.ndarray
    masks: np.ndarray
    key: str


class RemoteError(BackendError):
    """The server failed a request for a reason other than the client's input."""


class RemoteSegmenter:
    """Segment through a `crnet serve` server: ``url`` as tritonclient takes it.

    ``host:port`` (or ``http://host:port``) uses HTTP; ``grpc://host:port`` uses gRPC.
    ``retry_timeout_s``: how long a request keeps retrying while the server is unreachable
    or restarting (seconds >= 0); ``timeout_s``: the network timeout of one request
    (seconds > 0); ``pipeline_depth``: requests in flight in ``segment_stream`` (an int
    >= 1); ``channels``: the colour order of the images given to it, "rgb" (default) or
    "bgr" (OpenCV), which each call may override. Wrong values raise InputError.
    """

    def __init__(self, url: str = "localhost:8000", *, retry_timeout_s: float = 60.0,
                 timeout_s: float = 60.0, pipeline_depth: int = 2,
                 channels: str = "rgb") -> None:
        if not isinstance(url, str):
            raise InputError(f"url must be a str (host:port, http://host:port or "
                             f"grpc://host:port), got {type(url).__name__} {url!r}")
        self.protocol, self.url = _parse_url(url)
        self.retry_timeout_s = _seconds(retry_timeout_s, "retry_timeout_s", zero=True)
        self.timeout_s = _seconds(timeout_s, "timeout_s", zero=False)
        if isinstance(pipeline_depth, bool) or not isinstance(pipeline_depth, int) \
                or pipeline_depth < 1:
            raise InputError(f"pipeline_depth must be an int >= 1 (requests in flight), got "
                             f"{type(pipeline_depth).__name__} {pipeline_depth!r}")
        self.pipeline_depth = pipeline_depth
        self.channels = channel_order(channels)
        self._module = _client_module(self.protocol)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._support_slot: SupportSlot[_Registered] = SupportSlot(
            missing="call set_support(images, masks) before segment()",
            advice="to give each thread its own support, give each thread its own "
                   "RemoteSegmenter (registering the same support twice gives the same id "
                   "and one copy on the server)")
        self.reregistrations = 0
        self.retries = 0

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection this object opened."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        self._local = threading.local()

    def __enter__(self) -> RemoteSegmenter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def support_id(self) -> str | None:
        """The id the server gave the current support, or None before set_support()."""
        registered = self._support_slot.current
        return None if registered is None else registered.key

    # -- support ---------------------------------------------------------------------------

    def set_support(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                    channels: str | None = None) -> None:
        """Register the support set with the server (Segmenter.set_support's arguments).

        ``crnet_support`` takes one [K,H,W,3] tensor, so supports of different sizes are
        brought to one size here before they are sent: each image and mask is resized to
        the largest height and the largest width among them (images bilinear and rounded
        to uint8; masks nearest-neighbour, so their 0/1/255 labels stay labels). The
        server resizes every support to the network's input anyway, so this only adds
        one resampling step: the encoding is close to, not bit-equal with, a local
        Segmenter's, which resizes each support from its own size. Supports of one size
        are sent as they are. Bad supports raise InputError (the Segmenter's messages).
        """
        image_batch, mask_batch = _stack_support(images, masks,
                                                 self._order(channels))
        key = self._register(image_batch, mask_batch)
        self._support_slot.install(_Registered(image_batch, mask_batch, key))

    def clear_support(self) -> None:
        """Forget the support set (the server drops it in time, by its LRU bounds)."""
        self._support_slot.clear()

    # -- query -----------------------------------------------------------------------------

    @overload
    def segment(self, image: np.ndarray, return_prob: Literal[False] = ..., *,
                channels: str | None = ...) -> np.ndarray: ...

    @overload
    def segment(self, image: np.ndarray, return_prob: Literal[True], *,
                channels: str | None = ...) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def segment(self, image: np.ndarray, return_prob: bool, *,
                channels: str | None = ...) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...

    def segment(self, image: np.ndarray, return_prob: bool = False, *,
                channels: str | None = None
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment ``image`` (HxWx3 uint8 in ``channels`` order, "rgb" or "bgr";
        grayscale and RGBA converted) on the server: the HxW bool mask, or
        ``(mask, probability)`` with ``return_prob``. Threads share the support
        set_support() registered, with Segmenter's rule: a thread whose own support another
        thread has replaced gets SupportReplacedError."""
        return self._segment_with(self._support_slot.for_this_thread(), image, return_prob,
                                  self._order(channels))

    def _segment_with(self, registered: _Registered, image: np.ndarray, return_prob: bool,
                      order: str) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """segment() against ``registered``, re-registering it when the server lost it."""
        rgb = np.ascontiguousarray(as_rgb_uint8(image, "query image", order))
        key = registered.key
        deadline = time.monotonic() + self.retry_timeout_s
        for attempt in range(MAX_REREGISTRATIONS + 1):
            try:
                mask, probability = self._segment_once(key, rgb, return_prob)
                break
            except _Tagged as error:
                if error.kind != "UnknownSupportError" or attempt == MAX_REREGISTRATIONS:
                    raise error.as_exception() from None
                # Evicted or the server restarted: register again (same content, same id).
                key = self._register(registered.images, registered.masks, deadline=deadline)
                self.reregistrations += 1
                registered.key = key
        if not return_prob:
            return mask
        if probability is None:  # the server answered without the output asked for
            raise RemoteError(f"{SEGMENT_MODEL} returned no probability")
        return mask, probability

    @overload
    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: Literal[False] = ...,
                       pipeline: bool = ..., *, channels: str | None = ...
                       ) -> Iterator[np.ndarray]: ...

    @overload
    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: Literal[True],
                       pipeline: bool = ..., *, channels: str | None = ...
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    @overload
    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: bool,
                       pipeline: bool = ..., *, channels: str | None = ...
                       ) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]: ...

    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: bool = False,
                       pipeline: bool = True, *, channels: str | None = None
                       ) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
        """Segment frames in order; with ``pipeline``, up to ``pipeline_depth`` requests are
        in flight at once. An error raises at the failing frame."""
        order = self._order(channels)
        # the calling thread's support, resolved here: the pool's threads set none
        registered = self._support_slot.for_this_thread()
        if not pipeline:
            for frame in frames:
                yield self._segment_with(registered, frame, return_prob, order)
            return
        with ThreadPoolExecutor(self.pipeline_depth, thread_name_prefix="remote-seg") as pool:
            pending: deque[Future[Any]] = deque()
            try:
                for frame in frames:
                    pending.append(pool.submit(self._segment_with, registered, frame,
                                               return_prob, order))
                    if len(pending) >= self.pipeline_depth:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

    def _order(self, channels: str | None) -> str:
        """The channel order of a call: its own ``channels``, else this client's."""
        return self.channels if channels is None else channel_order(channels)

    # -- transport -------------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.url)
            else:
                client = self._module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _infer(self, model: str, inputs: list[tuple[str, np.ndarray, str]],
               outputs: Sequence[str], deadline: float | None = None) -> Any:
        """One inference with retries on transient failures until the deadline."""
        deadline = deadline if deadline is not None else time.monotonic() + self.retry_timeout_s
        delay = 0.05
        while True:
            try:
                client = self._client()
                tensors = []
                for name, array, datatype in inputs:
                    tensor = self._module.InferInput(name, list(array.shape), datatype)
                    tensor.set_data_from_numpy(array)
                    tensors.append(tensor)
                requested = [self._module.InferRequestedOutput(name) for name in outputs]
                kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
                return client.infer(model, tensors, outputs=requested, **kwargs)
            except Exception as error:  # noqa: BLE001 - sorted below
                tagged = _tagged(error)
                if tagged is not None and tagged.kind not in _TRANSIENT_KINDS:
                    raise tagged from None
                if not _transient(error) or time.monotonic() + delay > deadline:
                    raise RemoteError(
                        f"{model} on {self.protocol}://{self.url} failed: {error}".strip()
                        + (" (gave up after retrying for "
                           f"{self.retry_timeout_s:g} s)" if _transient(error) else "")
                    ) from error
                self.retries += 1
                self._drop_client()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _register(self, images: np.ndarray, masks: np.ndarray,
                  deadline: float | None = None) -> str:
        try:
            result = self._infer(SUPPORT_MODEL, [("images", images, "UINT8"),
                                                 ("masks", masks, "UINT8")],
                                 ["support_id"], deadline)
        except _Tagged as error:
            raise error.as_exception() from None
        value = np.asarray(result.as_numpy("support_id")).reshape(-1)[0]
        return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)

    def _segment_once(self, key: str, rgb: np.ndarray, return_prob: bool
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        # Without return_prob only the mask travels back (1 byte a pixel instead of 5).
        outputs = ["mask", "probability"] if return_prob else ["mask"]
        result = self._infer(SEGMENT_MODEL,
                             [("support_id", np.array([key.encode()], dtype=np.object_),
                               "BYTES"), ("image", rgb, "UINT8")], outputs)
        probability = (np.asarray(result.as_numpy("probability"), dtype=np.float32)
                       if return_prob else None)
        return np.asarray(result.as_numpy("mask"), dtype=bool), probability


class _Tagged(Exception):
    """A server error tagged ``[crnet:<kind>] <message>``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message

    def as_exception(self) -> Exception:
        if self.kind == "UnknownSupportError":
            return UnknownSupportError(self.message)
        if self.kind == "RequestLimitError":
            return RequestLimitError(self.message)
        if self.kind.endswith("InputError") or self.kind in ("NoSupportError", "ValueError"):
            return InputError(self.message)
        return RemoteError(f"server error ({self.kind}): {self.message}")


def _tagged(error: BaseException) -> _Tagged | None:
    if isinstance(error, _Tagged):
        return error
    match = _TAG.search(str(error))
    if match:
        return _Tagged(match.group(1), match.group(2).strip())
    too_large = _TOO_LARGE.search(str(error))  # gRPC's own refusal, from the message's length
    if too_large:
        sent, limit = (int(value) / 2**20 for value in too_large.groups())
        return _Tagged("RequestLimitError",
                       f"request of {sent:.1f} MiB is larger than the {limit:.1f} MiB this "
                       "server reads (--max-request-mb plus 1 MiB for the header); send "
                       "smaller images")
    return None


def _transient(error: BaseException) -> bool:
    """True for failures a restarting, busy or briefly unreachable server causes."""
    if isinstance(error, OSError | TimeoutError | ConnectionError):
        return True
    tagged = _tagged(error)
    if tagged is not None:
        return tagged.kind in _TRANSIENT_KINDS
    text = f"{type(error).__name__}: {error}".lower()
    return any(marker in text for marker in _TRANSIENT)


def _parse_url(url: str) -> tuple[str, str]:
    if url.startswith("grpc://"):
        return "grpc", url[len("grpc://"):]
    if url.startswith("http://"):
        return "http", url[len("http://"):]
    if "://" in url:
        raise InputError(f"url {url!r}: expected host:port (HTTP), http://host:port or "
                         "grpc://host:port")
    return "http", url


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module  # type: ignore[import-not-found,unused-ignore]
        else:
            import tritonclient.http as module  # type: ignore[import-not-found,unused-ignore]
    except ImportError as error:  # tritonclient, or the part of it for this protocol
        raise MissingExtraError(error.name or "tritonclient",
                                f"RemoteSegmenter over {protocol}", extra="remote") from None
    return module


def _seconds(value: object, what: str, *, zero: bool) -> float:
    """A duration argument checked: a number >= 0 (``zero``) or > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
            or value < 0 or (value == 0 and not zero):
        raise InputError(f"{what} must be a number {'>=' if zero else '>'} 0 (seconds), got "
                         f"{type(value).__name__} {value!r}")
    return float(value)


def _stack_support(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                   channels: str = "rgb") -> tuple[np.ndarray, np.ndarray]:
    """K images and masks -> [K,H,W,3] uint8 RGB and [K,H,W] uint8, checked as Segmenter
    does; supports of different sizes are resized to the largest height and width
    (RemoteSegmenter.set_support says how)."""
    for items, what in ((images, "images"), (masks, "masks")):
        if isinstance(items, np.ndarray | str | bytes) or not isinstance(items, Iterable):
            shape = f" of shape {items.shape}" if isinstance(items, np.ndarray) else ""
            raise InputError(f"support {what} must be a list of arrays (one per shot), got "
                             f"{type(items).__name__}{shape}; wrap one array: [array]")
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise InputError(f"{len(images)} support images but {len(masks)} support masks")
    if not images:
        raise InputError("no support image: pass at least one image and its mask")
    rgbs = [as_rgb_uint8(image, f"support image {shot}", channels)
            for shot, image in enumerate(images)]
    mask_arrays = []
    for shot, mask in enumerate(masks):
        what = f"support mask {shot}"
        checked = checked_mask(mask, rgbs[shot].shape, what)
        check_marked(checked, what)
        mask_arrays.append(checked.astype(np.uint8, copy=False))
    height = max(rgb.shape[0] for rgb in rgbs)
    width = max(rgb.shape[1] for rgb in rgbs)
    return (np.stack([_resized_image(rgb, height, width) for rgb in rgbs]),
            np.stack([_resized_mask(mask, height, width) for mask in mask_arrays]))


def _resized_image(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """An RGB image at height x width (bilinear, rounded), or itself at that size."""
    if rgb.shape[:2] == (height, width):
        return rgb
    resized = resize_bilinear(rgb, (height, width))
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _resized_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A label mask at height x width by nearest neighbour (half-pixel centres), so every
    value stays one of the mask's own labels."""
    if mask.shape == (height, width):
        return mask
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.int64),
                      mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.int64),
                      mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]
