from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crnet.runtime.resize_plans as plans
from crnet.runtime.preprocess import (
    _normalisation,
    preprocess_image,
    probability_to_image,
    probability_to_mask,
    resize_bilinear,
)
from crnet.runtime.resize_kernels import kernels

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def general_path(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """preprocess_image's arithmetic through the general chunked resize (no plan)."""
    scale, shift = _normalisation(MEAN, STD)
    resized = resize_bilinear(image, size)
    out = np.empty((1, 3, *size), np.float32)
    np.multiply(resized.transpose(2, 0, 1), scale, out=out[0])
    out[0] += shift
    return out


@pytest.fixture(params=["compiled", "numpy"])
def loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the numba loops (runtime.resize_kernels) and on the numpy blocks."""
    if request.param == "numpy":
        monkeypatch.setattr(plans, "kernels", lambda: None)
    elif kernels() is None:
        pytest.skip("numba is not installed (the [fast] extra)")
    return request.param


@pytest.fixture(params=[1 << 16, 1 << 11], ids=["one-block", "many-blocks"])
def block_values(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(plans, "BLOCK_VALUES", request.param)
    plans.image_plan.cache_clear()
    plans.probability_plan.cache_clear()
    yield request.param
    plans.image_plan.cache_clear()
    plans.probability_plan.cache_clear()


@pytest.mark.parametrize(("source", "target"), [((321, 321), (193, 193)),
                                                ((87, 131), (65, 49)),
                                                ((40, 30), (193, 97)),  # upsampling
                                                ((480, 640), (321, 321))])
def test_image_plan_is_bit_identical_to_the_general_path(loops: str, block_values: int,
                                                          source, target) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*source, 3), dtype=np.uint8)
    assert plans.image_plan(*source, *target) is not None
    np.testing.assert_array_equal(preprocess_image(image, target, MEAN, STD),
                                  general_path(image, target))


def test_image_plan_reads_views_like_copies(loops: str, block_values: int) -> None:
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 4), dtype=np.uint8)
    gray = frame[:, :, 0]
    for view in (frame, frame[10:90, 20:150], frame[::2, ::3], gray):
        rgb = np.ascontiguousarray(np.broadcast_to(view[:, :, None], (*view.shape, 3))
                                   if view.ndim == 2 else view[:, :, :3])
        np.testing.assert_array_equal(preprocess_image(view, (33, 47), MEAN, STD),
                                      general_path(rgb, (33, 47)))


def frame_layouts(rgb: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """The same RGB picture in the layouts and channel orders apps pass."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 3, np.uint8)], axis=2)
    wide = np.zeros((rgb.shape[0] + 4, rgb.shape[1] * 2, 4), np.uint8)
    wide[2:-2, ::2, 1:] = rgb
    return {"bgr": (bgr, "bgr"), "bgr[..., ::-1]": (bgr[..., ::-1], "rgb"),
            "rgb[..., ::-1] as bgr": (rgb[..., ::-1], "bgr"),
            "rgba": (rgba, "rgb"), "bgra": (np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]), "bgr"),
            "rows reversed": (np.ascontiguousarray(rgb[::-1])[::-1], "rgb"),
            "columns reversed": (np.ascontiguousarray(rgb[:, ::-1])[:, ::-1], "rgb"),
            "column step, channel offset": (wide[2:-2, ::2, 1:], "rgb"),
            "fortran": (np.asfortranarray(rgb), "rgb")}


@pytest.mark.parametrize("size", [(120, 160), (61, 333)])
def test_every_layout_and_channel_order_gives_the_bits_of_contiguous_rgb(
        loops: str, block_values: int, size: tuple[int, int]) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = general_path(rgb, (45, 37))
    for name, (image, channels) in frame_layouts(rgb).items():
        np.testing.assert_array_equal(
            preprocess_image(image, (45, 37), MEAN, STD, channels=channels), expected,
            err_msg=name)
    gray = rgb[:, :, 1]
    grey_expected = general_path(np.repeat(gray[:, :, None], 3, axis=2), (45, 37))
    for image in (gray, gray[:, :, None], gray[::-1].copy()[::-1],
                  np.broadcast_to(gray[:, :, None], (*size, 3))):
        for channels in ("rgb", "bgr"):
            np.testing.assert_array_equal(
                preprocess_image(image, (45, 37), MEAN, STD, channels=channels),
                grey_expected)


