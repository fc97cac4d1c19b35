from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from crnet.runtime import InputError, Segmenter
from crnet.runtime.backends.base import BackendError, BackendUnavailable, availability
from crnet.runtime.bundle import BundleError
from crnet.runtime.preprocess import THRESHOLD
from crnet.runtime.segmenter import NoSupportError
from tests.runtime.bundles import resize_image


def supports(episode) -> tuple[list[np.ndarray], list[np.ndarray]]:  # noqa: ANN001
    return list(episode.support_images), list(episode.support_masks)


def test_segment_returns_mask_at_image_size(ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    image = resize_image(episode.query_image, (120, 200))
    mask = ort_segmenter.segment(image)
    assert mask.shape == (120, 200) and mask.dtype == np.bool_
    assert 0 < mask.mean() < 1  # the test model's masks have real boundaries
    assert ort_segmenter.backend_name == "onnxruntime" and ort_segmenter.precision == "fp32"


def test_return_prob_is_consistent_with_mask(ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    mask, probability = ort_segmenter.segment(episode.query_image, return_prob=True)
    assert probability.shape == mask.shape == episode.query_image.shape[:2]
    assert probability.dtype == np.float32
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    np.testing.assert_array_equal(mask, probability > THRESHOLD)
    np.testing.assert_array_equal(mask, ort_segmenter.segment(episode.query_image))


def test_grayscale_and_rgba_are_converted(ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    gray = episode.query_image[:, :, 1]
    expected = ort_segmenter.segment(np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(ort_segmenter.segment(gray), expected)
    np.testing.assert_array_equal(ort_segmenter.segment(gray[:, :, None]), expected)
    rgba = np.concatenate([episode.query_image, np.full_like(gray[:, :, None], 7)], axis=2)
    np.testing.assert_array_equal(ort_segmenter.segment(rgba),
                                  ort_segmenter.segment(episode.query_image))


def test_bool_and_uint8_masks_agree(runtime_bundle: Path, episode) -> None:  # noqa: ANN001
    images, masks = supports(episode)
    with Segmenter(runtime_bundle, backend="onnxruntime", threads=1) as segmenter:
        segmenter.set_support(images, masks)
        from_uint8 = segmenter.support
        segmenter.set_support(images, [m == 1 for m in masks])
        np.testing.assert_array_equal(segmenter.support.mask, from_uint8.mask)
        np.testing.assert_array_equal(segmenter.support.feat, from_uint8.feat)
        assert segmenter.support.shots == 2


def test_bad_inputs_raise_clear_errors(runtime_bundle: Path, episode) -> None:  # noqa: ANN001
    images, masks = supports(episode)
    segmenter = Segmenter(runtime_bundle, backend="onnxruntime", threads=1)
    with pytest.raises(NoSupportError, match="set_support"):
        segmenter.segment(episode.query_image)
    with pytest.raises(InputError, match="dtype float32 and contains NaN"):
        segmenter.set_support([np.full((50, 50, 3), np.nan, np.float32)], [masks[0]])
    empty = np.zeros_like(masks[1])
    with pytest.raises(InputError, match="support mask 1 is empty"):
        segmenter.set_support(images, [masks[0], empty])
    speck = np.zeros_like(masks[0])
    speck[100, 100] = 1
    with pytest.raises(InputError, match="support mask 0 marks 1 pixel"):
        segmenter.set_support(images[:1], [speck])
    with pytest.raises(InputError, match="9 support image.*1..8 shots"):
        segmenter.set_support(images[:1] * 9, masks[:1] * 9)
    with pytest.raises(InputError, match="0 support image"):
        segmenter.set_support([], [])
    with pytest.raises(InputError, match="2 support images but 1 support masks"):
        segmenter.set_support(images, masks[:1])
    with pytest.raises(InputError, match="list of arrays"):
        segmenter.set_support(images[0], masks[0])
    with pytest.raises(InputError, match="same size"):
        segmenter.set_support(images[:1], [masks[0][:-1]])
    assert segmenter.support is None  # nothing half-set after failures
    segmenter.set_support(images, masks)
    with pytest.raises(InputError, match="at least 8"):
        segmenter.segment(np.zeros((4, 100, 3), np.uint8))
    huge = np.broadcast_to(np.uint8(0), (10_001, 10_001, 3))  # no memory behind it
    with pytest.raises(InputError, match="downscale it first"):
        segmenter.segment(huge)
    with pytest.raises(InputError, match="dtype int64"):
        segmenter.segment(episode.query_image.astype(np.int64))
    segmenter.clear_support()
    with pytest.raises(NoSupportError):
        segmenter.segment(episode.query_image)


def test_backend_choice_and_errors(runtime_bundle: Path, tmp_path: Path) -> None:
    available = availability()
    assert available["onnxruntime"][0] and available["torch"][0]
    assert Segmenter(runtime_bundle).backend_name in ("onnxruntime", "tensorrt")
    with pytest.raises(BackendError, match="unknown backend 'onnx'"):
        Segmenter(runtime_bundle, backend="onnx")
    with pytest.raises(BundleError, match=r"no int8 variant .*crnet quantize"):
        Segmenter(runtime_bundle, backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        Segmenter(runtime_bundle, precision="bf16")
    with pytest.raises(BackendError, match="fp32 reference"):
        Segmenter(runtime_bundle, backend="torch", precision="fp16")
    with pytest.raises(BundleError, match="no manifest.json"):
        Segmenter(tmp_path)
    if not available["tensorrt"][0]:
        with pytest.raises(BackendUnavailable, match=r"'tensorrt' is not available: .*pip"):
            Segmenter(runtime_bundle, backend="tensorrt")


def test_torch_backend_and_from_checkpoint_match(runtime_bundle: Path, episode) -> None:  # noqa: ANN001
    images, masks = supports(episode)
    with Segmenter(runtime_bundle, backend="torch", threads=1) as in_bundle:
        in_bundle.set_support(images, masks)
        expected = in_bundle.segment(episode.query_image, return_prob=True)
    bare = Segmenter.from_checkpoint(runtime_bundle / "checkpoint.safetensors", threads=1)
    assert bare.bundle is None and bare.backend_name == "torch"
    bare.set_support(images, masks)
    mask, probability = bare.segment(episode.query_image, return_prob=True)
    np.testing.assert_array_equal(mask, expected[0])
    np.testing.assert_array_equal(probability, expected[1])


def test_segment_stream_matches_segment(ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    frames = [resize_image(episode.query_image, size)
              for size in ((64, 64), (321, 321), (150, 90), (97, 131))]
    expected = [ort_segmenter.segment(frame) for frame in frames]
    for pipeline in (True, False):
        got = list(ort_segmenter.segment_stream(iter(frames), pipeline=pipeline))
        assert len(got) == len(frames)
        for mask, reference in zip(got, expected, strict=True):
            np.testing.assert_array_equal(mask, reference)
    pairs = list(ort_segmenter.segment_stream(frames[:2], return_prob=True))
    np.testing.assert_array_equal(pairs[1][0], expected[1])
    assert list(ort_segmenter.segment_stream([])) == []


def test_segment_stream_raises_at_the_bad_frame(ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    frames = [episode.query_image, np.zeros((3, 3, 3), np.uint8), episode.query_image]
    stream = ort_segmenter.segment_stream(frames)
    assert next(stream).shape == episode.query_image.shape[:2]
    with pytest.raises(InputError, match="at least 8"):
        next(stream)


def test_concurrent_segment_calls_match_sequential(ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    frames = [resize_image(episode.query_image, (80 + 17 * i, 120 - 9 * i)) for i in range(6)]
    expected = [ort_segmenter.segment(frame, return_prob=True)[1] for frame in frames]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for round_ in range(3):
                for index in range(len(frames)):
                    order = (index + worker) % len(frames)
                    results[(worker, round_ * 10 + order)] = ort_segmenter.segment(
                        frames[order], return_prob=True)[1]
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 4 * 3 * len(frames)
    for (_, key), probability in results.items():
        np.testing.assert_array_equal(probability, expected[key % 10])


def test_set_support_while_segmenting_is_atomic(runtime_bundle: Path) -> None:
    from crnet.data.synthetic import Synthetic5i

    dataset = Synthetic5i(0, split="test", seed=0)
    first, second = dataset.episode(0, 1), dataset.episode(1, 3)
    segmenter = Segmenter(runtime_bundle, backend="onnxruntime", threads=1)
    outcomes = []
    for episode in (first, second):
        # handles: this thread sets no support, so it segments with the swapper's
        handle = segmenter.encode_support(*supports(episode))
        outcomes.append(segmenter.segment(first.query_image, return_prob=True,
                                          support=handle)[1])
    stop, swapping = threading.Event(), threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for episode in (first, second):
                segmenter.set_support(*supports(episode))
                swapping.set()

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        swapping.wait()
        for _ in range(20):
            probability = segmenter.segment(first.query_image, return_prob=True)[1]
            assert any(np.array_equal(probability, o) for o in outcomes)
    finally:
        stop.set()
        swapper.join()


def test_8000x8000_image_with_modest_memory(ort_segmenter: Segmenter) -> None:
    image = np.empty((8000, 8000, 3), np.uint8)
    image[:] = np.arange(8000, dtype=np.uint16).astype(np.uint8)[None, :, None]
    tracemalloc.start()
    try:
        mask = ort_segmenter.segment(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mask.shape == (8000, 8000) and mask.dtype == np.bool_
    # The 64 MB bool mask is the only full-size array: no float copies of the image or of
    # the probability (each would be 256 MB or more).
    assert peak < 64e6 + 40e6, f"peak numpy allocation {peak / 1e6:.0f} MB"


@pytest.mark.parametrize("pipeline", [True, False])
def test_segment_stream_yields_every_computed_frame_before_the_source_fails(
        ort_segmenter: Segmenter, episode, pipeline: bool) -> None:  # noqa: ANN001
    """A frame source that raises after two frames: both results come out, then its error."""

    class CameraGone(RuntimeError):
        pass

    def frames():  # noqa: ANN202
        yield episode.query_image
        yield episode.query_image[::2, ::2]
        raise CameraGone("camera disconnected")

    stream = ort_segmenter.segment_stream(frames(), pipeline=pipeline)
    got = []
    with pytest.raises(CameraGone):
        for mask in stream:
            got.append(mask)
    assert [mask.shape for mask in got] == [episode.query_image.shape[:2],
                                            episode.query_image[::2, ::2].shape[:2]]
