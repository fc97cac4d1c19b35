"""`crnet serve`'s public gRPC port: a bounded byte-level proxy in front of tritonserver.

Triton reads a whole request into memory (and, under PyTriton, into shared memory) before
any crnet check can run, so a huge request is refused only after it was uploaded. This front
end listens on the public gRPC port and forwards to tritonserver on an internal loopback
port, with three bounds Triton lacks:

* a request message over ``max_message_bytes`` is refused from its 5-byte length prefix
  (RESOURCE_EXHAUSTED), so nothing of it is buffered and Triton never sees it;
* at most ``max_concurrent`` RPCs run at once; the next is refused at once
  (RESOURCE_EXHAUSTED) instead of queueing without bound;
* only the inference and health methods of ``inference.GRPCInferenceService`` are
  forwarded. Model loading and unloading, shared-memory registration, trace and log
  settings, and every other service are refused with PERMISSION_DENIED, as the port has no
  authentication.

Messages travel as raw bytes (grpcio generic handlers). Invocation metadata, the remaining
deadline and cancellation go upstream; the upstream's metadata, status code and details come
back unchanged.

A request within the size bound can still cost the server memory it keeps: Triton copies
each request into the Python-backend instance's shared memory before any model code runs,
and that region keeps its largest size. So with ``check`` set, each ModelInfer request and
each ModelStreamInfer message is decoded as a ``ModelInferRequest`` and its declared inputs
(datatypes, shapes, BYTES element lengths) are checked before it is forwarded; a refused
one never reaches Triton and ends the RPC with INVALID_ARGUMENT and a one-line
``[crnet:<error>]`` message. A message that is not a well-formed inference request (not
that protobuf message, raw buffers not one per input, BYTES data not in Triton's
serialization) is refused the same way, as Triton would refuse it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc

from crnet.runtime.preprocess import InputError
from crnet.serve.http_front import FrontEndError
from crnet.serve.limits import DeclaredTensor, bytes_items, one_line

LOG = logging.getLogger("crnet.serve.grpc_front")

SERVICE = "inference.GRPCInferenceService"
UNARY_METHODS = frozenset({
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
    "ModelInfer", "ModelConfig",
})
"""Unary-unary methods forwarded upstream (names as in Triton's grpc_service.proto).
Statistics are left out, as on HTTP: PyTriton's Triton restricts them to its own access
token, and the metrics port serves them."""
STREAM_METHODS = frozenset({"ModelStreamInfer"})
"""Stream-stream methods forwarded upstream."""

MAX_NAME_CHARS = 200
NO_DEADLINE_S = 1e8
"""A remaining time above this is grpcio's stand-in for "no deadline"."""

_HOP_KEYS = frozenset({
    "user-agent", "content-type", "te", "host", "connection", "keep-alive",
    "proxy-connection", "transfer-encoding", "upgrade",
})
_UNREACHABLE_HINTS = (
    "failed to connect", "connection refused", "connections to all backends failing",
    "socket closed", "connection reset", "name resolution",
)
CHECKED_UNARY = "ModelInfer"
"""The unary method whose request ``check`` sees (ModelStreamInfer: each message)."""
MAX_SCANNED_ITEMS = 1 << 16
"""BYTES inputs with more elements than this are not measured item by item (item_bytes
None): the crnet models take one id, and Triton checks the serialization itself."""
MAX_LOGGED_CHARS = 300
CHECK_FAILED_DETAILS = ("[crnet:InternalError] the request could not be checked; the "
                        "server log has the cause")
UNREACHABLE_DETAILS = ("[crnet:ServerUnavailable] the inference server behind this port is not "
                       "reachable: it is starting, stopping or has stopped; retry later")


def forwardable(metadata: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """The metadata pairs worth passing across the proxy: without pseudo-headers (``:``),
    gRPC's own keys (``grpc-``) and HTTP hop-by-hop headers, which the transport sets."""
    kept = []
    for key, value in metadata or ():
        name = key.lower()
        if name.startswith((":", "grpc-")) or name in _HOP_KEYS:
            continue
        kept.append((key, value))
    return kept


def refusal_details(method: str) -> str:
    """The one-line details text for a method this port does not serve."""
    name = method.lstrip("/")
    name = "".join(c if c.isprintable() else "?" for c in name[:MAX_NAME_CHARS])
    if len(method.lstrip("/")) > MAX_NAME_CHARS:
        name += "..."
    return (f"[crnet:RequestError] {name} is not served here: crnet serve forwards only "
            "the inference and health methods")


def _unreachable(error: grpc.RpcError) -> bool:
    """Whether an upstream error means the upstream could not be reached at all (rather
    than the upstream answering UNAVAILABLE itself)."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (error.details() or "").lower()
    return any(hint in details for hint in _UNREACHABLE_HINTS)


Check = Callable[[str, Mapping[str, DeclaredTensor]], None]
"""``check(model, declared inputs)``: returns, or raises an InputError to refuse."""


def _service_pb2() -> Any:
    """tritonclient's generated messages for Triton's gRPC service; FrontEndError if they
    are not installed."""
    try:
        from tritonclient.grpc import service_pb2
    except ImportError as error:
        raise FrontEndError(
            "checking gRPC inference requests needs tritonclient's gRPC messages, which are "
            f"not importable ({error}); install crnet's serve extra") from None
    return service_pb2


def declared_inputs(message: bytes, service_pb2: Any
                    ) -> tuple[str, dict[str, DeclaredTensor]]:
    """(model name, {input name: DeclaredTensor}) of a serialized ModelInferRequest.

    BYTES element lengths come from the input's raw buffer (``raw_input_contents`` is
    positional: the i-th buffer holds the i-th input) or from ``contents.bytes_contents``.
    Raises InputError if ``message`` is not a well-formed inference request.
    """
    from google.protobuf.message import DecodeError

    try:
        request = service_pb2.ModelInferRequest.FromString(message)
    except (DecodeError, ValueError):
        raise InputError("the request is not a Triton inference request (an "
                         "inference.ModelInferRequest protobuf message); send what "
                         "Triton's gRPC clients send") from None
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"the request has {len(raw)} raw_input_contents for "
                         f"{len(request.inputs)} inputs; send one raw buffer per input")
    declared = {}
    for index, tensor in enumerate(request.inputs):
        shape = tuple(tensor.shape)
        item_bytes = None
        if tensor.datatype == "BYTES":
            if raw:
                item_bytes = _raw_items(raw[index], math.prod(shape), tensor.name)
            elif tensor.contents.bytes_contents:
                item_bytes = tuple(len(item) for item in tensor.contents.bytes_contents)
        declared[tensor.name] = DeclaredTensor(tensor.datatype, shape, item_bytes)
    return request.model_name, declared


def _raw_items(buffer: bytes, count: int, name: str) -> tuple[int, ...] | None:
    """The element lengths of a raw BYTES buffer of ``count`` elements (None if there are
    too many to measure); InputError if the buffer is not Triton's serialization."""
    # each element takes at least its 4-byte length: bytes_items refuses more than fit
    if MAX_SCANNED_ITEMS < count <= len(buffer) // 4:
        return None
    items = bytes_items(buffer, count)
    if items is None:
        shown = "".join(c if c.isprintable() else "?" for c in name[:MAX_NAME_CHARS])
        raise InputError(f"{shown} data is not Triton's BYTES serialization (a 4-byte "
                         "length before each element)")
    return items


class _Refusal:
    """Why a request was not forwarded: the status and details the RPC ends with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details


def _checked(message: bytes, check: Check, service_pb2: Any) -> _Refusal | None:
    """None if ``message`` may go upstream, else the refusal (logged here, once)."""
    try:
        model, declared = declared_inputs(message, service_pb2)
        check(model, declared)
    except InputError as error:
        text = one_line(str(error))
        LOG.warning("refused gRPC inference request: %s", text[:MAX_LOGGED_CHARS])
        return _Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                        f"[crnet:{type(error).__name__}] {text}")
    except Exception:
        LOG.exception("checking a gRPC inference request failed")
        return _Refusal(grpc.StatusCode.INTERNAL, CHECK_FAILED_DETAILS)
    return None


class _Handlers(grpc.GenericRpcHandler):
    """Routes each call: allowed methods to the forwarders, all others to a refusal."""

    def __init__(self, front: GrpcFront) -> None:
        self._front = front

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        service, _, name = method.lstrip("/").partition("/")
        if service == SERVICE and name in UNARY_METHODS:
            return grpc.unary_unary_rpc_method_handler(self._front._unary(method))
        if service == SERVICE and name in STREAM_METHODS:
            return grpc.stream_stream_rpc_method_handler(self._front._stream(method))
        # stream-stream whatever the method's kind: it aborts before reading any message
        return grpc.stream_stream_rpc_method_handler(_refuse(method))


def _refuse(method: str) -> Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]]:
    details = refusal_details(method)

    def refuse(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        LOG.warning("refused gRPC method %r", method[:MAX_NAME_CHARS])
        context.abort(grpc.StatusCode.PERMISSION_DENIED, details)
        yield b""  # pragma: no cover - abort raises

    return refuse


class GrpcFront:
    """A bounded gRPC proxy for Triton's inference service (see the module docstring).

    ``upstream`` is tritonserver's gRPC address, ``"127.0.0.1:PORT"``. ``workers`` threads
    run the RPCs; each holds one thread while it is forwarded (a ModelStreamInfer stream
    for its whole life). Up to ``max_concurrent`` RPCs are admitted; those beyond
    ``workers`` wait for a thread.

    ``check``, if given, is called as ``check(model, declared inputs)`` for each ModelInfer
    request and each ModelStreamInfer message before it is forwarded, and refuses it by
    raising an InputError: a ModelInfer call then ends with INVALID_ARGUMENT and upstream
    is never called. In a stream, the refused message and all after it are not read or
    forwarded; the responses to the messages before it still come back, then the stream
    ends with INVALID_ARGUMENT. Any other exception from ``check`` ends the RPC with
    INTERNAL (and is logged with its traceback). ``check`` needs tritonclient's gRPC
    messages; start() raises FrontEndError if they cannot be imported.
    """

    def __init__(self, host: str, port: int, upstream: str, max_message_bytes: int,
                 max_concurrent: int = 64, workers: int = 16,
                 check: Check | None = None) -> None:
        if max_message_bytes < 1 or max_concurrent < 1 or workers < 1:
            raise ValueError("max_message_bytes, max_concurrent and workers must be >= 1")
        self.host, self.port, self.upstream = host, port, upstream
        self.max_message_bytes = max_message_bytes
        self.max_concurrent, self.workers = max_concurrent, workers
        self.check = check
        self._service_pb2: Any = None
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` as gRPC spells it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") \
            else self.host
        return f"{host}:{self.port}"

    def start(self) -> int:
        """Bind ``host:port`` (port 0: a free one) and start serving; the bound port.

        Raises FrontEndError (one line naming the address and ``--grpc-port``) if the
        address cannot be bound, e.g. because the port is in use, or (one line) if
        ``check`` is set and tritonclient's gRPC messages cannot be imported."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("GrpcFront is started already")
            if self.check is not None:
                self._service_pb2 = _service_pb2()
            executor = futures.ThreadPoolExecutor(self.workers,
                                                  thread_name_prefix="crnet-grpc-front")
            server = grpc.server(
                executor,
                handlers=(_Handlers(self),),
                options=[
                    ("grpc.max_receive_message_length", self.max_message_bytes),
                    ("grpc.max_send_message_length", -1),
                    # a busy port must fail to bind, not be shared with its holder
                    ("grpc.so_reuseport", 0),
                ],
                maximum_concurrent_rpcs=self.max_concurrent,
            )
            try:
                bound = server.add_insecure_port(self.address)
            except RuntimeError:
                bound = 0
            if not bound:
                server.stop(None)
                executor.shutdown(wait=True)
                raise FrontEndError(
                    f"cannot listen for gRPC on {self.address}: the port is in use or the "
                    "address is not this machine's; choose another port with --grpc-port")
            self._channel = grpc.insecure_channel(self.upstream, options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
            ])
            self.port = bound
            self._server, self._executor = server, executor
            server.start()
            LOG.info("gRPC front end on %s forwards to %s (max message %d bytes, "
                     "%d concurrent RPCs)", self.address, self.upstream,
                     self.max_message_bytes, self.max_concurrent)
            return bound

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting RPCs, let those in flight finish for up to ``grace_s`` seconds
        (then cancel them), close the upstream channel and end the worker threads."""
        with self._lock:
            server, executor, channel = self._server, self._executor, self._channel
            self._server = self._executor = self._channel = None
        if server is None:
            return
        server.stop(grace_s).wait()
        if channel is not None:
            channel.close()
        if executor is not None:
            executor.shutdown(wait=True)

    # -- forwarding ---------------------------------------------------------------------

    def _call_options(self, context: grpc.ServicerContext) -> dict[str, Any]:
        remaining = context.time_remaining()
        timeout = None if remaining is None or remaining > NO_DEADLINE_S else remaining
        return {"timeout": timeout,
                "metadata": forwardable(context.invocation_metadata())}

    def _upstream(self, context: grpc.ServicerContext) -> grpc.Channel:
        channel = self._channel
        if channel is None:  # stopped after the grace period
            context.abort(grpc.StatusCode.UNAVAILABLE, UNREACHABLE_DETAILS)
        return channel

    def _checker(self, method: str) -> Callable[[bytes], _Refusal | None] | None:
        """The check for ``method``'s request messages, or None if they are not checked."""
        check, service_pb2 = self.check, self._service_pb2
        name = method.rpartition("/")[2]
        if check is None or service_pb2 is None or \
                name not in (CHECKED_UNARY, *STREAM_METHODS):
            return None
        return lambda message: _checked(message, check, service_pb2)

    def _unary(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        checker = self._checker(method)

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            refusal = checker(request) if checker is not None else None
            if refusal is not None:
                context.abort(refusal.code, refusal.details)
            try:
                call = self._upstream(context).unary_unary(method).future(
                    request, **self._call_options(context))
            except ValueError:  # the channel was closed meanwhile
                context.abort(grpc.StatusCode.UNAVAILABLE, UNREACHABLE_DETAILS)
            context.add_callback(call.cancel)
            try:
                response = call.result()
            except grpc.RpcError as error:
                _relay_error(context, error)
            except grpc.FutureCancelledError:
                context.abort(grpc.StatusCode.CANCELLED, "cancelled")
            _relay_metadata(context, call)
            return response

        return forward

    def _stream(self, method: str
                ) -> Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]]:
        checker = self._checker(method)

        def forward(requests: Iterator[bytes], context: grpc.ServicerContext
                    ) -> Iterator[bytes]:
            refused: list[_Refusal] = []
            if checker is not None:
                requests = _until_refused(requests, checker, refused)
            try:
                call = self._upstream(context).stream_stream(method)(
                    requests, **self._call_options(context))
            except ValueError:  # the channel was closed meanwhile
                context.abort(grpc.StatusCode.UNAVAILABLE, UNREACHABLE_DETAILS)
            context.add_callback(call.cancel)
            try:
                context.send_initial_metadata(forwardable(call.initial_metadata()))
                yield from call
                context.set_trailing_metadata(forwardable(call.trailing_metadata()))
            except grpc.RpcError as error:
                if not refused:
                    _relay_error(context, error)
            if refused:
                context.abort(refused[0].code, refused[0].details)

        return forward


