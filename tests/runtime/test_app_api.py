"""The Segmenter as an application meets it: colour orders and memory layouts, batches,
an explicit support for streams, a closed Segmenter, mask conventions, and one error
family for every wrong argument of the public API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.runtime import CrnetError, InputError, Segmenter
from crnet.runtime.segmenter import SegmenterClosedError
from tests.runtime.bundles import resize_image


def supports(episode) -> tuple[list[np.ndarray], list[np.ndarray]]:  # noqa: ANN001
    return list(episode.support_images), list(episode.support_masks)


def layouts(rgb: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """The same picture as apps hold it: (array, channels) per layout."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 9, np.uint8)], axis=2)
    padded = np.zeros((rgb.shape[0] + 6, rgb.shape[1] + 10, 3), np.uint8)
    padded[3:-3, 4:-6] = rgb
    return {
        "bgr frame, channels=bgr": (bgr, "bgr"),
        "bgr frame viewed as rgb (frame[..., ::-1])": (bgr[..., ::-1], "rgb"),
        "rgba": (rgba, "rgb"),
        "bgra, channels=bgr": (np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]), "bgr"),
        "crop of a larger frame": (padded[3:-3, 4:-6], "rgb"),
        "upside-down view of a flipped copy": (np.ascontiguousarray(rgb[::-1])[::-1], "rgb"),
        "columns reversed twice": (np.ascontiguousarray(rgb[:, ::-1])[:, ::-1], "rgb"),
        "fortran order": (np.asfortranarray(rgb), "rgb"),
    }


