"""runtime.RemoteSegmenter: the Segmenter API over a `crnet serve` Triton server.

    seg = RemoteSegmenter("localhost:8000")            # HTTP; "grpc://localhost:8001" for gRPC
    seg.set_support([support_rgb], [support_mask])      # registered once, kept server-side
    mask = seg.segment(frame_rgb)
    mask, probability = seg.segment(frame_rgb, return_prob=True)
    for mask in seg.segment_stream(frames): ...         # requests pipelined, results in order

The client keeps the support it registered: when the server restarts, or evicts the
support from its bounded store, the next request re-registers it and retries, and while
the server is unreachable requests are retried until ``retry_timeout_s``. tritonclient is
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
from typing import Any

import numpy as np

from crnet.runtime.backends.base import BackendError
from crnet.runtime.preprocess import InputError, as_rgb_uint8

SUPPORT_MODEL = "crnet_support"
SEGMENT_MODEL = "crnet_segment"
MAX_REREGISTRATIONS = 3  # per call: a store evicting every new support must not loop
_TAG = re.compile(r"\[crnet:(\w+)\] (.*?)(?:\n|\\n|$)", re.S)
_TRANSIENT = ("unavailable", "connection", "not ready", "unknown model", "is not found",
              "failed to connect", "socket closed", "broken pipe", "reset by peer",
              "deadline exceeded", "stub process is not healthy")


class UnknownSupportError(InputError):
    """A support id the store does not hold (never registered, evicted, expired, restart)."""


class RemoteError(BackendError):
    """The server failed a request for a reason other than the client's input."""


