"""`crnet serve` end to end: one Triton server (a `crnet serve` subprocess on loopback
ports picked here) shared by the module, driven through runtime.RemoteSegmenter and
tritonclient, and stopped at the end. The server runs from its own venv (the wheel with
the serve extra, where pip keeps PyTriton's numpy<2), as a user would install it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from crnet.serve.server import python_backend_env, serve_problem
from tests.runtime.bundles import export_tiny_bundle
from tests.venvs import clean_environment

REPO = Path(__file__).resolve().parents[3]
STORE_MAX_ENTRIES = 12
STORE_MAX_MB = 0.05  # ~9 one-shot supports of the tiny model: the bytes bound binds first
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A `crnet serve` subprocess on loopback; restartable on the same ports."""

    def __init__(self, bundle: Path, log_dir: Path, bin_dir: Path) -> None:
        self.bundle = bundle
        self.bin_dir = bin_dir
        self.log_dir = log_dir
        self.ports = {name: free_port() for name in ("http", "grpc", "metrics", "store")}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.ports['grpc']}"

    def store_metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.ports['store']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    def start(self) -> None:
        self.starts += 1
        log = self.log_dir / f"serve-{self.starts}.log"
        # no --host: the server must listen on loopback by default
        command = [str(self.bin_dir / "crnet"), "serve", str(self.bundle),
                   "--http-port", str(self.ports["http"]),
                   "--grpc-port", str(self.ports["grpc"]),
                   "--metrics-port", str(self.ports["metrics"]),
                   "--store-metrics-port", str(self.ports["store"]),
                   "--store-max-entries", str(STORE_MAX_ENTRIES),
                   "--store-max-mb", str(STORE_MAX_MB), "--threads", "1"]
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(command, cwd=self.log_dir, stdout=handle,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            env=clean_environment())
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"crnet serve exited with {self.process.returncode}:\n"
                            f"{log.read_text()[-3000:]}")
            if b"crnet serve: ready" in log.read_bytes():
                return
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"crnet serve not ready in {START_TIMEOUT_S:g} s:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group this test started
            process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def serve_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("serve") / "bundle")


