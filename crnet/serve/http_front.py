"""`crnet serve`'s public HTTP endpoint: a bounded front end forwarding to tritonserver.

Triton reads a whole request body, and copies its tensors into a Python-backend instance's
shared memory, before any crnet code sees the request; its tritonserver has no body-size
option. So `crnet serve` listens on the public port itself and runs Triton on an internal
loopback port. For each request the front end reads only the head, then:

* refuses a route that inference clients do not need (403): model loading and unloading,
  shared-memory registration, statistics, trace and log settings;
* refuses a body over the limit (413) from its ``Content-Length``, before reading it, and
  a body without one (411: chunked uploads cannot be measured first);
* reads an inference request's JSON header (at most ``max_header_bytes``) and checks the
  tensors it declares (shapes, types, BYTES lengths) with ``check`` before any tensor
  byte is read (400): Triton copies a request into a Python-backend instance's shared
  memory before any model code runs, and that region keeps its largest size, so a
  request within the size bound but with, say, a 4 MiB support id must not reach it;
* refuses a connection over ``max_connections`` at once (503) and drops a client that
  stalls for ``timeout_s``;
* streams what passes to Triton in 1 MiB pieces and the answer back the same way.

Refusals carry Triton's error form, ``{"error": "[crnet:<Kind>] <one line>"}``, which
tritonclient and RemoteSegmenter read as they read the models' own errors. Stdlib only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from crnet.runtime.errors import CrnetError
from crnet.runtime.preprocess import InputError
from crnet.serve.limits import DeclaredTensor, flattened, one_line

LOG = logging.getLogger("crnet.serve.http_front")

PIECE_BYTES = 1 << 20
"""Bytes read from one side and written to the other at a time."""
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_TIMEOUT_S = 30.0
"""A client silent this long (request head, body, or between keep-alive requests) is dropped."""
UPSTREAM_TIMEOUT_S = 600.0
"""How long Triton may take to answer one request."""
LINGER_S = 5.0
"""After refusing a body it did not read, how long the front end keeps reading (and
discarding) what the client still sends, so that the client gets the answer rather than a
reset connection."""
UNKNOWN_LENGTH = 1 << 62
"""The unread body of a request without a usable Content-Length: read until the client
stops, or LINGER_S passes."""
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                        "expect", "host", "content-length"})

_MODEL = r"/v2/models/(?!stats$)[^/?#]+(?:/versions/[^/?#]+)?"
"""A model's path; ``/v2/models/stats`` is Triton's statistics, not a model."""
INFERENCE_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = tuple(
    (frozenset(methods), re.compile(pattern)) for methods, pattern in (
        ({"GET", "HEAD"}, r"/v2/health/(?:live|ready)"),
        ({"GET", "HEAD"}, r"/v2"),
        ({"GET", "HEAD"}, _MODEL),
        ({"GET", "HEAD"}, _MODEL + r"/(?:ready|config)"),
        ({"POST"}, _MODEL + r"/infer"),
    ))
"""What an inference client of Triton's HTTP/REST protocol uses: health, metadata, model
configuration and inference. Statistics are on the metrics port."""
METRICS_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = (
    (frozenset({"GET", "HEAD"}), re.compile(r"/metrics")),)


class FrontEndError(CrnetError):
    """The front end cannot listen where it was asked to."""


@dataclass(frozen=True)
class FrontSettings:
    """What one HTTP front end accepts and where it forwards."""

    upstream_port: int
    """Triton's HTTP (or metrics) port on 127.0.0.1."""
    max_body_bytes: int
    """The largest request body read; larger ones get 413 before any byte of it is read."""
    routes: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = INFERENCE_ROUTES
    limit_hint: str = "--max-request-mb"
    """The flag that raises max_body_bytes, named in the 413 message."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    timeout_s: float = DEFAULT_TIMEOUT_S
    append: Callable[[], bytes] | None = None
    """Text added to every successful answer (the metrics front end adds the support
    store's metrics to Triton's)."""
    check: Callable[[str, Mapping[str, DeclaredTensor]], None] | None = None
    """Checks an inference request's declared inputs (model name, tensors) before its
    data is read; raises InputError to refuse it (crnet.serve.limits.check_declared)."""
    max_header_bytes: int = 1 << 20
    """The largest JSON part of an inference request read for ``check``."""
    port_flag: str = "--http-port"
    """The flag that moves this front end to another port, named when it cannot listen."""


def error_body(kind: str, message: str) -> bytes:
    """Triton's HTTP error form carrying crnet's one-line ``[crnet:<kind>] <message>``."""
    return json.dumps({"error": f"[crnet:{kind}] {message}"}).encode()


def allowed(routes: Sequence[tuple[frozenset[str], re.Pattern[str]]], method: str,
            path: str) -> bool:
    """Whether ``method path`` (query string ignored) is one of ``routes``."""
    bare = path.split("?", 1)[0].rstrip("/") or "/"
    return any(method in methods and pattern.fullmatch(bare) for methods, pattern in routes)


_INFER = re.compile(r"/v2/models/([^/?#]+)(?:/versions/[^/?#]+)?/infer")


def declared_inputs(header: Any, binary: bool) -> dict[str, DeclaredTensor]:
    """The input tensors a Triton HTTP inference header declares. ``binary``: the request
    uses the binary tensor extension, so a BYTES input's ``binary_data_size`` gives its
    length (4 bytes of length prefix per element). InputError when it is not that form."""
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(inputs, list):
        raise InputError('the request header has no "inputs" list: send Triton\'s '
                         "inference request form")
    declared: dict[str, DeclaredTensor] = {}
    for entry in inputs[:64]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError('each input of the request header needs a "name"')
        name, shape = entry["name"][:100], entry.get("shape")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(
                isinstance(side, int) and not isinstance(side, bool) for side in shape)):
            raise InputError(f"input {name!r} needs a shape of at most 8 integers")
        datatype = str(entry.get("datatype", ""))[:20]
        items: tuple[int, ...] | None = None
        parameters = entry.get("parameters") if isinstance(entry.get("parameters"), dict) else {}
        if datatype == "BYTES":
            size = parameters.get("binary_data_size")
            if binary and isinstance(size, int) and "data" not in entry:
                items = (max(0, size - 4),) if math.prod(shape) == 1 else None
            elif "data" in entry:
                items = tuple(len(str(value).encode()) for value in flattened(entry["data"]))
        declared[name] = DeclaredTensor(datatype, tuple(shape), items)
    return declared


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


class _Server(ThreadingHTTPServer):
    """A threaded HTTP server with at most ``max_connections`` connections at a time."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], settings: FrontSettings) -> None:
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        body = error_body("ServerBusy", f"this server already has "
                          f"{self.settings.max_connections} connections open "
                          "(--max-connections); retry shortly")
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(OSError):
            request.settimeout(0.0)  # a small answer fits the socket buffer; never wait
            request.sendall(head.encode() + body)
        self.shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _upstream: http.client.HTTPConnection | None = None
    _continued = False
    """Whether "100 Continue" was sent for the request being handled."""

    def setup(self) -> None:
        self.timeout = self.server.settings.timeout_s
        super().setup()
        # the head and the body of an answer go out as separate writes: without this,
        # Nagle's algorithm holds the second until the client's delayed ACK (40 ms)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        self._drop_upstream()
        with contextlib.suppress(OSError):
            super().finish()

    def handle_expect_100(self) -> bool:
        # "100 Continue" is sent only once the request passed its checks (in _forward):
        # a client that waits for it never uploads a body that will be refused.
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        LOG.debug("%s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._forward()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET  # noqa: N815

    def _forward(self) -> None:
        settings = self.server.settings
        self._continued = False
        chunked = bool(self.headers.get("Transfer-Encoding"))
        raw_length = self.headers.get("Content-Length", "0").strip()
        length = int(raw_length) if raw_length.isdigit() else 0
        # a body this request is refused with is never read: the connection closes after
        # the answer (its bytes would otherwise be read as the next request)
        unread = UNKNOWN_LENGTH if chunked or not raw_length.isdigit() else length
        if not allowed(settings.routes, self.command, self.path):
            self._refuse(403, "RequestError",
                         f"{self.command} {self.path.split('?', 1)[0][:200]} is not served "
                         "here: crnet serve forwards only health, metadata, model "
                         "configuration and inference requests", unread=unread)
            return
        if chunked:
            self._refuse(411, "RequestError", "send the request body with a Content-Length "
                         "header: this server does not accept chunked uploads", unread=unread)
            return
        if not raw_length.isdigit():
            self._refuse(400, "RequestError", f"Content-Length {raw_length[:40]!r} is not a "
                         "number of bytes", unread=unread)
            return
        if length > settings.max_body_bytes:
            self._refuse(413, "RequestLimitError",
                         f"request body of {_mib(length)} is larger than the "
                         f"{_mib(settings.max_body_bytes)} this server reads "
                         f"({settings.limit_hint}); send smaller images", unread=length)
            return
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
            self._continued = True
        try:
            prefix = self._checked_header(length)
            if prefix is None:
                return
            response = self._send_upstream(length, prefix)
        except _ClientGone:
            self.close_connection = True
            return
        except (OSError, http.client.HTTPException) as error:
            self._drop_upstream()
            LOG.warning("Triton did not answer %s %s: %s", self.command,
                        self.path[:200], error)
            self._refuse(503, "ServerUnavailable", "the inference server behind this "
                         "endpoint did not answer; retry shortly")
            return
        self._relay(response)

    def _checked_header(self, length: int) -> bytes | None:
        """For an inference request, when the settings have a check: read the JSON part
        of the body and check the inputs it declares; the bytes read (sent on first), or
        None when the request was refused. Other requests: b"", nothing read."""
        settings = self.server.settings
        model = _INFER.fullmatch(self.path.split("?", 1)[0].rstrip("/"))
        if settings.check is None or self.command != "POST" or model is None:
            return b""
        raw = self.headers.get("Inference-Header-Content-Length")
        json_length = int(raw) if raw is not None and raw.strip().isdigit() else (
            length if raw is None else -1)
        if not 0 <= json_length <= length:
            self._refuse(400, "RequestError", "Inference-Header-Content-Length must be a "
                         f"number of bytes within the body's {length}", unread=length)
            return None
        if json_length > settings.max_header_bytes:
            self._refuse(413, "RequestLimitError",
                         f"the JSON part of the request is {_mib(json_length)}, more than "
                         f"the {_mib(settings.max_header_bytes)} this server reads; send "
                         "tensor data in binary (Triton's binary tensor extension, as "
                         "tritonclient does) or smaller images", unread=length)
            return None
        prefix = b"".join(self._body_pieces(json_length))
        try:
            header = json.loads(prefix)
            declared = declared_inputs(header, binary=raw is not None)
            settings.check(model.group(1), declared)
        except InputError as error:  # before ValueError: InputError is one
            self._refuse(400, type(error).__name__, one_line(str(error)),
                         unread=length - json_length)
            return None
        except (ValueError, RecursionError):
            self._refuse(400, "RequestError", "the request header is not JSON: send "
                         "Triton's inference request form", unread=length - json_length)
            return None
        return prefix

    def _body_pieces(self, count: int) -> Iterator[bytes]:
        """The next ``count`` bytes of the request body, at most PIECE_BYTES at a time;
        _ClientGone when the client stops sending first."""
        remaining = count
        while remaining:
            try:
                piece = self.rfile.read(min(PIECE_BYTES, remaining))
            except OSError:
                piece = b""
            if not piece:
                raise _ClientGone
            yield piece
            remaining -= len(piece)

    def _send_upstream(self, length: int, prefix: bytes = b"") -> http.client.HTTPResponse:
        """Send this request's head and its ``length`` body bytes to Triton (``prefix``,
        read already, first); its answer."""
        connection = self._upstream_connection()
        connection.putrequest(self.command, self.path, skip_host=True,
                              skip_accept_encoding=True)
        connection.putheader("Host", f"127.0.0.1:{self.server.settings.upstream_port}")
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                connection.putheader(name, value)
        if length or self.command in ("POST", "PUT", "PATCH"):
            connection.putheader("Content-Length", str(length))
        connection.endheaders()
        if prefix:
            connection.send(prefix)
        try:
            for piece in self._body_pieces(length - len(prefix)):
                connection.send(piece)
        except _ClientGone:  # Triton gets a cut request, which it drops
            self._drop_upstream()
            raise
        return connection.getresponse()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """Send Triton's answer back: its status and headers, then its body in pieces."""
        append = self.server.settings.append
        extra = append() if append is not None and response.status == 200 else b""
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        known = response.length
        chunked = known is None and self.command != "HEAD"
        if known is not None:
            self.send_header("Content-Length", str(known + len(extra)))
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while self.command != "HEAD":
                piece = response.read(PIECE_BYTES)
                if not piece:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if extra and self.command != "HEAD":
                self.wfile.write(b"%x\r\n%s\r\n" % (len(extra), extra) if chunked else extra)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        finally:
            response.close()
        if response.will_close or known is None:
            self._drop_upstream()

    def _upstream_connection(self) -> http.client.HTTPConnection:
        """This client connection's connection to Triton: kept between requests, and made
        anew when Triton closed it while idle."""
        connection = self._upstream
        if connection is not None and connection.sock is not None:
            readable, _, _ = select.select([connection.sock], [], [], 0)
            if readable:  # an idle connection is readable only when Triton closed it
                self._drop_upstream()
                connection = None
        if connection is None or connection.sock is None:
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.server.settings.upstream_port, timeout=UPSTREAM_TIMEOUT_S)
            connection.connect()
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._upstream = connection
        return connection

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _refuse(self, status: int, kind: str, message: str, unread: int = 0) -> None:
        """Answer ``status`` with the one-line error; with ``unread`` body bytes still on
        their way, close the connection after reading and discarding them for at most
        LINGER_S (a client that sends its whole body before reading gets the answer)."""
        LOG.warning("refused %s %s from %s: %d %s", self.command, self.path[:200],
                    self.client_address[0], status, message)
        body = error_body(kind, message)
        try:
            self.send_response_only(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if unread or status >= 500:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return
        waits = self.headers.get("Expect", "").lower() == "100-continue"
        if unread and (self._continued or not waits):  # else the client sends nothing
            self._discard(unread)

    def _discard(self, count: int) -> None:
        deadline = time.monotonic() + LINGER_S
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            while count > 0 and time.monotonic() < deadline:
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                piece = self.connection.recv(min(PIECE_BYTES, count))
                if not piece:
                    break
                count -= len(piece)


class _ClientGone(Exception):
    """The client closed its connection before sending the whole body."""


class HttpFront:
    """One bounded HTTP front end: listens on ``host:port``, forwards to Triton."""

    def __init__(self, host: str, port: int, settings: FrontSettings) -> None:
        self.host, self.port, self.settings = host, port, settings
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen and serve on a thread; the bound port (``port`` 0: a free one)."""
        try:
            self._server = _Server((self.host, self.port), self.settings)
        except OSError as error:
            raise FrontEndError(f"cannot listen on {self.host}:{self.port}: "
                                f"{error.strerror or error}; choose another port with "
                                f"{self.settings.port_flag}") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name=f"crnet-front-{self.port}", daemon=True)
        self._thread.start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop listening; connections still open end when their request does."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for Triton's internal ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
