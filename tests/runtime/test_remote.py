"""RemoteSegmenter without a server: argument checks, error mapping, retries.

The tests against a running `crnet serve` are in tests/crnet/serve/test_server.py.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from crnet.runtime.preprocess import InputError
from crnet.runtime.remote import (
    RemoteError,
    RemoteSegmenter,
    RequestLimitError,
    UnknownSupportError,
    _parse_url,
    _stack_support,
    _tagged,
    _transient,
)

pytest.importorskip("tritonclient.http", reason="RemoteSegmenter needs tritonclient "
                    "(pip install -e '.[remote]')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("url", "expected"), [
    ("localhost:8000", ("http", "localhost:8000")),
    ("http://10.0.0.2:9000", ("http", "10.0.0.2:9000")),
    ("grpc://localhost:8001", ("grpc", "localhost:8001")),
])
def test_url_picks_the_protocol(url: str, expected: tuple[str, str]) -> None:
    assert _parse_url(url) == expected


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="grpc://host:port"):
        _parse_url("ftp://host:1")


def test_support_is_stacked_and_checked_like_the_segmenter() -> None:
    image = np.zeros((20, 30), np.uint8)  # grayscale is converted
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    images, masks = _stack_support([image, image], [mask, mask])
    assert images.shape == (2, 20, 30, 3) and images.dtype == np.uint8
    assert masks.shape == (2, 20, 30) and masks.dtype == np.uint8
    with pytest.raises(InputError, match="2 support images but 1 support masks"):
        _stack_support([image, image], [mask])
    with pytest.raises(InputError, match="list of arrays"):
        _stack_support(image, [mask])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="30x20 but its image is 20x30"):
        _stack_support([image], [np.zeros((30, 20), np.uint8)])
    with pytest.raises(InputError, match="support mask 0 is empty"):
        _stack_support([image], [np.zeros((20, 30), np.uint8)])
    with pytest.raises(InputError, match="255 means 'ignore'.*mask // 255 or mask > 0"):
        _stack_support([image], [mask.astype(np.uint8) * 255])
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    rgb_images, _ = _stack_support([bgr], [mask], "bgr")
    assert (rgb_images[0, ..., 2] == 200).all() and (rgb_images[0, ..., 0] == 0).all()


def test_supports_of_different_sizes_are_sent_at_one_size() -> None:
    """Each support is resized to the largest height and width (images bilinear, masks
    nearest-neighbour so labels stay 0/1/255); one of that size travels unchanged."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)
    big_mask = np.zeros((40, 30), np.uint8)
    big_mask[10:30, 5:20] = 1
    small_mask = np.zeros((20, 50), np.uint8)
    small_mask[4:12, 10:40] = 1
    small_mask[0, :] = 255
    images, masks = _stack_support([big, small], [big_mask, small_mask])
    assert images.shape == (2, 40, 50, 3) and masks.shape == (2, 40, 50)
    assert set(np.unique(masks[1]).tolist()) == {0, 1, 255}
    np.testing.assert_array_equal(masks[1][::2, :], small_mask)  # 2x rows, same columns
    assert abs(float(images[1].mean()) - float(small.mean())) < 2.0  # the same picture
    # the tall one: its rows kept, its columns stretched from 30 to 50
    np.testing.assert_array_equal(masks[0][:, 0], big_mask[:, 0])
    assert masks[0][:, 45].tolist() == big_mask[:, 27].tolist()
    same = _stack_support([big, big], [big_mask, big_mask])
    np.testing.assert_array_equal(same[0][1], big)  # one size: sent as it is


