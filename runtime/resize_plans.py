"""The per-query hot path of runtime.preprocess: cached resize plans and scratch arrays.

Every ``segment`` call resizes an image down to the network's input and a feature-size
probability up to the image. For the shapes a camera or a dataset repeats, this module
caches the coordinates of those resizes (a plan per shape pair) and works in blocks of
rows whose temporaries are per-thread scratch arrays of at most ``BLOCK_VALUES`` float32
values, reused call after call, so a query neither faults in fresh pages nor streams
megabytes of temporaries through the cache (docs/benchmarks.md has the figures).

The image plan computes exactly what ``resize_bilinear`` + normalisation compute, in the
same order per value (bit-identical), as one compiled loop where numba is installed
(runtime.resize_kernels, the ``[fast]`` extra) and in numpy blocks otherwise. It reads the
caller's array where it lies, whatever its layout: an input row is gathered through its
own strides (a crop, a row step, reversed rows), the colour order and the channel count
are folded into the column gather indices (BGR is a reversed channel index, grayscale a
repeated one, RGBA skips the alpha value) and reversed columns into mirrored column
indices, so a BGR frame, a ``frame[..., ::-1]`` view, a grey or an RGBA image costs what a
contiguous RGB frame of the same size costs and gives the same bits. The
probability plan interpolates the columns of the small feature-size map first and then
the rows, so that the large output is made from contiguous row copies; it is the same
bilinear (half-pixel) resize, with float32 rounding in a different order (values agree
to ~1e-7). Inputs a plan does not cover (an image row or an output row wider than a
block, an output side longer than ``MAX_PLAN_SIDE``) go through runtime.preprocess's
general chunked path.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np

from crnet.runtime.resize_kernels import kernels

BLOCK_VALUES = 1 << 16  # float32 values per scratch block (256 KB: several fit in an L2)
MAX_PLAN_SIDE = 1 << 14  # output sides up to this keep a cached plan
_LOCAL = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A per-thread array of ``shape``, reused by this thread's next request of ``name``.

    Its contents are whatever the last user left. Callers must not keep it past their own
    call (another call on the same thread overwrites it)."""
    try:
        pool: dict[tuple[str, type], np.ndarray] = _LOCAL.pool
    except AttributeError:
        pool = _LOCAL.pool = {}
    size = math.prod(shape)
    buffer = pool.get((name, dtype))
    if buffer is None or buffer.size < size:
        buffer = pool[(name, dtype)] = np.empty(size, dtype)
    return buffer[:size].reshape(shape)


