"""The request bounds of `crnet serve`, checked on shapes before any work (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from crnet.runtime.preprocess import InputError
from crnet.runtime.remote import RequestLimitError, UnknownSupportError
from crnet.serve.limits import (
    DeclaredTensor,
    RequestLimits,
    bytes_items,
    check_declared,
    check_segment_request,
    check_support_request,
    loggable_id,
    support_key,
)

LIMITS = RequestLimits(max_id_chars=64, max_pixels=64 * 64, max_shots=3, max_request_mb=1.0)
KEY = b"0123456789abcdef0123456789abcdef"


def segment_request(key: object = KEY, shape: tuple[int, ...] = (32, 32, 3),
                    dtype: type = np.uint8) -> dict[str, np.ndarray]:
    return {"support_id": np.array([key], dtype=object), "image": np.zeros(shape, dtype)}


def support_request(shots: int = 1, side: int = 32) -> dict[str, np.ndarray]:
    return {"images": np.zeros((shots, side, side, 3), np.uint8),
            "masks": np.ones((shots, side, side), np.uint8)}


def test_valid_requests_pass_unchanged() -> None:
    key, image = check_segment_request(segment_request(), LIMITS)
    assert key == KEY.decode() and image.shape == (32, 32, 3)
    images, masks = check_support_request(support_request(shots=3), LIMITS)
    assert images.shape == (3, 32, 32, 3) and masks.shape == (3, 32, 32)


def test_a_megabyte_id_is_refused_unread_and_never_echoed() -> None:
    long_id = b"a" * (1 << 20)
    with pytest.raises(RequestLimitError) as error:
        check_segment_request(segment_request(long_id), LIMITS)
    message = str(error.value)
    assert "1048576 bytes" in message and "--max-id-chars" in message
    assert "aaaaaaaa" not in message and "\n" not in message and len(message) < 200


@pytest.mark.parametrize("key", [b"\xff\xfe", b"not-hex!", b"", b"DEADBEEF"])
def test_ids_that_are_not_lower_case_hex_are_unknown_without_being_echoed(key: bytes) -> None:
    with pytest.raises(UnknownSupportError) as error:
        support_key(np.array([key], dtype=object), LIMITS)
    assert "not an id this server gives" in str(error.value)
    assert repr(key)[2:-1] not in str(error.value) or not key


def test_support_id_must_hold_exactly_one_bytes_item() -> None:
    with pytest.raises(InputError, match="one id, got 2"):
        support_key(np.array([KEY, KEY], dtype=object), LIMITS)
    with pytest.raises(InputError, match="must be BYTES"):
        support_key(np.array([5], dtype=object), LIMITS)


@pytest.mark.parametrize(("shape", "error", "text"), [
    ((1, 1, 3), InputError, "1x1; each side must be at least 8"),
    ((65, 64, 3), RequestLimitError, "--max-pixels"),
    ((32, 32), InputError, "image must be [H,W,3]"),
    ((32, 32, 4), InputError, "image must be [H,W,3]"),
])
def test_query_image_bounds(shape: tuple[int, ...], error: type, text: str) -> None:
    with pytest.raises(error) as raised:
        check_segment_request(segment_request(shape=shape), LIMITS)
    assert text in str(raised.value)


def test_query_dtype_and_request_size() -> None:
    with pytest.raises(InputError, match="UINT8"):
        check_segment_request(segment_request(dtype=np.float32), LIMITS)
    big = support_request(shots=1, side=600)  # 1.4 MB > 1 MiB, checked before pixels
    with pytest.raises(RequestLimitError, match=r"1\.4 MiB is larger than the 1 MiB"):
        check_support_request(big, LIMITS)


@pytest.mark.parametrize(("request_", "error", "text"), [
    (support_request(shots=0), InputError, "K=0"),
    (support_request(shots=4), RequestLimitError, "4 support images (K) are more than the 3"),
    (support_request(side=4), InputError, "each side must be at least 8"),
    (support_request(side=80), RequestLimitError, "--max-pixels"),
    ({"images": np.zeros((1, 32, 32, 3), np.uint8), "masks": np.zeros((1, 16, 32), np.uint8)},
     InputError, "masks must be [K,H,W] matching"),
    ({"images": np.zeros((32, 32, 3), np.uint8), "masks": np.zeros((32, 32), np.uint8)},
     InputError, "images must be [K,H,W,3]"),
    ({"masks": np.zeros((1, 32, 32), np.uint8)}, InputError, "images must be UINT8"),
])
def test_support_bounds(request_: dict[str, np.ndarray], error: type, text: str) -> None:
    with pytest.raises(error) as raised:
        check_support_request(request_, LIMITS)
    assert text in str(raised.value)


def test_loggable_id_keeps_64_characters_and_the_length() -> None:
    shown = loggable_id(b"b" * 5000)
    assert shown == repr("b" * 64) + "... (5000 chars)"
    assert loggable_id(b"\xff" * 3) == "'\\\\xff\\\\xff\\\\xff' (3 chars)"
    assert loggable_id("abc") == "'abc' (3 chars)"


def test_limits_refuse_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="max_shots"):
        RequestLimits(max_shots=0)
    with pytest.raises(ValueError, match="max_request_mb"):
        RequestLimits(max_request_mb=0)
    assert RequestLimits(max_request_mb=1.5).max_request_bytes == 3 << 19


def declared(request: dict[str, np.ndarray]) -> dict[str, DeclaredTensor]:
    """What a request's header declares about ``request``'s tensors."""
    tensors = {}
    for name, array in request.items():
        if array.dtype == object:
            tensors[name] = DeclaredTensor("BYTES", array.shape,
                                           tuple(len(item) for item in array.reshape(-1)))
        else:
            tensors[name] = DeclaredTensor("UINT8" if array.dtype == np.uint8 else "FP32",
                                           array.shape)
    return tensors


@pytest.mark.parametrize(("model", "request_"), [
    ("crnet_support", support_request(shots=0)),
    ("crnet_support", support_request(shots=4)),
    ("crnet_support", support_request(side=4)),
    ("crnet_support", support_request(side=80)),
    ("crnet_support", support_request(side=600)),
    ("crnet_support", {"images": np.zeros((1, 32, 32, 3), np.uint8),
                       "masks": np.zeros((1, 16, 32), np.uint8)}),
    ("crnet_support", {"images": np.zeros((32, 32, 3), np.uint8),
                       "masks": np.zeros((32, 32), np.uint8)}),
    ("crnet_segment", segment_request(b"a" * (1 << 20))),
    ("crnet_segment", segment_request(shape=(1, 1, 3))),
    ("crnet_segment", segment_request(shape=(65, 64, 3))),
    ("crnet_segment", segment_request(shape=(32, 32, 4))),
    ("crnet_segment", {"support_id": np.array([KEY, KEY], dtype=object),
                       "image": np.zeros((32, 32, 3), np.uint8)}),
])
def test_declared_shapes_get_the_message_the_tensors_get(model: str,
                                                         request_: dict[str, np.ndarray]
                                                         ) -> None:
    """The front ends refuse from a request's header with the models' own words."""
    check = check_support_request if model == "crnet_support" else check_segment_request
    with pytest.raises(InputError) as from_tensors:
        check(request_, LIMITS)
    with pytest.raises(InputError) as from_header:
        check_declared(model, declared(request_), LIMITS)
    assert type(from_header.value) is type(from_tensors.value)
    assert str(from_header.value) == str(from_tensors.value)


def test_declared_requests_within_the_limits_and_other_models_pass() -> None:
    check_declared("crnet_segment", declared(segment_request()), LIMITS)
    check_declared("crnet_support", declared(support_request(shots=3)), LIMITS)
    check_declared("another_model", {}, LIMITS)
    with pytest.raises(InputError, match="image is missing"):
        check_declared("crnet_segment", {"support_id": DeclaredTensor("BYTES", (1,))}, LIMITS)
    with pytest.raises(InputError, match="sides cannot be negative"):
        check_declared("crnet_segment", {"support_id": DeclaredTensor("BYTES", (1,)),
                                         "image": DeclaredTensor("UINT8", (-1, 8, 3))}, LIMITS)
    with pytest.raises(InputError, match="image must be UINT8"):
        check_declared("crnet_segment", declared(segment_request(dtype=np.float32)), LIMITS)


def test_bytes_items_reads_triton_s_serialization_and_nothing_else() -> None:
    assert bytes_items(b"\x03\x00\x00\x00abc\x01\x00\x00\x00z", 2) == (3, 1)
    assert bytes_items(b"\x03\x00\x00\x00ab", 1) is None  # cut short
    assert bytes_items(b"\x01\x00\x00\x00ab", 1) is None  # bytes left over
    assert bytes_items(b"\x00" * 8, 1 << 40) is None  # more elements than the buffer holds
