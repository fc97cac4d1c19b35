"""Pictures a person would rather look at: mask overlays and labelled PNG grids."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crnet.runtime.files import write_bytes_atomic

PREDICTION_COLOR = (255, 60, 60)
TRUTH_COLOR = (40, 220, 90)
SUPPORT_COLOR = (255, 210, 0)


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