def coordinates(out_size: int, in_size: int, align_corners: bool, start: int, stop: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and float32 weight of the upper one, for output positions
    ``start..stop`` of a bilinear resize, as torch computes them (half-pixel: the source
    position is clamped at 0; the upper index at the last input position). The same
    arithmetic per position whatever the range."""
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        position = np.arange(start, stop, dtype=np.float64) * scale
    else:
        scale = in_size / out_size
        position = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5
        position = np.clip(position, 0.0, None)
    lower = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    weight = (position - lower).astype(np.float32)
    return lower, upper, weight


@functools.lru_cache(maxsize=64)
def source_coordinates(out_size: int, in_size: int, align_corners: bool
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``coordinates`` of every output position, cached (a video's frames all share one
    geometry; the arrays are read-only). For axes up to runtime.preprocess's _CACHED_SIZE
    and the plans here."""
    cached = coordinates(out_size, in_size, align_corners, 0, out_size)
    for array in cached:
        array.flags.writeable = False
    return cached


def _axis(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``source_coordinates`` of a half-pixel (align_corners=False) resize."""
    return source_coordinates(out_size, in_size, False)


@dataclass(frozen=True)
class ImagePlan:
    """HxWxC uint8 at one size -> [3,h,w] at the network's input size: rows first, then
    columns gathered channel-major (``layout_columns``) so the result is written to CHW in
    contiguous runs."""

    rows_low: np.ndarray
    rows_high: np.ndarray
    row_weights: np.ndarray  # [h, 1]
    depth: int  # values per input pixel (1 grayscale, 3 RGB/BGR, 4 RGBA/BGRA)
    block_rows: int


@functools.lru_cache(maxsize=16)
def image_plan(in_height: int, in_width: int, out_height: int, out_width: int,
               depth: int = 3) -> ImagePlan | None:
    """The plan for an ``in_height`` x ``in_width`` image of ``depth`` values per pixel, or
    None where one input row does not fit a block (the general path handles those)."""
    row_values = max(in_width * depth, out_width * 3)
    if row_values > BLOCK_VALUES:
        return None
    rows_low, rows_high, row_weights = _axis(out_height, in_height)
    row_weights = row_weights[:, None]
    row_weights.flags.writeable = False
    return ImagePlan(rows_low, rows_high, row_weights, depth=depth,
                     block_rows=max(1, BLOCK_VALUES // row_values))


@functools.lru_cache(maxsize=16)
def pixel_columns(in_width: int, out_width: int, mirrored: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, weight) input columns of each output column; ``mirrored``: counted
    from the right, for an image whose columns are read reversed (``frame[:, ::-1]`` read
    as the frame itself), so each output value still lerps the same two pixels."""
    low, high, weights = _axis(out_width, in_width)
    if not mirrored:
        return low, high, weights
    flipped = (in_width - 1 - low, in_width - 1 - high, weights)
    for array in flipped:
        array.flags.writeable = False
    return flipped


@functools.lru_cache(maxsize=64)
def layout_columns(in_width: int, out_width: int, depth: int, order: tuple[int, int, int],
                   mirrored: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices into a row of ``in_width`` pixels of ``depth`` values (lower, upper)
    and the weights, channel-major: entry ``c*out_width + x`` reads value ``order[c]`` of
    the pixels the output column x interpolates. The channel order (BGR is (2, 1, 0), a
    grey image (0, 0, 0)) is folded into these gather indices, so no converted copy of
    the image is ever made; so is a mirrored column order (``pixel_columns``)."""
    low, high, weights = pixel_columns(in_width, out_width, mirrored)
    channels = np.asarray(order, np.int64)[:, None]
    arrays = ((low[None, :] * depth + channels).ravel(),
              (high[None, :] * depth + channels).ravel(), np.tile(weights, 3))
    for array in arrays:
        array.flags.writeable = False
    return arrays


def pixel_rows(pixels: np.ndarray) -> np.ndarray | None:
    """``pixels`` (HxWxC) seen as H rows of W*C values without a copy, or None where the
    values of a row are not evenly spaced (a view that skips or reverses columns).
    Crops, row steps and reversed rows keep their row stride."""
    height, width, depth = pixels.shape
    value_stride = pixels.strides[2] if depth > 1 else pixels.strides[1]
    if width > 1 and pixels.strides[1] != depth * value_stride:
        return None
    if value_stride <= 0:
        return None
    return np.lib.stride_tricks.as_strided(pixels, (height, width * depth),
                                           (pixels.strides[0], value_stride),
                                           writeable=False)


def resize_normalize(pixels: np.ndarray, order: tuple[int, int, int], plan: ImagePlan,
                     scale: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write ``resize(rgb) * scale + shift`` ([3,h,w]) into ``out`` ([1,3,h,w] float32),
    where ``rgb`` is channels ``order`` of ``pixels`` (HxWxC uint8 in any memory layout),
    with the arithmetic of runtime.preprocess.resize_bilinear: one compiled loop where
    numba is installed and the image's rows are evenly spaced values
    (runtime.resize_kernels), else numpy block by block. The input rows are read where
    they lie (strided views are never copied whole) and every value goes through the same
    float32 operations in the same order, whatever the layout or channel order."""
    in_width, depth = pixels.shape[1], pixels.shape[2]
    mirrored = in_width > 1 and pixels.strides[1] < 0
    if mirrored:  # e.g. frame[:, ::-1]: read the frame's rows forwards, columns mirrored
        pixels = pixels[:, ::-1]
    rows = pixel_rows(pixels)
    compiled = kernels()
    if compiled is not None and rows is not None:
        compiled.resize_normalize(rows, plan.rows_low, plan.rows_high, plan.row_weights[:, 0],
                                  *pixel_columns(in_width, out.shape[3], mirrored),
                                  np.asarray(order, np.int64), depth,
                                  scale.reshape(3), shift.reshape(3), out,
                                  scratch("image-line", (rows.shape[1],), np.float32))
        return out
    cols_low, cols_high, col_weights = layout_columns(in_width, out.shape[3], depth, order,
                                                      mirrored)
    contiguous = rows is not None and rows.flags.c_contiguous
    out_height, out_width = out.shape[2], out.shape[3]
    for start in range(0, out_height, plan.block_rows):
        stop = min(start + plan.block_rows, out_height)
        count = stop - start
        values = scratch("image-rows", (count, in_width * depth), np.float32)
        below = scratch("image-below", (count, in_width * depth), np.float32)
        for source, target in ((plan.rows_low, values), (plan.rows_high, below)):
            if contiguous:
                gathered = scratch("image-gathered", (count, in_width * depth), np.uint8)
                np.take(rows, source[start:stop], axis=0, out=gathered, mode="wrap")
            else:  # only the sampled rows of the view are read (a block-sized copy)
                gathered = pixels[source[start:stop]].reshape(count, -1)
            np.copyto(target, gathered)
        below -= values
        below *= plan.row_weights[start:stop]
        values += below
        left = scratch("image-left", (count, 3 * out_width), np.float32)
        right = scratch("image-right", (count, 3 * out_width), np.float32)
        np.take(values, cols_low, axis=1, out=left, mode="wrap")
        np.take(values, cols_high, axis=1, out=right, mode="wrap")
        right -= left
        right *= col_weights
        left += right
        target = out[0, :, start:stop, :]
        np.multiply(left.reshape(count, 3, out_width).transpose(1, 0, 2), scale, out=target)
        target += shift
    return out


@dataclass(frozen=True)
class ProbabilityPlan:
    """[h,w] float32 -> [H,W]: columns on the small map, then output rows as contiguous
    copies of interpolated source rows plus a weighted difference."""

    rows_low: np.ndarray
    row_weights: np.ndarray  # [H, 1]
    cols_low: np.ndarray
    cols_high: np.ndarray
    col_weights: np.ndarray
    block_rows: int


@functools.lru_cache(maxsize=16)
def probability_plan(in_height: int, in_width: int, out_height: int, out_width: int
                     ) -> ProbabilityPlan | None:
    """The plan for a feature-size map to an ``out_height`` x ``out_width`` image, or None
    where an output side exceeds MAX_PLAN_SIDE (the general path handles those)."""
    if max(out_height, out_width) > MAX_PLAN_SIDE:
        return None
    rows_low, _rows_high, row_weights = _axis(out_height, in_height)
    cols_low, cols_high, col_weights = _axis(out_width, in_width)
    arrays = (rows_low, row_weights[:, None], cols_low, cols_high, col_weights)
    for array in arrays:
        array.flags.writeable = False
    return ProbabilityPlan(*arrays, block_rows=max(1, BLOCK_VALUES // out_width))


def upsample_blocks(probability: np.ndarray, plan: ProbabilityPlan, out_height: int
                    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(interpolated columns [h,W], row differences [h,W], row blocks) for ``upsample``:
    output row y is ``columns[low[y]] + weight[y] * differences[low[y]]``, which is the
    lerp between source rows low[y] and min(low[y] + 1, h - 1)."""
    left = probability[:, plan.cols_low]
    right = probability[:, plan.cols_high]
    right -= left
    right *= plan.col_weights
    left += right
    differences = np.zeros_like(left)
    np.subtract(left[1:], left[:-1], out=differences[:-1])  # the last row's upper is itself
    blocks = [(start, min(start + plan.block_rows, out_height))
              for start in range(0, out_height, plan.block_rows)]
    return left, differences, blocks


def upsample(probability: np.ndarray, plan: ProbabilityPlan, out: np.ndarray) -> np.ndarray:
    """Bilinear (half-pixel) ``probability`` [h,w] -> ``out`` [H,W] float32."""
    columns, differences, blocks = upsample_blocks(probability, plan, out.shape[0])
    for start, stop in blocks:
        rows = plan.rows_low[start:stop]
        target = out[start:stop]
        np.take(columns, rows, axis=0, out=target, mode="wrap")
        step = scratch("probability-step", target.shape, np.float32)
        np.take(differences, rows, axis=0, out=step, mode="wrap")
        step *= plan.row_weights[start:stop]
        target += step
    return out


def upsample_threshold(probability: np.ndarray, plan: ProbabilityPlan, threshold: float,
                       out: np.ndarray) -> np.ndarray:
    """``upsample(probability) > threshold`` into ``out`` [H,W] bool, with only a block of
    float rows at a time."""
    columns, differences, blocks = upsample_blocks(probability, plan, out.shape[0])
    width = out.shape[1]
    for start, stop in blocks:
        rows = plan.rows_low[start:stop]
        values = scratch("probability-values", (stop - start, width), np.float32)
        step = scratch("probability-step", (stop - start, width), np.float32)
        np.take(columns, rows, axis=0, out=values, mode="wrap")
        np.take(differences, rows, axis=0, out=step, mode="wrap")
        step *= plan.row_weights[start:stop]
        values += step
        np.greater(values, threshold, out=out[start:stop])
    return out
