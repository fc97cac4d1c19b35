"""crnet.serve.grpc_front: the bounded gRPC proxy in front of tritonserver, against a fake
upstream (a plain grpcio server that records what reaches it; no tritonserver needed)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from crnet.serve import grpc_front
from crnet.serve.grpc_front import (
    CHECK_FAILED_DETAILS,
    SERVICE,
    STREAM_METHODS,
    UNARY_METHODS,
    UNREACHABLE_DETAILS,
    GrpcFront,
    forwardable,
)
from crnet.serve.http_front import FrontEndError
from crnet.serve.limits import RequestLimits, check_declared

REPO = Path(__file__).resolve().parents[3]
LIMIT = 2 << 20
INFER = f"/{SERVICE}/ModelInfer"
STREAM = f"/{SERVICE}/ModelStreamInfer"


class FakeUpstream:
    """A grpcio server on 127.0.0.1:0 that echoes every message (prefixed ``echo:``) and
    records the calls it got; ``fail`` makes it answer with that (code, details)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: tuple[grpc.StatusCode, str] | None = None
        self.hold = threading.Event()
        self.hold.set()
        self.executor = futures.ThreadPoolExecutor(8, thread_name_prefix="fake-upstream")
        self.server = grpc.server(self.executor, options=[
            ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method.endswith("StreamInfer"):
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: self._stream(method, requests, context))
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._unary(method, request, context))

    def _record(self, method: str, context: grpc.ServicerContext) -> None:
        remaining = context.time_remaining()
        self.calls.append((method, {"metadata": dict(context.invocation_metadata()),
                                    "remaining": remaining}))

    def _unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(method, context)
        self.hold.wait(10)
        if self.fail:
            context.set_trailing_metadata((("triton-error", "yes"),))
            context.abort(*self.fail)
        context.send_initial_metadata((("upstream-initial", "1"),))
        context.set_trailing_metadata((("upstream-trailing", "2"),))
        return b"echo:" + request

    def _stream(self, method: str, requests: Iterator[bytes],
                context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(method, context)
        for request in requests:
            yield b"echo:" + request

    def stop(self) -> None:
        self.server.stop(None).wait()
        self.executor.shutdown(wait=True)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.stop()


@pytest.fixture
def front(upstream: FakeUpstream) -> Iterator[GrpcFront]:
    proxy = GrpcFront("127.0.0.1", 0, upstream.address, LIMIT, max_concurrent=4, workers=4)
    proxy.start()
    yield proxy
    proxy.stop(0.5)


@pytest.fixture
def channel(front: GrpcFront) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{front.port}", options=[
            ("grpc.max_send_message_length", -1)]) as ch:
        yield ch


def test_model_infer_round_trip_forwards_bytes_metadata_and_deadline(
        channel: grpc.Channel, upstream: FakeUpstream) -> None:
    payload = os.urandom(LIMIT - 1024)
    response, call = channel.unary_unary(INFER).with_call(
        payload, timeout=20, metadata=(("x-request-id", "abc"), ("trace-bin", b"\x00\x01")))
    assert response == b"echo:" + payload
    assert ("upstream-initial", "1") in call.initial_metadata()
    assert ("upstream-trailing", "2") in call.trailing_metadata()
    [(method, seen)] = upstream.calls
    assert method == INFER
    assert seen["metadata"]["x-request-id"] == "abc"
    assert seen["metadata"]["trace-bin"] == b"\x00\x01"
    assert 0 < seen["remaining"] <= 20


def test_health_methods_are_forwarded(channel: grpc.Channel, upstream: FakeUpstream) -> None:
    for name in ("ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelConfig"):
        assert channel.unary_unary(f"/{SERVICE}/{name}")(b"q", timeout=10) == b"echo:q"
    assert len(upstream.calls) == 5


def test_message_over_the_limit_is_refused_and_never_forwarded(
        channel: grpc.Channel, upstream: FakeUpstream) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(INFER)(b"\0" * (LIMIT + 1), timeout=20)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in caught.value.details()
    assert upstream.calls == []


