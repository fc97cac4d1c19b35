"""The bounded HTTP front end of `crnet serve`, in front of a stand-in upstream: a stdlib
HTTP server on loopback that records what reaches it (tritonserver itself is exercised
by the slow tests of test_stop.py, from the serve extra's venv)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from crnet.runtime.preprocess import InputError
from crnet.serve import http_front
from crnet.serve.http_front import (
    METRICS_ROUTES,
    FrontEndError,
    FrontSettings,
    HttpFront,
    allowed,
    declared_inputs,
)
from crnet.serve.limits import RequestLimits, check_declared

LIMIT = 1 << 20


class Upstream:
    """Answers every request with JSON describing it, and records (method, path, body,
    headers); a request whose body was cut short is only counted in ``cut`` (Triton runs no
    inference for it either)."""

    def __init__(self, chunked: bool = False) -> None:
        self.seen: list[tuple[str, str, bytes, dict[str, str]]] = []
        self.cut = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length) if length else b""
                if len(body) < length:
                    upstream.cut += 1
                    self.close_connection = True
                    return
                upstream.seen.append((self.command, self.path, body, dict(self.headers)))
                if self.path == "/metrics":
                    answer = b"nv_inference_count 3\n"
                else:
                    answer = json.dumps({"path": self.path, "bytes": len(body)}).encode()
                self.send_response(200)
                self.send_header("Inference-Header-Content-Length", "7")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(answer), 5):
                        piece = answer[start:start + 5]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def start(settings: FrontSettings) -> tuple[HttpFront, int]:
    front = HttpFront("127.0.0.1", 0, settings)
    return front, front.start()


@pytest.fixture
def front(upstream: Upstream) -> Iterator[int]:
    server, port = start(FrontSettings(upstream_port=upstream.port, max_body_bytes=LIMIT,
                                       timeout_s=2.0))
    yield port
    server.stop()


def request(port: int, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def raw_exchange(port: int, head: bytes, body: bytes = b"", wait_s: float = 5.0) -> bytes:
    """Send ``head`` then ``body`` on a plain socket and read until the server closes or
    ``wait_s`` passes: what a client that writes everything before reading receives."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as client:
        client.sendall(head)
        if body:
            client.sendall(body)
        received = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                piece = client.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not piece:
                break
            received += piece
            if b"\r\n\r\n" in received and b'"}' in received:
                break
        return received


def error_of(body: bytes) -> str:
    return str(json.loads(body)["error"])


def test_an_inference_request_and_its_answer_pass_through_unchanged(
        upstream: Upstream, front: int) -> None:
    body = bytes(range(256)) * 1000
    status, headers, answer = request(
        front, "POST", "/v2/models/crnet_segment/infer", body,
        {"Inference-Header-Content-Length": "17", "Content-Type": "application/octet-stream"})
    assert status == 200
    assert json.loads(answer) == {"path": "/v2/models/crnet_segment/infer", "bytes": len(body)}
    assert headers["Inference-Header-Content-Length"] == "7"
    method, path, received, sent_headers = upstream.seen[-1]
    assert (method, path, received) == ("POST", "/v2/models/crnet_segment/infer", body)
    assert sent_headers["Inference-Header-Content-Length"] == "17"


