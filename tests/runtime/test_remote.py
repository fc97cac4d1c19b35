"""RemoteSegmenter without a server: argument checks, error mapping, retries.

The tests against a running `crnet serve` are in tests/crnet/test_serve.py.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from crnet.runtime.preprocess import InputError
from crnet.runtime.remote import (
    RemoteError,
    RemoteSegmenter,
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
    images, masks = _stack_support([image, image], [mask, mask])
    assert images.shape == (2, 20, 30, 3) and images.dtype == np.uint8
    assert masks.shape == (2, 20, 30) and masks.dtype == np.uint8
    with pytest.raises(InputError, match="2 support images but 1 support masks"):
        _stack_support([image, image], [mask])
    with pytest.raises(InputError, match="one size"):
        _stack_support([image, np.zeros((21, 30), np.uint8)], [mask, np.zeros((21, 30))])
    with pytest.raises(InputError, match="list of arrays"):
        _stack_support(image, [mask])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="expected \\(20, 30\\)"):
        _stack_support([image], [np.zeros((30, 20), np.uint8)])


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
        "import sys, runtime\n"
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