class RemoteSegmenter:
    """Segment through a `crnet serve` server: ``url`` as tritonclient takes it.

    ``host:port`` (or ``http://host:port``) uses HTTP; ``grpc://host:port`` uses gRPC.
    ``retry_timeout_s``: how long a request keeps retrying while the server is unreachable
    or restarting; ``timeout_s``: the network timeout of one request; ``pipeline_depth``:
    requests in flight in ``segment_stream``.
    """

    def __init__(self, url: str = "localhost:8000", *, retry_timeout_s: float = 60.0,
                 timeout_s: float = 60.0, pipeline_depth: int = 2) -> None:
        self.protocol, self.url = _parse_url(url)
        self.retry_timeout_s = float(retry_timeout_s)
        self.timeout_s = float(timeout_s)
        self.pipeline_depth = max(1, int(pipeline_depth))
        self._module = _client_module(self.protocol)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._support: tuple[np.ndarray, np.ndarray] | None = None
        self._support_id: str | None = None
        self._support_lock = threading.Lock()
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
        return self._support_id

    # -- support ---------------------------------------------------------------------------

    def set_support(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        """Register the support set with the server (Segmenter.set_support's arguments).

        The K images must share one size here, as ``crnet_support`` takes one
        [K,H,W,3] tensor. Bad supports raise InputError with the server's message.
        """
        image_batch, mask_batch = _stack_support(images, masks)
        key = self._register(image_batch, mask_batch)
        with self._support_lock:
            self._support, self._support_id = (image_batch, mask_batch), key

    def clear_support(self) -> None:
        """Forget the support set (the server drops it in time, by its LRU bounds)."""
        with self._support_lock:
            self._support, self._support_id = None, None

    # -- query -----------------------------------------------------------------------------

    def segment(self, image: np.ndarray, return_prob: bool = False
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment ``image`` (HxWx3 uint8 RGB; grayscale and RGBA converted) on the server:
        the HxW bool mask, or ``(mask, probability)`` with ``return_prob``."""
        rgb = as_rgb_uint8(image, "query image")
        with self._support_lock:
            support, key = self._support, self._support_id
        if support is None or key is None:
            raise InputError("no support set: call set_support(images, masks) before segment()")
        deadline = time.monotonic() + self.retry_timeout_s
        for attempt in range(MAX_REREGISTRATIONS + 1):
            try:
                mask, probability = self._segment_once(key, rgb, return_prob)
                break
            except _Tagged as error:
                if error.kind != "UnknownSupportError" or attempt == MAX_REREGISTRATIONS:
                    raise error.as_exception() from None
                # Evicted or the server restarted: register again (same content, same id).
                key = self._register(*support, deadline=deadline)
                self.reregistrations += 1
                with self._support_lock:
                    if self._support is support:
                        self._support_id = key
        return (mask, probability) if return_prob else mask  # type: ignore[return-value]

    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: bool = False,
                       pipeline: bool = True
                       ) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
        """Segment frames in order; with ``pipeline``, up to ``pipeline_depth`` requests are
        in flight at once. An error raises at the failing frame."""
        if not pipeline:
            for frame in frames:
                yield self.segment(frame, return_prob)
            return
        with ThreadPoolExecutor(self.pipeline_depth, thread_name_prefix="remote-seg") as pool:
            pending: deque[Future[Any]] = deque()
            try:
                for frame in frames:
                    pending.append(pool.submit(self.segment, frame, return_prob))
                    if len(pending) >= self.pipeline_depth:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

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
                if tagged is not None:
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
        if self.kind.endswith("InputError") or self.kind in ("NoSupportError", "ValueError"):
            return InputError(self.message)
        return RemoteError(f"server error ({self.kind}): {self.message}")


def _tagged(error: BaseException) -> _Tagged | None:
    if isinstance(error, _Tagged):
        return error
    match = _TAG.search(str(error))
    return _Tagged(match.group(1), match.group(2).strip()) if match else None


def _transient(error: BaseException) -> bool:
    """True for failures a restarting or briefly unreachable server causes."""
    if isinstance(error, OSError | TimeoutError | ConnectionError):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    return any(marker in text for marker in _TRANSIENT)


def _parse_url(url: str) -> tuple[str, str]:
    if url.startswith("grpc://"):
        return "grpc", url[len("grpc://"):]
    if url.startswith("http://"):
        return "http", url[len("http://"):]
    if "://" in url:
        raise ValueError(f"url {url!r}: expected host:port (HTTP), http://host:port or "
                         "grpc://host:port")
    return "http", url


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as error:
        raise BackendError(
            f"RemoteSegmenter over {protocol} needs tritonclient ({error}); install it with "
            "`pip install \"crnet-deploy[remote]\"` (or tritonclient[http,grpc])") from None
    return module


def _stack_support(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """K images and masks -> [K,H,W,3] uint8 and [K,H,W] uint8, checked as Segmenter does."""
    for items, what in ((images, "images"), (masks, "masks")):
        if isinstance(items, np.ndarray):
            raise InputError(f"support {what} must be a list of arrays (one per shot), got "
                             f"one array of shape {items.shape}; wrap it: [array]")
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise InputError(f"{len(images)} support images but {len(masks)} support masks")
    if not images:
        raise InputError("no support image: pass at least one image and its mask")
    rgbs = [as_rgb_uint8(image, f"support image {shot}") for shot, image in enumerate(images)]
    sizes = {rgb.shape[:2] for rgb in rgbs}
    if len(sizes) > 1:
        raise InputError(f"support images have sizes {sorted(sizes)}; RemoteSegmenter sends "
                         "one [K,H,W,3] tensor, so resize or crop them to one size first")
    mask_arrays = []
    for shot, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.shape != rgbs[shot].shape[:2]:
            raise InputError(f"support mask {shot} has shape {mask.shape}; expected "
                             f"{rgbs[shot].shape[:2]}, the size of its image")
        if mask.dtype == bool:
            mask = mask.astype(np.uint8)
        elif not np.issubdtype(mask.dtype, np.integer) or (
                mask.size and (mask.min() < 0 or mask.max() > 255)):
            raise InputError(f"support mask {shot} has dtype {mask.dtype}; expected bool or "
                             "integers 0 (background), 1 (object), 255 (ignore)")
        mask_arrays.append(mask.astype(np.uint8, copy=False))
    return np.stack(rgbs), np.stack(mask_arrays)
