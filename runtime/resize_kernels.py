"""An optional compiled loop for the query's resize (``pip install crnet-deploy[fast]``).

With numba installed, runtime.resize_plans runs the query's resize + normalisation as one
compiled loop instead of about ten numpy passes over temporaries. It performs the same
float32 operations in the same order as the numpy plan (no fused multiply-add, no
reassociation: numba's default), so the result is bit-identical, for every memory layout
and channel order the plan reads (rows of any stride, BGR, grayscale, RGBA);
tests/runtime/test_resize_plans.py checks it. The mask's upsampling is not compiled: a
numba loop there measured no faster than the numpy blocks, since it did not vectorise
(docs/benchmarks.md has the figures).

The loop compiles on first use (about half a second) and is cached on disk by
numba (next to this file, or in numba's user-wide cache where that is read-only).
``CRNET_NUMBA=0`` in the environment keeps the numpy path. ``kernels()`` is None where
numba does not import or is switched off.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import numpy as np


class Kernels(NamedTuple):
    """The compiled loop (``_resize_normalize`` documents its arguments)."""

    resize_normalize: Any


def kernels() -> Kernels | None:
    """The compiled loop, or None (numba missing, or ``CRNET_NUMBA=0``)."""
    return _loaded()[0]


def available() -> tuple[bool, str]:
    """(whether the compiled loop runs, why not): for describe()."""
    loaded, why = _loaded()
    return loaded is not None, why


@functools.lru_cache(maxsize=1)
def _loaded() -> tuple[Kernels | None, str]:
    """The loop and what decided it, settled once per process (``kernels`` and
    ``available`` must agree)."""
    if os.environ.get("CRNET_NUMBA", "1") == "0":
        return None, "CRNET_NUMBA=0"
    try:
        import numba
    except ImportError:
        return None, "numba is not installed (pip install 'crnet-deploy[fast]')"
    compile_loop = numba.njit(cache=True, nogil=True, boundscheck=False)
    return Kernels(compile_loop(_resize_normalize)), "numba"


def _resize_normalize(rows: Any, rows_low: Any, rows_high: Any, row_weights: Any,
                      cols_low: Any, cols_high: Any, col_weights: Any, order: Any,
                      depth: int, scale: Any, shift: Any, out: Any, line: Any) -> None:
    """``rows``: the image as [H, W*depth] uint8 (any row stride); ``order``: which of a
    pixel's ``depth`` values are R, G and B; ``out``: [1,3,h,w] float32; ``line``:
    W*depth float32 scratch. For each output row: the row lerp over every input value,
    then per channel the column lerp, * scale + shift
    (runtime.resize_plans.resize_normalize)."""
    out_height, out_width = out.shape[2], out.shape[3]
    values = rows.shape[1]
    for y in range(out_height):
        upper = rows[rows_low[y]]
        lower = rows[rows_high[y]]
        weight = row_weights[y]
        for j in range(values):
            top = np.float32(upper[j])
            line[j] = top + (np.float32(lower[j]) - top) * weight
        for channel in range(3):
            source = order[channel]
            channel_scale = scale[channel]
            channel_shift = shift[channel]
            target = out[0, channel, y]
            for x in range(out_width):
                left = line[cols_low[x] * depth + source]
                right = line[cols_high[x] * depth + source]
                target[x] = (left + (right - left) * col_weights[x]) * channel_scale \
                    + channel_shift