def test_server_errors_map_to_the_segmenter_exceptions() -> None:
    text = ("[500] Failed ... Traceback ...\ncrnet.serve.RequestError: [crnet:InputError] "
            "support mask 0 is empty (no pixel labelled 1)\n\nAt: ...")
    tagged = _tagged(Exception(text))
    assert tagged is not None and tagged.kind == "InputError"
    error = tagged.as_exception()
    assert isinstance(error, InputError)
    assert str(error) == "support mask 0 is empty (no pixel labelled 1)"
    unknown = _tagged(Exception("x [crnet:UnknownSupportError] unknown support_id 'ab'"))
    assert isinstance(unknown.as_exception(), UnknownSupportError)  # type: ignore[union-attr]
    backend = _tagged(Exception("[crnet:BackendError] NaN"))
    assert isinstance(backend.as_exception(), RemoteError)  # type: ignore[union-attr]
    assert _tagged(Exception("plain failure")) is None


def test_transient_failures_are_told_from_real_ones() -> None:
    assert _transient(ConnectionRefusedError(111, "Connection refused"))
    assert _transient(Exception("[StatusCode.UNAVAILABLE] failed to connect to all addresses"))
    assert _transient(Exception("Request for unknown model: 'crnet_segment' is not found"))
    assert not _transient(Exception("[400] unexpected shape for input 'image'"))
    # the front end's refusals: a full server and a restarting Triton pass, a size does not
    assert _transient(Exception("[crnet:ServerBusy] this server already has 256 connections"))
    assert _transient(Exception("[crnet:ServerUnavailable] the inference server behind"))
    assert _transient(Exception("[StatusCode.RESOURCE_EXHAUSTED] Concurrent RPC limit exceeded!"))
    assert not _transient(Exception("[crnet:RequestLimitError] request body of 300.0 MiB "
                                    "is larger than the 65.0 MiB this server reads"))
    assert not _transient(Exception("[crnet:InputError] connection mask is empty"))


def test_a_request_too_large_for_the_front_end_is_a_request_limit_error() -> None:
    http_413 = _tagged(Exception("[crnet:RequestLimitError] request body of 286.1 MiB is "
                                 "larger than the 65.0 MiB this server reads"))
    assert isinstance(http_413.as_exception(), RequestLimitError)  # type: ignore[union-attr]
    grpc_refusal = _tagged(Exception(
        "[StatusCode.RESOURCE_EXHAUSTED] Received message larger than max (300000000 vs. "
        "68157440)"))
    assert grpc_refusal is not None
    error = grpc_refusal.as_exception()
    assert isinstance(error, RequestLimitError)
    assert str(error) == ("request of 286.1 MiB is larger than the 65.0 MiB this server reads "
                          "(--max-request-mb plus 1 MiB for the header); send smaller images")


def test_segment_before_set_support_says_what_to_do() -> None:
    with RemoteSegmenter(f"127.0.0.1:{free_port()}") as segmenter, \
            pytest.raises(InputError, match="call set_support"):
        segmenter.segment(np.zeros((8, 8, 3), np.uint8))


def test_unreachable_server_gives_up_after_the_retry_time() -> None:
    segmenter = RemoteSegmenter(f"127.0.0.1:{free_port()}", retry_timeout_s=0.3,
                                timeout_s=1.0)
    image = np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 1
    with segmenter, pytest.raises(RemoteError, match="gave up after retrying for 0.3 s"):
        segmenter.set_support([image], [mask])
    assert segmenter.retries >= 1


def test_remote_segmenter_imports_neither_torch_nor_tritonclient_until_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys, crnet.runtime\n"
        "assert 'tritonclient' not in sys.modules\n"
        "from crnet.runtime import RemoteSegmenter\n"
        "loaded = [m for m in ('tritonclient', 'torch', 'onnxruntime') if m in sys.modules]\n"
        "RemoteSegmenter('127.0.0.1:1')\n"
        "print(repr(loaded), 'tritonclient' in sys.modules, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["[]", "True", "False"]