@pytest.fixture(scope="module")
def server(serve_bundle: Path, serve_venv: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    server = ServerProcess(serve_bundle, tmp_path_factory.mktemp("serve-logs"), serve_venv)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local(serve_bundle: Path):  # noqa: ANN201 - runtime.Segmenter
    from crnet.runtime import Segmenter

    segmenter = Segmenter(serve_bundle, backend="onnxruntime", threads=1)
    yield segmenter
    segmenter.close()


def episodes(count: int, offset: int = 0) -> list:  # list[Episode]
    from crnet.data.synthetic import Synthetic5i

    dataset = Synthetic5i(0, split="test", seed=0)
    return [dataset.episode(offset + index, shots=1) for index in range(count)]


def expected(local, episode) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    support = local.encode_support(list(episode.support_images), list(episode.support_masks))
    return local.segment(episode.query_image, return_prob=True, support=support)


def remote(url: str, **options: float):  # noqa: ANN201 - runtime.RemoteSegmenter
    from crnet.runtime import RemoteSegmenter

    return RemoteSegmenter(url, **options)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_masks_equal_the_local_segmenter(server: ServerProcess, local, protocol: str
                                                ) -> None:  # noqa: ANN001
    episode = episodes(1)[0]
    want_mask, want_probability = expected(local, episode)
    assert 0 < want_mask.mean() < 1  # a mask with a boundary, so equality means something
    url = server.http_url if protocol == "http" else server.grpc_url
    with remote(url) as segmenter:
        segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        mask, probability = segmenter.segment(episode.query_image, return_prob=True)
        assert mask.dtype == bool and mask.shape == episode.query_image.shape[:2]
        np.testing.assert_array_equal(mask, want_mask)
        np.testing.assert_allclose(probability, want_probability, atol=1e-6)
        streamed = list(segmenter.segment_stream([episode.query_image] * 3))
    assert all(np.array_equal(result, want_mask) for result in streamed)


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(".".join(str(b) for b in reversed(raw)))
                else:  # four little-endian 32-bit words
                    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
                    found.add(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped IPv6 loopback (::ffff:127.0.0.1, as gRPC binds)."""
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


def test_the_default_server_listens_on_loopback_only(server: ServerProcess) -> None:
    log = (server.log_dir / f"serve-{server.starts}.log").read_text()
    assert "crnet serve: listening on 127.0.0.1" in log
    for name in ("http", "grpc", "metrics", "store"):
        addresses = listening_addresses(server.ports[name])
        assert addresses, f"nothing listens on the {name} port"
        assert all(is_loopback(address) for address in addresses), (name, addresses)


def test_listening_addresses_sees_a_socket_on_every_interface() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        assert listening_addresses(sock.getsockname()[1]) == {"0.0.0.0"}
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("::1") and is_loopback("127.0.0.1")


def test_bad_inputs_get_the_segmenters_messages_and_the_server_keeps_serving(
        server: ServerProcess, local) -> None:  # noqa: ANN001
    import tritonclient.http as http

    from crnet.runtime.preprocess import InputError

    episode = episodes(1)[0]
    supports, masks = list(episode.support_images), list(episode.support_masks)
    empty = [np.zeros_like(masks[0])]
    with pytest.raises(InputError) as local_error:
        local.encode_support(supports, empty)
    tiny = np.zeros((4, 4, 3), np.uint8)  # below the minimum side
    with pytest.raises(InputError) as local_small:
        local.segment(tiny, support=local.encode_support(supports, masks))
    with remote(server.http_url) as segmenter:
        with pytest.raises(InputError) as remote_error:
            segmenter.set_support(supports, empty)
        assert str(remote_error.value) == str(local_error.value)
        segmenter.set_support(supports, masks)
        registered = segmenter.support_id

        client = http.InferenceServerClient(server.http_url)
        # an id is read only after the declared shapes pass: the unknown id goes with an
        # image of a valid size
        for key, frame, message in (
                (b"never-registered", np.zeros((16, 16, 3), np.uint8),
                 "register the support again"),
                (registered.encode(), tiny, str(local_small.value))):
            image = http.InferInput("image", list(frame.shape), "UINT8")
            image.set_data_from_numpy(frame)
            support_id = http.InferInput("support_id", [1], "BYTES")
            support_id.set_data_from_numpy(np.array([key], dtype=np.object_))
            with pytest.raises(Exception) as error:
                client.infer("crnet_segment", [support_id, image])
            assert message in str(error.value)
        client.close()
        np.testing.assert_array_equal(segmenter.segment(episode.query_image),
                                      expected(local, episode)[0])


def abuse_cases(registered: bytes) -> dict[str, tuple[str, dict[str, np.ndarray], str, str]]:
    """name -> (model, inputs, the tag the answer must carry, a phrase of its message)."""
    image = np.zeros((64, 64, 3), np.uint8)
    masks = np.ones((1, 64, 64), np.uint8)

    def key(value: bytes) -> np.ndarray:
        return np.array([value], dtype=np.object_)

    return {
        "1 MB id": ("crnet_segment", {"support_id": key(b"a" * (1 << 20)), "image": image},
                    "RequestLimitError", "support_id of 1048576 bytes is longer than the 64"),
        "unknown id": ("crnet_segment", {"support_id": key(b"0" * 32), "image": image},
                       "UnknownSupportError", "register the support again"),
        "non-UTF-8 id": ("crnet_segment", {"support_id": key(b"\xff\xfe"), "image": image},
                         "UnknownSupportError", "not an id this server gives"),
        "1x1 image": ("crnet_segment", {"support_id": key(registered),
                                        "image": np.zeros((1, 1, 3), np.uint8)},
                      "InputError", "1x1; each side must be at least 8"),
        "bad mask": ("crnet_support", {"images": image[None], "masks": masks * 7},
                     "InputError", "support mask 0 holds values [7]"),
        "K=0": ("crnet_support", {"images": image[None][:0], "masks": masks[:0]},
                "InputError", "images hold no support image (K=0)"),
        "K=9": ("crnet_support", {"images": np.repeat(image[None], 9, 0),
                                  "masks": np.repeat(masks, 9, 0)},
                "RequestLimitError", "9 support images (K) are more than the 8"),
        "10,000x10,000 image": ("crnet_segment", {"support_id": key(registered),
                                                  "image": np.zeros((10_000, 10_000, 3),
                                                                    np.uint8)},
                                "RequestLimitError", "request body of 286.1 MiB is larger than "
                                "the 65.0 MiB this server reads"),
    }


def http_infer(client, model: str, inputs: dict[str, np.ndarray]):  # noqa: ANN001, ANN201
    import tritonclient.http as http

    tensors = []
    for name, array in inputs.items():
        tensor = http.InferInput(name, list(array.shape),
                                 "BYTES" if array.dtype == object else "UINT8")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(model, tensors)


def test_abuse_gets_one_line_400s_and_leaves_crnet_support_responsive(
        server: ServerProcess) -> None:
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(server.http_url, network_timeout=120)
    try:
        image, mask = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
        mask[10:40, 10:40] = 1
        registered = http_infer(client, "crnet_support", {"images": image[None],
                                                          "masks": mask[None]})
        key = bytes(registered.as_numpy("support_id")[0])
        for name, (model, inputs, tag, phrase) in abuse_cases(key).items():
            with pytest.raises(InferenceServerException) as raised:
                http_infer(client, model, inputs)
            answer = raised.value
            text = answer.message()
            # the front end refuses a body over the size bound unread: 413, not 400
            status = "413" if name == "10,000x10,000 image" else "400"
            assert answer.status() == status, (name, answer.status(), text[:500])
            assert text.startswith(f"[crnet:{tag}] ") and phrase in text, (name, text[:500])
            assert "\n" not in text and "Traceback" not in text and 'File "' not in text
            assert "aaaa" not in text, name  # the id is never echoed
        long_id = abuse_cases(key)["1 MB id"]
        for _ in range(200):
            with pytest.raises(InferenceServerException):
                http_infer(client, long_id[0], long_id[1])
        again = http_infer(client, "crnet_support", {"images": image[None], "masks": mask[None]})
        assert bytes(again.as_numpy("support_id")[0]) == key
    finally:
        client.close()
    log = (server.log_dir / f"serve-{server.starts}.log").read_text()
    # refused by the front end from the declared length: logged without reading the id
    assert ("refused POST /v2/models/crnet_segment/infer from 127.0.0.1: 400 support_id of "
            "1048576 bytes is longer than the 64") in log
    assert "a" * 200 not in log


def test_grpc_clients_get_invalid_argument(server: ServerProcess) -> None:
    import grpc
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    client = triton_grpc.InferenceServerClient(server.grpc_url[len("grpc://"):])
    images = triton_grpc.InferInput("images", [0, 64, 64, 3], "UINT8")
    images.set_data_from_numpy(np.zeros((0, 64, 64, 3), np.uint8))
    masks = triton_grpc.InferInput("masks", [0, 64, 64], "UINT8")
    masks.set_data_from_numpy(np.zeros((0, 64, 64), np.uint8))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("crnet_support", [images, masks])
    client.close()
    assert raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert raised.value.message().startswith("[crnet:InputError] images hold no support "
                                             "image (K=0)")


def test_remote_segmenter_raises_request_limit_error(server: ServerProcess) -> None:
    from crnet.runtime.remote import RequestLimitError

    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 10:40] = 1
    with remote(server.http_url) as segmenter, pytest.raises(RequestLimitError,
                                                             match="--max-shots"):
        segmenter.set_support([image] * 9, [mask] * 9)


def test_eight_concurrent_clients_get_their_own_results(server: ServerProcess, local
                                                        ) -> None:  # noqa: ANN001
    chosen = episodes(8, offset=10)
    wants = [expected(local, episode)[1] for episode in chosen]
    for index in range(8):  # the supports really differ, so a mix-up would show
        for other in range(index):
            assert not np.allclose(wants[index], wants[other], atol=1e-3)
    failures: list[str] = []
    barrier = threading.Barrier(8)

    def client(index: int) -> None:
        episode = chosen[index]
        try:
            with remote(server.http_url if index % 2 else server.grpc_url) as segmenter:
                segmenter.set_support(list(episode.support_images),
                                      list(episode.support_masks))
                barrier.wait(timeout=60)
                for _ in range(4):
                    _, probability = segmenter.segment(episode.query_image, return_prob=True)
                    if not np.allclose(probability, wants[index], atol=1e-6):
                        failures.append(f"client {index} got another support's result")
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(f"client {index}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=client, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_a_flood_of_distinct_supports_stays_within_the_store_bounds(
        server: ServerProcess, local) -> None:  # noqa: ANN001
    first = episodes(1, offset=30)[0]
    with remote(server.http_url) as first_client:
        first_client.set_support(list(first.support_images), list(first.support_masks))
        rng = np.random.default_rng(5)
        max_bytes = STORE_MAX_MB * 2**20
        with remote(server.http_url) as flood:
            for index in range(40):
                image = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
                mask = np.zeros((48, 48), np.uint8)
                mask[8 + index % 10:30, 10:40] = 1
                flood.set_support([image], [mask])
                if index % 10 == 9:
                    metrics = server.store_metrics()
                    assert metrics["crnet_support_store_entries"] <= STORE_MAX_ENTRIES
                    assert metrics["crnet_support_store_bytes"] <= max_bytes
        metrics = server.store_metrics()
        assert metrics["crnet_support_store_evictions_total"] >= 41 - STORE_MAX_ENTRIES
        assert metrics["crnet_support_store_max_bytes"] == int(max_bytes)
        # The first support was evicted long ago: its client re-registers transparently.
        mask = first_client.segment(first.query_image)
        assert first_client.reregistrations == 1
    np.testing.assert_array_equal(mask, expected(local, first)[0])


def test_a_server_restart_mid_stream_loses_nothing(server: ServerProcess, local
                                                   ) -> None:  # noqa: ANN001
    episode = episodes(1, offset=50)[0]
    want = expected(local, episode)[0]
    frames_total, restart_at = 10, 4
    stopped = threading.Event()

    def restart() -> None:
        server.stop()
        stopped.set()
        server.start()

    restarter = threading.Thread(target=restart)

    def frames() -> Iterator[np.ndarray]:
        for index in range(frames_total):
            if index == restart_at:  # the rest of the stream meets a stopped server
                restarter.start()
                assert stopped.wait(60)
            yield episode.query_image.copy()

    with remote(server.http_url, retry_timeout_s=START_TIMEOUT_S) as segmenter:
        segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        results = list(segmenter.segment_stream(frames()))
        restarter.join(START_TIMEOUT_S)
        assert segmenter.retries >= 1  # it did meet the stopped server
        assert segmenter.reregistrations >= 1  # and the new server's empty store
    assert len(results) == frames_total
    assert all(np.array_equal(mask, want) for mask in results)


def test_bench_remote_prints_and_writes_throughput(server: ServerProcess, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.cli import main

    out = tmp_path / "load.json"
    code = main(["bench-remote", server.http_url, "--clients", "1", "2", "--requests", "4",
                 "--size", "64", "64", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    runs = json.loads(out.read_text())["runs"]
    assert [run["clients"] for run in runs] == [1, 2]
    assert [run["completed"] for run in runs] == [4, 8]
    assert all(run["errors"] == 0 and run["throughput_rps"] > 0 and run["p99_ms"] > 0
               for run in runs)
    assert "req/s" in printed and "p99 ms" in printed


def test_python_backend_env_puts_this_interpreters_libdir_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sysconfig

    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/elsewhere")
    libdir = sysconfig.get_config_var("LIBDIR")
    with python_backend_env():
        paths = os.environ["LD_LIBRARY_PATH"].split(os.pathsep)
        if libdir and Path(libdir).is_dir():
            assert paths[0] == libdir
        assert "/opt/elsewhere" in paths
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/elsewhere"


def test_serve_refuses_numpy2_beside_a_pytriton_that_pins_numpy1(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed")
    from importlib import metadata

    if not any(req.startswith("numpy") and "<2" in req
               for req in metadata.requires("nvidia-pytriton") or []):
        pytest.skip("this nvidia-pytriton does not pin numpy<2")
    monkeypatch.setattr(np, "__version__", "2.4.6")
    assert "requires numpy<2" in (serve_problem() or "")
    monkeypatch.setattr(np, "__version__", "1.26.4")
    assert serve_problem() is None


def test_model_callables_register_once_and_answer_with_tagged_errors(local) -> None:  # noqa: ANN001
    """The inference callables crnet serve binds, called as PyTriton calls them."""
    from crnet.serve.server import RequestError, SupportService, segment_infer, support_infer
    from crnet.serve.support_store import SupportStore

    store: SupportStore = SupportStore(max_entries=4)
    service = SupportService(local, store)
    register, segment = support_infer(service), segment_infer(service)
    episode = episodes(1, offset=60)[0]
    request = {"images": np.stack(episode.support_images),
               "masks": np.stack(episode.support_masks)}
    [first] = register([request])
    [again] = register([dict(request)])
    assert first["support_id"].dtype.kind == "S" and first["support_id"].shape == (1,)
    assert again["support_id"][0] == first["support_id"][0]
    assert store.stats().inserts == 1  # the same support is encoded once
    [result] = segment([{"support_id": first["support_id"].astype(object),
                         "image": episode.query_image}])
    want_mask, want_probability = expected(local, episode)
    np.testing.assert_array_equal(result["mask"], want_mask)
    assert result["probability"].dtype == np.float32
    np.testing.assert_allclose(result["probability"], want_probability, atol=1e-6)
    with pytest.raises(RequestError, match=r"^\[crnet:UnknownSupportError\] unknown"):
        segment([{"support_id": np.array([b"feed"], object), "image": episode.query_image}])
    with pytest.raises(RequestError, match=r"^\[crnet:InputError\] images must be"):
        register([{"images": np.zeros((8, 8, 3), np.uint8), "masks": np.zeros((8, 8), np.uint8)}])


def test_serve_listens_on_loopback_unless_host_says_otherwise(tmp_path: Path) -> None:
    from crnet.cli import build_parser
    from crnet.cli.commands.serve import options
    from crnet.serve.server import InternalPorts, listening_line, triton_settings

    parser = build_parser("serve")
    assert "default 127.0.0.1" in " ".join(parser.format_help().split())
    chosen = options(parser.parse_args([str(tmp_path)]))
    assert chosen.host == "127.0.0.1"
    settings = triton_settings(InternalPorts(41000, 41001, 41002))
    assert {settings[k] for k in ("http_address", "grpc_address", "metrics_address")} == {
        "127.0.0.1"}
    assert (settings["http_port"], settings["grpc_port"], settings["metrics_port"]) == (
        41000, 41001, 41002)
    assert listening_line(chosen) == (
        "crnet serve: listening on 127.0.0.1: http 127.0.0.1:8000, grpc 127.0.0.1:8001, "
        "metrics 127.0.0.1:8002, store metrics 127.0.0.1:8003")

    opened = options(parser.parse_args([str(tmp_path), "--host", "0.0.0.0",
                                        "--store-metrics-port", "-1"]))
    # Triton stays on loopback: other machines reach only the bounded front ends.
    assert triton_settings(InternalPorts(1, 2, 3))["grpc_address"] == "127.0.0.1"
    line = listening_line(opened)
    assert line.startswith("crnet serve: listening on 0.0.0.0: http 0.0.0.0:8000")
    assert "store metrics off" in line and "without authentication" in line


def test_serve_limit_flags_reach_the_options_and_bad_ones_are_refused(tmp_path: Path) -> None:
    from crnet.cli import build_parser
    from crnet.cli.commands.serve import options
    from crnet.runtime.errors import UsageError
    from crnet.serve.limits import RequestLimits

    parser = build_parser("serve")
    help_text = " ".join(parser.format_help().split())
    for flag in ("--max-id-chars", "--max-pixels", "--max-shots", "--max-request-mb",
                 "--outlive-parent", "--max-connections", "--client-timeout-s"):
        assert flag in help_text
    default = options(parser.parse_args([str(tmp_path)]))
    assert default.limits == RequestLimits()
    assert (default.max_connections, default.client_timeout_s) == (64, 30.0)
    chosen = options(parser.parse_args([str(tmp_path), "--max-id-chars", "40", "--max-pixels",
                                        "1000", "--max-shots", "2", "--max-request-mb", "0.5",
                                        "--outlive-parent", "--max-connections", "3",
                                        "--client-timeout-s", "2.5"]))
    assert chosen.limits == RequestLimits(40, 1000, 2, 0.5) and chosen.outlive_parent
    assert (chosen.max_connections, chosen.client_timeout_s) == (3, 2.5)
    assert chosen.limits.max_body_bytes == (1 << 19) + (1 << 20)
    with pytest.raises(UsageError, match="--max-connections must be >= 1, got 0"):
        options(parser.parse_args([str(tmp_path), "--max-connections", "0"]))
    with pytest.raises(UsageError, match="--client-timeout-s must be > 0"):
        options(parser.parse_args([str(tmp_path), "--client-timeout-s", "0"]))
    with pytest.raises(UsageError, match="--max-shots must be >= 1, got 0"):
        options(parser.parse_args([str(tmp_path), "--max-shots", "0"]))
    with pytest.raises(UsageError, match="--max-request-mb must be > 0"):
        options(parser.parse_args([str(tmp_path), "--max-request-mb", "-1"]))


def test_the_public_ports_are_front_ends_bounded_by_the_serve_options(tmp_path: Path) -> None:
    from crnet.cli import build_parser
    from crnet.cli.commands.serve import options
    from crnet.runtime.remote import RequestLimitError
    from crnet.serve.grpc_front import GrpcFront
    from crnet.serve.http_front import HttpFront
    from crnet.serve.limits import DeclaredTensor
    from crnet.serve.server import InternalPorts, front_ends
    from crnet.serve.support_store import SupportStore

    chosen = options(build_parser("serve").parse_args(
        [str(tmp_path), "--host", "0.0.0.0", "--max-request-mb", "2", "--max-id-chars", "40",
         "--max-connections", "5", "--client-timeout-s", "7"]))
    http, grpc, metrics = front_ends(chosen, InternalPorts(41000, 41001, 41002),
                                     SupportStore(4, 1 << 20, 0))
    assert isinstance(http, HttpFront) and isinstance(grpc, GrpcFront)
    assert (http.host, http.port, metrics.port, grpc.host, grpc.port) == (
        "0.0.0.0", 8000, 8002, "0.0.0.0", 8001)
    assert http.settings.upstream_port == 41000 and metrics.settings.upstream_port == 41002
    assert grpc.upstream == "127.0.0.1:41001"  # Triton itself stays on loopback
    assert http.settings.max_body_bytes == grpc.max_message_bytes == 3 << 20
    assert (http.settings.max_connections, grpc.max_concurrent, http.settings.timeout_s) == (
        5, 5, 7.0)
    assert metrics.settings.max_body_bytes == 0
    assert b"crnet_support_store_entries 0" in metrics.settings.append()
    long_id = {"support_id": DeclaredTensor("BYTES", (1,), (41,)),
               "image": DeclaredTensor("UINT8", (16, 16, 3))}
    for check in (http.settings.check, grpc.check):
        assert check is not None
        with pytest.raises(RequestLimitError, match="--max-id-chars"):
            check("crnet_segment", long_id)


def test_a_busy_store_metrics_port_is_a_one_line_error() -> None:
    from crnet.serve.http_front import FrontEndError
    from crnet.serve.server import start_store_metrics
    from crnet.serve.support_store import SupportStore

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(FrontEndError, match=f"cannot listen on 127.0.0.1:{busy}: .* "
                                                "--store-metrics-port"):
            start_store_metrics(SupportStore(4, 1 << 20, 0), "127.0.0.1", busy)
