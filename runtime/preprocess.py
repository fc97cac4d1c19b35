"""Pre- and post-processing in numpy only, shared by training, calibration, eval and runtime.

The canonical path, used by every backend and by the PyTorch reference alike:

* image (HxWx3 uint8 RGB, or BGR with ``channels="bgr"``; grayscale and RGBA converted;
  any size and memory layout) -> bilinear (half-pixel) to the bundle's input size
  -> /255 -> (x - mean) / std -> [1,3,H,W] float32;
* support mask (HxW, 0/1; 255 "ignore" counts as background; a mask with no 1, such as
  a 0/255 PNG, is refused with how to pass it) -> bilinear to the input size -> bilinear
  (align_corners) to the feature size, as the model's ``resize_mask``;
* logits [2,h,w] -> softmax foreground probability -> bilinear (half-pixel) to the
  caller's image size -> threshold 0.5.

Resizing is done in row chunks of about a million values, so that very large images
(8000x8000) never need a full-size float copy: the input is only gathered at the rows
(and, when it is wider than the output, at the columns) the output samples, and the output
is produced (and thresholded) chunk by chunk. Memory beyond the caller's own input is
therefore bounded by the output size whatever the input's shape (a 8x12,500,000 image
is as cheap to pre-process as a 1000x1000 one); grayscale and RGBA inputs are read through
views, and masks are checked and binarised chunk by chunk, never copied at full size.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from crnet.runtime.errors import CrnetError
from crnet.runtime.resize_plans import (
    coordinates,
    image_plan,
    probability_plan,
    resize_normalize,
    source_coordinates,
    upsample,
    upsample_threshold,
)

THRESHOLD = 0.5
MAX_PIXELS = 100_000_000  # 10k x 10k; larger images are refused rather than risk memory
MIN_SIDE = 8
_CHUNK_VALUES = 1 << 20  # float32 values per output chunk (4 MB per temporary)
_CACHED_SIZE = 1 << 16  # axes up to this many output positions keep cached coordinates


class InputError(CrnetError, ValueError):
    """An image or mask that cannot be used, with what was expected."""


CHANNEL_ORDERS = ("rgb", "bgr")
_ORDERS = {"rgb": (0, 1, 2), "bgr": (2, 1, 0)}


def channel_order(channels: object, what: str = "channels") -> str:
    """``channels`` checked: "rgb" or "bgr" (any case), returned lower-case. The colour
    order is always stated by the caller (OpenCV gives BGR), never guessed from pixels."""
    if isinstance(channels, str) and channels.lower() in CHANNEL_ORDERS:
        return channels.lower()
    raise InputError(f"{what} must be 'rgb' or 'bgr' (the order of the colour channels; "
                     f"OpenCV frames are 'bgr'), got {channels!r}")


def frame_layout(image: object, what: str = "image", channels: str = "rgb"
                 ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Validate an image and return ``(pixels, order)`` without copying it: ``pixels`` is
    an HxWxC uint8 view (C = 1, 3 or 4) whose channel stride is not negative, ``order``
    the indices of R, G and B among its C values.

    Accepted: HxWx3 uint8 in ``channels`` order ("rgb" or "bgr"), HxW or HxWx1 uint8
    (grayscale: R = G = B), HxWx4 uint8 (RGBA, or BGRA with "bgr"; alpha is ignored), in
    any memory layout (crops, steps, ``frame[..., ::-1]``). Anything else raises
    InputError. The resize reads the colour order through ``order`` (runtime.resize_plans).
    """
    order = _ORDERS[channel_order(channels)]
    if not isinstance(image, np.ndarray):
        if image is None or isinstance(image, str | bytes | int | float):
            raise InputError(f"{what} is a {type(image).__name__}; expected an HxWx3 uint8 "
                             "numpy array (HxW grayscale and HxWx4 RGBA are converted)")
        image = np.asarray(image)
    if image.dtype != np.uint8:
        detail = ""
        if np.issubdtype(image.dtype, np.floating) and np.isnan(image).any():
            detail = " and contains NaN"
        raise InputError(
            f"{what} has dtype {image.dtype}{detail}; expected uint8 RGB in 0..255 "
            "(convert floats in [0,1] with (image * 255).round().astype(np.uint8))"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        several = (" (for several images at once use segment_batch)"
                   if image.ndim == 4 and image.shape[3] in (1, 3, 4) else "")
        raise InputError(
            f"{what} has shape {image.shape}; expected HxWx3 RGB or BGR (HxW, HxWx1 "
            f"grayscale and HxWx4 RGBA are converted){several}"
        )
    check_size(image.shape[:2], what)
    depth = image.shape[2]
    if depth == 1 or image.strides[2] == 0:  # grey, or one value broadcast to every channel
        return image[:, :, :1], (0, 0, 0)
    if image.strides[2] < 0:  # e.g. frame[..., ::-1]: read the frame itself, reversed
        return image[:, :, ::-1], (depth - 1 - order[0], depth - 1 - order[1],
                                   depth - 1 - order[2])
    return image, order


def rgb_view(pixels: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """A read-only HxWx3 RGB view of ``frame_layout``'s result (no copy)."""
    step = order[1] - order[0]
    strides = (pixels.strides[0], pixels.strides[1], step * pixels.strides[2])
    return np.lib.stride_tricks.as_strided(pixels[:, :, order[0]:], (*pixels.shape[:2], 3),
                                           strides, writeable=False)


def as_rgb_uint8(image: np.ndarray, what: str = "image", channels: str = "rgb"
                 ) -> np.ndarray:
    """Validate an image and return it as an HxWx3 uint8 RGB view (``frame_layout``'s
    conversions: BGR with ``channels="bgr"``, grayscale, RGBA; no full-size copy).
    Anything else raises InputError."""
    return rgb_view(*frame_layout(image, what, channels))


def check_size(shape: Sequence[int], what: str) -> None:
    """Refuse images smaller than MIN_SIDE or larger than MAX_PIXELS."""
    height, width = int(shape[0]), int(shape[1])
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{what} is {height}x{width}; each side must be at least {MIN_SIDE}")
    if height * width > MAX_PIXELS:
        raise InputError(
            f"{what} is {height}x{width} ({height * width / 1e6:.0f} MP); at most "
            f"{MAX_PIXELS / 1e6:.0f} MP is accepted, downscale it first"
        )


def as_binary_mask(mask: np.ndarray, image_shape: Sequence[int] | None = None,
                   what: str = "mask") -> np.ndarray:
    """Validate a mask (HxW bool, or integers 0/1 with 255 = ignore) -> HxW float32 0/1."""
    mask = checked_mask(mask, image_shape, what)
    return _mask_values(mask).astype(np.float32)


def checked_mask(mask: np.ndarray, image_shape: Sequence[int] | None = None,
                 what: str = "mask") -> np.ndarray:
    """Validate a mask and return it as an HxW array (no copy): bool, or integers whose
    values are all 0, 1 or 255. Values are checked in row chunks (no full-size temporary)."""
    if mask is None or isinstance(mask, str | bytes | int | float):
        raise InputError(f"{what} is a {type(mask).__name__}; expected an HxW numpy array "
                         "(bool, or uint8 0/1 with 255 = ignore)")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise InputError(f"{what} has shape {mask.shape}; expected HxW")
    if image_shape is not None and tuple(mask.shape) != tuple(image_shape[:2]):
        raise InputError(
            f"{what} is {mask.shape[0]}x{mask.shape[1]} but its image is "
            f"{image_shape[0]}x{image_shape[1]}; they must have the same size"
        )
    if mask.dtype == np.bool_:
        return mask
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputError(
            f"{what} has dtype {mask.dtype}; expected bool or uint8 0/1 (255 = ignore)"
        )
    columns = min(mask.shape[1], _CHUNK_VALUES)
    rows = max(1, _CHUNK_VALUES // max(columns, 1))
    for start, column in itertools.product(range(0, mask.shape[0], rows),
                                           range(0, mask.shape[1], columns)):
        chunk = mask[start:start + rows, column:column + columns]
        bad = chunk[(chunk != 0) & (chunk != 1) & (chunk != 255)]
        if bad.size:
            values = np.unique(bad[:1024])
            raise InputError(
                f"{what} holds values {values[:8].tolist()}; expected 0 (background), "
                "1 (object) and optionally 255 (ignore)"
            )
    return mask


def check_marked(mask: np.ndarray, what: str = "mask") -> None:
    """Refuse a checked mask with no object pixel (no 1 / True), saying why: a mask of
    only 0 and 255 is the common PNG export, where 255 is read as "ignore" (the PASCAL
    convention), so it marks nothing."""
    if mask.dtype == np.bool_:
        if mask.any():
            return
    elif np.any(mask == 1):
        return
    if mask.dtype != np.bool_ and np.any(mask == 255):
        raise InputError(
            f"{what} holds only 0 and 255 and no 1: 255 means 'ignore' (the PASCAL "
            "convention), so no pixel is marked as the object; if 255 marks the object, "
            "pass mask // 255 or mask > 0 (0 = background, 1 = object, 255 = ignore)")
    raise InputError(f"{what} is empty (no pixel labelled 1): every shot needs the object "
                     "marked")


def _mask_values(values: np.ndarray) -> np.ndarray:
    """Object pixels of (part of) a checked mask: 1 (bool True) -> True, else False."""
    return values if values.dtype == np.bool_ else values == 1


def _coordinates_of(out_size: int, in_size: int, align_corners: bool, start: int, stop: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates of ``start..stop``: sliced from the cache for ordinary sizes, computed
    for the range alone for huge ones (so they cost a chunk, not the whole axis)."""
    if out_size <= _CACHED_SIZE:
        lower, upper, weight = source_coordinates(out_size, in_size, align_corners)
        return lower[start:stop], upper[start:stop], weight[start:stop]
    return coordinates(out_size, in_size, align_corners, start, stop)


@functools.lru_cache(maxsize=64)
def _flat_columns(out_size: int, in_size: int, align_corners: bool, values_per_pixel: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``source_coordinates`` along a row of ``values_per_pixel`` interleaved values
    (HxWxC seen as H x (W*C)): one flat gather per row instead of a strided one."""
    lower, upper, weight = source_coordinates(out_size, in_size, align_corners)
    offsets = np.arange(values_per_pixel)
    flat = ((lower[:, None] * values_per_pixel + offsets).ravel(),
            (upper[:, None] * values_per_pixel + offsets).ravel(),
            np.repeat(weight, values_per_pixel))
    for array in flat:
        array.flags.writeable = False
    return flat


def _resized_chunks(array: np.ndarray, size: Sequence[int], align_corners: bool = False,
                    values: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """Yield (rows, columns, float32 block) of the bilinear resize, block by block.

    Rows first (gathering only the input rows the output samples), then columns. An input
    whose row fits in a chunk is seen as H x (W*C), so each step is one contiguous gather
    and an in-place lerp over whole rows, as many rows at a time as keep both the gathered
    input rows and the output rows within a chunk. Any other (very wide) input is gathered
    at the sampled (row, column) pairs only, in blocks of whole rows, or of column ranges
    where one output row exceeds a chunk. Either way no temporary is
    larger than about a chunk (plus the coordinates of one block), whatever the input's
    shape. ``values`` maps gathered raw values before the float conversion (a mask's
    0/1/255 -> object or not).
    """
    height, width = int(size[0]), int(size[1])
    trailing = array.shape[2:]
    per_pixel = int(np.prod(trailing, dtype=np.int64))
    in_height, in_width = array.shape[0], array.shape[1]

    def as_float(gathered: np.ndarray) -> np.ndarray:
        if values is not None:
            gathered = values(gathered)
        return gathered.astype(np.float32, copy=False)

    if in_width * per_pixel > _CHUNK_VALUES or \
            width * per_pixel > _CHUNK_VALUES or height > _CACHED_SIZE:
        yield from _gathered_blocks(array, height, width, align_corners, as_float)
        return
    values_per_row = in_width * per_pixel
    # a chunk of rows holds at most a chunk of values, on the input side and the output side
    chunk_rows = max(1, _CHUNK_VALUES // max(max(width, in_width) * per_pixel, 1))
    rows_low, rows_high, rows_weight = source_coordinates(height, in_height, align_corners)
    cols_low, cols_high, cols_weight = _flat_columns(width, in_width, align_corners,
                                                     per_pixel)
    for start in range(0, height, chunk_rows):
        stop = min(start + chunk_rows, height)
        # Gathering rows copies them (a view's too) into contiguous [n, W, *C] arrays,
        # which then reshape to [n, W*C] without a copy; the input itself is never copied.
        # chunk_rows keeps them at most a chunk of values.
        rows = as_float(array[rows_low[start:stop]]).reshape(-1, values_per_row)
        below = as_float(array[rows_high[start:stop]]).reshape(-1, values_per_row)
        below -= rows
        below *= rows_weight[start:stop, None]
        rows += below
        left, right = rows[:, cols_low], rows[:, cols_high]
        right -= left
        right *= cols_weight
        left += right
        yield slice(start, stop), slice(0, width), left.reshape(stop - start, width, *trailing)


def _gathered_blocks(array: np.ndarray, height: int, width: int, align_corners: bool,
                     as_float: Callable[[np.ndarray], np.ndarray]
                     ) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """``_resized_chunks`` for any input: gather the four corners of each output pixel of a
    block directly (block-sized), then the same lerps in the same order."""
    trailing = array.shape[2:]
    per_pixel = int(np.prod(trailing, dtype=np.int64))
    block_width = min(width, max(1, _CHUNK_VALUES // per_pixel))
    block_rows = max(1, _CHUNK_VALUES // (block_width * per_pixel))
    broadcast = (1,) * len(trailing)
    for col_start in range(0, width, block_width):
        col_stop = min(col_start + block_width, width)
        cols_low, cols_high, cols_weight = _coordinates_of(width, array.shape[1], align_corners,
                                                           col_start, col_stop)
        cols_weight = cols_weight.reshape(-1, *broadcast)
        for start in range(0, height, block_rows):
            stop = min(start + block_rows, height)
            rows_low, rows_high, rows_weight = _coordinates_of(height, array.shape[0],
                                                               align_corners, start, stop)
            low, high = rows_low[:, None], rows_high[:, None]
            weight = rows_weight.reshape(-1, 1, *broadcast)
            sides = []
            for cols in (cols_low, cols_high):
                rows = as_float(array[low, cols])
                below = as_float(array[high, cols])
                below -= rows
                below *= weight
                rows += below
                sides.append(rows)
            left, right = sides
            right -= left
            right *= cols_weight
            left += right
            yield slice(start, stop), slice(col_start, col_stop), left


def resize_bilinear(array: np.ndarray, size: Sequence[int], align_corners: bool = False,
                    out: np.ndarray | None = None,
                    values: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Bilinear resize of HxW or HxWxC to ``size`` (h, w), as torch's F.interpolate.

    Works in row chunks; returns float32 (or writes into ``out``). ``values`` maps the
    gathered input values before they are converted to float (e.g. a mask's ``== 1``).
    """
    if out is None:
        out = np.empty((int(size[0]), int(size[1]), *array.shape[2:]), dtype=np.float32)
    for rows, columns, block in _resized_chunks(array, size, align_corners, values):
        out[rows, columns] = block
    return out


def preprocess_image(image: np.ndarray, input_size: Sequence[int], mean: Sequence[float],
                     std: Sequence[float], what: str = "image", *,
                     out: np.ndarray | None = None, channels: str = "rgb") -> np.ndarray:
    """HxWx3 uint8 RGB (BGR with ``channels="bgr"``; grayscale and RGBA converted, any
    memory layout) -> normalised [1,3,H,W] float32 at ``input_size``.

    ``(resized / 255 - mean) / std``, computed as one multiply-add per value. Ordinary
    images go through a cached plan in blocks of scratch rows (runtime.resize_plans; the
    same values), which reads the channels in the given order straight from the caller's
    array. ``out``: a C-contiguous [1,3,H,W] float32 array to write into.
    """
    pixels, order = frame_layout(image, what, channels)
    height, width = int(input_size[0]), int(input_size[1])
    shape = (1, 3, height, width)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise InputError(f"out must be a C-contiguous float32 array of shape {shape}, got "
                         f"{out.dtype} {out.shape}")
    scale, shift = _normalisation(tuple(map(float, mean)), tuple(map(float, std)))
    plan = image_plan(pixels.shape[0], pixels.shape[1], height, width, pixels.shape[2])
    if plan is not None:
        return resize_normalize(pixels, order, plan, scale, shift, out)
    resized = resize_bilinear(rgb_view(pixels, order), input_size)
    np.multiply(resized.transpose(2, 0, 1), scale, out=out[0])
    out[0] += shift
    return out


@functools.lru_cache(maxsize=16)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) [3,1,1] float32 with ``x * scale + shift ==
    (x / 255 - mean) / std``."""
    std_array = np.asarray(std, np.float64)
    scale = (1.0 / (255.0 * std_array)).astype(np.float32)[:, None, None]
    shift = (-np.asarray(mean, np.float64) / std_array).astype(np.float32)[:, None, None]
    scale.flags.writeable = False
    shift.flags.writeable = False
    return scale, shift


def preprocess_mask(mask: np.ndarray, input_size: Sequence[int], feature_size: Sequence[int],
                    image_shape: Sequence[int] | None = None, what: str = "mask") -> np.ndarray:
    """HxW mask -> [1,1,h,w] float32 at the feature size (as the model's ``resize_mask``)."""
    checked = checked_mask(mask, image_shape, what)
    at_input = resize_bilinear(checked, input_size, values=_mask_values)
    at_feature = resize_bilinear(at_input, feature_size, align_corners=True)
    return at_feature[None, None]


def mask_at_input_size(mask: np.ndarray, input_size: Sequence[int],
                       image_shape: Sequence[int] | None = None, what: str = "mask"
                       ) -> np.ndarray:
    """HxW mask -> [1,1,H,W] float32 at the network's input size (for the torch forward)."""
    checked = checked_mask(mask, image_shape, what)
    return resize_bilinear(checked, input_size, values=_mask_values)[None, None]


def foreground_probability(logits: np.ndarray) -> np.ndarray:
    """[2,h,w] (or [1,2,h,w]) logits -> [h,w] softmax foreground probability, float32."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 4:
        logits = logits[0]
    background, foreground = logits[0], logits[1]
    probability: np.ndarray = (1.0 / (1.0 + np.exp(background - foreground))).astype(
        np.float32)
    return probability


def probability_to_image(probability: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Foreground probability at feature size -> float32 at the image's own size."""
    height, width = int(image_shape[0]), int(image_shape[1])
    plan = probability_plan(*probability.shape[:2], height, width)
    if plan is None:
        return resize_bilinear(probability, image_shape[:2])
    return upsample(np.asarray(probability, np.float32), plan,
                    np.empty((height, width), np.float32))


def probability_to_mask(probability: np.ndarray, image_shape: Sequence[int],
                        threshold: float = THRESHOLD) -> np.ndarray:
    """Foreground probability at feature size -> HxW bool mask at the image's size.

    Resizes and thresholds in row blocks, so the only full-size array is the bool result
    (an 8000x8000 mask needs 64 MB, not a 256 MB float copy). Equal to
    ``probability_to_image(probability, image_shape) > threshold``.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    out = np.empty((height, width), dtype=np.bool_)
    plan = probability_plan(*probability.shape[:2], height, width)
    if plan is not None:
        return upsample_threshold(np.asarray(probability, np.float32), plan, threshold, out)
    for rows, columns, block in _resized_chunks(probability, image_shape[:2]):
        np.greater(block, threshold, out=out[rows, columns])
    return out


def mask_from_logits(logits: np.ndarray, image_shape: Sequence[int],
                     threshold: float = THRESHOLD) -> np.ndarray:
    """[2,h,w] logits -> HxW bool mask at the image's size, without a full-size float copy
    for the threshold (the probability is resized and compared in row chunks)."""
    return probability_to_mask(foreground_probability(logits), image_shape, threshold)
