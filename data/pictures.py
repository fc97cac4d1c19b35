"""Pictures a person would rather look at: mask overlays and labelled PNG grids.

``overlay`` tints a mask. ``outline`` and ``hatch`` draw masks so that they stay visible
on any background: a mask's edge in its colour between a dark ring outside and a light
ring inside (one of the two always contrasts with whatever is underneath), and a support
mask as diagonal hatching with such an edge, in a blue far from the yellows and reds
that objects often have. ``with_legend`` adds a strip under a picture with a swatch of each
style, drawn by the same functions, and its label.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crnet.runtime.files import write_bytes_atomic

PREDICTION_COLOR = (255, 60, 60)
TRUTH_COLOR = (40, 220, 90)
SUPPORT_COLOR = (255, 210, 0)
# outline/hatch palette: each colour sits between a dark and a light ring
OUTLINE_DARK = (0, 0, 0)
OUTLINE_LIGHT = (255, 255, 255)
PREDICTION_OUTLINE = (255, 0, 255)
TRUTH_OUTLINE = (0, 200, 70)
SUPPORT_HATCH = (0, 110, 255)
LEGEND_SWATCH = (36, 18)


def overlay(image: np.ndarray, mask: np.ndarray, color: Sequence[int] = PREDICTION_COLOR,
            alpha: float = 0.5) -> np.ndarray:
    """Tint ``mask`` pixels (nonzero, 255 = ignore shown grey) of an RGB image."""
    out = image.astype(np.float32).copy()
    mask = np.asarray(mask)
    foreground = (mask > 0) & (mask != 255)
    out[foreground] = (1 - alpha) * out[foreground] + alpha * np.asarray(color, np.float32)
    out[mask == 255] = 0.5 * out[mask == 255] + 0.5 * 128
    edge = foreground ^ _eroded(foreground)
    out[edge] = color
    return out.clip(0, 255).astype(np.uint8)


def _eroded(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def _dilated(mask: np.ndarray) -> np.ndarray:
    return ~_eroded(~mask)


def _rings(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dark ring just outside the mask, 2-pixel colour band along its inner edge, light ring
    inside that band) of a boolean mask."""
    inner1 = _eroded(mask)
    inner2 = _eroded(inner1)
    return _dilated(mask) & ~mask, mask & ~inner2, inner2 & ~_eroded(inner2)


def outline(image: np.ndarray, mask: np.ndarray, color: Sequence[int] = PREDICTION_OUTLINE,
            tint: float = 0.2) -> np.ndarray:
    """Draw a mask's edge in ``color`` between a dark outer and a light inner ring, its area
    lightly tinted (nonzero pixels are the mask; 255 = ignore, shown grey)."""
    out = image.astype(np.float32).copy()
    mask = np.asarray(mask)
    foreground = (mask > 0) & (mask != 255)
    out[foreground] = (1 - tint) * out[foreground] + tint * np.asarray(color, np.float32)
    out[mask == 255] = 0.5 * out[mask == 255] + 0.5 * 128
    dark, band, light = _rings(foreground)
    out[dark] = OUTLINE_DARK
    out[band] = color
    out[light] = OUTLINE_LIGHT
    return out.clip(0, 255).astype(np.uint8)


def hatch(image: np.ndarray, mask: np.ndarray, color: Sequence[int] = SUPPORT_HATCH,
          spacing: int = 6) -> np.ndarray:
    """Diagonal hatching in ``color`` over a mask (every ``spacing`` pixels, 2 wide, with a
    light line beside each), and the mask's edge drawn as ``outline`` draws it."""
    mask = np.asarray(mask)
    out = outline(image, mask, color, tint=0.0)
    foreground = (mask > 0) & (mask != 255)
    rows, columns = np.indices(foreground.shape)
    phase = (rows + columns) % spacing
    out[foreground & (phase < 2)] = color
    out[foreground & (phase == 2)] = OUTLINE_LIGHT
    return out


def legend_swatch(style: str, color: Sequence[int], size: tuple[int, int] = LEGEND_SWATCH
                  ) -> np.ndarray:
    """A small grey patch with a square drawn by ``outline`` or ``hatch`` (``style``)."""
    width, height = size
    patch = np.full((height, width, 3), 150, np.uint8)
    square = np.zeros((height, width), np.uint8)
    square[2:height - 2, 3:width - 3] = 1
    if style == "hatch":
        return hatch(patch, square, color)
    if style == "outline":
        return outline(patch, square, color)
    raise ValueError(f"legend style must be 'outline' or 'hatch', got {style!r}")


def with_legend(picture: np.ndarray, entries: Sequence[tuple[str, str, Sequence[int]]],
                gap: int = 4) -> np.ndarray:
    """``picture`` with a white strip below it: for each (label, style, colour) of
    ``entries`` a swatch (legend_swatch) and the label; widened with white where the
    legend is wider than the picture."""
    from PIL import Image, ImageDraw

    width, height = LEGEND_SWATCH
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    places, x = [], gap
    for label, _, _ in entries:
        places.append(x)
        x += width + 4 + int(measure.textlength(label)) + 3 * gap
    total = max(picture.shape[1], x)
    strip = Image.new("RGB", (total, height + 2 * gap), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for left, (label, style, color) in zip(places, entries, strict=True):
        strip.paste(Image.fromarray(legend_swatch(style, color)), (left, gap))
        draw.text((left + width + 4, gap + height // 2 - 6), label, fill=(0, 0, 0))
    padded = np.full((picture.shape[0], total, 3), 255, np.uint8)
    padded[:, :picture.shape[1]] = picture
    return np.concatenate([padded, np.asarray(strip)], axis=0)


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] = (),
         tile: int = 200, gap: int = 4) -> np.ndarray:
    """Tiles (RGB arrays, resized to ``tile`` x ``tile``) in rows, with column titles."""
    from PIL import Image, ImageDraw

    columns = max(len(row) for row in rows)
    header = 22 if titles else 0
    width = columns * tile + (columns + 1) * gap
    height = header + len(rows) * tile + (len(rows) + 1) * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(titles):
        draw.text((gap + column * (tile + gap) + 4, 5), title, fill=(0, 0, 0))
    for row_index, row in enumerate(rows):
        for column, picture in enumerate(row):
            thumb = Image.fromarray(picture).resize((tile, tile), Image.BILINEAR)
            canvas.paste(thumb, (gap + column * (tile + gap),
                                 header + gap + row_index * (tile + gap)))
    return np.asarray(canvas)


def save_png(path: str | Path, picture: np.ndarray) -> Path:
    """Write an RGB array as PNG, atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", optimize=True)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)