def _until_refused(requests: Iterator[bytes], checker: Callable[[bytes], _Refusal | None],
                   refused: list[_Refusal]) -> Iterator[bytes]:
    """The messages of ``requests`` up to the first one ``checker`` refuses, which is put in
    ``refused``; the stream upstream then half-closes, so the upstream answers the messages
    before it and ends."""
    for message in requests:
        refusal = checker(message)
        if refusal is not None:
            refused.append(refusal)
            return
        yield message


def _relay_metadata(context: grpc.ServicerContext, call: Any) -> None:
    initial = forwardable(call.initial_metadata())
    if initial:
        context.send_initial_metadata(initial)
    trailing = forwardable(call.trailing_metadata())
    if trailing:
        context.set_trailing_metadata(trailing)


def _relay_error(context: grpc.ServicerContext, error: grpc.RpcError) -> None:
    """End the RPC with the upstream's status: same code and details (and trailing
    metadata), or UNAVAILABLE with one line if the upstream could not be reached."""
    if _unreachable(error):
        context.abort(grpc.StatusCode.UNAVAILABLE, UNREACHABLE_DETAILS)
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailing = forwardable(error.trailing_metadata()) if hasattr(error, "trailing_metadata") \
        else []
    if trailing:
        context.set_trailing_metadata(trailing)
    if code == grpc.StatusCode.OK:  # cannot abort with OK; should not happen
        code = grpc.StatusCode.UNKNOWN
    context.abort(code, details or "")