def test_strided_views_are_read_in_place_not_copied_whole(loops: str) -> None:
    """A 1080p BGR frame viewed as RGB: only a block of rows is ever gathered (a copy of
    the view would take 6 MB)."""
    import tracemalloc

    frame = np.random.default_rng(3).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    out = np.empty((1, 3, 193, 193), np.float32)
    for image, channels in ((frame[..., ::-1], "rgb"), (frame[20:-20, 30:-30], "bgr"),
                            (np.concatenate([frame, frame[..., :1]], axis=2), "rgb")):
        preprocess_image(image, (193, 193), MEAN, STD, out=out, channels=channels)  # warm
        tracemalloc.start()
        try:
            preprocess_image(image, (193, 193), MEAN, STD, out=out, channels=channels)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1e6, f"peak {peak / 1e6:.1f} MB"


def test_too_wide_an_image_takes_the_general_path() -> None:
    wide = np.random.default_rng(2).integers(0, 256, (9, 30_000, 3), dtype=np.uint8)
    assert plans.image_plan(9, 30_000, 193, 193) is None
    np.testing.assert_array_equal(preprocess_image(wide, (193, 193), MEAN, STD),
                                  general_path(wide, (193, 193)))


def test_preprocess_writes_into_out_and_refuses_a_wrong_one() -> None:
    image = np.random.default_rng(3).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    out = np.full((1, 3, 32, 32), np.nan, np.float32)
    assert preprocess_image(image, (32, 32), MEAN, STD, out=out) is out
    np.testing.assert_array_equal(out, general_path(image, (32, 32)))
    with pytest.raises(ValueError, match=r"shape \(1, 3, 32, 32\)"):
        preprocess_image(image, (32, 32), MEAN, STD, out=np.empty((1, 3, 32, 33), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        preprocess_image(image, (32, 32), MEAN, STD,
                         out=np.empty((1, 3, 32, 32), np.float64))


@pytest.mark.parametrize(("source", "target"), [((25, 25), (321, 321)), ((25, 25), (7, 9)),
                                                ((41, 41), (480, 640)), ((13, 17), (300, 1))])
def test_probability_plan_is_the_bilinear_resize(block_values: int, source, target) -> None:
    probability = np.random.default_rng(4).random(source, dtype=np.float32)
    assert plans.probability_plan(*source, *target) is not None
    ours = probability_to_image(probability, target)
    np.testing.assert_allclose(ours, resize_bilinear(probability, target), atol=3e-7)
    theirs = F.interpolate(torch.from_numpy(probability)[None, None], size=target,
                           mode="bilinear", align_corners=False)[0, 0].numpy()
    # torch computes source positions in float32, so it differs from both by ~1e-6
    np.testing.assert_allclose(ours, theirs, atol=5e-6)
    # the mask is the same computation thresholded: equal, not merely close
    for threshold in (0.2, 0.5, 0.9):
        np.testing.assert_array_equal(probability_to_mask(probability, target, threshold),
                                      ours > threshold)


def test_huge_outputs_take_the_general_path() -> None:
    probability = np.random.default_rng(5).random((25, 25), dtype=np.float32)
    assert plans.probability_plan(25, 25, 8, plans.MAX_PLAN_SIDE + 1) is None
    target = (8, plans.MAX_PLAN_SIDE + 1)
    np.testing.assert_array_equal(probability_to_mask(probability, target),
                                  resize_bilinear(probability, target) > 0.5)


def test_scratch_is_reused_per_thread_and_not_shared_between_threads() -> None:
    first = plans.scratch("test-buffer", (4, 5), np.float32)
    again = plans.scratch("test-buffer", (2, 3), np.float32)
    assert np.shares_memory(first, again)
    bigger = plans.scratch("test-buffer", (40, 50), np.float32)
    assert bigger.shape == (40, 50) and bigger.dtype == np.float32
    other: list[np.ndarray] = []
    thread = threading.Thread(
        target=lambda: other.append(plans.scratch("test-buffer", (40, 50), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(bigger, other[0])


def test_compiled_and_numpy_loops_agree_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    if kernels() is None:
        pytest.skip("numba is not installed (the [fast] extra)")
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    compiled = [preprocess_image(image, size, MEAN, STD) for size in ((193, 193), (97, 321))]
    monkeypatch.setattr(plans, "kernels", lambda: None)
    numpy_path = [preprocess_image(image, size, MEAN, STD) for size in ((193, 193), (97, 321))]
    for ours, theirs in zip(compiled, numpy_path, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_crnet_numba_0_keeps_the_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from crnet.runtime import resize_kernels

    monkeypatch.setenv("CRNET_NUMBA", "0")
    resize_kernels._loaded.cache_clear()
    try:
        assert resize_kernels.kernels() is None
        assert resize_kernels.available() == (False, "CRNET_NUMBA=0")
    finally:
        monkeypatch.delenv("CRNET_NUMBA")
        resize_kernels._loaded.cache_clear()