def test_compressed_message_over_the_limit_once_inflated_is_refused(
        channel: grpc.Channel, upstream: FakeUpstream) -> None:
    """A gzip message far under the limit on the wire, but 64 MiB inflated."""
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(INFER)(b"\0" * (64 << 20), timeout=20,
                                   compression=grpc.Compression.Gzip)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert upstream.calls == []


def test_stream_message_over_the_limit_is_refused(
        channel: grpc.Channel, upstream: FakeUpstream) -> None:
    call = channel.stream_stream(STREAM)(iter([b"small", b"\0" * (LIMIT + 1)]), timeout=20)
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


_FRONT_PROCESS = textwrap.dedent("""
    import sys, threading, time
    from crnet.serve.grpc_front import GrpcFront
    def rss_kib():
        with open("/proc/self/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0])
    front = GrpcFront("127.0.0.1", 0, sys.argv[1], int(sys.argv[2]))
    port = front.start()
    time.sleep(0.3)
    base = peak = rss_kib()
    print(port, flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        peak = max(peak, rss_kib())
        time.sleep(0.005)
    front.stop(1)
    print(base, peak, flush=True)
""")


def test_oversized_upload_does_not_grow_the_front_end(upstream: FakeUpstream) -> None:
    """A 64 MiB message against a 2 MiB limit: refused, and the front end's resident
    memory does not rise by anything near the message (it is not buffered)."""
    size = 64 << 20
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", _FRONT_PROCESS, upstream.address,
                                str(LIMIT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=env)
    try:
        port = int(process.stdout.readline())
        payload = b"\x5a" * size
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_send_message_length", -1)]) as ch:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                ch.unary_unary(INFER)(payload, timeout=30)
            refused_s = time.monotonic() - started
        time.sleep(0.2)
        out, _ = process.communicate("", timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    base_kib, peak_kib = map(int, out.split())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert upstream.calls == []
    growth_mib = (peak_kib - base_kib) / 1024
    assert growth_mib < 16, f"front end grew {growth_mib:.1f} MiB for a 64 MiB message"
    assert refused_s < 10


def test_refused_method_is_permission_denied_and_never_forwarded(
        channel: grpc.Channel, upstream: FakeUpstream) -> None:
    for name in ("RepositoryModelUnload", "RepositoryModelLoad", "RepositoryIndex",
                 "SystemSharedMemoryRegister", "CudaSharedMemoryRegister", "TraceSetting",
                 "LogSettings", "ModelStatistics"):
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(f"/{SERVICE}/{name}")(b"x", timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.details() == (
            f"[crnet:RequestError] {SERVICE}/{name} is not served here: crnet serve "
            "forwards only the inference and health methods")
    assert upstream.calls == []


def test_unknown_service_streamed_is_permission_denied(
        channel: grpc.Channel, upstream: FakeUpstream) -> None:
    call = channel.stream_stream("/other.Service/" + "x" * 500)(iter([b"a", b"b"]),
                                                                 timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(caught.value.details()) < 400 and "\n" not in caught.value.details()
    assert upstream.calls == []


def test_upstream_error_status_and_details_pass_through(
        channel: grpc.Channel, upstream: FakeUpstream) -> None:
    upstream.fail = (grpc.StatusCode.INVALID_ARGUMENT, "[crnet:InputError] image is 4x4")
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(INFER)(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "[crnet:InputError] image is 4x4"
    assert ("triton-error", "yes") in caught.value.trailing_metadata()


def test_upstream_down_is_unavailable_with_one_line(upstream: FakeUpstream) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    proxy = GrpcFront("127.0.0.1", 0, f"127.0.0.1:{dead}", LIMIT)
    port = proxy.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            for call in (lambda: ch.unary_unary(INFER)(b"x", timeout=10),
                         lambda: list(ch.stream_stream(STREAM)(iter([b"x"]), timeout=10))):
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert caught.value.details() == UNREACHABLE_DETAILS
    finally:
        proxy.stop(0.5)


def test_model_stream_infer_round_trip(channel: grpc.Channel, upstream: FakeUpstream) -> None:
    responses = list(channel.stream_stream(STREAM)(iter([b"one", b"two"]), timeout=10,
                                                    metadata=(("x-stream", "s"),)))
    assert responses == [b"echo:one", b"echo:two"]
    [(method, seen)] = upstream.calls
    assert method == STREAM and seen["metadata"]["x-stream"] == "s"


def test_rpcs_over_the_concurrency_limit_are_refused_at_once(
        channel: grpc.Channel, upstream: FakeUpstream, front: GrpcFront) -> None:
    upstream.hold.clear()
    held = [channel.unary_unary(INFER).future(b"h", timeout=20)
            for _ in range(front.max_concurrent)]
    deadline = time.monotonic() + 10
    while len(upstream.calls) < front.max_concurrent and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(INFER)(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 5
    upstream.hold.set()
    assert [f.result() for f in held] == [b"echo:h"] * front.max_concurrent


def test_busy_port_is_one_line_error(upstream: FakeUpstream) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        proxy = GrpcFront("127.0.0.1", busy, upstream.address, LIMIT)
        with pytest.raises(FrontEndError) as caught:
            proxy.start()
    message = str(caught.value)
    assert f"127.0.0.1:{busy}" in message and "--grpc-port" in message
    assert "\n" not in message


def test_port_held_by_another_grpc_server_is_not_shared(upstream: FakeUpstream) -> None:
    """grpcio binds with SO_REUSEPORT by default, which would let two servers share a port
    and split its connections; the front end must fail instead."""
    for holder_options in ([], [("grpc.so_reuseport", 0)]):
        holder = grpc.server(futures.ThreadPoolExecutor(1), options=holder_options)
        busy = holder.add_insecure_port("127.0.0.1:0")
        holder.start()
        try:
            with pytest.raises(FrontEndError, match=f"127.0.0.1:{busy}"):
                GrpcFront("127.0.0.1", busy, upstream.address, LIMIT).start()
        finally:
            holder.stop(None).wait()
    first = GrpcFront("127.0.0.1", 0, upstream.address, LIMIT)
    port = first.start()
    try:
        with pytest.raises(FrontEndError, match="--grpc-port"):
            GrpcFront("127.0.0.1", port, upstream.address, LIMIT).start()
    finally:
        first.stop(0)


def test_stop_ends_its_threads_and_lets_in_flight_rpcs_finish(
        upstream: FakeUpstream) -> None:
    before = set(threading.enumerate())
    proxy = GrpcFront("127.0.0.1", 0, upstream.address, LIMIT)
    port = proxy.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        upstream.hold.clear()
        pending = ch.unary_unary(INFER).future(b"late", timeout=20)
        while not upstream.calls:
            time.sleep(0.01)
        release = threading.Timer(0.3, upstream.hold.set)
        release.start()
        proxy.stop(5)
        release.join()
        assert pending.result() == b"echo:late"
        with pytest.raises(grpc.RpcError):
            ch.unary_unary(INFER)(b"x", timeout=2)
    time.sleep(0.1)
    left = [t.name for t in set(threading.enumerate()) - before
            if t.is_alive() and not t.name.startswith("fake-upstream")]
    assert left == []


def test_stop_cancels_rpcs_still_running_after_the_grace(upstream: FakeUpstream) -> None:
    """A stream whose client never ends it and a unary call the upstream never answers:
    stop() returns after the grace period and both clients see the call end."""
    proxy = GrpcFront("127.0.0.1", 0, upstream.address, LIMIT)
    port = proxy.start()
    never = threading.Event()

    def endless() -> Iterator[bytes]:
        yield b"a"
        never.wait(20)

    upstream.hold.clear()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stream = ch.stream_stream(STREAM)(endless(), timeout=30)
        unary = ch.unary_unary(INFER).future(b"x", timeout=30)
        while len(upstream.calls) < 2:
            time.sleep(0.01)
        started = time.monotonic()
        proxy.stop(0.3)
        assert time.monotonic() - started < 3
        for wait in (lambda: list(stream), unary.result):
            with pytest.raises(grpc.RpcError):
                wait()
        never.set()
    upstream.hold.set()


def test_forwardable_drops_transport_keys() -> None:
    kept = forwardable([(":authority", "a"), ("grpc-timeout", "1S"), ("user-agent", "u"),
                        ("content-type", "application/grpc"), ("x-id", "7"),
                        ("data-bin", b"\1")])
    assert kept == [("x-id", "7"), ("data-bin", b"\1")]


def test_allow_list_names_exist_in_tritonclient_stub() -> None:
    """The forwarded methods, with their streaming kinds, are those of Triton's
    GRPCInferenceService as tritonclient's generated stub spells them."""
    stub_module = pytest.importorskip(
        "tritonclient.grpc.service_pb2_grpc",
        reason="tritonclient (the serve extra) is not installed")
    kinds = {}

    class Recorder:
        def __getattr__(self, kind: str) -> Any:
            def make(path: str, *args: Any, **kwargs: Any) -> None:
                kinds[path] = kind
            return make

    stub_module.GRPCInferenceServiceStub(Recorder())
    assert {f"/{SERVICE}/{name}": "unary_unary" for name in UNARY_METHODS}.items() \
        <= kinds.items()
    assert {f"/{SERVICE}/{name}": "stream_stream" for name in STREAM_METHODS}.items() \
        <= kinds.items()
    refused = {path for path in kinds if path.rsplit("/", 1)[1] not in
               UNARY_METHODS | STREAM_METHODS}
    assert f"/{SERVICE}/RepositoryModelUnload" in refused
    assert f"/{SERVICE}/SystemSharedMemoryRegister" in refused


def test_tritonclient_through_the_front_end() -> None:
    """tritonclient's own gRPC client, through the front end, against an upstream built
    from tritonclient's generated servicer: health, infer, and a refused unload."""
    tc = pytest.importorskip("tritonclient.grpc",
                             reason="tritonclient (the serve extra) is not installed")
    np = pytest.importorskip("numpy")
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        def ModelInfer(self, request: Any, context: Any) -> Any:
            raw = request.raw_input_contents[0]
            output = service_pb2.ModelInferResponse.InferOutputTensor(
                name="y", datatype="UINT8", shape=[len(raw)])
            return service_pb2.ModelInferResponse(
                model_name=request.model_name, outputs=[output], raw_output_contents=[raw[::-1]])

    executor = futures.ThreadPoolExecutor(2, thread_name_prefix="fake-upstream")
    server = grpc.server(executor)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    upstream_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proxy = GrpcFront("127.0.0.1", 0, f"127.0.0.1:{upstream_port}", LIMIT)
    port = proxy.start()
    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()
        data = np.arange(10, dtype=np.uint8)
        tensor = tc.InferInput("x", [10], "UINT8")
        tensor.set_data_from_numpy(data)
        result = client.infer("m", [tensor], headers={"x-id": "1"})
        assert (result.as_numpy("y") == data[::-1]).all()
        with pytest.raises(InferenceServerException, match="not served here"):
            client.unload_model("m")
        client.close()
    finally:
        proxy.stop(0.5)
        server.stop(None).wait()
        executor.shutdown(wait=True)


# -- declared-tensor check -----------------------------------------------------------------

CHECK_LIMITS = RequestLimits(max_id_chars=64, max_pixels=100 * 100, max_shots=2,
                             max_request_mb=1)
CHECKED_MESSAGE_BYTES = 8 << 20
"""Above the 4 MiB ids below: these requests are within the size bound."""
GOOD_ID = b"0123456789abcdef" * 2


def _pb2() -> Any:
    return pytest.importorskip("tritonclient.grpc.service_pb2",
                               reason="tritonclient (the serve extra) is not installed")


def _serialized_bytes(*items: bytes) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def infer_request(model: str, inputs: list[tuple[str, str, list[int], bytes]],
                  raw: bool = True) -> bytes:
    """A serialized ModelInferRequest; ``inputs`` as (name, datatype, shape, data): raw
    buffers, or (raw=False) BYTES data in contents.bytes_contents (data split on b"|")."""
    pb2 = _pb2()
    request = pb2.ModelInferRequest(model_name=model, id="r1")
    for name, datatype, shape, data in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(data)
        else:
            tensor.contents.bytes_contents.extend(data.split(b"|"))
    return request.SerializeToString()


def segment_request(support_id: bytes = GOOD_ID, side: tuple[int, int] = (20, 20),
                    raw: bool = True) -> bytes:
    height, width = side
    id_data = _serialized_bytes(support_id) if raw else support_id
    image = ("image", "UINT8", [height, width, 3], bytes(height * width * 3))
    if not raw:  # contents for the id only; the image stays raw-free (shape is what counts)
        image = ("image", "UINT8", [height, width, 3], b"")
    return infer_request("crnet_segment", [("support_id", "BYTES", [1], id_data), image],
                         raw=raw)


@pytest.fixture
def checked(upstream: FakeUpstream) -> Iterator[grpc.Channel]:
    _pb2()
    proxy = GrpcFront("127.0.0.1", 0, upstream.address, CHECKED_MESSAGE_BYTES,
                      max_concurrent=4, workers=4,
                      check=lambda model, tensors: check_declared(model, tensors,
                                                                  CHECK_LIMITS))
    proxy.start()
    with grpc.insecure_channel(f"127.0.0.1:{proxy.port}", options=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1)]) as ch:
        yield ch
    proxy.stop(0.5)


def refused(channel: grpc.Channel, message: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(INFER)(message, timeout=10)
    return caught.value


def test_valid_segment_request_reaches_upstream_byte_identical(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    message = segment_request()
    assert checked.unary_unary(INFER)(message, timeout=10) == b"echo:" + message
    assert len(upstream.calls) == 1


def test_long_support_id_is_refused_before_upstream(
        checked: grpc.Channel, upstream: FakeUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="crnet.serve.grpc_front")
    error = refused(checked, segment_request(b"a" * (4 << 20)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        "[crnet:RequestLimitError] support_id of 4194304 bytes is longer than the 64")
    assert "--max-id-chars" in error.details() and "\n" not in error.details()
    assert upstream.calls == []
    [record] = [r for r in caplog.records if r.name == "crnet.serve.grpc_front"]
    assert record.levelname == "WARNING" and "support_id of 4194304 bytes" in record.message
    assert len(record.getMessage()) < 400 and record.exc_info is None


def test_long_support_id_in_bytes_contents_is_refused(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    error = refused(checked, segment_request(b"a" * (4 << 20), raw=False))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        "[crnet:RequestLimitError] support_id of 4194304 bytes is longer than the 64")
    assert upstream.calls == []


def test_large_image_is_refused_naming_max_pixels(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    error = refused(checked, segment_request(side=(200, 200)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("[crnet:RequestLimitError] query image is 200x200")
    assert "--max-pixels" in error.details()
    assert upstream.calls == []


def test_too_many_support_shots_are_refused(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    message = infer_request("crnet_support", [
        ("images", "UINT8", [3, 20, 20, 3], bytes(3 * 20 * 20 * 3)),
        ("masks", "UINT8", [3, 20, 20], bytes(3 * 20 * 20))])
    error = refused(checked, message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("[crnet:RequestLimitError] 3 support images (K)")
    assert "--max-shots" in error.details()
    assert upstream.calls == []


def test_malformed_bytes_buffer_is_refused(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    for data in (GOOD_ID, _serialized_bytes(GOOD_ID) + b"x", b"\xff\xff\xff\x7f",
                 _serialized_bytes(GOOD_ID)[:10]):
        message = infer_request("crnet_segment", [
            ("support_id", "BYTES", [1], data),
            ("image", "UINT8", [20, 20, 3], bytes(1200))])
        error = refused(checked, message)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == (
            "[crnet:InputError] support_id data is not Triton's BYTES serialization (a "
            "4-byte length before each element)")
    assert upstream.calls == []


def test_bytes_shape_larger_than_its_buffer_is_refused_at_once(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    message = infer_request("other_model", [("x", "BYTES", [1 << 40], bytes(4 << 20))])
    started = time.monotonic()
    error = refused(checked, message)
    assert time.monotonic() - started < 2
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x data is not Triton's BYTES serialization" in error.details()
    assert upstream.calls == []


def test_missing_image_is_refused(checked: grpc.Channel, upstream: FakeUpstream) -> None:
    message = infer_request("crnet_segment", [
        ("support_id", "BYTES", [1], _serialized_bytes(GOOD_ID))])
    error = refused(checked, message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("[crnet:InputError] image is missing")
    assert upstream.calls == []


def test_other_models_pass_unchecked(checked: grpc.Channel, upstream: FakeUpstream) -> None:
    message = infer_request("other_model", [
        ("support_id", "BYTES", [1], _serialized_bytes(b"a" * (4 << 20))),
        ("image", "UINT8", [200, 200, 3], bytes(120000))])
    assert checked.unary_unary(INFER)(message, timeout=10) == b"echo:" + message
    assert len(upstream.calls) == 1


def test_stream_is_aborted_at_its_first_refused_message(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    first, second = segment_request(), segment_request(side=(200, 200))
    call = checked.stream_stream(STREAM)(iter([first, second, segment_request()]),
                                         timeout=10)
    answers = []
    with pytest.raises(grpc.RpcError) as caught:
        for answer in call:
            answers.append(answer)
    assert answers == [b"echo:" + first]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("[crnet:RequestLimitError] query image is "
                                             "200x200")


def test_stream_refused_at_its_first_message_forwards_nothing(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    call = checked.stream_stream(STREAM)(iter([b"garbage", segment_request()]), timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("[crnet:InputError] the request is not")


def test_garbage_model_infer_is_refused_before_upstream(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    error = refused(checked, b"not a protobuf message")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("[crnet:InputError] the request is not a Triton "
                                      "inference request")
    assert upstream.calls == []


def test_failing_check_is_internal_and_logged_with_traceback(
        upstream: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    _pb2()

    def broken(model: str, tensors: Any) -> None:
        raise RuntimeError("bug\nsecond line")

    proxy = GrpcFront("127.0.0.1", 0, upstream.address, LIMIT, check=broken)
    port = proxy.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            error = refused(ch, segment_request())
    finally:
        proxy.stop(0.5)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == CHECK_FAILED_DETAILS
    assert upstream.calls == []
    [record] = [r for r in caplog.records if r.name == "crnet.serve.grpc_front"
                and r.levelname == "ERROR"]
    assert record.exc_info is not None


def test_without_check_messages_are_not_parsed(
        channel: grpc.Channel, upstream: FakeUpstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any) -> Any:
        raise AssertionError("parsed without a check")

    monkeypatch.setattr(grpc_front, "declared_inputs", never)
    assert channel.unary_unary(INFER)(b"not a protobuf", timeout=10) == \
        b"echo:not a protobuf"
    assert list(channel.stream_stream(STREAM)(iter([b"a"]), timeout=10)) == [b"echo:a"]


def test_check_without_tritonclient_fails_at_start(
        upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    proxy = GrpcFront("127.0.0.1", 0, upstream.address, LIMIT,
                      check=lambda model, tensors: None)
    with pytest.raises(FrontEndError, match="tritonclient"):
        proxy.start()
    assert proxy._server is None


def test_tritonclient_requests_are_checked(
        checked: grpc.Channel, upstream: FakeUpstream) -> None:
    """tritonclient's own serialization of BYTES and UINT8 inputs, as the check reads it."""
    tc = pytest.importorskip("tritonclient.grpc")
    np = pytest.importorskip("numpy")
    from tritonclient.utils import InferenceServerException

    target = checked._channel.target().decode()  # type: ignore[attr-defined]
    client = tc.InferenceServerClient(target)

    def inputs(support_id: bytes) -> list[Any]:
        key = tc.InferInput("support_id", [1], "BYTES")
        key.set_data_from_numpy(np.array([support_id], dtype=object))
        image = tc.InferInput("image", [20, 20, 3], "UINT8")
        image.set_data_from_numpy(np.zeros((20, 20, 3), np.uint8))
        return [key, image]

    try:
        with pytest.raises(InferenceServerException, match="--max-id-chars"):
            client.infer("crnet_segment", inputs(b"a" * 100))
        assert upstream.calls == []
        # the fake's echo is not a meaningful response; what matters is it got there
        with contextlib.suppress(InferenceServerException):
            client.infer("crnet_segment", inputs(GOOD_ID))
        assert len(upstream.calls) == 1
    finally:
        client.close()