def test_every_layout_gives_the_masks_of_a_contiguous_rgb_frame(
        ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    rgb = resize_image(episode.query_image, (150, 170))
    expected_mask, expected_probability = ort_segmenter.segment(rgb, return_prob=True)
    assert 0 < expected_mask.mean() < 1
    for name, (image, channels) in layouts(rgb).items():
        mask, probability = ort_segmenter.segment(image, return_prob=True, channels=channels)
        np.testing.assert_array_equal(mask, expected_mask, err_msg=name)
        np.testing.assert_array_equal(probability, expected_probability, err_msg=name)
    # the order is never guessed: a BGR frame read as RGB is another picture
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    assert not np.array_equal(ort_segmenter.segment(bgr, return_prob=True)[1],
                              expected_probability)


def test_grayscale_is_read_through_a_repeated_channel_index(
        ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    gray = np.ascontiguousarray(episode.query_image[:, :, 1])
    expected = ort_segmenter.segment(np.repeat(gray[:, :, None], 3, axis=2), return_prob=True)
    for image in (gray, gray[:, :, None], np.broadcast_to(gray[:, :, None], (*gray.shape, 3)),
                  np.asfortranarray(gray)):
        for channels in ("rgb", "bgr"):
            got = ort_segmenter.segment(image, return_prob=True, channels=channels)
            np.testing.assert_array_equal(got[1], expected[1])


def test_a_segmenter_wide_channel_order(runtime_bundle: Path, episode) -> None:  # noqa: ANN001
    images, masks = supports(episode)
    with Segmenter(runtime_bundle, backend="onnxruntime", threads=1) as rgb_segmenter:
        rgb_segmenter.set_support(images, masks)
        expected = rgb_segmenter.segment(episode.query_image, return_prob=True)[1]
        reference_support = rgb_segmenter.support
    with Segmenter(runtime_bundle, backend="onnxruntime", threads=1,
                   channels="BGR") as segmenter:
        assert segmenter.channels == "bgr"
        segmenter.set_support([image[..., ::-1] for image in images], masks)
        np.testing.assert_array_equal(segmenter.support.feat, reference_support.feat)
        bgr = np.ascontiguousarray(episode.query_image[..., ::-1])
        np.testing.assert_array_equal(segmenter.segment(bgr, return_prob=True)[1], expected)
        # a call may say otherwise
        np.testing.assert_array_equal(
            segmenter.segment(episode.query_image, return_prob=True, channels="rgb")[1],
            expected)
        streamed = list(segmenter.segment_stream([bgr, bgr], return_prob=True))
        np.testing.assert_array_equal(streamed[1][1], expected)


def test_segment_batch_equals_one_by_one(ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    frames = [resize_image(episode.query_image, size)
              for size in ((64, 64), (321, 321), (150, 90), (97, 131), (200, 240),
                           (120, 120), (321, 200), (80, 300), (90, 90), (130, 170))]
    expected = [ort_segmenter.segment(frame, return_prob=True) for frame in frames]
    assert any(0 < mask.mean() < 1 for mask, _ in expected)
    got = ort_segmenter.segment_batch(frames, return_prob=True)
    assert len(got) == len(frames)  # more than the 8 a backbone run takes: two runs
    for (mask, probability), (expected_mask, expected_probability) in zip(
            got, expected, strict=True):
        np.testing.assert_array_equal(mask, expected_mask)
        np.testing.assert_allclose(probability, expected_probability, atol=1e-5)
    masks = ort_segmenter.segment_batch(frames[:3])
    for mask, (expected_mask, _) in zip(masks, expected[:3], strict=True):
        np.testing.assert_array_equal(mask, expected_mask)
    same_size = np.stack([frames[1], frames[1][::-1].copy()])
    stacked = ort_segmenter.segment_batch(same_size[..., ::-1], channels="bgr")
    np.testing.assert_array_equal(stacked[0], expected[1][0])
    assert ort_segmenter.segment_batch([]) == []
    assert len(ort_segmenter.segment_batch(frames[:1])) == 1


def test_segment_batch_and_stream_take_an_explicit_support(
        runtime_bundle: Path, episode) -> None:  # noqa: ANN001
    from crnet.data.synthetic import Synthetic5i

    other = Synthetic5i(0, split="test", seed=0).episode(1, 3)
    with Segmenter(runtime_bundle, backend="onnxruntime", threads=1) as segmenter:
        explicit = segmenter.encode_support(*supports(other))
        segmenter.set_support(*supports(other))
        expected = segmenter.segment(episode.query_image, return_prob=True)[1]
        segmenter.set_support(*supports(episode))
        cached = segmenter.segment(episode.query_image, return_prob=True)[1]
        assert not np.array_equal(cached, expected)
        for pipeline in (True, False):
            streamed = list(segmenter.segment_stream(
                [episode.query_image] * 2, return_prob=True, pipeline=pipeline,
                support=explicit))
            for _mask, probability in streamed:
                np.testing.assert_array_equal(probability, expected)
        batch = segmenter.segment_batch([episode.query_image] * 2, return_prob=True,
                                        support=explicit)
        np.testing.assert_allclose(batch[1][1], expected, atol=1e-5)
        segmenter.clear_support()
        # an explicit support needs no cached one
        assert len(list(segmenter.segment_stream([episode.query_image], support=explicit))) == 1


def test_a_closed_segmenter_says_it_is_closed(runtime_bundle: Path, episode) -> None:  # noqa: ANN001
    images, masks = supports(episode)
    with Segmenter(runtime_bundle, backend="onnxruntime", threads=1) as segmenter:
        segmenter.set_support(images, masks)
        assert not segmenter.closed
    assert segmenter.closed
    calls = [lambda: segmenter.segment(episode.query_image),
             lambda: segmenter.segment_batch([episode.query_image]),
             lambda: list(segmenter.segment_stream([episode.query_image])),
             lambda: segmenter.set_support(images, masks)]
    for call in calls:
        with pytest.raises(SegmenterClosedError, match="this Segmenter is closed") as error:
            call()
        assert isinstance(error.value, CrnetError)
        assert "activate" not in str(error.value)
    segmenter.close()  # idempotent


def test_masks_bool_and_01_work_and_0_255_is_refused_with_how_to_pass_it(
        runtime_bundle: Path, episode) -> None:  # noqa: ANN001
    images, masks = supports(episode)
    with Segmenter(runtime_bundle, backend="onnxruntime", threads=1) as segmenter:
        segmenter.set_support(images, masks)
        reference = segmenter.support
        segmenter.set_support(images, [mask == 1 for mask in masks])
        np.testing.assert_array_equal(segmenter.support.mask, reference.mask)
        png = [(mask == 1).astype(np.uint8) * 255 for mask in masks]
        with pytest.raises(InputError, match=r"support mask 0 holds only 0 and 255.*'ignore'"
                           r".*PASCAL.*mask // 255 or mask > 0"):
            segmenter.set_support(images, png)
        segmenter.set_support(images, [mask // 255 for mask in png])
        np.testing.assert_array_equal(segmenter.support.mask, reference.mask)
        segmenter.set_support(images, [mask > 0 for mask in png])
        np.testing.assert_array_equal(segmenter.support.mask, reference.mask)
        # 255 next to 1 keeps its PASCAL meaning: ignore, counted as background
        pascal = [mask.copy() for mask in masks]
        pascal[0][:5] = 255
        segmenter.set_support(images, pascal)


def _bad_calls(bundle: Path, segmenter: Segmenter, episode: Any
               ) -> list[tuple[str, Any, str]]:
    """(id, call, what the message must say) for every wrong argument of the public API."""
    image, images, masks = episode.query_image, *supports(episode)
    from crnet.runtime import RemoteSegmenter

    def make(**kwargs: Any) -> Any:
        return lambda: Segmenter(kwargs.pop("bundle_dir", bundle), **kwargs)

    return [
        ("bundle_dir None", make(bundle_dir=None), "bundle_dir must be a path"),
        ("bundle_dir int", make(bundle_dir=3), "bundle_dir must be a path"),
        ("bundle_dir missing", make(bundle_dir=bundle / "nope"), "nope"),
        ("backend int", make(backend=1), "backend must be a name"),
        ("backend unknown", make(backend="onnx"), "unknown backend 'onnx'"),
        ("precision unknown", make(precision="bf16"), "precision must be one of"),
        ("precision int", make(precision=16), "precision must be one of"),
        ("precision not in bundle", make(backend="onnxruntime", precision="INT8"),
         "no int8 variant"),
        ("threads str", make(backend="onnxruntime", threads="2"), "threads must be an int"),
        ("threads zero", make(backend="onnxruntime", threads=0), "threads must be an int"),
        ("threads float", make(backend="onnxruntime", threads=1.5), "threads must be an int"),
        ("threads bool", make(backend="onnxruntime", threads=True), "threads must be an int"),
        ("unknown option", make(backend="onnxruntime", thread=2),
         "does not take the option.*thread.*it takes:.*threads"),
        ("threshold str", make(threshold="0.5"), "threshold must be a number in"),
        ("threshold above 1", make(threshold=1.5), "threshold must be a number in"),
        ("threshold nan", make(threshold=float("nan")), "threshold must be a number in"),
        ("verify str", make(verify="no"), "verify must be True or False"),
        ("channels unknown", make(channels="hsv"), "channels must be 'rgb' or 'bgr'"),
        ("support images one array", lambda: segmenter.set_support(images[0], masks),
         "list of arrays"),
        ("support images str", lambda: segmenter.set_support("a.png", masks),
         "list of arrays"),
        ("support images int", lambda: segmenter.set_support(3, masks), "list of arrays"),
        ("support image None", lambda: segmenter.set_support([None], masks[:1]),
         "support image 0 is a NoneType"),
        ("support image float", lambda: segmenter.set_support(
            [images[0].astype(np.float32)], masks[:1]), "dtype float32; expected uint8"),
        ("support image shape", lambda: segmenter.set_support(
            [images[0][..., :2]], masks[:1]), "expected HxWx3"),
        ("support mask None", lambda: segmenter.set_support(images[:1], [None]),
         "support mask 0 is a NoneType"),
        ("support mask float", lambda: segmenter.set_support(
            images[:1], [masks[0].astype(np.float32)]), "dtype float32; expected bool"),
        ("support mask values", lambda: segmenter.set_support(
            images[:1], [(masks[0] == 1).astype(np.uint8) * 3]), "holds values \\[3\\]"),
        ("support mask 0/255", lambda: segmenter.set_support(
            images[:1], [(masks[0] == 1).astype(np.uint8) * 255]), "255 means 'ignore'"),
        ("support mask size", lambda: segmenter.set_support(
            images[:1], [masks[0][1:]]), "same size"),
        ("support count", lambda: segmenter.set_support(images, masks[:1]),
         "2 support images but 1 support masks"),
        ("support channels", lambda: segmenter.set_support(images, masks, channels="rgba"),
         "channels must be 'rgb' or 'bgr'"),
        ("image None", lambda: segmenter.segment(None), "query image is a NoneType"),
        ("image str", lambda: segmenter.segment("frame.png"), "query image is a str"),
        ("image list of str", lambda: segmenter.segment(["a"]), "dtype <U1"),
        ("image float", lambda: segmenter.segment(image / 255.0), "dtype float64"),
        ("image batch", lambda: segmenter.segment(np.stack([image, image])),
         "use segment_batch"),
        ("image too small", lambda: segmenter.segment(image[:4]), "at least 8"),
        ("return_prob str", lambda: segmenter.segment(image, "yes"),
         "return_prob must be True or False"),
        ("support wrong type", lambda: segmenter.segment(image, support=(1, 2)),
         "support must be a SupportSet"),
        ("channels int", lambda: segmenter.segment(image, channels=3),
         "channels must be 'rgb' or 'bgr'"),
        ("channels guess", lambda: segmenter.segment(image, channels="auto"),
         "channels must be 'rgb' or 'bgr'"),
        ("batch one image", lambda: segmenter.segment_batch(image), "segment_batch expects"),
        ("batch int", lambda: segmenter.segment_batch(5), "images must be a list"),
        ("batch str", lambda: segmenter.segment_batch("frames/"), "images must be a list"),
        ("batch bad item", lambda: segmenter.segment_batch([image, None]),
         "query image 1 is a NoneType"),
        ("batch float item", lambda: segmenter.segment_batch([image, image * 0.5]),
         "query image 1 has dtype float64"),
        ("batch return_prob", lambda: segmenter.segment_batch([image], return_prob=1),
         "return_prob must be True or False"),
        ("batch channels", lambda: segmenter.segment_batch([image], channels="BRG"),
         "channels must be 'rgb' or 'bgr'"),
        ("stream int", lambda: segmenter.segment_stream(5), "frames must be an iterable"),
        ("stream one image", lambda: segmenter.segment_stream(image), "for one image use"),
        ("stream pipeline", lambda: segmenter.segment_stream([image], pipeline="yes"),
         "pipeline must be True or False"),
        ("stream support", lambda: segmenter.segment_stream([image], support="s1"),
         "support must be a SupportSet"),
        ("stream channels", lambda: segmenter.segment_stream([image], channels="x"),
         "channels must be 'rgb' or 'bgr'"),
        ("stream bad frame", lambda: list(segmenter.segment_stream([None])),
         "query image is a NoneType"),
        ("remote url int", lambda: RemoteSegmenter(8000), "url must be a str"),
        ("remote url scheme", lambda: RemoteSegmenter("ftp://host:1"), "grpc://host:port"),
        ("remote retry str", lambda: RemoteSegmenter(retry_timeout_s="60"),
         "retry_timeout_s must be a number"),
        ("remote timeout zero", lambda: RemoteSegmenter(timeout_s=0),
         "timeout_s must be a number > 0"),
        ("remote depth zero", lambda: RemoteSegmenter(pipeline_depth=0),
         "pipeline_depth must be an int >= 1"),
        ("remote depth float", lambda: RemoteSegmenter(pipeline_depth=2.5),
         "pipeline_depth must be an int >= 1"),
        ("remote channels", lambda: RemoteSegmenter(channels="yuv"),
         "channels must be 'rgb' or 'bgr'"),
    ]


def test_every_wrong_argument_raises_a_crnet_error_that_says_what_was_expected(
        runtime_bundle: Path, ort_segmenter: Segmenter, episode) -> None:  # noqa: ANN001
    """One table for the public API; a failure names the row (one fixture bundle, so
    the table is a loop rather than parametrized ids over a session fixture)."""
    failures = []
    for name, call, message in _bad_calls(runtime_bundle, ort_segmenter, episode):
        try:
            call()
        except CrnetError as error:
            if not __import__("re").search(message, str(error)):
                failures.append(f"{name}: message {str(error)!r} lacks {message!r}")
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(f"{name}: {type(error).__name__} {error}, not a CrnetError")
        else:
            failures.append(f"{name}: no error")
    assert not failures, "\n".join(failures)
    assert ort_segmenter.support is not None  # the failures left the support in place


def test_precision_and_backend_are_read_in_any_case(runtime_bundle: Path) -> None:
    with Segmenter(runtime_bundle, backend="ONNXRuntime", precision="FP32",
                   threads=1) as segmenter:
        assert segmenter.precision == "fp32" and segmenter.backend_name == "onnxruntime"