def test_segment_re_registers_an_evicted_support_a_bounded_number_of_times(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from crnet.runtime import remote

    segmenter = RemoteSegmenter(f"127.0.0.1:{free_port()}")
    image = np.zeros((16, 16, 3), np.uint8)
    mask = np.ones((16, 16), np.uint8)
    registered: list[int] = []
    monkeypatch.setattr(segmenter, "_register", lambda *args, **kwargs: (
        registered.append(1), "abc")[1])
    segmenter.set_support([image], [mask])
    answers = [remote._Tagged("UnknownSupportError", "evicted"),
               (np.ones((16, 16), bool), None)]

    def once(key: str, rgb: np.ndarray, return_prob: bool) -> tuple[np.ndarray, None]:
        answer = answers.pop(0) if answers else remote._Tagged("UnknownSupportError", "gone")
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(segmenter, "_segment_once", once)
    assert segmenter.segment(image).all()
    assert segmenter.reregistrations == 1 and len(registered) == 2
    with pytest.raises(UnknownSupportError, match="gone"):
        segmenter.segment(image)  # a store that never keeps it: bounded, then an error
    assert segmenter.reregistrations == 1 + remote.MAX_REREGISTRATIONS
    segmenter.close()


def stand_in_server(segmenter: RemoteSegmenter, monkeypatch: pytest.MonkeyPatch,
                    seen: list[str] | None = None) -> None:
    """Replace the client's two server calls by a stand-in on this process (no network):
    a support's id is its first pixel's value, and a mask is full of that value's parity,
    so a mask tells which support made it."""

    def register(images: np.ndarray, masks: np.ndarray, deadline: float | None = None) -> str:
        return f"{int(images[0, 0, 0, 0]):02x}"

    def once(key: str, rgb: np.ndarray, return_prob: bool) -> tuple[np.ndarray, None]:
        if seen is not None:
            seen.append(key)
        return np.full(rgb.shape[:2], int(key, 16) % 2 == 1), None

    monkeypatch.setattr(segmenter, "_register", register)
    monkeypatch.setattr(segmenter, "_segment_once", once)


def support(value: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [np.full((16, 16, 3), value, np.uint8)], [np.ones((16, 16), np.uint8)]


def test_a_thread_whose_support_another_replaced_gets_support_replaced_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from crnet.runtime.support_slot import SupportReplacedError

    segmenter = RemoteSegmenter(f"127.0.0.1:{free_port()}")
    stand_in_server(segmenter, monkeypatch)
    image = np.zeros((16, 16, 3), np.uint8)
    segmenter.set_support(*support(1))  # this thread's support: odd
    replaced = threading.Event()
    other: list[object] = []

    def other_thread() -> None:
        segmenter.set_support(*support(2))  # even
        other.append(bool(segmenter.segment(image).all()))
        replaced.set()

    threading.Thread(target=other_thread, name="camera-2").start()
    assert replaced.wait(10)
    assert other == [False]  # the other thread segments with its own support
    with pytest.raises(SupportReplacedError, match="thread 'camera-2' has since replaced") \
            as caught:
        segmenter.segment(image)
    assert "its own RemoteSegmenter" in str(caught.value)
    with pytest.raises(SupportReplacedError):
        next(iter(segmenter.segment_stream([image])))
    segmenter.close()


def test_threads_that_set_no_support_use_the_current_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    segmenter = RemoteSegmenter(f"127.0.0.1:{free_port()}")
    stand_in_server(segmenter, monkeypatch)
    segmenter.set_support(*support(3))
    image = np.zeros((16, 16, 3), np.uint8)
    with ThreadPoolExecutor(4) as pool:
        masks = list(pool.map(lambda _: segmenter.segment(image), range(8)))
    assert all(mask.all() for mask in masks)
    segmenter.close()


def test_a_stream_keeps_the_support_of_the_thread_that_started_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    seen: list[str] = []
    segmenter = RemoteSegmenter(f"127.0.0.1:{free_port()}", pipeline_depth=2)
    stand_in_server(segmenter, monkeypatch, seen)
    segmenter.set_support(*support(5))
    frames = [np.zeros((16, 16, 3), np.uint8)] * 6
    stream = segmenter.segment_stream(frames)
    first = next(stream)
    swapper = threading.Thread(target=segmenter.set_support, args=support(6))
    swapper.start()
    swapper.join()
    rest = list(stream)
    assert first.all() and all(mask.all() for mask in rest)  # all made with support 5
    assert set(seen) == {"05"}
    segmenter.close()
