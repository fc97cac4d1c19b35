from __future__ import annotations

import numpy as np
from PIL import Image

from crnet.data.pictures import TRUTH_COLOR, grid, overlay, save_png


def test_overlay_tints_only_the_mask() -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    mask[0, 0] = 255
    out = overlay(image, mask, TRUTH_COLOR)
    assert tuple(out[10, 10]) != (0, 0, 0)
    assert tuple(out[5, 5]) == TRUTH_COLOR  # boundary drawn in full colour
    assert tuple(out[19, 19]) == (0, 0, 0)
    assert tuple(out[0, 0]) == (64, 64, 64)  # ignore shown grey


def test_grid_and_png_round_trip(tmp_path) -> None:
    tiles = [[np.full((30, 40, 3), value, np.uint8) for value in (0, 128)]] * 3
    picture = grid(tiles, titles=["a", "b"], tile=50, gap=2)
    assert picture.shape == (22 + 3 * 50 + 4 * 2, 2 * 50 + 3 * 2, 3)
    path = save_png(tmp_path / "grid.png", picture)
    assert np.array_equal(np.asarray(Image.open(path)), picture)
