from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crnet.runtime.preprocess import (
    InputError,
    as_binary_mask,
    as_rgb_uint8,
    foreground_probability,
    preprocess_image,
    preprocess_mask,
    resize_bilinear,
)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("source", "target"), [((37, 53), (25, 25)), ((20, 31), (193, 97)),
                                                ((25, 25), (321, 480)),
                                                ((300, 200), (700, 600))])  # 2 row chunks
def test_resize_matches_torch(source, target, align_corners: bool) -> None:
    array = np.random.default_rng(0).random((*source, 3), dtype=np.float32)
    ours = resize_bilinear(array, target, align_corners=align_corners)
    theirs = F.interpolate(torch.from_numpy(array).permute(2, 0, 1)[None], size=target,
                           mode="bilinear", align_corners=align_corners)[0].permute(1, 2, 0)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=5e-5)  # float32 rounding
    single = resize_bilinear(array[:, :, 0], target, align_corners=align_corners)
    np.testing.assert_allclose(single, ours[:, :, 0], atol=1e-6)


def test_preprocess_image_matches_torch_reference() -> None:
    image = np.random.default_rng(2).integers(0, 256, (87, 131, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = preprocess_image(image, (65, 49), mean, std)
    resized = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                            size=(65, 49), mode="bilinear", align_corners=False)
    reference = (resized / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None,
                                                                                        None]
    assert ours.shape == (1, 3, 65, 49) and ours.flags.c_contiguous
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-4)  # values up to ~2.6


def test_views_resize_like_their_copies() -> None:
    frame = np.random.default_rng(3).integers(0, 256, (120, 160, 4), dtype=np.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    for view in (frame, frame[10:90, 20:150], frame[::2, ::3]):  # RGBA, crop, strided
        np.testing.assert_array_equal(
            preprocess_image(view, (33, 47), mean, std),
            preprocess_image(np.ascontiguousarray(view[:, :, :3]), (33, 47), mean, std))


def test_preprocess_image_normalises() -> None:
    image = np.full((40, 60, 3), 255, np.uint8)
    tensor = preprocess_image(image, (32, 32), (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
    assert tensor.shape == (1, 3, 32, 32) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, :, 0, 0], [1.0, 2.0, 1.0], rtol=1e-6)


def test_conversions_and_errors() -> None:
    gray = np.zeros((20, 20), np.uint8)
    assert as_rgb_uint8(gray).shape == (20, 20, 3)
    assert as_rgb_uint8(np.zeros((20, 20, 4), np.uint8)).shape == (20, 20, 3)
    with pytest.raises(InputError, match="dtype float32 and contains NaN"):
        as_rgb_uint8(np.full((20, 20, 3), np.nan, np.float32))
    with pytest.raises(InputError, match="expected HxWx3"):
        as_rgb_uint8(np.zeros((20, 20, 2), np.uint8))
    with pytest.raises(InputError, match="at least 8"):
        as_rgb_uint8(np.zeros((4, 20, 3), np.uint8))
    with pytest.raises(InputError, match="same size"):
        as_binary_mask(np.zeros((10, 10), np.uint8), (12, 10))
    with pytest.raises(InputError, match="holds values"):
        as_binary_mask(np.full((10, 10), 7, np.uint8))
    mask = np.array([[0, 1], [255, 1]], np.uint8)
    np.testing.assert_array_equal(as_binary_mask(mask), [[0, 1], [0, 1]])


def test_mask_and_probability() -> None:
    mask = np.zeros((50, 50), np.uint8)
    mask[10:40, 10:40] = 1
    small = preprocess_mask(mask, (33, 33), (5, 5))
    assert small.shape == (1, 1, 5, 5) and 0.9 < small[0, 0, 2, 2] <= 1.0
    logits = np.zeros((2, 3, 3), np.float32)
    logits[1, 0, 0] = 10.0
    probability = foreground_probability(logits)
    assert probability[0, 0] > 0.99 and probability[1, 1] == pytest.approx(0.5)


def test_atomic_write_has_normal_permissions(tmp_path) -> None:
    import os
    import stat

    from crnet.runtime.files import write_json_atomic

    write_json_atomic(tmp_path / "a.json", {"x": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_rgb_views_read_every_layout_without_copying() -> None:
    from crnet.runtime.preprocess import channel_order, frame_layout

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    rgba = np.concatenate([rgb, np.zeros((12, 16, 1), np.uint8)], axis=2)
    bgra = np.ascontiguousarray(rgba[..., [2, 1, 0, 3]])
    for image, channels in ((bgr, "bgr"), (bgr[..., ::-1], "rgb"), (rgb[..., ::-1], "bgr"),
                            (rgba, "rgb"), (bgra, "BGR"), (rgb[::-1][::-1], "rgb")):
        view = as_rgb_uint8(image, channels=channels)
        np.testing.assert_array_equal(view, rgb)
        assert np.shares_memory(view, image) and not view.flags.writeable
    pixels, order = frame_layout(bgr[..., ::-1])
    assert pixels.strides[2] > 0 and order == (2, 1, 0)  # the frame itself, reversed index
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(as_rgb_uint8(gray, channels="bgr"),
                                  np.repeat(gray[:, :, None], 3, axis=2))
    assert frame_layout(gray)[1] == (0, 0, 0)
    assert channel_order("BGR") == "bgr"
    for wrong in ("hsv", "", None, 3, "auto"):
        with pytest.raises(InputError, match="channels must be 'rgb' or 'bgr'"):
            channel_order(wrong)


def test_a_mask_must_mark_the_object_and_0_255_says_255_is_ignore() -> None:
    from crnet.runtime.preprocess import check_marked

    marked = np.zeros((10, 10), np.uint8)
    marked[2:5, 2:5] = 1
    check_marked(marked)
    check_marked(marked > 0)
    with pytest.raises(InputError, match="is empty"):
        check_marked(np.zeros((10, 10), bool))
    with pytest.raises(InputError, match="is empty"):
        check_marked(np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match=r"only 0 and 255.*'ignore'.*PASCAL.*mask // 255"):
        check_marked(marked * 255)