def test_a_kept_alive_connection_carries_several_requests(upstream: Upstream,
                                                          front: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
    try:
        for index in range(3):
            connection.request("POST", "/v2/models/crnet_support/infer", body=b"x" * index)
            answer = connection.getresponse()
            assert answer.status == 200
            assert json.loads(answer.read())["bytes"] == index
    finally:
        connection.close()
    assert len(upstream.seen) == 3


def test_a_chunked_upstream_answer_is_relayed_whole() -> None:
    chunked = Upstream(chunked=True)
    server, port = start(FrontSettings(upstream_port=chunked.port, max_body_bytes=LIMIT))
    try:
        status, _, answer = request(port, "GET", "/v2/models/crnet_segment/config")
        assert status == 200
        assert json.loads(answer) == {"path": "/v2/models/crnet_segment/config", "bytes": 0}
    finally:
        server.stop()
        chunked.close()


def test_a_body_over_the_limit_is_refused_unread_and_the_client_gets_the_answer(
        upstream: Upstream, front: int) -> None:
    body = b"\0" * (8 * LIMIT)
    head = (b"POST /v2/models/crnet_segment/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    received = raw_exchange(front, head, body)
    assert received.startswith(b"HTTP/1.1 413 ")
    message = error_of(received.split(b"\r\n\r\n", 1)[1])
    assert message == ("[crnet:RequestLimitError] request body of 8.0 MiB is larger than the "
                       "1.0 MiB this server reads (--max-request-mb); send smaller images")
    assert upstream.seen == []


def test_a_refused_body_is_discarded_as_it_arrives_not_kept(upstream: Upstream) -> None:
    """64 MiB sent against a 1 MiB limit: the front end's process grows by far less."""
    server, port = start(FrontSettings(upstream_port=upstream.port, max_body_bytes=LIMIT))
    body = b"\0" * (64 << 20)
    head = (b"POST /v2/models/crnet_segment/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    peak = [rss_mib()]
    before = peak[0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        received = raw_exchange(port, head, body, wait_s=20)
    finally:
        done.set()
        watcher.join()
        server.stop()
    assert received.startswith(b"HTTP/1.1 413 ")
    assert peak[0] - before < 16, f"grew {peak[0] - before:.1f} MiB for a 64 MiB refusal"
    assert upstream.seen == []


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_expect_100_continue_is_answered_only_for_a_body_within_the_limit(
        upstream: Upstream, front: int) -> None:
    over = raw_exchange(front, b"POST /v2/models/crnet_segment/infer HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (2 * LIMIT))
    assert over.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in over
    with socket.create_connection(("127.0.0.1", front), timeout=5) as client:
        client.sendall(b"POST /v2/models/crnet_segment/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert client.recv(1024).startswith(b"HTTP/1.1 100 ")
        client.sendall(b"abcd")
        assert b"HTTP/1.1 200 " in client.recv(65536)
    assert upstream.seen[-1][2] == b"abcd"
    assert "Expect" not in upstream.seen[-1][3]


@pytest.mark.parametrize("method, path", [
    ("POST", "/v2/repository/models/crnet_segment/unload"),
    ("POST", "/v2/repository/models/crnet_segment/load"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/systemsharedmemory/region/r/register"),
    ("POST", "/v2/cudasharedmemory/region/r/register"),
    ("POST", "/v2/logging"),
    ("POST", "/v2/trace/setting"),
    ("GET", "/v2/models/crnet_segment/infer"),
    ("DELETE", "/v2/models/crnet_segment"),
    ("GET", "/v2/models/stats"),
    ("GET", "/v2/models/crnet_segment/stats"),
])
def test_routes_clients_do_not_need_are_refused(upstream: Upstream, front: int,
                                                method: str, path: str) -> None:
    status, _, body = request(front, method, path, b"{}" if method == "POST" else b"")
    assert status == 403
    assert error_of(body).startswith("[crnet:RequestError] ")
    assert "only health, metadata, model configuration and inference" in error_of(body)
    assert upstream.seen == []


@pytest.mark.parametrize("method, path", [
    ("GET", "/v2/health/ready"), ("GET", "/v2/health/live"), ("GET", "/v2"),
    ("GET", "/v2/models/crnet_segment"), ("GET", "/v2/models/crnet_segment/ready"),
    ("GET", "/v2/models/crnet_segment/versions/1/config"),
    ("POST", "/v2/models/crnet_support/versions/1/infer"),
])
def test_inference_routes_pass(upstream: Upstream, front: int, method: str, path: str) -> None:
    status, _, _ = request(front, method, path, b"{}" if method == "POST" else b"")
    assert status == 200
    assert upstream.seen[-1][:2] == (method, path)


def test_a_refused_request_s_body_is_not_read_as_the_next_request(upstream: Upstream,
                                                                   front: int) -> None:
    """The body of a refused request is never parsed: the connection closes after the
    answer, and the client's next request, on a new connection, is served."""
    connection = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
    try:
        connection.request("POST", "/v2/repository/models/crnet_segment/unload",
                           body=b'GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n')
        answer = connection.getresponse()
        assert answer.status == 403
        assert answer.getheader("Connection") == "close"
        answer.read()
        connection.request("GET", "/v2/models/crnet_segment/ready")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    assert [(method, path) for method, path, _, _ in upstream.seen] == [
        ("GET", "/v2/models/crnet_segment/ready")]


def test_the_route_list_reads_paths_without_their_query() -> None:
    assert allowed(http_front.INFERENCE_ROUTES, "GET", "/v2/health/ready?x=1")
    assert not allowed(http_front.INFERENCE_ROUTES, "GET", "/v2/health/ready/../../repository")
    assert not allowed(METRICS_ROUTES, "GET", "/v2/health/ready")


def test_a_chunked_upload_and_a_bad_length_are_refused(upstream: Upstream,
                                                       front: int) -> None:
    chunked = raw_exchange(front, b"POST /v2/models/crnet_segment/infer HTTP/1.1\r\nHost: x\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    assert b"Content-Length" in chunked
    bad = raw_exchange(front, b"POST /v2/models/crnet_segment/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: -5\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 ")
    assert upstream.seen == []


def test_connections_over_the_bound_are_refused_at_once(upstream: Upstream) -> None:
    server, port = start(FrontSettings(upstream_port=upstream.port, max_body_bytes=LIMIT,
                                       max_connections=1, timeout_s=5))
    try:
        with socket.create_connection(("127.0.0.1", port)) as held:
            held.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held.recv(4096).startswith(b"HTTP/1.1 200 ")  # its thread now holds the slot
            started = time.monotonic()
            second = raw_exchange(port, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert time.monotonic() - started < 2
        assert second.startswith(b"HTTP/1.1 503 ")
        assert b"[crnet:ServerBusy]" in second and b"--max-connections" in second
    finally:
        server.stop()


def test_a_client_that_stalls_mid_body_is_dropped_and_nothing_reaches_upstream(
        upstream: Upstream) -> None:
    server, port = start(FrontSettings(upstream_port=upstream.port, max_body_bytes=LIMIT,
                                       timeout_s=0.5))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"POST /v2/models/crnet_segment/infer HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 100\r\n\r\nonly-ten-b")
            started = time.monotonic()
            assert client.recv(4096) == b""  # closed by the front end
            assert time.monotonic() - started < 3
        time.sleep(0.2)
        assert upstream.seen == []
        assert upstream.cut == 1
    finally:
        server.stop()


def test_an_upstream_that_does_not_answer_gives_a_one_line_503() -> None:
    server, port = start(FrontSettings(upstream_port=http_front.free_loopback_port(),
                                       max_body_bytes=LIMIT))
    try:
        status, _, body = request(port, "GET", "/v2/health/ready")
    finally:
        server.stop()
    assert status == 503
    assert error_of(body).startswith("[crnet:ServerUnavailable] ")


def test_the_metrics_front_adds_the_store_metrics_and_takes_no_body(
        upstream: Upstream) -> None:
    settings = FrontSettings(upstream_port=upstream.port, max_body_bytes=0,
                             routes=METRICS_ROUTES, limit_hint="metrics take no body",
                             append=lambda: b"crnet_support_store_entries 2\n")
    server, port = start(settings)
    try:
        status, _, body = request(port, "GET", "/metrics")
        assert status == 200
        assert body == b"nv_inference_count 3\ncrnet_support_store_entries 2\n"
        assert request(port, "GET", "/v2/health/ready")[0] == 403
        assert request(port, "GET", "/metrics", b"x", {"Content-Length": "1"})[0] == 413
    finally:
        server.stop()
    chunked = Upstream(chunked=True)
    server, port = start(replace(settings, upstream_port=chunked.port))
    try:
        assert request(port, "GET", "/metrics")[2] == (b"nv_inference_count 3\n"
                                                       b"crnet_support_store_entries 2\n")
    finally:
        server.stop()
        chunked.close()


def test_a_busy_port_is_a_one_line_error(upstream: Upstream) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        front = HttpFront("127.0.0.1", busy, FrontSettings(upstream_port=upstream.port,
                                                           max_body_bytes=LIMIT))
        with pytest.raises(FrontEndError, match=f"cannot listen on 127.0.0.1:{busy}: .*"
                                                "choose another port with --http-port"):
            front.start()


# -- the declared-tensor check: an inference request's JSON header, before its data ------

SMALL = RequestLimits(max_id_chars=64, max_pixels=100 * 100, max_shots=2, max_request_mb=1)


def triton_body(inputs: dict[str, Any], binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """A crnet request body as tritonclient writes it, and its headers."""
    import numpy as np
    import tritonclient.http as triton_http

    tensors = []
    for name, array in inputs.items():
        array = np.asarray(array)
        tensor = triton_http.InferInput(name, list(array.shape),
                                        "BYTES" if array.dtype == object else "UINT8")
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    body, json_size = triton_http.InferenceServerClient.generate_request_body(tensors)
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


@pytest.fixture
def checked(upstream: Upstream) -> Iterator[int]:
    def check(model: str, tensors: Any) -> None:
        check_declared(model, tensors, SMALL)

    server, port = start(FrontSettings(upstream_port=upstream.port, max_body_bytes=8 * LIMIT,
                                       timeout_s=2.0, check=check, max_header_bytes=4096))
    yield port
    server.stop()


def segment_inputs(key: bytes = b"0" * 32, side: int = 20) -> dict[str, Any]:
    import numpy as np

    return {"support_id": np.array([key], dtype=object),
            "image": np.zeros((side, side, 3), np.uint8)}


def test_a_valid_binary_request_passes_byte_for_byte(upstream: Upstream, checked: int) -> None:
    body, headers = triton_body(segment_inputs())
    status, _, _ = request(checked, "POST", "/v2/models/crnet_segment/infer", body, headers)
    assert status == 200
    assert upstream.seen[-1][2] == body


@pytest.mark.parametrize(("inputs", "binary", "expected"), [
    (segment_inputs(key=b"a" * (4 << 20)), True,
     "[crnet:RequestLimitError] support_id of 4194304 bytes is longer than the 64"),
    (segment_inputs(key=b"a" * 100), False,
     "[crnet:RequestLimitError] support_id of 100 bytes is longer than the 64"),
    (segment_inputs(side=200), True, "[crnet:RequestLimitError] query image is 200x200"),
    ({"support_id": segment_inputs()["support_id"]}, True,
     "[crnet:InputError] image is missing"),
])
def test_declared_inputs_over_a_limit_are_refused_before_their_data_is_read(
        upstream: Upstream, checked: int, inputs: dict[str, Any], binary: bool,
        expected: str) -> None:
    body, headers = triton_body(inputs, binary=binary)
    head = (b"POST /v2/models/crnet_segment/infer HTTP/1.1\r\nHost: x\r\n"
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
            + b"Content-Length: %d\r\n\r\n" % len(body))
    received = raw_exchange(checked, head, body)
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert error_of(received.split(b"\r\n\r\n", 1)[1]).startswith(expected)
    assert upstream.seen == []


def test_a_support_request_over_the_shots_bound_is_refused(upstream: Upstream,
                                                           checked: int) -> None:
    import numpy as np

    body, headers = triton_body({"images": np.zeros((3, 20, 20, 3), np.uint8),
                                 "masks": np.zeros((3, 20, 20), np.uint8)})
    status, _, answer = request(checked, "POST", "/v2/models/crnet_support/infer", body,
                                headers)
    assert status == 400
    assert "--max-shots" in error_of(answer)
    assert upstream.seen == []


def test_a_json_part_over_its_bound_or_not_json_is_refused(upstream: Upstream,
                                                           checked: int) -> None:
    big, headers = triton_body(segment_inputs(side=30), binary=False)  # JSON numbers
    assert len(big) > 4096
    status, _, answer = request(checked, "POST", "/v2/models/crnet_segment/infer", big,
                                headers)
    assert status == 413 and "send tensor data in binary" in error_of(answer)
    status, _, answer = request(checked, "POST", "/v2/models/crnet_segment/infer",
                                b"{not json", {})
    assert status == 400 and "not JSON" in error_of(answer)
    status, _, answer = request(checked, "POST", "/v2/models/crnet_segment/infer", b"{}",
                                {"Inference-Header-Content-Length": "99"})
    assert status == 400 and "Inference-Header-Content-Length" in error_of(answer)
    status, _, answer = request(checked, "POST", "/v2/models/crnet_segment/infer",
                                b"[" * 2000 + b"]" * 2000, {})
    assert status == 400
    assert upstream.seen == []


def test_other_models_and_routes_pass_the_check(upstream: Upstream, checked: int) -> None:
    body, headers = triton_body(segment_inputs(key=b"a" * 100))  # crnet_segment's bound
    assert request(checked, "POST", "/v2/models/other/infer", body, headers)[0] == 200
    assert request(checked, "GET", "/v2/models/crnet_segment/ready")[0] == 200
    assert len(upstream.seen) == 2
    status, _, answer = request(checked, "POST", "/v2/models/other/infer", b"not json")
    assert status == 400 and "not JSON" in error_of(answer)


def test_declared_inputs_read_the_binary_and_json_forms() -> None:
    header = {"inputs": [
        {"name": "support_id", "shape": [1], "datatype": "BYTES",
         "parameters": {"binary_data_size": 36}},
        {"name": "image", "shape": [4, 5, 3], "datatype": "UINT8",
         "parameters": {"binary_data_size": 60}}]}
    declared = declared_inputs(header, binary=True)
    assert declared["support_id"].item_bytes == (32,)
    assert declared["image"].shape == (4, 5, 3)
    as_json = declared_inputs({"inputs": [{"name": "support_id", "shape": [1],
                                           "datatype": "BYTES", "data": ["abc"]}]},
                              binary=False)
    assert as_json["support_id"].item_bytes == (3,)
    for bad in ({}, {"inputs": "x"}, {"inputs": [{"shape": [1]}]},
                {"inputs": [{"name": "a", "shape": ["1"]}]},
                {"inputs": [{"name": "a", "shape": [1] * 9}]}):
        with pytest.raises(InputError):
            declared_inputs(bad, binary=True)
