"""Pre- and post-processing in numpy only, shared by training, calibration, eval and runtime.

The canonical path, used by every backend and by the PyTorch reference alike:

* image (HxWx3 uint8 RGB, any size) -> bilinear (half-pixel) to the bundle's input size
  -> /255 -> (x - mean) / std -> [1,3,H,W] float32;
* support mask (HxW, 0/1; 255 "ignore" counts as background) -> bilinear to the input
  size -> bilinear (align_corners) to the feature size, as the model's ``resize_mask``;
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
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from runtime.errors import CrnetError

THRESHOLD = 0.5
MAX_PIXELS = 100_000_000  # 10k x 10k; larger images are refused rather than risk memory
MIN_SIDE = 8
_CHUNK_VALUES = 1 << 20  # float32 values per output chunk (4 MB per temporary)


class InputError(CrnetError, ValueError):
    """An image or mask that cannot be used, with what was expected."""


def as_rgb_uint8(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an image and convert documented variants to HxWx3 uint8 RGB.

    Accepted: HxWx3 uint8 (RGB), HxW or HxWx1 uint8 (grayscale, replicated to RGB),
    HxWx4 uint8 (RGBA, alpha dropped). Anything else raises InputError.
    """
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
        raise InputError(
            f"{what} has shape {image.shape}; expected HxWx3 RGB (HxW, HxWx1 grayscale "
            "and HxWx4 RGBA are converted)"
        )
    check_size(image.shape[:2], what)
    if image.shape[2] == 1:  # a read-only view: no full-size copy of the grey values
        image = np.broadcast_to(image, (*image.shape[:2], 3))
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return image


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
    rows = max(1, _CHUNK_VALUES // max(mask.shape[1], 1))
    for start in range(0, mask.shape[0], rows):
        chunk = mask[start:start + rows]
        bad = chunk[(chunk != 0) & (chunk != 1) & (chunk != 255)]
        if bad.size:
            values = np.unique(bad[:1024])
            raise InputError(
                f"{what} holds values {values[:8].tolist()}; expected 0 (background), "
                "1 (object) and optionally 255 (ignore)"
            )
    return mask


def _mask_values(values: np.ndarray) -> np.ndarray:
    """Object pixels of (part of) a checked mask: 1 (bool True) -> True, else False."""
    return values if values.dtype == np.bool_ else values == 1


@functools.lru_cache(maxsize=64)
def _source_coordinates(out_size: int, in_size: int, align_corners: bool
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and weight of the upper one, per output position (cached:
    a video's frames all share one geometry; the arrays are read-only)."""
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        position = np.arange(out_size, dtype=np.float64) * scale
    else:
        scale = in_size / out_size
        position = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
        position = np.clip(position, 0.0, None)
    lower = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    weight = (position - lower).astype(np.float32)
    for array in (lower, upper, weight):
        array.flags.writeable = False
    return lower, upper, weight


@functools.lru_cache(maxsize=64)
def _flat_columns(out_size: int, in_size: int, align_corners: bool, values_per_pixel: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_source_coordinates`` along a row of ``values_per_pixel`` interleaved values
    (HxWxC seen as H x (W*C)): one flat gather per row instead of a strided one."""
    lower, upper, weight = _source_coordinates(out_size, in_size, align_corners)
    offsets = np.arange(values_per_pixel)
    flat = ((lower[:, None] * values_per_pixel + offsets).ravel(),
            (upper[:, None] * values_per_pixel + offsets).ravel(),
            np.repeat(weight, values_per_pixel))
    for array in flat:
        array.flags.writeable = False
    return flat


def _resized_chunks(array: np.ndarray, size: Sequence[int], align_corners: bool = False,
                    values: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (start_row, stop_row, float32 rows) of the bilinear resize, chunk by chunk.

    Rows first (gathering only the input rows the output samples, so the float copy is
    of output height), then columns. An input at most as wide as the output is seen as
    H x (W*C) so each step is one contiguous gather and an in-place lerp; a wider input is
    gathered at the sampled (row, column) pairs only, so no temporary is ever larger than
    an output chunk. ``values`` maps gathered raw values before the float conversion (a
    mask's 0/1/255 -> object or not).
    """
    height, width = int(size[0]), int(size[1])
    trailing = array.shape[2:]
    per_pixel = int(np.prod(trailing, dtype=np.int64))
    rows_low, rows_high, rows_weight = _source_coordinates(height, array.shape[0], align_corners)
    chunk_rows = max(1, _CHUNK_VALUES // max(width * per_pixel, 1))

    def as_float(gathered: np.ndarray) -> np.ndarray:
        if values is not None:
            gathered = values(gathered)
        return gathered.astype(np.float32, copy=False)

    if array.shape[1] > width:
        yield from _wide_chunks(array, width, rows_low, rows_high, rows_weight, chunk_rows,
                                align_corners, as_float)
        return
    values_per_row = array.shape[1] * per_pixel
    cols_low, cols_high, cols_weight = _flat_columns(width, array.shape[1], align_corners,
                                                     per_pixel)
    for start in range(0, height, chunk_rows):
        stop = min(start + chunk_rows, height)
        # Gathering rows copies them (a view's too) into contiguous [n, W, *C] arrays,
        # which then reshape to [n, W*C] without a copy; the input itself is never copied.
        # The input is no wider than the output here, so they are at most a chunk.
        rows = as_float(array[rows_low[start:stop]]).reshape(-1, values_per_row)
        below = as_float(array[rows_high[start:stop]]).reshape(-1, values_per_row)
        below -= rows
        below *= rows_weight[start:stop, None]
        rows += below
        left, right = rows[:, cols_low], rows[:, cols_high]
        right -= left
        right *= cols_weight
        left += right
        yield start, stop, left.reshape(stop - start, width, *trailing)


def _wide_chunks(array: np.ndarray, width: int, rows_low: np.ndarray, rows_high: np.ndarray,
                 rows_weight: np.ndarray, chunk_rows: int, align_corners: bool,
                 as_float: Callable[[np.ndarray], np.ndarray]
                 ) -> Iterator[tuple[int, int, np.ndarray]]:
    """``_resized_chunks`` for an input wider than the output: gather the four corners of
    each output pixel directly (output-sized), then the same lerps in the same order."""
    cols_low, cols_high, cols_weight = _source_coordinates(width, array.shape[1], align_corners)
    cols_weight = cols_weight.reshape(-1, *([1] * (array.ndim - 2)))
    for start in range(0, len(rows_low), chunk_rows):
        stop = min(start + chunk_rows, len(rows_low))
        low, high = rows_low[start:stop, None], rows_high[start:stop, None]
        weight = rows_weight[start:stop].reshape(-1, 1, *([1] * (array.ndim - 2)))
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
        yield start, stop, left


def resize_bilinear(array: np.ndarray, size: Sequence[int], align_corners: bool = False,
                    out: np.ndarray | None = None,
                    values: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Bilinear resize of HxW or HxWxC to ``size`` (h, w), as torch's F.interpolate.

    Works in row chunks; returns float32 (or writes into ``out``). ``values`` maps the
    gathered input values before they are converted to float (e.g. a mask's ``== 1``).
    """
    if out is None:
        out = np.empty((int(size[0]), int(size[1]), *array.shape[2:]), dtype=np.float32)
    for start, stop, rows in _resized_chunks(array, size, align_corners, values):
        out[start:stop] = rows
    return out


def preprocess_image(image: np.ndarray, input_size: Sequence[int], mean: Sequence[float],
                     std: Sequence[float], what: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB -> normalised [1,3,H,W] float32 at ``input_size``.

    ``(resized / 255 - mean) / std``, computed as one multiply-add per value.
    """
    rgb = as_rgb_uint8(image, what)
    resized = resize_bilinear(rgb, input_size)
    std_array = np.asarray(std, np.float64)
    scale = (1.0 / (255.0 * std_array)).astype(np.float32)[:, None, None]
    shift = (-np.asarray(mean, np.float64) / std_array).astype(np.float32)[:, None, None]
    out = np.empty((1, 3, resized.shape[0], resized.shape[1]), dtype=np.float32)
    np.multiply(resized.transpose(2, 0, 1), scale, out=out[0])
    out[0] += shift
    return out


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
    return (1.0 / (1.0 + np.exp(background - foreground))).astype(np.float32)


def probability_to_image(probability: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Foreground probability at feature size -> float32 at the image's own size."""
    return resize_bilinear(probability, image_shape[:2])


def probability_to_mask(probability: np.ndarray, image_shape: Sequence[int],
                        threshold: float = THRESHOLD) -> np.ndarray:
    """Foreground probability at feature size -> HxW bool mask at the image's size.

    Resizes and thresholds in row chunks, so the only full-size array is the bool result
    (an 8000x8000 mask needs 64 MB, not a 256 MB float copy). Equal to
    ``probability_to_image(probability, image_shape) > threshold``.
    """
    out = np.empty((int(image_shape[0]), int(image_shape[1])), dtype=np.bool_)
    for start, stop, rows in _resized_chunks(probability, image_shape[:2]):
        np.greater(rows, threshold, out=out[start:stop])
    return out


def mask_from_logits(logits: np.ndarray, image_shape: Sequence[int],
                     threshold: float = THRESHOLD) -> np.ndarray:
    """[2,h,w] logits -> HxW bool mask at the image's size, without a full-size float copy
    for the threshold (the probability is resized and compared in row chunks)."""
    return probability_to_mask(foreground_probability(logits), image_shape, threshold)
