"""The per-query hot path of runtime.preprocess: cached resize plans and scratch arrays.

Every ``segment`` call resizes an image down to the network's input and a feature-size
probability up to the image. For the shapes a camera or a dataset repeats, this module
caches the coordinates of those resizes (a plan per shape pair) and works in blocks of
rows whose temporaries are per-thread scratch arrays of at most ``BLOCK_VALUES`` float32
values, reused call after call, so a query neither faults in fresh pages nor streams
megabytes of temporaries through the cache. Measured on the 2-core AVX-512 EPYC for a
321x321 query to 193x193 (README.md, "Segmenter overhead"): preprocessing 0.25 ms, where
the old whole-image temporaries took 0.29 ms in a Segmenter's process and 1.2 ms in a
fresh one (glibc handing each temporary back to the kernel and faulting it in again);
the upsampling and threshold of the mask 0.07 ms instead of 0.14.

The image plan computes exactly what ``resize_bilinear`` + normalisation compute, in the
same order per value (bit-identical), as one compiled loop where numba is installed
(runtime.resize_kernels, the ``[fast]`` extra) and in numpy blocks otherwise. The
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
    """HxWx3 uint8 at one size -> [3,h,w] at the network's input size: rows first, then
    columns gathered channel-major so the result is written to CHW in contiguous runs."""

    rows_low: np.ndarray
    rows_high: np.ndarray
    row_weights: np.ndarray  # [h, 1]
    cols_low: np.ndarray  # [3*w]: channel c, output column x -> flat index lower[x]*3 + c
    cols_high: np.ndarray
    col_weights: np.ndarray  # [3*w]
    pixel_cols: tuple[np.ndarray, np.ndarray, np.ndarray]  # lower, upper, weight per column
    block_rows: int


@functools.lru_cache(maxsize=16)
def image_plan(in_height: int, in_width: int, out_height: int, out_width: int
               ) -> ImagePlan | None:
    """The plan for an ``in_height`` x ``in_width`` RGB image, or None where one input row
    does not fit a block (the general path handles those)."""
    row_values = max(in_width, out_width) * 3
    if row_values > BLOCK_VALUES:
        return None
    rows_low, rows_high, row_weights = _axis(out_height, in_height)
    low, high, weights = _axis(out_width, in_width)
    channels = np.arange(3)[:, None]
    arrays = (rows_low, rows_high, row_weights[:, None],
              (low[None, :] * 3 + channels).ravel(), (high[None, :] * 3 + channels).ravel(),
              np.tile(weights, 3), low, high, weights)
    for array in arrays:
        array.flags.writeable = False
    return ImagePlan(*arrays[:6], pixel_cols=arrays[6:],
                     block_rows=max(1, BLOCK_VALUES // row_values))


def resize_normalize(rgb: np.ndarray, plan: ImagePlan, scale: np.ndarray, shift: np.ndarray,
                     out: np.ndarray) -> np.ndarray:
    """Write ``resize(rgb) * scale + shift`` ([3,h,w]) into ``out`` ([1,3,h,w] float32),
    with the arithmetic of runtime.preprocess.resize_bilinear: one compiled loop where
    numba is installed and ``rgb`` is C-contiguous (runtime.resize_kernels), else numpy
    block by block."""
    compiled = kernels()
    if compiled is not None and rgb.flags.c_contiguous:
        rows = rgb.reshape(rgb.shape[0], -1)
        compiled.resize_normalize(rows, plan.rows_low, plan.rows_high, plan.row_weights[:, 0],
                                  *plan.pixel_cols, scale.reshape(3), shift.reshape(3), out,
                                  scratch("image-line", (rows.shape[1],), np.float32))
        return out
    in_width = rgb.shape[1]
    out_height, out_width = out.shape[2], out.shape[3]
    for start in range(0, out_height, plan.block_rows):
        stop = min(start + plan.block_rows, out_height)
        count = stop - start
        rows = scratch("image-rows", (count, in_width * 3), np.float32)
        below = scratch("image-below", (count, in_width * 3), np.float32)
        for source, target in ((plan.rows_low, rows), (plan.rows_high, below)):
            gathered = scratch("image-gathered", (count, in_width, 3), np.uint8)
            np.take(rgb, source[start:stop], axis=0, out=gathered, mode="wrap")
            np.copyto(target, gathered.reshape(count, -1))
        below -= rows
        below *= plan.row_weights[start:stop]
        rows += below
        left = scratch("image-left", (count, 3 * out_width), np.float32)
        right = scratch("image-right", (count, 3 * out_width), np.float32)
        np.take(rows, plan.cols_low, axis=1, out=left, mode="wrap")
        np.take(rows, plan.cols_high, axis=1, out=right, mode="wrap")
        right -= left
        right *= plan.col_weights
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
